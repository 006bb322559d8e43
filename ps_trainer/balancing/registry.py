"""Name -> balancing method."""
from ps_trainer.registry import Registry

BALANCERS: Registry = Registry("balancing method")
