"""Homoscedastic-uncertainty weighting: Kendall, Gal & Cipolla, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018.

Each task i has a learned log-variance s_i and contributes L_i / (2 exp(s_i)) + s_i / 2 to the
total loss, so its gradient is scaled by 1 / (2 exp(s_i)). The paper learns s_i together with
the network; here the server learns it by plain SGD on that objective from each reported loss:

    d/ds_i [L_i / (2 exp(s_i)) + s_i / 2] = 1/2 - L_i / (2 exp(s_i)),

whose fixed point is exp(s_i) = L_i. Pushes arrive asynchronously, so s_i moves only when task
i reports. Reports with a non-finite loss or norm are ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ps_trainer.core.balancing.base import Balancer
from ps_trainer.core.balancing.registry import BALANCERS
from ps_trainer.config.options import Options, check


@dataclass(frozen=True)
class UncertaintyOptions(Options):
    lr: float = 0.01                    # SGD step on s_i per report of task i
    init: float = 0.0                   # initial s_i (the paper starts from log-variance 0)
    log_variance_limit: float = 20.0    # |s_i| bound; keeps exp(s_i) finite after absurd losses

    def __post_init__(self):
        check(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a finite number > 0")
        check(self.log_variance_limit > 0 and math.isfinite(self.log_variance_limit),
              "log_variance_limit", self.log_variance_limit, "a finite number > 0")
        check(abs(self.init) <= self.log_variance_limit, "init", self.init,
              "a number within +-log_variance_limit")


@BALANCERS.register("uncertainty")
class Uncertainty(Balancer):
    Options = UncertaintyOptions

    def __init__(self, tasks: tuple[str, ...], options: UncertaintyOptions | None = None):
        super().__init__(tasks, options)
        self.log_variance = {task: float(self.options.init) for task in self.tasks}

    def weight(self, task: str) -> float:
        return 0.5 * math.exp(-self.log_variance[task])

    def observe(self, task: str, loss: float, shared_grad_norm: float) -> None:
        # A non-finite norm means a broken gradient, so its loss is not trusted either.
        if not (math.isfinite(loss) and math.isfinite(shared_grad_norm)):
            return
        s = self.log_variance[task]
        grad = 0.5 - 0.5 * loss * math.exp(-s)
        limit = self.options.log_variance_limit
        # One huge loss would otherwise throw s far up, from where it returns only at lr/2 a step.
        self.log_variance[task] = min(limit, max(-limit, s - self.options.lr * grad))

    def state_dict(self) -> dict:
        return {"log_variance": dict(self.log_variance)}

    def load_state_dict(self, state: dict) -> None:
        self.log_variance = {task: float(state["log_variance"][task]) for task in self.tasks}
