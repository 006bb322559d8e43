"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016, "Unsupervised Learning of Visual
Representations by Solving Jigsaw Puzzles")."""
from __future__ import annotations

import itertools
import math
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

GRID = 3
NUM_TILES = GRID * GRID


def all_permutations(n: int) -> np.ndarray:
    """Every permutation of range(n) as rows of an (n!, n) int8 array, in lexicographic order."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8)


def max_min_hamming_permutations(count: int, n: int = NUM_TILES, seed: int = 0) -> np.ndarray:
    """`count` permutations of range(n) chosen greedily for maximal minimum Hamming distance.

    Noroozi & Favaro's Algorithm 1: start from one random permutation, then repeatedly add the
    permutation farthest from the chosen set. "Farthest" is the largest minimum distance to
    the set, ties broken by the largest total distance, then by the lowest index, so the set
    depends only on `seed`. Returns (count, n) int64.
    """
    candidates = all_permutations(n)
    columns = np.ascontiguousarray(candidates.T)                    # (n, n!): fast compares

    def distances(perm: np.ndarray) -> np.ndarray:
        d = np.zeros(candidates.shape[0], dtype=np.int64)
        for position in range(n):
            d += columns[position] != perm[position]
        return d

    chosen = [int(np.random.default_rng(seed).integers(candidates.shape[0]))]
    min_distance = distances(candidates[chosen[0]])
    total_distance = min_distance.copy()
    for _ in range(count - 1):
        # Lexicographic (min, total) via one integer score; chosen rows have min 0.
        best = int(np.argmax(min_distance * (n * count + 1) + total_distance))
        chosen.append(best)
        d = distances(candidates[best])
        np.minimum(min_distance, d, out=min_distance)
        total_distance += d
    return candidates[chosen].astype(np.int64)


@dataclass(frozen=True)
class JigsawOptions(Options):
    # Paper: 1000 permutations (100 in ablations); 64 suits the small heads and batches here.
    num_permutations: int = 64
    # Paper: 64-px tiles cut at random from 75-px cells (0.85). Tiny tiles make edge continuity
    # an easier shortcut, so we keep smaller tiles and a guaranteed gap between neighbours.
    tile_fraction: float = 0.75        # tile side / cell side
    gap_fraction: float = 0.1          # minimum gap between neighbouring tiles / cell side
    permutation_seed: int = 0          # fixes the permutation set (not the batch rng)
    hidden: int = 128

    def __post_init__(self):
        check(2 <= self.num_permutations <= 1000, "num_permutations", self.num_permutations,
              "in [2, 1000]")
        check(0 < self.tile_fraction <= 1, "tile_fraction", self.tile_fraction, "in (0, 1]")
        check(0 <= self.gap_fraction < 1, "gap_fraction", self.gap_fraction, "in [0, 1)")
        check(self.hidden >= 1, "hidden", self.hidden, "must be >= 1")


@TASKS.register("jigsaw")
class Jigsaw(Task):
    """Classify which permutation of the 3x3 tiles of an image was applied.

    Tiles: the image is cut into a 3x3 grid of cells (the grid itself at a random offset when
    the side is not a multiple of 3); from each cell a `tile_fraction` tile is cut at a random
    position that keeps at least half the minimum gap clear of each cell edge.
    Layout: inputs (B*9, 3, t, t), image-major; for target p with permutation P = perms[p],
    input tile j of an image is its grid tile P[j] (row-major), so ``tiles[argsort(P)]``
    restores the grid order. Head: :class:`PatchGroupClassifier` over the 9 tiles.
    """

    Options = JigsawOptions

    def __init__(self, context: TaskContext, options: Optional[JigsawOptions] = None):
        super().__init__(context, options)
        self.cell = context.image_size // GRID
        self.tile_size = int(self.options.tile_fraction * self.cell)
        self.margin = math.ceil(self.options.gap_fraction * self.cell / 2)
        if self.tile_size < 1 or self.tile_size + 2 * self.margin > self.cell:
            raise ValueError(
                f"jigsaw: {self.cell}-px cells of a {context.image_size}-px image cannot hold "
                f"{self.tile_size}-px tiles with {self.margin}-px margins; lower tile_fraction "
                f"or gap_fraction")
        self.permutations = torch.from_numpy(max_min_hamming_permutations(
            self.options.num_permutations, seed=self.options.permutation_seed))  # (P, 9)

    def head(self, trunk_channels: int) -> nn.Module:
        return PatchGroupClassifier(trunk_channels, NUM_TILES, self.options.num_permutations,
                                    self.options.hidden)

    def cut_tiles(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 9, 3, t, t) jittered tiles in row-major grid order."""
        b, size = images.shape[0], images.shape[-1]
        grid_offset = rng.integers(0, size - GRID * self.cell + 1, size=(b, 1, 2))
        jitter = rng.integers(self.margin, self.cell - self.tile_size - self.margin + 1,
                              size=(b, NUM_TILES, 2))
        cell_row, cell_col = np.divmod(np.arange(NUM_TILES), GRID)
        corners = grid_offset + jitter + self.cell * np.stack([cell_row, cell_col], -1)
        corners = torch.from_numpy(corners).to(images.device)     # (B, 9, 2)
        return crop_patches(images, corners[..., 0], corners[..., 1], self.tile_size)

    def make_batch(self, images: torch.Tensor, rng: np.random.Generator,
                   masks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        tiles = self.cut_tiles(images, rng)                         # (B, 9, 3, t, t)
        b = tiles.shape[0]
        targets = torch.from_numpy(rng.integers(self.options.num_permutations, size=b))
        targets = targets.to(images.device)
        order = self.permutations.to(images.device)[targets]       # (B, 9)
        rows = torch.arange(b, device=images.device).unsqueeze(1)
        shuffled = tiles[rows, order]                               # (B, 9, 3, t, t)
        return shuffled.reshape(b * NUM_TILES, *tiles.shape[2:]), targets

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)
