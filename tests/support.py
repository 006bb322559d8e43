"""Helpers the end-to-end tests share: waiting on events (not on seconds), free loopback
ports, and stopping a run started through its coordinator."""
from __future__ import annotations

import socket
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


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (all held at once, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def stop_run(coordinator, done, hub, timeout_s: float = 60.0) -> None:
    """Stop a run its coordinator is supervising, wait for its summary, and free its actors."""
    import ray

    coordinator.stop.remote()
    try:
        ray.get(done, timeout=timeout_s)
    finally:
        ray.kill(coordinator)
        ray.kill(hub)
