"""Trunk, normalization layers, lasso and the multi-task model."""
from ps_trainer.model.lasso import Lasso
from ps_trainer.model.multitask import MultiTaskModel, shard_of
from ps_trainer.model.norms import NORMS, SwitchableNorm2d, make_norm
from ps_trainer.model.trunk import Trunk

__all__ = ["Lasso", "MultiTaskModel", "NORMS", "SwitchableNorm2d", "Trunk", "make_norm", "shard_of"]
