"""`make load`: a local server (the tiny random-weight model unless -m), locust headless
against it for a bounded time, then locust's summary and the server's own counters.

    python bench/load.py [--users 4] [--time 30s] [--workers 1] [-m MODEL_DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=4, help="concurrent simulated clients")
    ap.add_argument("--time", default="30s", help="run time (locust syntax: 30s, 2m)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("-m", "--model-dir", default=None, help="default: the tiny random-weight model")
    args = ap.parse_args()

    from qwen3vl_app.devtools.tiny_model import ensure_tiny_checkpoint
    from tests.conftest import run_server

    model_dir = args.model_dir or ensure_tiny_checkpoint()
    with tempfile.TemporaryDirectory(prefix="qwen3vl-load-") as tmp:
        print(f"starting the server ({args.workers} worker(s), model {model_dir}) ...", flush=True)
        with run_server(model_dir, Path(tmp), workers=args.workers, timeout=300) as server:
            env = {**os.environ, "QWEN3VL_LOAD_MAX_TOKENS": str(args.max_tokens)}
            cmd = [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(REPO / "tests" / "load" / "locustfile.py"),
                "--headless",
                "--only-summary",
                "-u",
                str(args.users),
                "-r",
                str(args.users),
                "-t",
                args.time,
                "--stop-timeout",
                "30",
                "--host",
                server.url,
                "--exit-code-on-error",
                "0",
            ]
            print(" ".join(cmd[2:]), flush=True)
            rc = subprocess.call(cmd, env=env, cwd=REPO)
            print("\nserver counters (GET /metrics):")
            for line in server.get("/metrics").text.splitlines():
                if line.startswith(
                    (
                        "qwen3vl_requests_total",
                        "qwen3vl_requests_rejected_total",
                        "qwen3vl_completion_tokens_total",
                        "qwen3vl_time_to_first_token_seconds_sum",
                        "qwen3vl_time_to_first_token_seconds_count",
                        "qwen3vl_media_fetch",
                    )
                ):
                    print("  " + line)
    return rc


if __name__ == "__main__":
    sys.exit(main())
