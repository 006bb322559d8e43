"""Procedural street and landscape scenes with exact masks: the default data source.

The generator is the package `ps_trainer.data.scenes`; this module is its public face: the
dataset, the class names, and a preview grid with class frequencies:

    python -m ps_trainer.data.synthetic --out previews/ --count 16 --size 128 --domain shifted
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from ps_trainer.config import SHIFTED_DOMAIN, DomainConfig
from ps_trainer.data.base import SegmentationDataset, Sample
from ps_trainer.data.scenes.layout import Layout
from ps_trainer.data.scenes.materials import (BUILDING, CLASS_NAMES, GROUND, MATERIAL_CLASS, OBJECT,
                                              ROAD, SKY, VEGETATION)
from ps_trainer.data.scenes.paint import render_scene
from ps_trainer.data.scenes.raster import rasterise, segment_boxes, segment_classes
from ps_trainer.observe.plots import colorize

# Re-exported: callers name the classes, `render_scene` and the layout tools by this module.
__all__ = ["BUILDING", "CLASS_NAMES", "GROUND", "Layout", "MATERIAL_CLASS", "OBJECT", "ROAD", "SKY",
           "SyntheticScenes", "VEGETATION", "main", "pixel_frequencies", "preview_grid", "rasterise",
           "render_scene", "segment_boxes", "segment_classes"]


class SyntheticScenes(SegmentationDataset):
    """`count` procedural scenes; scene i is rendered from default_rng([seed, i])."""

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(self, count: int, image_size: int, seed: int,
                 domain: DomainConfig = DomainConfig(), with_masks: bool = True):
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        self.count, self.image_size, self.seed = count, image_size, seed
        self.domain = domain
        self.has_masks = with_masks

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.count:
            raise IndexError(f"scene {index} out of range [0, {self.count})")
        image, mask = render_scene(np.random.default_rng([self.seed, int(index)]),
                                   self.image_size, self.domain)
        return Sample(image, mask if self.has_masks else None)


# --------------------------------------------------------------------------- previews

def preview_grid(dataset: SegmentationDataset, count: int, columns: int = 4) -> np.ndarray:
    """An RGB grid of (image | colorized mask) pairs with a 2-pixel gutter."""
    tiles = []
    for i in range(count):
        sample = dataset[i]
        mask = sample.mask
        if mask is None:
            mask = np.full(sample.image.shape[:2], 255, dtype=np.uint8)
        tiles.append(np.concatenate([sample.image, colorize(mask)], axis=1))
    h, w = tiles[0].shape[:2]
    rows = -(-count // columns)
    grid = np.full((rows * (h + 2), columns * (w + 2), 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = tile
    return grid


def pixel_frequencies(dataset: SegmentationDataset, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(share of pixels, share of images containing the class) over the first `count` scenes."""
    pixels = np.zeros(dataset.num_classes, dtype=np.int64)
    present = np.zeros(dataset.num_classes, dtype=np.int64)
    for i in range(count):
        counts = np.bincount(dataset[i].mask.ravel(), minlength=dataset.num_classes)
        pixels += counts[:dataset.num_classes]
        present += counts[:dataset.num_classes] > 0
    return pixels / pixels.sum(), present / count


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a preview grid of synthetic scenes.")
    parser.add_argument("--out", required=True, help="directory for the PNG")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--domain", choices=("source", "shifted"), default="source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bench", type=int, default=500, help="scenes to time (0 = skip)")
    args = parser.parse_args(argv)
    domain = SHIFTED_DOMAIN if args.domain == "shifted" else DomainConfig()
    scenes = SyntheticScenes(max(args.count, args.bench), args.size, args.seed, domain)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"synthetic_{args.domain}_{args.size}px_seed{args.seed}.png"
    cv2.imwrite(str(path), cv2.cvtColor(preview_grid(scenes, args.count), cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")
    if args.bench:
        start = time.perf_counter()
        for i in range(args.bench):
            scenes[i]
        elapsed = time.perf_counter() - start
        print(f"{args.bench / elapsed:.0f} images/s at {args.size}x{args.size} ({args.domain})")
        pixels, present = pixel_frequencies(scenes, args.bench)
        for name, share, images in zip(CLASS_NAMES, pixels, present):
            print(f"  {name:<11} {100 * share:5.1f}% of pixels, in {100 * images:5.1f}% of images")


if __name__ == "__main__":
    main()
