"""Every task's gradient counts the same: the plain multi-task sum (Doersch & Zisserman 2017)."""
from __future__ import annotations

from ps_trainer.core.balancing.base import Balancer
from ps_trainer.core.balancing.registry import BALANCERS


@BALANCERS.register("equal")
class Equal(Balancer):
    def weight(self, task: str) -> float:
        return 1.0
