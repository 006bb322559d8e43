"""Inpainting (Pathak, Krähenbühl, Donahue, Darrell & Efros, CVPR 2016, "Context Encoders:
Feature Learning by Inpainting")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from ps_trainer.config.options import Options, check, check_choice
from ps_trainer_workers.tasks.base import Task
from ps_trainer_workers.tasks.registry import TASKS
from ps_trainer_workers.tasks.heads import DenseDecoder, resize_like

HOLE_POSITIONS = ("random", "centre")


@dataclass(frozen=True)
class InpaintingOptions(Options):
    # Paper: a 64-px square of a 128-px image (1/4 of the area), central or at random.
    hole_fraction: float = 0.5         # hole side / image side
    hole_position: str = "random"
    decoder_width: int = 64

    def __post_init__(self):
        check(0 < self.hole_fraction < 1, "hole_fraction", self.hole_fraction, "in (0, 1)")
        check_choice("hole_position", self.hole_position, HOLE_POSITIONS)
        check(self.decoder_width >= 16, "decoder_width", self.decoder_width, "must be >= 16")


@TASKS.register("inpainting")
class Inpainting(Task):
    """Reconstruct an erased square from its context.

    Inputs: each image with one square hole filled with the mean color of the pixels left
    visible (no color leaks from the hole). Targets: (B, 4, H, W), the original RGB image and
    the hole mask (1 inside the hole) as channel 3.
    Head: :class:`DenseDecoder` to RGB at full resolution (learned upsampling, then a
    sub-pixel convolution); the loss bilinearly resizes (align_corners=False) any output of
    another size to the target's H, W.
    Loss: mean squared error over the hole pixels only (the paper's masked L2 term, without
    its adversarial term).
    """

    Options = InpaintingOptions

    def head(self, trunk_channels: int) -> nn.Module:
        return DenseDecoder(trunk_channels, 3, self.context.trunk_stride, 1,
                            self.options.decoder_width)

    def hole_masks(self, b: int, size: int, rng: np.random.Generator,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, 1, H, W) float32, 1 inside each image's square hole."""
        side = max(1, round(self.options.hole_fraction * size))
        if self.options.hole_position == "centre":
            corners = np.full((b, 2), (size - side) // 2)
        else:
            corners = rng.integers(0, size - side + 1, size=(b, 2))
        corners = torch.from_numpy(corners).view(b, 2, 1).to(device)
        pixels = torch.arange(size, device=device)
        inside = (pixels >= corners) & (pixels < corners + side)      # (B, 2, H): rows, cols
        return (inside[:, 0, :, None] & inside[:, 1, None, :]).unsqueeze(1).float()

    def make_batch(self, images: torch.Tensor, rng: np.random.Generator,
                   masks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, size = images.shape[0], images.shape[-1]
        hole = self.hole_masks(b, size, rng, images.device)        # (B, 1, H, W)
        visible = 1.0 - hole
        fill = (images * visible).sum(dim=(-2, -1), keepdim=True) / visible.sum(
            dim=(-2, -1), keepdim=True)                             # (B, 3, 1, 1)
        inputs = images * visible + fill * hole
        return inputs, torch.cat([images, hole], dim=1)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = resize_like(output, target.shape[-2:])             # (B, 3, H, W)
        original, hole = target[:, :3], target[:, 3:]
        squared = (output - original) ** 2 * hole
        return squared.sum() / (3 * hole.sum()).clamp(min=1)
