"""Fault injection: a distributed run whose actor processes are killed with SIGKILL as it trains.

    ps-trainer chaos configs/quickstart.yaml --kill-every-s 15 --out chaos.json

runs the config twice on a local Ray with the same seed: undisturbed, then with one actor
process killed with SIGKILL every ``--kill-every-s`` seconds (server actors, workers and the
evaluator in turn), and reports the kills survived, the time each run took, both final mIoUs,
and per server death the updates lost and the time to recover. Processes are killed only on
this node (SIGKILL is local); an actor on another node is skipped.
"""
from __future__ import annotations

import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import ray

from ps_trainer.core.checkpoint import CheckpointManager, CorruptCheckpoint, load_checkpoint
from ps_trainer.config import Config
from ps_trainer.core.protocol import CoordinatorStatus
from ps_trainer.run.run_folder import RunFolder
from ps_trainer.core.schedule import RunSummary

log = logging.getLogger(__name__)
ROLES = ("server", "worker", "evaluator")


@dataclass(frozen=True)
class Kill:
    role: str
    name: str                        # "server/0", "worker/rotation/0", "evaluator"
    pid: int
    version: Optional[int]           # the run's version just before the kill
    snapshot_version: Optional[int]  # the newest server snapshot just before the kill


def _actors(coordinator, role: str) -> list[tuple[str, object]]:
    handles = ray.get(coordinator.handles.remote())
    if role == "server":
        return [(f"server/{i}", h) for i, h in enumerate(handles["servers"])]
    if role == "worker":
        return [(f"worker/{t}/{i}", h) for t, hs in handles["workers"].items()
                for i, h in enumerate(hs)]
    return [("evaluator", handles["evaluator"])] if handles["evaluator"] is not None else []


def kill_one(coordinator, role: str, pick: int = 0, before_version: Optional[int] = None
             ) -> Optional[Kill]:
    """SIGKILL the process of one actor of `role` (the `pick`-th, cyclically) if it runs on
    this node and the run has not reached `before_version`; None when nothing was killed."""
    here = ray.get_runtime_context().get_node_id()
    actors = _actors(coordinator, role)
    for offset in range(len(actors)):
        name, handle = actors[(pick + offset) % len(actors)]
        try:
            where = ray.get(handle.process.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            continue                 # already dead or busy restarting: pick another
        if where["node"] != here:
            continue
        status = ray.get(coordinator.status.remote())
        if status.done or (before_version is not None
                           and (status.version or 0) >= before_version):
            return None              # the run is finishing: a kill now tests nothing
        os.kill(where["pid"], signal.SIGKILL)
        log.warning("chaos: SIGKILL %s (pid %d) at version %s", name, where["pid"],
                    status.version)
        return Kill(role, name, where["pid"], status.version, status.snapshot_version)
    return None


def run_with_kills(cfg: Config, due: Optional[Callable[[CoordinatorStatus], bool]] = None,
                   roles: tuple[str, ...] = ROLES, overwrite: bool = False
                   ) -> tuple[RunSummary, list[Kill]]:
    """Run `cfg` on the connected Ray; whenever ``due(status)`` is true, SIGKILL one actor of
    the next role in `roles`. Returns the run's summary and the kills. A run folder holding
    another run's checkpoints is refused unless `overwrite`."""
    from ps_trainer.run.launch import start_coordinator

    coordinator = start_coordinator(cfg, overwrite=overwrite)
    done = coordinator.run.remote()
    kills: list[Kill] = []
    order = itertools.cycle(roles)
    try:
        while not ray.wait([done], timeout=0.5)[0]:
            if due is None:
                continue
            status = ray.get(coordinator.status.remote())
            finishing = (status.version or 0) >= cfg.run.max_updates
            if status.done or finishing or not due(status):
                continue
            role = next(order)
            kill = kill_one(coordinator, role, pick=len(kills),
                            before_version=cfg.run.max_updates)
            if kill is not None:
                kills.append(kill)
        summary = ray.get(done)
    finally:
        ray.kill(coordinator)
    return summary, kills


def every_seconds(seconds: float) -> Callable[[CoordinatorStatus], bool]:
    """A kill schedule: one kill every `seconds` of wall time."""
    last = [time.monotonic()]

    def due(status: CoordinatorStatus) -> bool:
        if time.monotonic() - last[0] < seconds:
            return False
        last[0] = time.monotonic()
        return True
    return due


def checkpoints_valid(run_dir: str, keep_last: int) -> tuple[int, int]:
    """(valid, total) checkpoint files in a run folder; the newest must be valid too."""
    folder = RunFolder(run_dir)
    files = sorted(folder.checkpoints.glob("*.pt"))
    valid = 0
    for path in files:
        try:
            load_checkpoint(str(path))
            valid += 1
        except CorruptCheckpoint:
            continue                 # counted in the total, not as valid
    if CheckpointManager(folder.checkpoints, keep_last).latest() is None:
        valid = 0
    return valid, len(files)


def chaos(cfg: Config, kill_every_s: float) -> dict:
    """The undisturbed run and the run with kills, same seed; the report of
    docs/performance.md (fault tolerance). They write to folders of their own beside run.out_dir,
    `<out_dir>-calm` and `<out_dir>-chaos`, replaced on each call: never the config's own run
    folder, which may hold a run the user keeps."""
    def beside(suffix: str) -> Config:
        return cfg.replace(run=replace(cfg.run, name=cfg.run.name + suffix,
                                       out_dir=cfg.run.out_dir + suffix))

    calm, _ = run_with_kills(beside("-calm"), overwrite=True)
    storm = beside("-chaos")
    stormy, kills = run_with_kills(storm, every_seconds(kill_every_s), overwrite=True)
    restores = stormy.runtime.restores
    valid, total = checkpoints_valid(storm.run.out_dir, cfg.eval.keep_last)
    by_role = {r: sum(k.role == r for k in kills) for r in ROLES}
    lost = [r["from"] - r["to"] for r in restores if r["from"] is not None]
    return {
        "kill_every_s": kill_every_s,
        "snapshot_every_s": cfg.server.snapshot_every_s,
        "kills": by_role, "restarts": stormy.runtime.restarts,
        "undisturbed": {"seconds": round(calm.elapsed_s, 1), "version": calm.updates,
                        "miou": calm.miou},
        "disturbed": {"seconds": round(stormy.elapsed_s, 1), "version": stormy.updates,
                      "miou": stormy.miou},
        "time_overhead": round(stormy.elapsed_s / calm.elapsed_s, 3),
        "server_deaths": {"restored_from": [r["source"] for r in restores],
                          "updates_lost": lost,
                          "recovery_s": [round(r["seconds"], 2) for r in restores]},
        "checkpoints": {"valid": valid, "total": total},
    }
