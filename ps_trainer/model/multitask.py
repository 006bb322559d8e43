"""One shared trunk, one head per task (and, optionally, one lasso per task).

    model = MultiTaskModel(cfg.model, heads={"rotation": head, ...})
    logits = model("rotation", images)        # images: (B, 3, H, W) RGB in [0, 1]

Parameter names decide the parameter-server shard: ``trunk.*`` -> "trunk";
``heads.<head>.*`` and ``lasso.<head>.*`` -> "head/<head>" (see :func:`shard_of`). A head is
named after the task that owns it; other tasks may train it too (see Task.head_of).

A head reads the trunk's final features by default; one that needs others (DeepLabV3+'s
low-level skip) names the stages it reads in ``feature_levels`` (indices into the trunk's
stage outputs, -1 the last) and receives them as positional arguments, in that order.
"""
from __future__ import annotations

import torch
from torch import nn

from ps_trainer.core.color import lightness_as_rgb
from ps_trainer.config import ModelConfig
from ps_trainer.model.backbones import input_normalisation, make_trunk
from ps_trainer.model.lasso import Lasso
from ps_trainer.model.pretrained import load_pretrained
from ps_trainer.core.shards import TRUNK_SHARD, head_shard

FINAL_FEATURES = (-1,)


def feature_levels(head: nn.Module) -> tuple[int, ...]:
    """The trunk stages a head reads (default: the final features alone)."""
    return tuple(getattr(head, "feature_levels", FINAL_FEATURES))


class MultiTaskModel(nn.Module):
    def __init__(self, cfg: ModelConfig, heads: dict[str, nn.Module]):
        super().__init__()
        self.trunk = make_trunk(cfg)
        if cfg.pretrained:
            load_pretrained(self.trunk, cfg.pretrained)
        self.heads = nn.ModuleDict(heads)
        self.harmonize = cfg.harmonize
        self.lasso_l1 = cfg.lasso_l1 if cfg.lasso else 0.0
        self.lasso = nn.ModuleDict(
            {task: Lasso(self.trunk.last_stage_units) for task in heads} if cfg.lasso else {})
        mean, std = input_normalisation(cfg)
        # Not persistent: constants of the config, never trained, saved or shipped.
        self.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        # channels_last: NHWC activations for tensor-core convolutions (runtime.prepare_compute).
        # Only activations: the weights stay views of the flat shard buffers, in their layout.
        self.memory_format = torch.contiguous_format

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> trunk input (harmonized to Lab lightness if configured)."""
        if self.harmonize:
            images = lightness_as_rgb(images)
        return ((images - self.input_mean) / self.input_std).contiguous(
            memory_format=self.memory_format)

    def features(self, task: str, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The trunk outputs the task's head reads, each (B, C_i, H/s_i, W/s_i); the last
        stage is the task's lasso mix of its units when lasso is on."""
        mixed = task in self.lasso
        out = self.trunk(self.prepare(images), last_units=mixed)
        stages = list(out.stages)
        if mixed:
            stages[-1] = self.lasso[task](out.last_units)
        return tuple(stages[i] for i in feature_levels(self.heads[task]))

    def forward(self, task: str, images: torch.Tensor) -> torch.Tensor:
        return self.heads[task](*self.features(task, images))

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
