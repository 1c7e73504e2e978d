"""Request id, one structured log line per request, request metrics, Server-Timing.

The line is written when the request is really over -- when the WSGI server closes the
response, i.e. after the last byte of a stream or when its client left -- in logfmt:

  request id=req-… method=POST path=/v1/chat/completions status=200 stream=1
  prompt_tokens=31 completion_tokens=7 finish=length ttft_ms=52.1 tpot_ms=4.0
  queue_ms=0.1 engine_ms=60.2 overhead_ms=3.3 tokens_per_step=1.00 total_ms=64.0 pid=1234 key=sk-a…ijkl

`tokens_per_step`: completion tokens per engine step (prefill included; above 1 with
speculative decoding), followed by `draft_accepted=`/`draft_rejected=` when it was on.

Level: INFO (WARNING for 5xx other than 503); /health and /metrics answered 200 log at
DEBUG so probes and scrapers do not flood the log.  The key is the masked form the auth
layer stored (first/last 4 characters), `anonymous` with auth off, `-` when none matched.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid

from flask import g, request

from .. import metrics
from .admission import release_request_ticket

log = logging.getLogger("qwen3vl.request")
QUIET_PATHS = ("/health", "/metrics")


def install(app, state) -> None:
    pid = str(os.getpid())
    anonymous = "anonymous" if state.settings.disable_api_auth else "-"

    @app.before_request
    def _start():
        g.started = time.monotonic()
        rid = request.headers.get("X-Request-Id", "")
        g.request_id = (
            rid if 0 < len(rid) <= 128 and rid.isprintable() and " " not in rid else f"req-{uuid.uuid4().hex}"
        )

    @app.after_request
    def _stamp(resp):
        resp.headers["X-Request-Id"] = g.get("request_id", "-")
        if state.settings.worker_pid_header:
            resp.headers["X-Worker-Pid"] = pid
        if state.demo:
            resp.headers["X-Qwen3VL-Demo"] = "random-weights"
        stats = g.get("job_stats")
        if stats is not None and not resp.is_streamed and stats.queue_wait is not None:
            total = time.monotonic() - g.get("started", time.monotonic())
            resp.headers["Server-Timing"] = server_timing(stats, g.started, total)
        # The request ends when the server closes the response: after the last byte of a
        # stream, or when its client went away.  (teardown_request runs too early for
        # streams: when the view returns, and again when the stream ends.)
        done = _Finisher(
            g._get_current_object(),
            request.method,
            request.path,
            request.url_rule,
            resp.status_code,
            resp.is_streamed,
            anonymous,
        )
        sock = request.environ.get("gunicorn.socket")
        if resp.status_code == 503 or g.get("close_connection"):
            # Busy or draining: close the connection after this answer, so the client's retry
            # opens a new one -- which another, idle worker may accept.  A body cut short
            # (408, malformed): its unread rest must never be parsed as a next request.
            done.sock = sock
        if sock is not None:
            # A client that does not take the answer within --write-timeout is dropped (the
            # send raises); streams narrow this per chunk (api/transport.py).  Undone when the
            # response is closed: a kept-alive connection waits for its next request as before.
            _set_timeout(sock, state.settings.write_timeout)
            done.restore = sock
        g.finisher = done
        resp.call_on_close(done)
        return resp

    @app.teardown_request
    def _fallback(exc):
        if g.get("finisher") is None:  # after_request never ran (it failed): finish here
            _Finisher(
                g._get_current_object(), request.method, request.path, request.url_rule, 500, False, anonymous, exc
            )()


class _Finisher:
    """Runs once, after the response is closed, with no request context left: everything
    it needs was captured when the response was made (g is the request's own object)."""

    __slots__ = ("g", "method", "path", "rule", "status", "streamed", "anonymous", "exc", "done", "sock", "restore")

    def __init__(self, gobj, method, path, rule, status, streamed, anonymous, exc=None):
        self.g, self.method, self.path, self.rule = gobj, method, path, rule
        self.status, self.streamed, self.anonymous, self.exc, self.done = status, streamed, anonymous, exc, False
        self.sock = self.restore = None

    def __call__(self):
        if self.done:
            return
        self.done = True
        if self.restore is not None:
            _set_timeout(self.restore, None)
        try:
            release_request_ticket(self.g)
        finally:
            _log_and_count(self)
            if self.sock is not None:  # the answer is fully written (gunicorn closes the body after)
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _set_timeout(sock, seconds) -> None:
    try:
        sock.settimeout(seconds)
    except OSError:
        pass


def server_timing(stats, started: float, total: float) -> str:
    parts = [f"queue;dur={stats.queue_wait * 1000:.2f}", f"engine;dur={stats.engine_seconds * 1000:.2f}"]
    ttft = stats.ttft(started)
    if ttft is not None:
        parts.append(f"ttft;dur={ttft * 1000:.2f}")
    parts.append(f"overhead;dur={stats.overhead(total) * 1000:.2f}")
    parts.append(f"app;dur={total * 1000:.2f}")
    return ", ".join(parts)


_BARE_SAFE = frozenset('"=\\')


def _v(value) -> str:
    """A logfmt value.  Bare when it is plain printable text; otherwise double-quoted with
    quotes and backslashes escaped and every non-printable character (ANSI escapes, other
    control characters, line and bidi separators) written as an escape -- client-controlled
    text (the path, ...) can neither forge fields or lines nor drive a terminal."""
    value = str(value)
    if value and value.isprintable() and not any(c.isspace() or c in _BARE_SAFE for c in value):
        return value
    out = json.dumps(value, ensure_ascii=False)
    if not out.isprintable():
        out = "".join(
            c if c.isprintable() else (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}") for c in out
        )
    return out


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _log_and_count(f: _Finisher) -> None:
    g_ = f.g
    started = getattr(g_, "started", None)
    if started is None:
        return
    total = time.monotonic() - started
    endpoint = f.rule.rule if f.rule is not None else "unmatched"
    stats = getattr(g_, "job_stats", None)
    try:
        metrics.observe_request(endpoint, f.status, total, stats, started)
    except Exception:  # metrics must never break a response
        log.exception("metrics update failed")
    fields = [
        f"id={_v(getattr(g_, 'request_id', '-'))}",
        f"method={_v(f.method)}",
        f"path={_v(f.path)}",
        f"status={f.status}",
    ]
    if stats is not None:
        fields += [
            f"stream={int(bool(f.streamed))}",
            f"prompt_tokens={stats.prompt_tokens}",
            f"completion_tokens={stats.completion_tokens}",
            f"finish={stats.finish_reason or '-'}",
            f"ttft_ms={_ms(stats.ttft(started))}",
            f"tpot_ms={_ms(stats.tpot)}",
            f"queue_ms={_ms(stats.queue_wait)}",
            f"engine_ms={_ms(stats.engine_seconds)}",
            f"overhead_ms={_ms(stats.overhead(total))}",
            f"tokens_per_step={stats.completion_tokens / stats.steps:.2f}" if stats.steps else "tokens_per_step=-",
        ]
        if stats.speculative:
            fields += [f"draft_accepted={stats.accepted}", f"draft_rejected={stats.drafted - stats.accepted}"]
    fields += [f"total_ms={total * 1000:.1f}", f"pid={os.getpid()}", f"key={_v(getattr(g_, 'key_id', f.anonymous))}"]
    if f.exc is not None:
        fields.append(f"error={type(f.exc).__name__}")
    if f.status >= 500 and f.status != 503:
        level = logging.WARNING
    elif f.path in QUIET_PATHS and f.status == 200:
        level = logging.DEBUG
    else:
        level = logging.INFO
    log.log(level, "request %s", " ".join(fields))
