"""The event loop's stall, seen from outside: /health asked on its own connection every
`every` seconds while something else runs against the same server.  The longest answer
is how long a worker's loop was blocked (a healthy worker answers in milliseconds)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import requests

T = TypeVar("T")


def while_probing(
    url: str, fn: Callable[[], T], every: float = 0.02, headers: dict | None = None
) -> tuple[T, float, float]:
    """fn() while /health is polled: (fn's result, the longest /health answer in seconds,
    the seconds fn took).  A failed probe (the worker died) still counts its wait."""
    lat: list[float] = []
    done = threading.Event()

    def probe():
        with requests.Session() as http:
            while not done.is_set():
                t0 = time.monotonic()
                try:
                    http.get(url + "/health", headers=headers, timeout=300)
                except requests.RequestException:
                    pass
                lat.append(time.monotonic() - t0)
                done.wait(every)

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    time.sleep(0.2)  # a few answers before the request: the probe is warm
    t0 = time.monotonic()
    try:
        out = fn()
    finally:
        took = time.monotonic() - t0
        done.set()
        th.join()
    return out, max(lat), took
