#!/usr/bin/env python3
"""Start the server on a model folder (bm1684x engine, one worker, loopback), ask one text
and one image chat, stop it.  Serving requirements only (no pytest, no openai client).

    python .ci/smoke_serve.py MODEL_FOLDER
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_data_url() -> str:
    img = Image.new("RGB", (96, 96))
    img.putdata([((x * 3) % 256, (y * 5) % 256, ((x + y) * 7) % 256) for y in range(96) for x in range(96)])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat(url: str, content) -> dict:
    r = requests.post(
        url + "/v1/chat/completions",
        timeout=600,
        json={"messages": [{"role": "user", "content": content}], "max_tokens": 2, "temperature": 0},
    )
    if r.status_code != 200:
        raise SystemExit(f"chat answered {r.status_code}: {r.text[:1000]}")
    body = r.json()
    assert isinstance(body["choices"][0]["message"]["content"], str), body
    assert body["usage"]["completion_tokens"] >= 1, body
    return body


def main() -> None:
    model = sys.argv[1]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3VL_")}
    log = tempfile.NamedTemporaryFile(prefix="smoke-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qwen3vl_app",
            "-m",
            model,
            "-p",
            str(port),
            "--host",
            "127.0.0.1",
            "--workers",
            "1",
            "--engine",
            "bm1684x",
            "--disable-api-auth",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not become healthy:\n{Path(log.name).read_text()[-4000:]}")
            try:
                h = requests.get(url + "/health", timeout=5).json()
                if h["status"] == "healthy":
                    break
                if h["status"] == "unhealthy":
                    raise SystemExit(f"server unhealthy: {h['details']}")
            except requests.RequestException:
                pass
            time.sleep(0.3)
        t0 = time.monotonic()
        text = chat(url, "Hello! Who are you?")
        image = chat(
            url,
            [
                {"type": "image_url", "image_url": {"url": image_data_url()}},
                {"type": "text", "text": "What is in this picture?"},
            ],
        )
        print(
            f"python {sys.version.split()[0]}, engine {h['engine']} on {h['device']}: text chat "
            f"{text['usage']}, image chat {image['usage']} ({time.monotonic() - t0:.0f} s)"
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    main()
