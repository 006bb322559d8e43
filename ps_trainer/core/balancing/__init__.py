"""Task balancing at the parameter server; one method per file, chosen by `balancing.method`."""
from ps_trainer.core.balancing.base import Balancer
from ps_trainer.core.balancing.registry import BALANCERS
from ps_trainer.core.balancing import dwa, equal, gradnorm, static, uncertainty  # noqa: F401


def make_balancer(method: str, tasks: tuple[str, ...], options=None) -> Balancer:
    """Build the configured method; `options` is the raw config mapping."""
    cls = BALANCERS.get(method)
    return cls(tasks, cls.Options.from_mapping(options or {}))


__all__ = ["BALANCERS", "Balancer", "make_balancer"]
