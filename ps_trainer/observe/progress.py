"""The progress line: updates/s (total and per task), losses, task weights, latest mIoU."""
from __future__ import annotations

import logging
import time
from typing import Mapping, Optional

log = logging.getLogger("ps_trainer.observe.progress")
_EMA = 0.9


class Progress:
    """Keeps loss averages and the previous counts to turn totals into rates."""

    def __init__(self, tasks: tuple[str, ...]):
        self.tasks = tuple(tasks)
        self._loss: dict[str, float] = {}
        self._last_time = time.monotonic()
        self._last_version = 0
        self._last_per_task: dict[str, int] = {}
        self._next_log = self._last_time

    def observe(self, task: str, loss: float) -> None:
        old = self._loss.get(task)
        self._loss[task] = loss if old is None else _EMA * old + (1 - _EMA) * loss

    def losses(self) -> dict[str, float]:
        return dict(self._loss)

    def maybe_log(self, version: int, losses: Mapping[str, float], weights: Mapping[str, float],
                  miou: Optional[float], every_s: float,
                  per_task: Optional[Mapping[str, int]] = None, extra: str = "") -> Optional[str]:
        now = time.monotonic()
        if now < self._next_log:
            return None
        self._next_log = now + every_s
        line = self.line(version, losses, weights, miou, per_task, extra, now)
        log.info(line)
        return line

    def line(self, version: int, losses: Mapping[str, float], weights: Mapping[str, float],
             miou: Optional[float], per_task: Optional[Mapping[str, int]] = None,
             extra: str = "", now: Optional[float] = None) -> str:
        now = time.monotonic() if now is None else now
        dt = max(now - self._last_time, 1e-9)
        # A count that went back (a server restored from a checkpoint) starts a new baseline:
        # the difference would be a negative rate. This line shows "-" for it.
        rate = _rate(version, self._last_version, dt)
        parts = [f"updates {version}", f"{rate} upd/s"]
        for task in self.tasks:
            item = f"{task} {losses[task]:.3f}" if task in losses else f"{task} -"
            if per_task is not None and task in per_task:
                item += f" {_rate(per_task[task], self._last_per_task.get(task, 0), dt)}/s"
            if task in weights and weights[task] != 1.0:
                item += f" w{weights[task]:.2f}"
            parts.append(item)
        parts.append(f"mIoU {miou:.3f}" if miou is not None else "mIoU -")
        if extra:
            parts.append(extra)
        self._last_time, self._last_version = now, version
        self._last_per_task = dict(per_task or {})
        return " | ".join(parts)


def _rate(count: int, last: int, dt: float) -> str:
    return f"{(count - last) / dt:.1f}" if count >= last else "-"
