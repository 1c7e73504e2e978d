"""Waiting for a state: poll the real condition until a deadline, never sleep a guess."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10, every: float = 0.05, what: str = "condition") -> T:
    """Call `condition` until it returns something truthy (returned), or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(every)
