"""Relative patch position (Doersch, Gupta & Efros, ICCV 2015, "Unsupervised Visual
Representation Learning by Context Prediction")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ps_trainer.config.options import Options, check
from ps_trainer_workers.tasks.base import Task, TaskContext
from ps_trainer_workers.tasks.heads import PatchGroupClassifier, crop_patches
from ps_trainer_workers.tasks.registry import TASKS

# The 8 neighbours of the centre patch as (row, col) steps, row-major: target i <-> NEIGHBOURS[i].
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
PATCHES_PER_EXAMPLE = 2


@dataclass(frozen=True)
class RelativePositionOptions(Options):
    # Paper: 96-px patches, 48-px gaps, jitter up to 7 px; here as ratios of the patch side,
    # and the patch side is the largest whose 3x3 layout (gaps, jitter) fits the image.
    gap_ratio: float = 0.5
    jitter_ratio: float = 7 / 96
    # Paper's "color dropping" against chromatic aberration: keep one random channel per
    # patch, replace the other two with Gaussian noise of ~1/100 the kept channel's std.
    color_dropping: bool = True
    dropped_noise_ratio: float = 0.01
    hidden: int = 128

    def __post_init__(self):
        check(self.gap_ratio >= 0, "gap_ratio", self.gap_ratio, "must be >= 0")
        check(self.jitter_ratio >= 0, "jitter_ratio", self.jitter_ratio, "must be >= 0")
        check(self.dropped_noise_ratio >= 0, "dropped_noise_ratio", self.dropped_noise_ratio,
              "must be >= 0")
        check(self.hidden >= 1, "hidden", self.hidden, "must be >= 1")


@TASKS.register("relative_position")
class RelativePosition(Task):
    """8-way classification of where the second patch sits relative to the first (centre).

    Geometry: patches of side p are laid out on a 3x3 grid with gaps g between them; the
    second patch's corner is the centre's plus ``NEIGHBOURS[target] * (p + g)``, and each patch
    is then jittered independently by up to j pixels per axis.
    Layout: inputs (B*2, 3, p, p), per example [centre, neighbour]. Head:
    :class:`PatchGroupClassifier` over the 2 patches.
    """

    Options = RelativePositionOptions

    def __init__(self, context: TaskContext, options: Optional[RelativePositionOptions] = None):
        super().__init__(context, options)
        o = self.options
        self.patch_size = int(context.image_size / (3 + 2 * o.gap_ratio + 2 * o.jitter_ratio))
        self.gap = int(o.gap_ratio * self.patch_size)
        self.jitter = int(o.jitter_ratio * self.patch_size)
        if self.patch_size < 1:
            raise ValueError(f"relative_position: a {context.image_size}-px image is too small "
                             f"for gap_ratio {o.gap_ratio} and jitter_ratio {o.jitter_ratio}")

    def head(self, trunk_channels: int) -> nn.Module:
        return PatchGroupClassifier(trunk_channels, PATCHES_PER_EXAMPLE, len(NEIGHBOURS),
                                    self.options.hidden)

    def make_batch(self, images: torch.Tensor, rng: np.random.Generator,
                   masks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, size = images.shape[0], images.shape[-1]
        p, step, j = self.patch_size, self.patch_size + self.gap, self.jitter
        # The centre's un-jittered corner leaves room for any neighbour and its jitter.
        centre = rng.integers(step + j, size - p - step - j + 1, size=(b, 1, 2))
        targets = rng.integers(len(NEIGHBOURS), size=b)
        offsets = np.zeros((b, PATCHES_PER_EXAMPLE, 2), dtype=np.int64)
        offsets[:, 1] = np.asarray(NEIGHBOURS)[targets] * step
        corners = centre + offsets + rng.integers(-j, j + 1, size=(b, PATCHES_PER_EXAMPLE, 2))
        corners = torch.from_numpy(corners).to(images.device)      # (B, 2, 2)
        patches = crop_patches(images, corners[..., 0], corners[..., 1], p)  # (B, 2, 3, p, p)
        patches = patches.reshape(b * PATCHES_PER_EXAMPLE, 3, p, p)
        if self.options.color_dropping:
            patches = self.drop_colors(patches, rng)
        return patches, torch.from_numpy(targets).to(images.device)

    def drop_colors(self, patches: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Keep one random channel per patch; the others become 0.5 + faint Gaussian noise."""
        n = patches.shape[0]
        keep = torch.from_numpy(rng.integers(3, size=n)).to(patches.device)
        kept = patches[torch.arange(n, device=patches.device), keep]  # (N, p, p)
        noise_std = self.options.dropped_noise_ratio * kept.flatten(1).std(dim=1)  # (N,)
        noise = torch.from_numpy(rng.standard_normal(tuple(patches.shape), dtype=np.float32))
        noise = noise.to(patches.device)
        filler = (0.5 + noise * noise_std.view(n, 1, 1, 1)).clamp(0.0, 1.0)
        is_kept = F.one_hot(keep, 3).bool().view(n, 3, 1, 1)
        return torch.where(is_kept, patches, filler)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)
