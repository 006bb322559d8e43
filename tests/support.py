"""Helpers the end-to-end tests share: waiting on events (not on seconds), free loopback
ports, stopping a run started through its coordinator, and a checkpoint of an untrained run."""
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


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (an exited process not yet reaped, a zombie, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


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


def untrained_checkpoint(cfg) -> str:
    """The path of a real checkpoint of `cfg`'s untrained model, written as the evaluator
    writes one into `cfg.run.out_dir` (no task has pushed norm statistics yet)."""
    import dataclasses

    import numpy as np

    from ps_trainer.run.launch import initial_model
    from ps_trainer.core.params import plan_pieces
    from ps_trainer.run.recorder import RunRecorder
    from ps_trainer.run.run_folder import RunFolder

    _, flat = initial_model(cfg)
    plan = plan_pieces(flat.layout, 1)
    params = flat.param_arrays()
    state = {"version": 3, "weights": {p.key: np.ascontiguousarray(params[p.shard][p.start:p.stop])
                                       for p in plan}}
    payload = {"servers": [state], "plan": [dataclasses.asdict(p) for p in plan]}
    run = RunFolder(cfg.run.out_dir).create(cfg)
    return RunRecorder(cfg, run).record(3, 1.0, payload, None, None, {})["checkpoint"]
