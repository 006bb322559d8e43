"""Trunks by config name (``model.backbone``), and what a trunk looks like without building it.

    trunk = make_trunk(cfg.model)
    geometry = trunk_geometry(cfg.model)   # channels and strides of each stage, no weights made
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ps_trainer.config import ModelConfig
from ps_trainer.model import resnet
from ps_trainer.model import trunk as small

# ImageNet's per-channel statistics of RGB in [0, 1]: what torchvision's (and timm's) ResNet
# weights were trained on.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The small trunk's fixed normalisation: centre and scale RGB in [0, 1] to about unit variance.
SMALL_MEAN = (0.45, 0.45, 0.45)
SMALL_STD = (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class TrunkGeometry:
    """Channels and input pixels per feature pixel of each stage's output, low to high."""
    stage_channels: tuple[int, ...]
    stage_strides: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.stage_channels[-1]

    @property
    def stride(self) -> int:
        return self.stage_strides[-1]


def is_resnet(cfg: ModelConfig) -> bool:
    return cfg.backbone in resnet.DEPTHS


def make_trunk(cfg: ModelConfig) -> nn.Module:
    return resnet.ResNetTrunk(cfg) if is_resnet(cfg) else small.Trunk(cfg)


def trunk_geometry(cfg: ModelConfig) -> TrunkGeometry:
    if is_resnet(cfg):
        return TrunkGeometry(resnet.DEPTHS[cfg.backbone],
                             resnet.stage_strides(cfg.output_stride or 32))
    return TrunkGeometry(tuple(cfg.widths), small.stage_strides(cfg))


def input_normalisation(cfg: ModelConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel: the config's, else the backbone's own."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if is_resnet(cfg) else (SMALL_MEAN, SMALL_STD)
    return tuple(cfg.input_mean or mean), tuple(cfg.input_std or std)
