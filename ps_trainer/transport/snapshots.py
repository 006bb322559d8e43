"""Consistent snapshots of the server actors, one object per actor, owned by whoever asks.

A round of taker ``T`` (the coordinator, the evaluator) asks actor 0 for ``snapshot_first``:
actor 0 sends ``hold_snapshot`` to every other actor through the ordered decision channel (so
each one copies its state after exactly the decisions actor 0 had made) and returns its own
state. The taker then asks each other actor for ``held_snapshot``: the state it holds for
``T``. So no state passes through actor 0, actor 0 never waits for the others (its pushes go
on), and every part is a return value owned by the taker, in the object store of its own
actor's node: it outlives the actor that took it. Each actor holds at most one state per taker.

``held_snapshot`` depends on actor 0's answer, so it runs after actor 0 has *sent* the hold;
a hold that has not *arrived* yet (Ray orders calls per caller, not across callers) is
answered "not held" and asked again.
"""
from __future__ import annotations

import time
import uuid
from typing import Optional, Sequence

import numpy as np
import ray

_ASKS = 20                 # "not held" answers of one actor before a round is given up


def summary_of(state: dict) -> dict:
    """A state's version and piece sizes (what ``states_misfit`` checks), and its bytes (the
    weights and the optimizer's buffers: what fetching it moves)."""
    return {"version": int(state["version"]),
            "weights": {k: int(np.asarray(v).size) for k, v in state["weights"].items()},
            "bytes": _nbytes(state["weights"]) + _nbytes(state.get("optimizer", {}))}


def _nbytes(tree) -> int:
    if isinstance(tree, dict):
        return sum(_nbytes(v) for v in tree.values())
    return int(tree.nbytes) if isinstance(tree, np.ndarray) else 0


class SnapshotIncomplete(RuntimeError):
    """An actor never received its hold (so the round cannot be completed)."""


class SnapshotRound:
    """One snapshot being taken; ``poll()`` without blocking, ``states()`` once complete."""

    def __init__(self, servers: Sequence, taker: str):
        self._servers = list(servers)
        # Unique, not counted: a restarted taker must never be handed its predecessor's hold.
        self._taker, self._round = taker, uuid.uuid4().hex
        self._first = servers[0].snapshot_first.options(num_returns=2).remote(taker, self._round)
        self._parts = [self._first] + [self._ask(i) for i in range(1, len(servers))]
        self._asks = [1] * len(servers)
        self.summaries: Optional[list[dict]] = None

    def _ask(self, i: int) -> tuple:
        return tuple(self._servers[i].held_snapshot.options(num_returns=2).remote(
            self._taker, self._round, self._first[0]))

    def poll(self) -> bool:
        """True once every actor's part is in (``summaries`` set); raises a Ray error if an
        actor died, SnapshotIncomplete if one never got its hold."""
        if self.summaries is not None:
            return True
        refs = [p[0] for p in self._parts]
        if len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) < len(refs):
            return False
        summaries = ray.get(refs)
        late = [i for i, s in enumerate(summaries) if s is None]
        for i in late:
            if self._asks[i] >= _ASKS:
                raise SnapshotIncomplete(f"server actor {i} never received the snapshot hold")
            self._asks[i] += 1
            self._parts[i] = self._ask(i)
        if late:
            return False
        self.summaries = summaries
        return True

    @property
    def version(self) -> int:
        return int(self.summaries[0]["version"])

    @property
    def nbytes(self) -> int:
        return sum(s["bytes"] for s in self.summaries)

    @property
    def state_refs(self) -> list:
        return [p[1] for p in self._parts]


    def wait(self, timeout_s: float) -> None:
        """Block until every part has answered, or `timeout_s`."""
        refs = [p[0] for p in self._parts]
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)


def take_snapshot(servers: Sequence, taker: str, timeout_s: float) -> list[dict]:
    """Every actor's state at one point in time (blocking)."""
    snapshot = SnapshotRound(servers, taker)
    deadline = time.monotonic() + timeout_s
    while not snapshot.poll():
        left = deadline - time.monotonic()
        if left <= 0:
            raise ray.exceptions.GetTimeoutError(f"no snapshot of the servers in {timeout_s:.0f} s")
        snapshot.wait(left)
    return ray.get(snapshot.state_refs, timeout=max(deadline - time.monotonic(), 1.0))
