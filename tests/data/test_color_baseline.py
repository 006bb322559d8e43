"""The color-only baseline: that it works when color decides the class,
and that it fails on the synthetic scenes."""
from __future__ import annotations

import numpy as np

from ps_trainer.data.base import IGNORE_INDEX, SegmentationDataset, Sample
from ps_trainer.data.color_baseline import ColorClassifier, color_baseline_miou
from ps_trainer.data.synthetic import CLASS_NAMES, SyntheticScenes

# Bin centres of the 16-level quantisation, so small noise stays in the bin.
CLASS_COLORS = np.array([[8, 8, 8], [248, 8, 8], [8, 248, 8], [8, 8, 248], [136, 136, 136]])


class ColorCodedBlocks(SegmentationDataset):
    """Random block masks; each class has its own color (plus noise that stays in its bin)."""

    num_classes = len(CLASS_COLORS)
    class_names = tuple(f"c{k}" for k in range(len(CLASS_COLORS)))

    def __init__(self, count: int, seed: int, ignore_share: float = 0.0):
        self.count, self.seed, self.ignore_share = count, seed, ignore_share

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, index])
        blocks = rng.integers(0, self.num_classes, (6, 6))
        mask = np.kron(blocks, np.ones((5, 5), dtype=np.int64)).astype(np.uint8)
        image = CLASS_COLORS[mask] + rng.integers(-6, 7, mask.shape + (3,))
        mask[rng.random(mask.shape) < self.ignore_share] = IGNORE_INDEX
        return Sample(image.clip(0, 255).astype(np.uint8), mask)


def test_classifier_is_near_perfect_when_color_decides_the_class():
    train, val = ColorCodedBlocks(4, seed=0), ColorCodedBlocks(20, seed=1)
    assert color_baseline_miou(train, val, train.num_classes) > 0.999


def test_ignored_pixels_neither_train_nor_count():
    clean = color_baseline_miou(ColorCodedBlocks(4, 0), ColorCodedBlocks(10, 1), 5)
    holey = color_baseline_miou(ColorCodedBlocks(4, 0, ignore_share=0.3),
                                 ColorCodedBlocks(10, 1, ignore_share=0.3), 5)
    assert clean > 0.999 and holey > 0.999


def test_majority_class_per_bin_and_fallback_for_unseen_colors():
    classifier = ColorClassifier(num_classes=3)
    grey = np.full((2, 2, 3), 100, dtype=np.uint8)
    classifier.update(grey, np.array([[1, 1], [1, 2]], dtype=np.uint8))   # bin -> class 1
    classifier.update(np.full((3, 3, 3), 200, dtype=np.uint8), np.full((3, 3), 2, np.uint8))
    unseen = np.zeros((1, 1, 3), dtype=np.uint8)
    assert classifier.predict(grey).tolist() == [[1, 1], [1, 1]]
    assert classifier.predict(unseen).item() == 2   # class 2 has most pixels overall


def test_color_alone_does_poorly_on_synthetic_scenes():
    """16 labelled source images, 200 validation images: color must not give the class."""
    train = SyntheticScenes(16, 64, seed=1)
    val = SyntheticScenes(200, 64, seed=2)
    miou = color_baseline_miou(train, val, len(CLASS_NAMES))
    assert 0.05 < miou < 0.25, miou
