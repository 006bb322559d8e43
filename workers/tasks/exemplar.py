"""Exemplar surrogate classes (Dosovitskiy, Springenberg, Riedmiller & Brox, NeurIPS 2014,
"Discriminative Unsupervised Feature Learning with Convolutional Neural Networks"), scored
with a non-parametric softmax (Wu, Xiong, Yu & Lin, CVPR 2018, "Unsupervised Feature Learning
via Non-Parametric Instance Discrimination")."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ps_trainer.config.options import Options, check
from ps_trainer_workers.tasks.base import Task
from ps_trainer_workers.tasks.registry import TASKS

# RGB -> YIQ (NTSC): hue rotates and saturation scales the (I, Q) chroma plane around grey.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.596, -0.274, -0.322],
                            [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_LUMA = _RGB_TO_YIQ[0]


def _check_range(key: str, value: tuple[float, float], low: float, high: float) -> None:
    check(low <= value[0] <= value[1] <= high, key, value, f"{low} <= min <= max <= {high}")


@dataclass(frozen=True)
class ExemplarOptions(Options):
    views: int = 2                      # augmented views per image (>= 2: see the loss)
    # Dosovitskiy et al.: scale 0.7-1.4, rotation up to 20 degrees, translation up to 0.2 of
    # the patch, contrast (power) and color (saturation, value x 0.7-1.4, hue +-0.1).
    crop_range: tuple[float, float] = (0.6, 1.0)       # crop side / image side (zoom 1-1.7)
    rotation_degrees: float = 20.0
    flip: bool = True
    brightness_range: tuple[float, float] = (0.7, 1.4)
    contrast_range: tuple[float, float] = (0.5, 2.0)
    saturation_range: tuple[float, float] = (0.7, 1.4)
    hue_shift: float = 0.1              # fraction of the hue circle, +- this
    embedding_dim: int = 64
    hidden: int = 128
    temperature: float = 0.1

    def __post_init__(self):
        check(self.views >= 2, "views", self.views, "must be >= 2 (prototypes need other views)")
        _check_range("crop_range", self.crop_range, 1e-3, 1.0)
        check(0 <= self.rotation_degrees <= 180, "rotation_degrees", self.rotation_degrees,
              "in [0, 180]")
        _check_range("brightness_range", self.brightness_range, 0.0, math.inf)
        _check_range("contrast_range", self.contrast_range, 0.0, math.inf)
        _check_range("saturation_range", self.saturation_range, 0.0, math.inf)
        check(0 <= self.hue_shift <= 0.5, "hue_shift", self.hue_shift, "in [0, 0.5]")
        check(self.embedding_dim >= 2, "embedding_dim", self.embedding_dim, "must be >= 2")
        check(self.hidden >= 1, "hidden", self.hidden, "must be >= 1")
        check(self.temperature > 0, "temperature", self.temperature, "must be > 0")


class EmbeddingHead(nn.Module):
    """(N, C, h, w) -> global average pool -> MLP -> (N, D) unit-length embeddings."""

    def __init__(self, channels: int, hidden: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(features.mean(dim=(-2, -1))), dim=1)


def _geometry(n: int, o: ExemplarOptions, rng: np.random.Generator) -> torch.Tensor:
    """(N, 2, 3) affine maps from output to input coordinates: crop, flip, rotation."""
    side = rng.uniform(*o.crop_range, size=n)
    centre = rng.uniform(-1.0, 1.0, size=(n, 2)) * (1.0 - side)[:, None]  # crop stays inside
    angle = np.deg2rad(rng.uniform(-o.rotation_degrees, o.rotation_degrees, size=n))
    mirror = np.where(rng.random(n) < 0.5, -1.0, 1.0) if o.flip else np.ones(n)
    cos, sin = np.cos(angle) * side, np.sin(angle) * side
    theta = np.stack([np.stack([cos * mirror, -sin, centre[:, 0]], -1),
                      np.stack([sin * mirror, cos, centre[:, 1]], -1)], 1)
    return torch.from_numpy(theta).float()


def _color_matrices(n: int, o: ExemplarOptions, rng: np.random.Generator) -> torch.Tensor:
    """(N, 3, 3) RGB maps: brightness scales Y, I, Q; saturation scales and hue rotates I, Q."""
    brightness = torch.from_numpy(rng.uniform(*o.brightness_range, size=n)).float()
    saturation = torch.from_numpy(rng.uniform(*o.saturation_range, size=n)).float()
    hue = torch.from_numpy(rng.uniform(-o.hue_shift, o.hue_shift, size=n) * 2 * math.pi).float()
    yiq = torch.zeros(n, 3, 3)
    yiq[:, 0, 0] = 1.0
    yiq[:, 1, 1] = yiq[:, 2, 2] = saturation * torch.cos(hue)
    yiq[:, 1, 2] = -saturation * torch.sin(hue)
    yiq[:, 2, 1] = saturation * torch.sin(hue)
    yiq = yiq * brightness.view(n, 1, 1)
    return _YIQ_TO_RGB @ yiq @ _RGB_TO_YIQ


@TASKS.register("exemplar")
class Exemplar(Task):
    """Every image of the batch is its own surrogate class, seen through `views` augmentations.

    Batches: inputs (V*B, 3, H, W) view-major (input v*B + b is view v of image b), targets
    (V*B,) = b. Each view is a random crop (side `crop_range` of the image, kept inside it),
    flip and small rotation resampled in one affine warp (reflection padding at the rotated
    corners), then brightness, saturation, hue and contrast jitter.
    Head: :class:`EmbeddingHead`, unit-length embeddings z (N, D).
    Loss: for view i of image c_i, class prototypes are the normalised means of the other
    images' views and, for its own class, of its OTHER views (never itself);
    logits_ic = <z_i, p_c> / temperature; cross-entropy against c_i, averaged over views.
    """

    Options = ExemplarOptions

    def head(self, trunk_channels: int) -> nn.Module:
        return EmbeddingHead(trunk_channels, self.options.hidden, self.options.embedding_dim)

    def make_batch(self, images: torch.Tensor, rng: np.random.Generator,
                   masks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        o, (b, _, h, w) = self.options, images.shape
        n = o.views * b
        repeated = images.repeat(o.views, 1, 1, 1)                   # (V*B, 3, H, W)
        theta = _geometry(n, o, rng).to(images.device)
        grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
        views = F.grid_sample(repeated, grid, mode="bilinear", padding_mode="reflection",
                              align_corners=False)
        color = _color_matrices(n, o, rng).to(images.device)
        views = torch.einsum("nij,njhw->nihw", color, views)
        contrast = torch.from_numpy(rng.uniform(*o.contrast_range, size=n)).float()
        contrast = contrast.to(images.device).view(n, 1, 1, 1)
        grey = torch.einsum("c,nchw->nhw", _LUMA.to(images.device), views).mean(dim=(-2, -1))
        grey = grey.view(n, 1, 1, 1)
        views = (grey + contrast * (views - grey)).clamp(0.0, 1.0)
        targets = torch.arange(b, device=images.device).repeat(o.views)
        return views, targets

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = int(target.max()) + 1
        own = F.one_hot(target, num_classes).to(output.dtype)        # (N, B)
        sums = own.t() @ output                                      # (B, D)
        counts = own.sum(dim=0)                                      # (B,)
        # Remove each view from its own class: prototypes_ic = mean of the other views of c.
        prototypes = (sums.unsqueeze(0) - own.unsqueeze(-1) * output.unsqueeze(1))  # (N, B, D)
        prototypes = prototypes / (counts.unsqueeze(0) - own).clamp(min=1).unsqueeze(-1)
        prototypes = F.normalize(prototypes, dim=-1)
        logits = torch.einsum("nd,ncd->nc", output, prototypes) / self.options.temperature
        return F.cross_entropy(logits, target)
