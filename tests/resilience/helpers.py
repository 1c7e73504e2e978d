"""Shared pieces of the resilience tests: OpenAI error checks, tiny media, /proc readings."""
from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path

import requests

ERROR_KEYS = {"message", "type", "param", "code"}


def openai_error(resp, status: int | None = None) -> dict:
    """The body is OpenAI's error object (and the status is `status` when given)."""
    if status is not None:
        assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def png_bytes(w: int = 32, h: int = 24, seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def data_uri(blob: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(blob).decode()


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_idle(server, pids, timeout: float = 30) -> None:
    """Every worker in `pids` reports no running or queued generation."""
    deadline = time.monotonic() + timeout
    idle: set[int] = set()
    while time.monotonic() < deadline and not set(pids) <= idle:
        h = requests.get(server.url + "/health", headers={**server.headers, "Connection": "close"}, timeout=10).json()
        if h["running"] == 0 and h["queued"] == 0:
            idle.add(h["worker_pid"])
        else:
            idle.discard(h["worker_pid"])
        time.sleep(0.05)
    assert set(pids) <= idle, f"workers still busy: {set(pids) - idle}"


def sse_events(resp) -> list:
    """`data:` payloads of an SSE response (JSON decoded, `[DONE]` kept as a string)."""
    out = []
    for line in resp.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            payload = line[6:]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out
