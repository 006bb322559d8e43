"""Colorization as classification of quantised ab colors (Zhang, Isola & Efros, ECCV 2016,
"Colorful Image Colorization")."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ps_trainer.core.color import lab_to_rgb, rgb_to_lab
from ps_trainer.config.options import Options, check
from ps_trainer_workers.tasks.base import Task, TaskContext
from ps_trainer_workers.tasks.registry import TASKS
from ps_trainer_workers.tasks.heads import DenseDecoder, resize_like


@dataclass(frozen=True)
class ColorizationOptions(Options):
    grid_size: float = 10.0        # ab bin side (paper: 10)
    ab_range: float = 110.0        # bin centres k * grid_size within [-ab_range, ab_range]
    target_stride: int = 4         # paper predicts and scores at 1/4 resolution (56 of 224 px)
    rebalance: bool = True         # paper's class rebalancing
    rebalance_lambda: float = 0.5  # paper: lambda = 1/2
    prior_sigma: float = 5.0       # Gaussian smoothing of the prior, ab units (paper: 5)
    decoder_width: int = 64

    def __post_init__(self):
        check(self.grid_size > 0, "grid_size", self.grid_size, "must be > 0")
        check(self.ab_range >= self.grid_size, "ab_range", self.ab_range, ">= grid_size")
        check(self.target_stride >= 1 and self.target_stride & (self.target_stride - 1) == 0,
              "target_stride", self.target_stride, "a power of two")
        check(0 <= self.rebalance_lambda <= 1, "rebalance_lambda", self.rebalance_lambda,
              "in [0, 1]")
        check(self.prior_sigma >= 0, "prior_sigma", self.prior_sigma, "must be >= 0")
        check(self.decoder_width >= 16, "decoder_width", self.decoder_width, "must be >= 16")


class AbQuantizer:
    """Square ab grid with bin centres at multiples of `grid_size` (grey, ab = 0, is a centre,
    not an edge), as in the paper: `bins_per_axis`^2 bins, bin = a_index * bins_per_axis +
    b_index, a_index = round(a / grid_size) + half."""

    def __init__(self, grid_size: float, ab_range: float):
        self.grid_size = grid_size
        self.half = int(ab_range // grid_size)          # centres -half..half times grid_size
        self.bins_per_axis = 2 * self.half + 1
        self.num_bins = self.bins_per_axis ** 2

    def encode(self, ab: torch.Tensor) -> torch.Tensor:
        """(B, 2, h, w) ab -> (B, h, w) int64 nearest bin (colors beyond the grid clamp)."""
        index = torch.round(ab / self.grid_size).long().clamp(-self.half, self.half) + self.half
        return index[:, 0] * self.bins_per_axis + index[:, 1]

    def decode(self, bins: torch.Tensor) -> torch.Tensor:
        """(B, h, w) bin indices -> (B, 2, h, w) ab of the bin centres."""
        index = torch.stack([bins // self.bins_per_axis, bins % self.bins_per_axis], dim=1)
        return (index - self.half).float() * self.grid_size


def gaussian_smooth_grid(grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur an (n, n) grid with a Gaussian of `sigma` cells (zero padding)."""
    if sigma <= 0:
        return grid
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=grid.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.conv2d(grid.view(1, 1, *grid.shape), kernel.view(1, 1, 1, -1), padding=(0, radius))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return out.view(grid.shape)


@TASKS.register("colorization")
class Colorization(Task):
    """Predict each pixel's ab color bin from its lightness.

    Inputs: the L channel rendered as grey RGB (as ``lightness_as_rgb``), full resolution.
    Targets: ab averaged over `target_stride` x `target_stride` blocks, hard-encoded to the
    nearest bin of a square grid of centres over [-ab_range, ab_range]^2 (all grid bins are
    kept, 23^2 = 529 by default; bins out of gamut simply never occur), (B, H/s, W/s) int64.
    Hard rather than the paper's soft (5-nearest) encoding keeps targets one index per pixel
    instead of a Q-vector.
    Head: :class:`DenseDecoder` to Q logits at `target_stride`; the loss bilinearly resizes
    them (align_corners=False) to the target's size when the trunk cannot reach it.
    Loss: cross-entropy per pixel, averaged, each pixel weighted by its bin's rebalancing weight
    w ∝ ((1 - λ) p̃ + λ / Q)^-1 with E_p̃[w] = 1, where p̃ is the Gaussian-smoothed
    histogram of every target bin this task has produced so far (an online stand-in for the
    paper's dataset-wide prior; uniform weights before the first batch).
    """

    Options = ColorizationOptions

    def __init__(self, context: TaskContext, options: Optional[ColorizationOptions] = None):
        super().__init__(context, options)
        self.quantizer = AbQuantizer(self.options.grid_size, self.options.ab_range)
        self.bin_counts = torch.zeros(self.quantizer.num_bins, dtype=torch.float64)

    @property
    def num_bins(self) -> int:
        return self.quantizer.num_bins

    def head(self, trunk_channels: int) -> nn.Module:
        return DenseDecoder(trunk_channels, self.num_bins, self.context.trunk_stride,
                            self.options.target_stride, self.options.decoder_width)

    def make_batch(self, images: torch.Tensor, rng: np.random.Generator,
                   masks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        lab = rgb_to_lab(images)                                     # (B, 3, H, W)
        # The grey image of the same lightness (= lightness_as_rgb, reusing this Lab).
        inputs = lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], dim=1))
        ab = lab[:, 1:]                                              # (B, 2, H, W)
        if self.options.target_stride > 1:
            ab = F.avg_pool2d(ab, self.options.target_stride)        # (B, 2, H/s, W/s)
        targets = self.quantizer.encode(ab)
        self.bin_counts += torch.bincount(targets.flatten().cpu(), minlength=self.num_bins).double()
        return inputs, targets

    def class_weights(self) -> torch.Tensor:
        """(Q,) rebalancing weights from the running prior (all ones before any batch)."""
        total = self.bin_counts.sum()
        if not self.options.rebalance or total == 0:
            return torch.ones(self.num_bins)
        n = self.quantizer.bins_per_axis
        sigma_cells = self.options.prior_sigma / self.options.grid_size
        prior = gaussian_smooth_grid((self.bin_counts / total).view(n, n), sigma_cells).flatten()
        prior = prior / prior.sum()
        lam = self.options.rebalance_lambda
        weights = 1.0 / ((1 - lam) * prior + lam / self.num_bins)
        return (weights / (prior * weights).sum()).float()

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = resize_like(output, target.shape[-2:])              # (B, Q, h, w)
        per_pixel = F.cross_entropy(logits, target, reduction="none")  # (B, h, w)
        if self.options.rebalance:
            per_pixel = per_pixel * self.class_weights().to(per_pixel.device)[target]
        return per_pixel.mean()
