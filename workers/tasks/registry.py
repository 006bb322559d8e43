"""Name -> Task class."""
from ps_trainer.config.registry import Registry

TASKS: Registry = Registry("task")
