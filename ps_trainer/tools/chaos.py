"""Fault injection: a distributed run whose actor processes are killed and paused as it trains.

    ps-trainer chaos --config configs/quickstart.yaml --kill-every-s 15 --out chaos.json

runs the config twice on a local Ray with the same seed: undisturbed, then with one fault every
``--kill-every-s`` seconds, taken in turn from ``--faults``: SIGKILL of a server actor, a
worker, the evaluator or the coordinator (which takes every actor with it: the run resumes from
its newest checkpoint, as ``train`` does), and SIGSTOP of a worker or a server actor, continued
with SIGCONT after ``--pause-s`` (longer than the coordinator's ping time-out). It reports the
faults survived, the wall time of each run, both final mIoUs, and per server death the updates
lost and the time to recover. Processes are signalled only on this node (signals are local); an
actor on another node is skipped.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import signal
import threading
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
ROLES = ("server", "worker", "evaluator", "coordinator")
ACTIONS = ("kill", "pause")
FAULTS = ("kill:server", "kill:worker", "kill:evaluator", "kill:coordinator", "pause:worker",
          "pause:server")
PAUSE_S = 15.0      # longer than the coordinator's time-out for a call to a live actor (10 s)


def parse_faults(text: str) -> tuple[str, ...]:
    """``"kill:server,pause:worker"`` -> the faults, checked; ValueError names a wrong one."""
    faults = tuple(f.strip() for f in text.split(",") if f.strip())
    for fault in faults:
        action, _, role = fault.partition(":")
        if action not in ACTIONS or role not in ROLES or (action == "pause"
                                                          and role == "coordinator"):
            raise ValueError(f"unknown fault {fault!r}: use ACTION:ROLE with ACTION kill or "
                             f"pause and ROLE one of {', '.join(ROLES)} (pause:coordinator "
                             f"is not one)")
    if not faults:
        raise ValueError("no faults given")
    return faults


@dataclass(frozen=True)
class Kill:
    """One fault: `action` (kill or pause) of one actor's process."""
    role: str
    name: str                        # "server/0", "worker/rotation/0", "evaluator", "coordinator"
    pid: int
    version: Optional[int]           # the run's version just before the fault
    snapshot_version: Optional[int]  # the newest server snapshot just before the fault
    action: str = "kill"


def _actors(coordinator, role: str) -> list[tuple[str, object]]:
    if role == "coordinator":
        return [("coordinator", coordinator)]
    handles = ray.get(coordinator.handles.remote())
    if role == "server":
        return [(f"server/{i}", h) for i, h in enumerate(handles["servers"])]
    if role == "worker":
        return [(f"worker/{t}/{i}", h) for t, hs in handles["workers"].items()
                for i, h in enumerate(hs)]
    return [("evaluator", handles["evaluator"])] if handles["evaluator"] is not None else []


class _Pauses:
    """Processes stopped with SIGSTOP, each continued with SIGCONT after its pause (and all of
    them at the end, whatever happens)."""

    def __init__(self, pause_s: float):
        self.pause_s = pause_s
        self._timers: list[tuple[threading.Timer, int]] = []

    def pause(self, pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        timer = threading.Timer(self.pause_s, _continue, (pid,))
        timer.daemon = True
        timer.start()
        self._timers = [(t, p) for t, p in self._timers if t.is_alive()] + [(timer, pid)]

    def end(self) -> None:
        for timer, pid in self._timers:
            timer.cancel()
            _continue(pid)
        self._timers = []


def _continue(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass                         # replaced meanwhile: the stopped process is gone


def kill_one(coordinator, role: str, pick: int = 0, before_version: Optional[int] = None,
             pause: Optional[Callable[[int], None]] = None) -> Optional[Kill]:
    """SIGKILL the process of one actor of `role` (the `pick`-th, cyclically), or stop it with
    `pause(pid)`, if it runs on this node and the run has not reached `before_version`; None
    when nothing was done."""
    here = ray.get_runtime_context().get_node_id()
    actors = _actors(coordinator, role)
    for offset in range(len(actors)):
        name, handle = actors[(pick + offset) % len(actors)]
        try:
            where = ray.get(handle.process.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            continue                 # already dead, paused or restarting: pick another
        if where["node"] != here:
            continue
        status = ray.get(coordinator.status.remote())
        if status.done or (before_version is not None
                           and (status.version or 0) >= before_version):
            return None              # the run is finishing: a fault now tests nothing
        action = "kill" if pause is None else "pause"
        if pause is None:
            os.kill(where["pid"], signal.SIGKILL)
        else:
            pause(where["pid"])
        log.warning("chaos: %s %s (pid %d) at version %s",
                    "SIGKILL" if pause is None else "SIGSTOP", name, where["pid"], status.version)
        return Kill(role, name, where["pid"], status.version, status.snapshot_version, action)
    return None


def run_with_kills(cfg: Config, due: Optional[Callable[[CoordinatorStatus], bool]] = None,
                   roles: tuple[str, ...] = ("server", "worker", "evaluator"),
                   overwrite: bool = False, faults: Optional[tuple[str, ...]] = None,
                   pause_s: float = PAUSE_S) -> tuple[RunSummary, list[Kill]]:
    """Run `cfg` on the connected Ray; whenever ``due(status)`` is true, do the next of
    `faults` (``"kill:server"``, ``"pause:worker"``, ...; by default a kill of each of
    `roles` in turn). A dead coordinator is restarted from the run's newest checkpoint, as
    ``train`` does. Returns the run's summary and the faults done. A run folder holding
    another run's checkpoints is refused unless `overwrite`. The summary's restarts and
    restores are the whole run's: a coordinator's are added up before it is killed (those of
    its last half second are missed)."""
    from ps_trainer.run.launch import follow_run

    order = itertools.cycle(faults or tuple(f"kill:{r}" for r in roles))
    kills: list[Kill] = []
    pauses = _Pauses(pause_s)
    earlier = {"restarts": collections.Counter(), "restores": []}   # of killed coordinators

    def watch(coordinator) -> None:
        if due is None:
            return
        status = ray.get(coordinator.status.remote())
        finishing = (status.version or 0) >= cfg.run.max_updates
        if status.done or finishing or not due(status):
            return
        action, _, role = next(order).partition(":")
        kill = kill_one(coordinator, role, pick=len(kills), before_version=cfg.run.max_updates,
                        pause=pauses.pause if action == "pause" else None)
        if kill is not None:
            kills.append(kill)
            if role == "coordinator" and action == "kill":
                earlier["restarts"].update(status.restarts)
                earlier["restores"].extend(status.restores)

    try:
        summary, coordinator = follow_run(cfg, None, None, overwrite, 0.5, watch)
    finally:
        pauses.end()
    ray.kill(coordinator)
    last = summary.runtime
    restarts = {role: earlier["restarts"][role] + last.restarts.get(role, 0)
                for role in {*earlier["restarts"], *last.restarts}}
    whole = replace(last, restarts=restarts,
                    restores=earlier["restores"] + list(last.restores))
    return replace(summary, runtime=whole), kills


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


def chaos(cfg: Config, kill_every_s: float, faults: tuple[str, ...] = FAULTS,
          pause_s: float = PAUSE_S) -> dict:
    """The undisturbed run and the run with faults, same seed; the report of
    docs/performance.md (faults). They write to folders of their own beside run.out_dir,
    `<out_dir>-calm` and `<out_dir>-chaos`, replaced on each call: never the config's own run
    folder, which may hold a run the user keeps. Times are the driver's wall clock, start to
    end, restarts of the coordinator included."""
    def beside(suffix: str) -> Config:
        return cfg.replace(run=replace(cfg.run, name=cfg.run.name + suffix,
                                       out_dir=cfg.run.out_dir + suffix))

    start = time.monotonic()
    calm, _ = run_with_kills(beside("-calm"), overwrite=True)
    calm_s = time.monotonic() - start
    storm = beside("-chaos")
    start = time.monotonic()
    stormy, kills = run_with_kills(storm, every_seconds(kill_every_s), overwrite=True,
                                   faults=faults, pause_s=pause_s)
    stormy_s = time.monotonic() - start
    restores = stormy.runtime.restores
    valid, total = checkpoints_valid(storm.run.out_dir, cfg.eval.keep_last)
    lost = [r["from"] - r["to"] for r in restores if r["from"] is not None]
    return {
        "kill_every_s": kill_every_s, "pause_s": pause_s,
        "snapshot_every_s": cfg.server.snapshot_every_s,
        "faults": {f: sum(f"{k.action}:{k.role}" == f for k in kills) for f in faults},
        "restarts": stormy.runtime.restarts,
        "undisturbed": {"seconds": round(calm_s, 1), "version": calm.updates,
                        "miou": calm.miou},
        "disturbed": {"seconds": round(stormy_s, 1), "version": stormy.updates,
                      "miou": stormy.miou},
        "time_overhead": round(stormy_s / calm_s, 3),
        "server_deaths": {"restored_from": [r["source"] for r in restores],
                          "updates_lost": lost,
                          "recovery_s": [round(r["seconds"], 2) for r in restores]},
        "checkpoints": {"valid": valid, "total": total},
    }
