"""Name -> Task class."""
from ps_trainer.registry import Registry

TASKS: Registry = Registry("task")
