"""Dynamic Weight Average: Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019, with windows of accepted pushes in place of epochs.

Every `window_updates` accepted pushes (all tasks counted) close a window, and each task's mean
reported loss over the window is recorded; a task with no report in the window keeps its
previous window's loss. At each window's close

    w_i = K exp(r_i / T) / sum_j exp(r_j / T),   r_i = L_i(k-1) / L_i(k-2),

with K the number of tasks, so a task whose loss has stopped falling gets more weight. A task
with fewer than two recorded window losses counts as unchanged (r_i = 1), so until two windows
have closed every weight is 1, as in the paper's first two epochs. Reports with a non-finite
value or a loss <= 0 (the ratio needs positive losses) are ignored and do not count toward the
window.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from ps_trainer.core.balancing.base import Balancer
from ps_trainer.core.balancing.registry import BALANCERS
from ps_trainer.config.options import Options, check


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class DWAOptions(Options):
    window_updates: int = 100           # accepted pushes per window (the paper's epoch)
    temperature: float = 2.0            # T; the paper's value

    def __post_init__(self):
        check(self.window_updates >= 1, "window_updates", self.window_updates, "an integer >= 1")
        check(self.temperature > 0, "temperature", self.temperature, "a number > 0")


@BALANCERS.register("dwa")
class DWA(Balancer):
    Options = DWAOptions

    def __init__(self, tasks: tuple[str, ...], options: DWAOptions | None = None):
        super().__init__(tasks, options)
        self.task_weight = {task: 1.0 for task in self.tasks}
        self.window_loss_mean = {task: 0.0 for task in self.tasks}
        self.window_reports = {task: 0 for task in self.tasks}
        self.pushes_in_window = 0
        # The last two window losses per task, oldest first; None until recorded.
        self.previous_loss: dict[str, float | None] = {task: None for task in self.tasks}
        self.last_loss: dict[str, float | None] = {task: None for task in self.tasks}

    def weight(self, task: str) -> float:
        return self.task_weight[task]

    def observe(self, task: str, loss: float, shared_grad_norm: float) -> None:
        # A non-finite norm means a broken gradient, so its loss is not trusted either.
        if not (math.isfinite(loss) and math.isfinite(shared_grad_norm) and loss > 0):
            return
        self.window_reports[task] += 1
        # A running mean rather than a sum: it cannot overflow however large the losses.
        mean = self.window_loss_mean[task]
        self.window_loss_mean[task] = mean + (loss - mean) / self.window_reports[task]
        self.pushes_in_window += 1
        if self.pushes_in_window == self.options.window_updates:
            self._close_window()

    def _close_window(self) -> None:
        for task in self.tasks:
            self.previous_loss[task] = self.last_loss[task]
            if self.window_reports[task]:  # otherwise the loss is taken as unchanged
                self.last_loss[task] = self.window_loss_mean[task]
            self.window_loss_mean[task] = 0.0
            self.window_reports[task] = 0
        self.pushes_in_window = 0
        self._reweight()

    def _reweight(self) -> None:
        ratio = {t: self._loss_ratio(t) for t in self.tasks}
        # Shifting by the largest ratio leaves the softmax unchanged and keeps exp() finite.
        top = max(ratio.values())
        scores = {t: math.exp((r - top) / self.options.temperature) for t, r in ratio.items()}
        total = sum(scores.values())
        self.task_weight = {t: len(self.tasks) * s / total for t, s in scores.items()}

    def _loss_ratio(self, task: str) -> float:
        if self.previous_loss[task] is None:
            return 1.0
        # Capped so that a loss jumping by more than the float range cannot give inf - inf.
        return min(self.last_loss[task] / self.previous_loss[task], sys.float_info.max)

    def state_dict(self) -> dict:
        return {"task_weight": dict(self.task_weight),
                "window_loss_mean": dict(self.window_loss_mean),
                "window_reports": dict(self.window_reports),
                "pushes_in_window": self.pushes_in_window,
                "previous_loss": dict(self.previous_loss), "last_loss": dict(self.last_loss)}

    def load_state_dict(self, state: dict) -> None:
        self.task_weight = {t: float(state["task_weight"][t]) for t in self.tasks}
        self.window_loss_mean = {t: float(state["window_loss_mean"][t]) for t in self.tasks}
        self.window_reports = {t: int(state["window_reports"][t]) for t in self.tasks}
        self.pushes_in_window = int(state["pushes_in_window"])
        self.previous_loss = {t: _float_or_none(state["previous_loss"][t]) for t in self.tasks}
        self.last_loss = {t: _float_or_none(state["last_loss"][t]) for t in self.tasks}
