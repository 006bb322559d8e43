"""Waiting on events, not on seconds: poll a condition until it holds (tests on a loaded machine)."""
from __future__ import annotations

import time


def wait_for(predicate, timeout_s: float = 180.0, what: str = "condition", every_s: float = 0.5):
    """The first truthy value of `predicate()`; returns as soon as it holds. The bound is
    generous for a loaded 2-core machine and is only reached when something is wrong."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
