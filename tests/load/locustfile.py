"""Load test: text, image and video chat completions, streamed, against a running server.

    make load                                   # a local tiny-model server, 30 s, summary
    locust -f tests/load/locustfile.py --host http://127.0.0.1:8899 --headless -u 8 -r 2 -t 2m

Besides locust's own rows (the whole request, per scenario), every stream reports two
extra rows: `TTFT <scenario>` (request sent -> first content chunk) and `ITL <scenario>`
(each gap between content chunks), so the summary shows their percentiles.  503s (server
at --max_concurrent / queue bound) count as failures with their reason.

Environment: QWEN3VL_LOAD_KEY (API key; default: none sent), QWEN3VL_LOAD_MAX_TOKENS (32).
"""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
import time

import numpy as np
from locust import between, task
from locust.contrib.fasthttp import FastHttpUser

KEY = os.environ.get("QWEN3VL_LOAD_KEY", "")
MAX_TOKENS = int(os.environ.get("QWEN3VL_LOAD_MAX_TOKENS", "32"))
MODEL = "qwen3-vl-instruct"


def _png_uri(side: int = 96) -> str:
    from PIL import Image

    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _mp4_uri(frames: int = 16, fps: float = 8.0, w: int = 96, h: int = 64) -> str:
    import cv2

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "clip.mp4")
        out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        for i in range(frames):
            frame = np.zeros((h, w, 3), np.uint8)
            frame[:, : (i * w) // frames] = (40, 160, 240)  # a bar growing left to right
            out.write(frame)
        out.release()
        with open(path, "rb") as f:
            return "data:video/mp4;base64," + base64.b64encode(f.read()).decode()


IMAGE_URI = _png_uri()
VIDEO_URI = _mp4_uri()


def _messages(kind: str) -> list[dict]:
    if kind == "text":
        return [{"role": "user", "content": "Write a short poem about the sea."}]
    uri = IMAGE_URI if kind == "image" else VIDEO_URI
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": uri}},
                {"type": "text", "text": f"Describe this {kind}."},
            ],
        }
    ]


class ChatUser(FastHttpUser):
    wait_time = between(0.05, 0.2)
    network_timeout = 600.0
    connection_timeout = 10.0

    def _stream(self, kind: str) -> None:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if KEY:
            headers["Authorization"] = f"Bearer {KEY}"
        body = {
            "model": MODEL,
            "messages": _messages(kind),
            "max_tokens": MAX_TOKENS,
            "temperature": 0.7,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        t0 = time.perf_counter()
        first = prev = None
        tokens = 0
        with self.client.post(
            "/v1/chat/completions",
            data=json.dumps(body),
            headers=headers,
            stream=True,
            catch_response=True,
            name=f"chat {kind} (stream)",
        ) as resp:
            if resp.status_code != 200:
                code = ""
                try:
                    code = resp.json()["error"]["code"]
                except Exception:
                    pass
                resp.failure(f"HTTP {resp.status_code} {code}".strip())
                return
            raw = resp._response  # geventhttpclient response: readline() returns each line as it arrives
            done = False
            while True:
                line = raw.readline(b"\n")
                if not line:
                    break
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if not chunk.get("choices") or not chunk["choices"][0]["delta"].get("content"):
                    continue
                now = time.perf_counter()
                if first is None:
                    first = now
                    self._report(f"TTFT {kind}", (now - t0) * 1000)
                else:
                    self._report(f"ITL {kind}", (now - prev) * 1000)
                prev = now
            if not done:
                resp.failure("stream ended without [DONE]")
            elif tokens == 0:
                resp.failure("no tokens generated")
            else:
                resp.success()

    def _report(self, name: str, ms: float) -> None:
        self.environment.events.request.fire(
            request_type="SSE", name=name, response_time=ms, response_length=0, exception=None, context={}
        )

    @task(3)
    def text(self):
        self._stream("text")

    @task(2)
    def image(self):
        self._stream("image")

    @task(1)
    def video(self):
        self._stream("video")
