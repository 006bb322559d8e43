"""Rotation prediction (Gidaris, Singh & Komodakis, ICLR 2018, "Unsupervised Representation
Learning by Predicting Image Rotations")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ps_trainer.config.options import Options
from ps_trainer_workers.tasks.base import Task
from ps_trainer_workers.tasks.registry import TASKS
from ps_trainer_workers.tasks.heads import conv_block

NUM_ROTATIONS = 4


@dataclass(frozen=True)
class RotationOptions(Options):
    # Gidaris et al. feed all four rotations of every image in the same batch (their best setup).
    all_rotations: bool = True


def rotate(images: torch.Tensor, quarter_turns: int) -> torch.Tensor:
    """Rotate (N, 3, H, W) images counter-clockwise by `quarter_turns` x 90 degrees."""
    return torch.rot90(images, quarter_turns, dims=(-2, -1))


@TASKS.register("rotation")
class Rotation(Task):
    """4-way classification of the rotation (0, 90, 180, 270 degrees counter-clockwise).

    Batches: with `all_rotations`, each image appears four times, laid out image-major
    (4B inputs, targets 0, 1, 2, 3, 0, 1, ...); otherwise each image gets one random rotation.
    Target k means the input is the image rotated by k x 90 degrees: ``rot90(input, -k)``
    restores it. Head: a conv block, global average pooling and a linear classifier.
    """

    Options = RotationOptions

    def head(self, trunk_channels: int) -> nn.Module:
        return nn.Sequential(conv_block(trunk_channels, trunk_channels),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(trunk_channels, NUM_ROTATIONS))

    def make_batch(self, images: torch.Tensor, rng: np.random.Generator,
                   masks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        b = images.shape[0]
        if self.options.all_rotations:
            rotated = torch.stack([rotate(images, k) for k in range(NUM_ROTATIONS)], dim=1)
            targets = torch.arange(NUM_ROTATIONS, device=images.device).repeat(b)          # (4B,)
            return rotated.reshape(b * NUM_ROTATIONS, *images.shape[1:]), targets
        targets = torch.from_numpy(rng.integers(NUM_ROTATIONS, size=b)).to(images.device)
        inputs = images.clone()
        for k in range(1, NUM_ROTATIONS):
            chosen = targets == k
            if chosen.any():
                inputs[chosen] = rotate(images[chosen], k)
        return inputs, targets

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)
