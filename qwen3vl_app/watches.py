"""Watches: ask one question about one camera every `interval` seconds and send the
answer each time it changes (POST /v1/watches, api/watches.py).

Rules:
* A watch is bounded three ways: across the server (--max-watches) and per API key in each
  worker (`WatchLimits`, 429 beyond), and like any generation by the server-wide admission
  ticket its response holds for its whole life (api/watches.py is `@admitted`).
* The interval is at least --watch-min-interval; a watch ends after its duration (at most
  --watch-max-duration), when the client leaves, or when the worker shuts down.
* An answer "changes" when its text differs after trimming white space; structured
  answers (a response_format) are compared as parsed JSON, so key order and spacing do not
  count.  The first answer is always sent.
* A failure while the watch runs (camera offline, server busy) is one `watch.error` event
  per distinct message; the watch keeps asking, and sends the answer again once the
  camera is back.
* This module knows no Flask and no serving: the endpoint hands it an `ask()` function.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .admission import Admission
from .errors import APIError
from .sse import SSE_DONE, SSE_PING, sse


class TooManyWatches(APIError):
    status = 429
    code = "too_many_watches"


WATCH_FILE_ENV = "_QWEN3VL_WATCH_FILE"  # the master's shared watch tickets (gunicorn_config.on_starting)


@dataclass
class WatchLimits:
    """Watches running: across the server (`server`: tickets in a file the gunicorn master
    shares, like admission; without it, this process counts alone) and per API key in
    this worker."""

    server: Admission
    per_key: int
    running: dict[bytes, int] = field(default_factory=dict)

    def acquire(self, key: bytes) -> Callable[[], None]:
        """Take a place for a watch of `key`, or raise TooManyWatches.  Returns the release."""
        from . import metrics

        if self.running.get(key, 0) >= self.per_key:
            metrics.WATCHES_REFUSED.labels("key").inc()
            raise TooManyWatches(
                f"this API key already runs {self.per_key} watches (--max-watches-per-key); end one first"
            )
        ticket = self.server.try_acquire()
        if ticket is None:
            metrics.WATCHES_REFUSED.labels("server").inc()
            raise TooManyWatches(
                f"this server runs at most {self.server.limit} watches at once (--max-watches); retry later"
            )
        self.running[key] = self.running.get(key, 0) + 1
        metrics.WATCHES.inc()
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            ticket.release()
            self.running[key] -= 1
            if not self.running[key]:
                del self.running[key]
            metrics.WATCHES.dec()

        return release


_limits: WatchLimits | None = None


def limits(max_watches: int, per_key: int) -> WatchLimits:
    global _limits
    if _limits is None or (_limits.server.limit, _limits.per_key) != (max_watches, per_key):
        path = os.environ.get(WATCH_FILE_ENV) or None
        if path is not None and not os.path.exists(path):
            path = None
        _limits = WatchLimits(Admission(max_watches, path), per_key)
    return _limits


@dataclass(frozen=True)
class Watch:
    camera: str
    interval: float
    duration: float
    structured: bool  # compare answers as JSON
    keepalive: float = 10.0
    id: str = field(default_factory=lambda: "watch-" + uuid.uuid4().hex[:24])


@dataclass(frozen=True)
class Answer:
    text: str
    captured_at: float | None  # capture time of the frame asked about (Unix seconds), when known


def comparable(text: str, structured: bool):
    text = text.strip()
    if structured:
        try:
            return ("json", json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")))
        except ValueError:
            pass
    return ("text", text)


def answer_event(watch: Watch, answer: Answer, sequence: int) -> dict:
    event = {
        "object": "watch.answer",
        "id": watch.id,
        "camera": watch.camera,
        "sequence": sequence,
        "created": int(time.time()),
        "captured_at": round(answer.captured_at, 3) if answer.captured_at else None,
        "answer": answer.text,
    }
    if watch.structured:
        try:
            event["parsed"] = json.loads(answer.text)
        except ValueError:
            event["parsed"] = None
    return event


def run(
    watch: Watch,
    ask: Callable[[], Answer],
    first: Answer,
    gone: Callable[[], bool],
    draining: Callable[[], bool] = lambda: False,
) -> Iterator[str]:
    """SSE text of a watch whose first answer (`first`) is in: that answer, then one
    event per changed answer, pings between, and a `watch.end` event and `[DONE]`."""
    from . import metrics

    sequence = 1
    last = comparable(first.text, watch.structured)
    metrics.WATCH_EVENTS.inc()
    yield sse(answer_event(watch, first, sequence))
    started = sent = time.monotonic()  # `sent`: when the client last got something
    end = started + watch.duration
    next_at = started + watch.interval
    last_error = None
    reason = "duration"
    while True:
        # Wait for the next turn, pinging so a client that left is noticed.
        while True:
            now = time.monotonic()
            if gone():
                return  # nobody to tell
            if draining():
                reason = "server_shutting_down"
                break
            if now >= end:
                break
            if now >= next_at:
                break
            time.sleep(min(min(next_at, end) - now, 0.25))
            if time.monotonic() - sent >= watch.keepalive:
                sent = time.monotonic()
                yield SSE_PING
        if reason != "duration" or time.monotonic() >= end:
            break
        next_at = max(next_at + watch.interval, time.monotonic() + watch.interval / 2)
        try:
            metrics.WATCH_ASKS.inc()
            answer = ask()
        except APIError as e:
            if e.message != last_error:
                last_error = e.message
                last = None  # once the camera is back, the answer goes out again
                sent = time.monotonic()
                yield sse({"object": "watch.error", "id": watch.id, "camera": watch.camera, **e.body()})
            continue
        last_error = None
        value = comparable(answer.text, watch.structured)
        if value != last:
            last = value
            sequence += 1
            metrics.WATCH_EVENTS.inc()
            sent = time.monotonic()
            yield sse(answer_event(watch, answer, sequence))
    yield sse({"object": "watch.end", "id": watch.id, "camera": watch.camera, "reason": reason})
    yield SSE_DONE
