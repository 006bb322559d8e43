"""Fixed per-task weights from the config; tasks not named weigh 1."""
from __future__ import annotations

from dataclasses import dataclass

from ps_trainer.core.balancing.base import Balancer
from ps_trainer.core.balancing.registry import BALANCERS
from ps_trainer.config.options import FrozenDict, Options, check


@dataclass(frozen=True)
class StaticOptions(Options):
    weights: FrozenDict = FrozenDict()   # task -> weight (>= 0)

    def __post_init__(self):
        for task, value in self.weights.items():
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            check(ok, f"weights.{task}", value, "a number >= 0")


@BALANCERS.register("static")
class Static(Balancer):
    Options = StaticOptions

    def weight(self, task: str) -> float:
        return float(self.options.weights.get(task, 1.0))
