"""The interface every task-balancing method implements (one method per file)."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

from ps_trainer.config.options import Options


@dataclass(frozen=True)
class NoOptions(Options):
    """A method with no hyperparameters."""


class Balancer(abc.ABC):
    """Task weights kept where gradients meet: at the parameter server.

    The server calls :meth:`observe` once per accepted push with what the worker reported
    (its loss and the norm of its gradient on the trunk's last shared layer) and scales that
    push's gradients by :meth:`weight`. Methods see only these numbers, never the gradients,
    so every server shard computes the same weights from the same reports.
    """

    Options: ClassVar[type] = NoOptions

    def __init__(self, tasks: tuple[str, ...], options: Any = None):
        self.tasks = tuple(tasks)
        self.options = options if options is not None else self.Options()

    @abc.abstractmethod
    def weight(self, task: str) -> float:
        """The multiplier applied to `task`'s next gradient."""

    def observe(self, task: str, loss: float, shared_grad_norm: float) -> None:
        """Take one accepted push's report into account (default: nothing to learn)."""

    def weights(self) -> dict[str, float]:
        return {task: self.weight(task) for task in self.tasks}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (plain floats, lists and dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
