#!/usr/bin/env python3
"""Build (or reuse) the tiny random-weight Qwen3-VL as a BM1684X model folder.

    python scripts/build_tiny_bmodel.py            # prints the model folder as its last line
    python scripts/build_tiny_bmodel.py --dynamic  # the same as a dynamic build

1. builds the tiny Hugging Face checkpoint (`qwen3vl_app.tiny_model`, same as the torch
   tests) with this Python (it needs torch + transformers);
2. creates, once, a Python 3.10 virtualenv outside the checkout with tpu-mlir (the
   vendor compiler, Python 3.10 only) and what its `llm_convert` needs;
3. compiles the checkpoint for bm1684x with `--do_sample` (so `lm_head` returns logits and
   tokens are picked on the host: the simulator's device-side sampling heads take minutes),
   a small SEQLEN / MAX_INPUT_LENGTH and a 128x128-pixel vision encoder, to keep the cmodel
   simulator fast;
4. writes `<cache>/tiny-bmodel-<hash>/{tiny-qwen3vl.bmodel, config/}`, keyed by a hash of
   the checkpoint, this script and the compiler version, so repeated runs are instant.

Cache root: $QWEN3VL_CACHE_DIR or ~/.cache/qwen3vl-server.  Python 3.10: $TPU_MLIR_PYTHON,
else `python3.10` on PATH, else pyenv's 3.10.x.  Debian's `parallel` is installed with
apt-get when missing (root only).
"""
from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from qwen3vl_app.tiny_model import cache_root  # noqa: E402  (one cache root for every builder)

TPU_MLIR_VERSION = "1.30.2"
TORCH_FOR_CONVERTER = "torch==2.11.0"  # what tpu_mlir 1.30.2's [torch] extra pins
EXTRA_PACKAGES = ["psutil", "flatbuffers"]
SEQ_LENGTH = 256
MAX_INPUT_LENGTH = 128
MAX_PIXELS = "128,128"  # vit compiled for 64 patches (16 merged tokens)
CONVERT_ARGS = ["-s", str(SEQ_LENGTH), "--max_input_length", str(MAX_INPUT_LENGTH), "-q", "bf16",
                "-c", "bm1684x", "--do_sample", "--max_pixels", MAX_PIXELS]
BMODEL_NAME = "tiny-qwen3vl.bmodel"
# removed from the wheel's lib/third_party: its own glibc breaks the host's processes
BUNDLED_LIBC = ["libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1"]


def say(msg: str) -> None:
    print(f"[tiny-bmodel] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], log: Path | None = None, **kw) -> None:
    say("$ " + " ".join(str(c) for c in cmd))
    if log is None:
        subprocess.run(cmd, check=True, stdout=sys.stderr, **kw)
        return
    with open(log, "ab") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)
    if r.returncode != 0:
        tail = log.read_bytes()[-6000:].decode("utf-8", "replace")
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n--- {log} (tail) ---\n{tail}")


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_checkpoint() -> Path:
    out = subprocess.run([sys.executable, "-m", "qwen3vl_app.tiny_model"], cwd=REPO, check=True,
                         stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def find_python310() -> str:
    cands = [os.environ.get("TPU_MLIR_PYTHON"), shutil.which("python3.10")]
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv"), "/root/.pyenv"]
    for root in filter(None, roots):
        cands += sorted(glob.glob(f"{root}/versions/3.10*/bin/python3.10"), reverse=True)
    for c in cands:
        if not c or not os.access(c, os.X_OK):
            continue
        try:  # a pyenv shim on PATH may exist without the version being selected
            r = subprocess.run([c, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0 and r.stdout.strip() == "True":
            return c
    raise SystemExit("tpu-mlir needs Python 3.10: none found (set TPU_MLIR_PYTHON, or `pyenv install 3.10`)")


def ensure_parallel() -> None:
    if shutil.which("parallel"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit("tpu-mlir's llm_convert needs GNU parallel: apt-get install -y parallel")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "parallel"], env=env)


def ensure_wheel(root: Path, pip_python: str) -> Path:
    wheels = root / "wheels"
    wheel = wheels / f"tpu_mlir-{TPU_MLIR_VERSION}-py3-none-any.whl"
    if not wheel.exists():
        wheels.mkdir(parents=True, exist_ok=True)
        run([pip_python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
             "3.10", f"tpu_mlir=={TPU_MLIR_VERSION}", "-d", str(wheels)])
    return wheel


def ensure_venv(root: Path) -> Path:
    venv = root / f"tpu-mlir-venv-{TPU_MLIR_VERSION}"
    stamp = venv / ".qwen3vl-ready"
    if stamp.exists():
        return venv
    py = find_python310()
    wheel = ensure_wheel(root, sys.executable)
    if venv.exists():
        shutil.rmtree(venv)
    t0 = time.time()
    say(f"creating {venv} with {py} (tpu-mlir + torch: a few GB, a few minutes)")
    run([py, "-m", "venv", str(venv)])
    vpy = str(venv / "bin" / "python")
    log = root / "tpu-mlir-venv-install.log"
    log.unlink(missing_ok=True)
    run([vpy, "-m", "pip", "install", "-q", "--upgrade", "pip"], log=log)
    run([vpy, "-m", "pip", "install", "-q", str(wheel), TORCH_FOR_CONVERTER, *EXTRA_PACKAGES], log=log)
    third = Path(glob.glob(str(venv / "lib" / "python3.10" / "site-packages" / "tpu_mlir" / "lib" / "third_party"))[0])
    moved = third.parent / "third_party_disabled"
    moved.mkdir(exist_ok=True)
    for name in BUNDLED_LIBC:
        if (third / name).exists():
            shutil.move(str(third / name), str(moved / name))
    stamp.write_text(f"tpu_mlir=={TPU_MLIR_VERSION}\n")
    say(f"tpu-mlir venv ready in {time.time() - t0:.0f} s")
    return venv


def cache_key(ckpt: Path, extra: list[str]) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(" ".join(extra).encode())
    h.update(TPU_MLIR_VERSION.encode())
    for name in sorted(os.listdir(ckpt)):
        p = ckpt / name
        if p.is_file():
            h.update(name.encode())
            h.update(file_sha(p).encode())
    return h.hexdigest()[:16]


def convert(ckpt: Path, venv: Path, work: Path, extra: list[str]) -> Path:
    ensure_parallel()
    env = dict(os.environ)
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"  # model_deploy.py etc. must run on the venv's python
    env.pop("PYTHONPATH", None)
    out = work / "out"
    t0 = time.time()
    run([str(venv / "bin" / "llm_convert"), "-m", str(ckpt), *CONVERT_ARGS, *extra, "-o", str(out)],
        log=work / "llm_convert.log", cwd=work, env=env)
    say(f"llm_convert took {time.time() - t0:.0f} s")
    found = sorted(out.glob("*.bmodel"))
    if len(found) != 1:
        raise SystemExit(f"expected one bmodel in {out}, found {found}")
    return found[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when cached")
    ap.add_argument("--dynamic", action="store_true",
                    help="dynamic prefill + vit build (variable-length networks) instead of static")
    args = ap.parse_args()
    extra = ["--dynamic"] if args.dynamic else []
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ckpt = build_checkpoint()
    kind = "tiny-bmodel-dynamic" if args.dynamic else "tiny-bmodel"
    final = root / f"{kind}-{cache_key(ckpt, extra)}"
    def ready() -> bool:
        return (final / BMODEL_NAME).exists() and (final / "config" / "config.json").exists()

    if not args.force and ready():
        say(f"cached: {final}")
        print(final)
        return
    # one builder at a time (a test session and `make tiny-bmodel` may race)
    lock = open(root / ".tiny-bmodel.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not args.force and ready():
        say(f"built meanwhile by another run: {final}")
        print(final)
        return
    venv = ensure_venv(root)
    work = Path(tempfile.mkdtemp(prefix="tiny-bmodel-build-", dir=root))
    try:
        bmodel = convert(ckpt, venv, work, extra)
        stage = work / "folder"
        (stage / "config").mkdir(parents=True)
        shutil.copy2(bmodel, stage / BMODEL_NAME)
        for p in ckpt.iterdir():
            if p.is_file() and not p.name.endswith((".safetensors", ".bin", ".pt")):
                shutil.copy2(p, stage / "config" / p.name)
        if final.exists():
            shutil.rmtree(final)
        stage.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"built in {time.time() - t0:.0f} s: {final} ({(final / BMODEL_NAME).stat().st_size // 1024} KiB bmodel)")
    print(final)


if __name__ == "__main__":
    main()
