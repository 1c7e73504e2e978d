"""Server-Sent Events framing, shared by every stream (generations, watches): one event
per `data:` line of compact JSON, `: ping` comments between, `[DONE]` at the end of the
streams that have one.  Text only: what carries it is the api layer's."""

from __future__ import annotations

import json

SSE_DONE = "data: [DONE]\n\n"
SSE_PING = ": ping\n\n"


def sse(obj) -> str:
    """One event carrying `obj` as compact JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"
