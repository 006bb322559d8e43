"""The driver's own snapshot of the server actors, so that a dead coordinator costs seconds.

The coordinator owns every actor of the run and its own snapshots, so they all die with it.
The driver (``follow_run``) therefore takes a consistent snapshot of its own every
``server.snapshot_every_s`` (``transport/snapshots.py``, taker "driver"): its parts are the
driver's objects, so they outlive the coordinator and the server processes. When the
coordinator dies, the run resumes from this snapshot where it is newer than the newest
checkpoint. The cost is one more copy of the server state in the object store (two while the
next one is being taken), and the copy each server actor other than actor 0 makes of its state
for a round.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import ray

from ps_trainer.transport.snapshots import SnapshotIncomplete, SnapshotRound

log = logging.getLogger(__name__)
_CALL_TIMEOUT_S = 10.0


class Standby:
    """The newest complete driver snapshot and the one being taken."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self._ready: Optional[tuple[SnapshotRound, float]] = None   # (round, run time at it)
        self._taking: Optional[tuple[SnapshotRound, float]] = None
        self._asked_at = -float("inf")

    def tick(self, coordinator) -> None:
        """Move the snapshot on (never blocking on the servers); a round whose servers died
        is dropped and the previous one kept. Raises RayActorError if the coordinator is gone."""
        if self._taking is not None:
            try:
                if self._taking[0].poll():
                    self._ready, self._taking = self._taking, None
            except (ray.exceptions.RayError, SnapshotIncomplete):
                self._taking = None
        now = time.monotonic()
        if not self.every_s or self._taking is not None or now - self._asked_at < self.every_s:
            return
        self._asked_at = now
        try:
            status = ray.get(coordinator.status.remote(), timeout=_CALL_TIMEOUT_S)
            if status.done or not status.servers:
                return               # finishing, or servers being restored: next time
            servers = ray.get(coordinator.handles.remote(), timeout=_CALL_TIMEOUT_S)["servers"]
        except ray.exceptions.GetTimeoutError:
            return                   # busy: next time (a dead one raises RayActorError)
        self._taking = (SnapshotRound(servers, "driver"), status.elapsed_s)

    @property
    def version(self) -> Optional[int]:
        return self._ready[0].version if self._ready else None

    def states(self, timeout_s: float) -> Optional[tuple[list[dict], list[dict], float]]:
        """(the summaries, the states, the run's time then) of the newest snapshot, or None
        when there is none or it was lost (its node died)."""
        if self._ready is None:
            return None
        snapshot, time_s = self._ready
        try:
            return snapshot.summaries, ray.get(snapshot.state_refs, timeout=timeout_s), time_s
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as err:
            log.warning("the driver's snapshot is lost (%s)", type(err).__name__)
            self._ready = None
            return None
