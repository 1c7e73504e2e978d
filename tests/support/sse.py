"""Server-Sent Events bodies as the tests read them."""

from __future__ import annotations

import json
import time


def _lines(resp):
    if hasattr(resp, "iter_lines"):  # requests
        return resp.iter_lines(decode_unicode=True)
    return resp.get_data(as_text=True).splitlines()  # werkzeug test response


def sse_lines(resp) -> list[str]:
    """Every non-empty line of the stream (comments such as ': ping' included)."""
    return [line for line in _lines(resp) if line]


def sse_events(resp) -> list:
    """`data:` payloads of an SSE response (JSON decoded, `[DONE]` kept as a string)."""
    out = []
    for line in _lines(resp):
        if line and line.startswith("data: "):
            payload = line[6:]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def timed_sse_events(resp) -> list[tuple[float, object]]:
    """(arrival time, payload) for every `data:` line of a live stream."""
    out = []
    for line in resp.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            data = line[6:]
            out.append((time.monotonic(), data if data == "[DONE]" else json.loads(data)))
    return out
