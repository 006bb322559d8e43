"""One shared trunk, one head per task (and, optionally, one lasso per task).

    model = MultiTaskModel(cfg.model, heads={"rotation": head, ...})
    logits = model("rotation", images)        # images: (B, 3, H, W) RGB in [0, 1]

Parameter names decide the parameter-server shard: ``trunk.*`` -> "trunk";
``heads.<head>.*`` and ``lasso.<head>.*`` -> "head/<head>" (see :func:`shard_of`). A head is
named after the task that owns it; other tasks may train it too (see Task.head_of).
"""
from __future__ import annotations

import torch
from torch import nn

from ps_trainer.color import lightness_as_rgb
from ps_trainer.config import ModelConfig
from ps_trainer.model.lasso import Lasso
from ps_trainer.model.trunk import Trunk
from ps_trainer.shards import TRUNK_SHARD, head_shard

# Fixed input normalisation: images are in [0, 1]; centre and scale to roughly unit variance.
_INPUT_MEAN = 0.45
_INPUT_STD = 0.25


class MultiTaskModel(nn.Module):
    def __init__(self, cfg: ModelConfig, heads: dict[str, nn.Module]):
        super().__init__()
        self.trunk = Trunk(cfg)
        self.heads = nn.ModuleDict(heads)
        self.harmonize = cfg.harmonize
        self.lasso_l1 = cfg.lasso_l1 if cfg.lasso else 0.0
        self.lasso = nn.ModuleDict(
            {task: Lasso(self.trunk.last_stage_units) for task in heads} if cfg.lasso else {})

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> trunk input (harmonized to Lab lightness if configured)."""
        if self.harmonize:
            images = lightness_as_rgb(images)
        return (images - _INPUT_MEAN) / _INPUT_STD

    def features(self, task: str, images: torch.Tensor) -> torch.Tensor:
        units = self.trunk(self.prepare(images))
        if task in self.lasso:
            return self.lasso[task](units[-self.trunk.last_stage_units:])
        return units[-1]                                   # (B, C, h, w)

    def forward(self, task: str, images: torch.Tensor) -> torch.Tensor:
        return self.heads[task](self.features(task, images))

    def regularization(self, task: str) -> torch.Tensor | float:
        """The task's extra loss term: the lasso's L1 penalty (0 when lasso is off)."""
        if task in self.lasso and self.lasso_l1 > 0:
            return self.lasso_l1 * self.lasso[task].penalty()
        return 0.0


def shard_of(param_name: str) -> str:
    """Parameter-server shard that owns a parameter or buffer of MultiTaskModel."""
    head, _, rest = param_name.partition(".")
    if head == "trunk":
        return TRUNK_SHARD
    if head in ("heads", "lasso"):
        return head_shard(rest.partition(".")[0])
    raise ValueError(f"parameter {param_name!r} belongs to no shard")
