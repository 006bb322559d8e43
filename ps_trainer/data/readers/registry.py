"""The readers of data sets on disk by `data.source` name (``@READERS.register("name")``)."""
from ps_trainer.config.registry import Registry

READERS: Registry = Registry("data source")
