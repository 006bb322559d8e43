"""Name -> balancing method."""
from ps_trainer.config.registry import Registry

BALANCERS: Registry = Registry("balancing method")
