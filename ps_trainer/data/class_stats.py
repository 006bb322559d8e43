"""Per-image class statistics of a labelled split, and rare-class sampling weights from them.

Rare-class sampling (DAFormer: Hoyer et al., CVPR 2022) draws a class c with probability
P(c) ∝ exp((1 - f_c) / T), f_c its share of the labelled pixels, then an image that contains
c, uniformly. As per-image weights: w_i = Σ_{c in image i} P(c) / n_c, n_c the number of images
containing c. A small temperature T favours the rare classes strongly; T → ∞ gives every
class the same chance.

The statistics cost one pass over the labelled masks when a worker starts (the synthetic
scenes: a second for 1,024 images at 64 px; a data set on disk: one read of every label file).
"""
from __future__ import annotations

import numpy as np

from ps_trainer.data.base import SegmentationDataset, UnreadableImage


def class_presence(dataset: SegmentationDataset, num_classes: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(pixels per class (C,) int64, image contains class (N, C) bool) over the labelled
    masks; an unusable image contains nothing (the sampler skips it anyway)."""
    pixels = np.zeros(num_classes, np.int64)
    present = np.zeros((len(dataset), num_classes), bool)
    for i in range(len(dataset)):
        try:
            mask = dataset[i].mask
        except UnreadableImage:
            continue
        if mask is None:
            raise ValueError("rare-class sampling needs labelled images (masks)")
        counts = np.bincount(mask.ravel(), minlength=256)[:num_classes]
        pixels += counts
        present[i] = counts > 0
    return pixels, present


def rare_class_weights(pixels: np.ndarray, present: np.ndarray, temperature: float
                       ) -> np.ndarray:
    """Per-image draw weights (N,) for rare-class sampling at `temperature`; images with no
    labelled class get weight 0 unless no image has one (then uniform)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    seen = present.any(axis=0)
    if not seen.any():
        return np.ones(len(present))
    share = pixels / max(int(pixels.sum()), 1)
    logits = np.where(seen, (1.0 - share) / temperature, -np.inf)
    p_class = np.exp(logits - logits[seen].max())
    p_class /= p_class.sum()
    per_image = np.where(seen, p_class / np.maximum(present.sum(axis=0), 1), 0.0)
    return present.astype(np.float64) @ per_image
