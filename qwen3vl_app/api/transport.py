"""The HTTP side of a generation: what `serving` hands over becomes a response on this
request's socket.  Flask's request context, gunicorn's socket and its timeouts live here,
so `serving` stays plain Python that a test drives without an app.

- `caller()`: who asks (request id, API-key digest), as serving needs it.
- `collect(gen)`: a non-stream answer; a client that hangs up cancels the generation.
- `sse_response(gen, encoder)`: a stream whose every send is bounded on the socket (a
  client that stops reading cannot hold the engine), `--write-timeout` and what is left of
  `--request-timeout`; a send that runs out raises in gunicorn, which closes the
  generator: the generation is cancelled and its slot freed.

Each records the generation's `JobStats` on `g` for the request log and metrics.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

from flask import Response, current_app, g, request, stream_with_context

from ..serving import Caller, Collected, Generation, StreamEncoder, collect_events, sse_events
from ..sse import SSE_DONE

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
STREAM_SEND_BUFFER = 64 * 1024  # kernel bytes queued for one stream's client (SSE is a few KiB/s)


def caller() -> Caller:
    return Caller(request_id=g.get("request_id", "-"), key_digest=g.get("key_digest", b""))


def collect(gen: Generation) -> Collected:
    g.job_stats = gen.stats  # TTFT, tokens, engine time: request log + metrics
    environ = request.environ
    return collect_events(gen.events, lambda: client_gone(environ), g.get("request_id", "-"))


def sse_response(
    gen: Generation, encoder: StreamEncoder, headers: dict | None = None, done: str = SSE_DONE
) -> Response:
    g.job_stats = gen.stats
    text = _bounded(sse_events(gen.events, encoder, done, g.get("request_id", "-")))
    return Response(stream_with_context(text), mimetype="text/event-stream", headers={**SSE_HEADERS, **(headers or {})})


def _bounded(chunks: Iterator[str]) -> Iterator[str]:
    settings = current_app.extensions["qwen3vl"].settings
    bound = _SendBound(request.environ.get("gunicorn.socket"), settings.write_timeout, settings.request_timeout)
    try:
        for chunk in chunks:
            bound.arm()
            yield chunk
    finally:
        chunks.close()  # type: ignore[attr-defined]  # client gone or done: cancel, free the slot


class _SendBound:
    """Socket timeout for the next send: the write timeout, capped by the request's deadline.
    A small send buffer, so a stalled reader is noticed after kilobytes, not megabytes."""

    def __init__(self, sock, write_timeout: float, request_timeout: float):
        self.sock, self.write_timeout = sock, write_timeout
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER)
            except OSError:
                pass
        # One second past the request timeout for the last chunks (finish, usage, [DONE]),
        # which a reading client takes at once.
        self.deadline = time.monotonic() + request_timeout + 1.0

    def arm(self) -> None:
        if self.sock is not None:
            try:
                self.sock.settimeout(max(0.01, min(self.write_timeout, self.deadline - time.monotonic())))
            except OSError:
                pass


def client_gone(environ: dict) -> bool:
    """True when the peer has closed its side (readable with zero bytes pending)."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True
