#!/usr/bin/env python3
"""Every serving requirement resolves to binary wheels for the SE7 (manylinux aarch64) on
CPython 3.10 and 3.11, dependencies included.  Needs no aarch64 machine: pip downloads for
the target platform.  Environment markers are evaluated for the target (pip itself would
evaluate them for the interpreter running it).

    python .ci/check_wheels.py [requirements.txt] [--python 3.10 --python 3.11]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from packaging.markers import Marker, default_environment
except ImportError:  # pip vendors it
    from pip._vendor.packaging.markers import Marker, default_environment

PLATFORM = "manylinux2014_aarch64"


def requirements_for(path: Path, version: str) -> list[str]:
    env = default_environment()
    env.update(
        python_version=version,
        python_full_version=f"{version}.0",
        platform_machine="aarch64",
        platform_system="Linux",
        sys_platform="linux",
        implementation_name="cpython",
        platform_python_implementation="CPython",
    )
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req, _, marker = line.partition(";")
        if not marker.strip() or Marker(marker.strip()).evaluate(env):
            out.append(req.strip())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "requirements", nargs="?", type=Path, default=Path(__file__).resolve().parents[1] / "requirements.txt"
    )
    ap.add_argument("--python", action="append", dest="versions", help="target CPython version (repeatable)")
    args = ap.parse_args()
    failed = []
    for version in args.versions or ["3.10", "3.11"]:
        reqs = requirements_for(args.requirements, version)
        with tempfile.TemporaryDirectory() as tmp:
            listing = Path(tmp) / "requirements.txt"
            listing.write_text("\n".join(reqs) + "\n")
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--only-binary=:all:",
                "--platform",
                PLATFORM,
                "--python-version",
                version,
                "--implementation",
                "cp",
                "-d",
                str(Path(tmp) / "wheels"),
                "-r",
                str(listing),
            ]
            r = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(p.name for p in (Path(tmp) / "wheels").glob("*.whl")) if r.returncode == 0 else []
        if r.returncode != 0:
            errors = [ln for ln in r.stderr.splitlines() if "ERROR" in ln]
            print(
                f"cp{version.replace('.', '')} {PLATFORM}: FAILED\n  "
                + "\n  ".join(errors or r.stderr.splitlines()[-5:])
            )
            failed.append(version)
        else:
            print(f"cp{version.replace('.', '')} {PLATFORM}: {len(reqs)} requirements -> {len(wheels)} wheels")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
