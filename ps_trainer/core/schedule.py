"""When a run stops, when it evaluates, and what it returns: one rule for both runtimes.

The single-process loop (:mod:`ps_trainer.run.local`) and the distributed runtime (the
coordinator, which stops the run, and the evaluator, which scores it) share these, so that a
config means the same in ``--mode local`` and ``--mode distributed``:

- a run stops at ``run.max_updates`` server versions, after ``run.max_minutes``, or at the
  first evaluation whose mIoU reaches ``run.target_miou``;
- it evaluates every ``eval.every_s`` seconds, or every ``eval.every_updates`` versions,
  counted from the end of the previous evaluation;
- it ends with a final evaluation unless the target was reached (that evaluation is final);
- it returns a :class:`RunSummary`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ps_trainer.config import Config
from ps_trainer.core.protocol import CoordinatorStatus

MAX_UPDATES, MAX_MINUTES, TARGET_MIOU, STOPPED = "max_updates", "max_minutes", "target_miou", "stopped"
FAILED = "failed"    # an actor could not set itself up, again and again (RunSummary.error)


@dataclass(frozen=True)
class StopRule:
    """run.max_updates, run.max_minutes and run.target_miou, read once."""
    max_updates: int
    max_s: float
    target_miou: Optional[float]

    @classmethod
    def of(cls, cfg: Config) -> "StopRule":
        return cls(cfg.run.max_updates, cfg.run.max_minutes * 60.0, cfg.run.target_miou)

    def reached(self, record: Optional[dict]) -> Optional[float]:
        """The record's time if its mIoU reaches the target, else None."""
        if (self.target_miou is None or not record or record.get("miou") is None
                or record["miou"] < self.target_miou):
            return None
        return record["time_s"]

    def reason(self, version: Optional[int], elapsed_s: float, record: Optional[dict]
               ) -> Optional[str]:
        """Why the run stops now (MAX_UPDATES, MAX_MINUTES, TARGET_MIOU), or None to go on;
        `version` None means it is unknown just now (a server being restored)."""
        if version is not None and version >= self.max_updates:
            return MAX_UPDATES
        if elapsed_s >= self.max_s:
            return MAX_MINUTES
        if self.reached(record) is not None:
            return TARGET_MIOU
        return None


class EvalSchedule:
    """Evaluation is due every `every_s` seconds, or every `every_updates` versions (0: off),
    counted from the end of the previous evaluation."""

    def __init__(self, every_s: float, every_updates: int, now: float):
        self.every_s = every_s
        self.every_updates = every_updates
        self._last_time = now
        self._last_version = 0

    @classmethod
    def of(cls, cfg: Config, now: float) -> "EvalSchedule":
        return cls(cfg.eval.every_s, cfg.eval.every_updates, now)

    def due(self, now: float, version: Callable[[], Optional[int]]) -> bool:
        """`version` is asked only when the time alone does not make it due (it may be a call
        to another actor)."""
        if now - self._last_time >= self.every_s:
            return True
        if not self.every_updates:
            return False
        current = version()
        return current is not None and current - self._last_version >= self.every_updates

    def done(self, now: float, version: Optional[int]) -> None:
        """An evaluation ended at `now`, having scored `version` (None: it was skipped)."""
        self._last_time = now
        if version is not None:
            self._last_version = version


@dataclass(frozen=True)
class RunSummary:
    """What a training run returns, in either runtime."""
    updates: int                         # server version at the end: pushes applied, all tasks
    elapsed_s: float
    miou: Optional[float]                # of the final evaluation; None without one
    reached_target_s: Optional[float]    # when run.target_miou was reached, else None
    stopped_by: str                      # MAX_UPDATES | MAX_MINUTES | TARGET_MIOU | STOPPED | FAILED
    applied: dict                        # pushes applied per task
    final: Optional[dict]                # the final metrics.jsonl record
    runtime: Optional[CoordinatorStatus] = None   # distributed runs: the coordinator's last status
    error: Optional[str] = None          # FAILED: why, in one line
