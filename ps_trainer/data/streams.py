"""Which numbers seed a worker's random stream (its batches and its task's augmentation).

A stream is deterministic per (run.seed, task, replica, restart). `restart` tells apart the
actors that one replica has had: a replacement of a dead worker, or the same replica in a
resumed run, draws new batches instead of replaying the stream from its start.
"""
from __future__ import annotations

from typing import Optional

_INCARNATION_BITS = 32


def restart_number(incarnation: int, resumed_from: Optional[int] = None) -> int:
    """The `restart` of a replica's `incarnation` (0 for its first actor, one more for each
    replacement) in a run that started fresh (`resumed_from` None) or resumed from the
    checkpoint of version `resumed_from`. Every (resume, incarnation) has its own number; a
    fresh run's first actors have 0, whose streams are those of the runs before restarts
    were counted (see :func:`stream_entropy`)."""
    if not 0 <= incarnation < 1 << _INCARNATION_BITS:
        raise ValueError(f"incarnation {incarnation} out of range")
    if resumed_from is None:
        return incarnation
    return ((resumed_from + 1) << _INCARNATION_BITS) | incarnation


def stream_entropy(seed: int, task_index: int, replica: int, restart: int) -> list[int]:
    """The entropy of a worker's `np.random.SeedSequence`. A trailing 0 does not change what
    numpy makes of it (the pool is padded with zeros), so restart 0 gives the stream that
    (seed, task_index, replica) gave before."""
    return [seed, task_index, replica, restart]
