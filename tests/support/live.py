"""A real server: `python -m qwen3vl_app` (gunicorn, gevent workers) on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789"
LONG_STORY = [{"role": "user", "content": "Tell me a long story."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth_headers(api_key: str | None, api_header: str = "Authorization", api_prefix: str = "Bearer") -> dict:
    if not api_key:
        return {}
    if api_header.lower() == "authorization":
        return {"Authorization": f"{api_prefix} {api_key}"}
    return {api_header: api_key}


class LiveServer:
    def __init__(
        self, proc: subprocess.Popen, port: int, log_path: Path, api_key: str | None, api_header: str = "Authorization"
    ):
        self.proc, self.port, self.log_path, self.api_key = proc, port, log_path, api_key
        self.api_header = api_header
        self.url = f"http://127.0.0.1:{port}"

    @property
    def headers(self) -> dict:
        return auth_headers(self.api_key, self.api_header)

    def get(self, path, **kw):
        kw.setdefault("headers", self.headers)
        return requests.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def post(self, path, **kw):
        kw.setdefault("headers", self.headers)
        return requests.post(self.url + path, timeout=kw.pop("timeout", 120), **kw)

    def chat(
        self, messages: list | None = None, max_tokens: int = 4, stream: bool = False, timeout: float = 120, **body
    ):
        """POST /v1/chat/completions (a long-story prompt unless `messages`), greedy."""
        body = {
            "messages": messages or LONG_STORY,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": stream,
            **body,
        }
        return requests.post(
            self.url + "/v1/chat/completions", json=body, headers=self.headers, timeout=timeout, stream=stream
        )

    def health(self) -> dict:
        """/health on a fresh connection (so it may land on any worker)."""
        return requests.get(self.url + "/health", headers={**self.headers, "Connection": "close"}, timeout=10).json()

    def openai(self, **kw):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "unused", **kw)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]


@contextmanager
def run_server(
    model_dir,
    tmp_path: Path,
    *args: str,
    workers: int = 1,
    api_key: str | None = None,
    env: dict | None = None,
    wait: bool = True,
    timeout: float = 180,
):
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "qwen3vl_app",
        "-m",
        str(model_dir),
        "-p",
        str(port),
        "--host",
        "127.0.0.1",
        "--workers",
        str(workers),
        "--worker-pid-header",  # the tests tell workers apart by it (off by default)
        *args,
    ]
    if api_key:
        cmd += ["--api-key", api_key]
    elif "--disable-api-auth" not in args and "--api-key-file" not in args:
        cmd += ["--disable-api-auth"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3VL_")}
    full_env.update(env or {})
    log_path = tmp_path / f"server-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO, start_new_session=True
        )
    header = args[args.index("--api-header") + 1] if "--api-header" in args else "Authorization"
    server = LiveServer(proc, port, log_path, api_key, header)
    try:
        if wait:
            wait_healthy(server, workers, timeout)
        yield server
    finally:
        stop_server(proc)


def wait_healthy(server: LiveServer, workers: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    healthy: set[int] = set()
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log()[-4000:]}")
        try:
            # A new connection each time, so the request may land on any worker.
            r = requests.get(server.url + "/health", headers={**server.headers, "Connection": "close"}, timeout=5)
            if r.status_code == 200 and r.json()["status"] == "healthy":
                healthy.add(r.json()["worker_pid"])
                if len(healthy) >= workers:
                    return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not healthy after {timeout}s:\n{server.log()[-4000:]}")


def wait_running(server: LiveServer, n: int = 1, timeout: float = 30) -> dict:
    """Poll /health until a worker reports `n` running generations; returns that answer."""
    from .polling import wait_for

    def check():
        h = server.health()
        return h if h["running"] >= n else None

    return wait_for(check, timeout, what=f"{n} running generation(s)")


def wait_idle(server: LiveServer, pids, timeout: float = 30) -> None:
    """Every worker in `pids` reports no running or queued generation (seen on /health, which
    fresh connections spread over the workers)."""
    from .polling import wait_for

    idle: set[int] = set()

    def all_idle():
        h = server.health()
        if h["running"] == 0 and h["queued"] == 0:
            idle.add(h["worker_pid"])
        else:
            idle.discard(h["worker_pid"])
        return set(pids) <= idle

    wait_for(all_idle, timeout, what=f"workers {sorted(pids)} idle")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
