"""GradNorm: Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018, adapted to asynchronous pushes.

G_i is a running average of the reported norm of task i's unweighted gradient on the trunk's
last shared layer, so task i's weighted norm is w_i G_i. With L_i(0) the task's first reported
loss (or the mean of its first few) and L_i(t) its running-average loss, the relative inverse
training rate is r_i = (L_i(t) / L_i(0)) / mean_j (L_j(t) / L_j(0)). Each report of task i takes
one step on |w_i G_i - target_i| with target_i = mean_j(w_j G_j) r_i^alpha held constant, as the
paper does: w_i <- w_i - lr sign(w_i G_i - target_i) G_i. Weights are then kept above a small
minimum and renormalised to sum to the number of tasks taking part.

A task takes part once L_i(0) is known; until then it weighs 1 and is left out of the means.
Reports with a non-finite value, a loss <= 0 (the loss ratios need positive losses) or a
negative norm are ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ps_trainer.core.balancing.base import Balancer
from ps_trainer.core.balancing.registry import BALANCERS
from ps_trainer.config.options import Options, check


@dataclass(frozen=True)
class GradNormOptions(Options):
    alpha: float = 1.5                  # restoring-force strength (the paper's default)
    lr: float = 0.01                    # step on w_i, in units of G_i
    average_decay: float = 0.9          # EMA decay of the reported norms and losses
    initial_loss_reports: int = 1       # reports averaged into L_i(0); 1 = the first loss
    min_weight: float = 1e-3            # weights stay positive

    def __post_init__(self):
        check(self.alpha >= 0, "alpha", self.alpha, "a number >= 0")
        check(self.lr > 0, "lr", self.lr, "a number > 0")
        check(0 <= self.average_decay < 1, "average_decay", self.average_decay, "0 <= d < 1")
        check(self.initial_loss_reports >= 1, "initial_loss_reports",
              self.initial_loss_reports, "an integer >= 1")
        check(0 < self.min_weight < 1, "min_weight", self.min_weight, "0 < m < 1")


@BALANCERS.register("gradnorm")
class GradNorm(Balancer):
    Options = GradNormOptions

    def __init__(self, tasks: tuple[str, ...], options: GradNormOptions | None = None):
        super().__init__(tasks, options)
        self.task_weight = {task: 1.0 for task in self.tasks}
        self.average_norm = {task: 0.0 for task in self.tasks}
        self.average_loss = {task: 0.0 for task in self.tasks}
        self.reports = {task: 0 for task in self.tasks}
        self.initial_loss_sum = {task: 0.0 for task in self.tasks}

    def weight(self, task: str) -> float:
        return self.task_weight[task]

    def initial_loss(self, task: str) -> float | None:
        """L_i(0), or None while the task has fewer reports than it averages."""
        n = self.options.initial_loss_reports
        return self.initial_loss_sum[task] / n if self.reports[task] >= n else None

    def observe(self, task: str, loss: float, shared_grad_norm: float) -> None:
        if not (math.isfinite(loss) and math.isfinite(shared_grad_norm)
                and loss > 0 and shared_grad_norm >= 0):
            return
        decay = 0.0 if self.reports[task] == 0 else self.options.average_decay
        self.average_norm[task] = decay * self.average_norm[task] + (1 - decay) * shared_grad_norm
        self.average_loss[task] = decay * self.average_loss[task] + (1 - decay) * loss
        if self.reports[task] < self.options.initial_loss_reports:
            self.initial_loss_sum[task] += loss
        self.reports[task] += 1
        if self.initial_loss(task) is not None:
            self._descend(task)

    def _descend(self, task: str) -> None:
        """One step on |w_i G_i - target_i| for the reporting task, then renormalise."""
        taking_part = [t for t in self.tasks if self.initial_loss(t) is not None]
        count = len(taking_part)
        loss_ratio = {t: self.average_loss[t] / self.initial_loss(t) for t in taking_part}
        mean_ratio = sum(loss_ratio.values()) / count
        mean_weighted_norm = sum(self.task_weight[t] * self.average_norm[t]
                                 for t in taking_part) / count
        target = mean_weighted_norm * (loss_ratio[task] / mean_ratio) ** self.options.alpha
        norm = self.average_norm[task]
        excess = self.task_weight[task] * norm - target
        # d|w G - target| / dw = sign(excess) G; no step when exactly on target.
        step = self.options.lr * norm * ((excess > 0) - (excess < 0))
        self.task_weight[task] = max(self.options.min_weight, self.task_weight[task] - step)
        scale = count / sum(self.task_weight[t] for t in taking_part)
        for t in taking_part:
            self.task_weight[t] *= scale

    def state_dict(self) -> dict:
        return {"task_weight": dict(self.task_weight), "average_norm": dict(self.average_norm),
                "average_loss": dict(self.average_loss), "reports": dict(self.reports),
                "initial_loss_sum": dict(self.initial_loss_sum)}

    def load_state_dict(self, state: dict) -> None:
        self.task_weight = {t: float(state["task_weight"][t]) for t in self.tasks}
        self.average_norm = {t: float(state["average_norm"][t]) for t in self.tasks}
        self.average_loss = {t: float(state["average_loss"][t]) for t in self.tasks}
        self.reports = {t: int(state["reports"][t]) for t in self.tasks}
        self.initial_loss_sum = {t: float(state["initial_loss_sum"][t]) for t in self.tasks}
