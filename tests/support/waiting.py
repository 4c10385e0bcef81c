"""Polling with a deadline: the only way tests wait for something asynchronous."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               message: str | Callable[[], str] = "condition not met") -> T:
    """Call ``predicate`` until it returns something truthy; return it, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:.0f} s; last value: {last!r})")
        time.sleep(interval)
