"""How far color alone gets: a per-pixel color classifier and its validation mIoU.

The classifier quantises RGB into a BINS^3 histogram per class over the labelled images and
predicts, for each color bin, the class seen most often in it (colors never seen fall back
to the most frequent class overall). A segmentation model that does not clearly beat it has
learnt nothing beyond color; a data source on which it scores high is too easy.

    miou = color_baseline_miou(labelled, val, num_classes)
"""
from __future__ import annotations

import numpy as np

from ps_trainer.data.base import IGNORE_INDEX, SegmentationDataset
from ps_trainer.core.segmetrics import confusion_matrix, mean_iou

BINS = 16   # per channel: 16^3 color cells


def color_bins(image: np.ndarray, bins: int = BINS) -> np.ndarray:
    """(H, W) index of each pixel's RGB cell in a bins^3 grid."""
    cell = image.astype(np.int64) * bins // 256
    return (cell[..., 0] * bins + cell[..., 1]) * bins + cell[..., 2]


class ColorClassifier:
    """Majority class per quantised RGB color, fitted on labelled images."""

    def __init__(self, num_classes: int, bins: int = BINS):
        self.num_classes, self.bins = num_classes, bins
        self.counts = np.zeros((bins ** 3, num_classes), dtype=np.int64)
        self.lookup: np.ndarray | None = None

    def update(self, image: np.ndarray, mask: np.ndarray) -> None:
        """Add one labelled image (pixels labelled IGNORE_INDEX are skipped)."""
        keep = mask.ravel() != IGNORE_INDEX
        labels = mask.ravel()[keep].astype(np.int64)
        if labels.size and labels.max() >= self.num_classes:
            raise ValueError(f"mask holds class {labels.max()} >= num_classes {self.num_classes}")
        cells = color_bins(image, self.bins).ravel()[keep]
        self.counts += np.bincount(cells * self.num_classes + labels,
                                   minlength=self.counts.size).reshape(self.counts.shape)
        self.lookup = None

    def fit(self, dataset: SegmentationDataset) -> "ColorClassifier":
        for i in range(len(dataset)):
            sample = dataset[i]
            self.update(sample.image, sample.mask)
        return self

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H, W) uint8 predicted classes."""
        if self.lookup is None:
            fallback = int(self.counts.sum(0).argmax())
            seen = self.counts.sum(1) > 0
            self.lookup = np.where(seen, self.counts.argmax(1), fallback).astype(np.uint8)
        return self.lookup[color_bins(image, self.bins)]


def color_baseline_miou(train: SegmentationDataset, val: SegmentationDataset,
                         num_classes: int) -> float:
    """mIoU on `val` (one confusion matrix over all of it) of a ColorClassifier fitted on
    `train`."""
    classifier = ColorClassifier(num_classes).fit(train)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for i in range(len(val)):
        sample = val[i]
        confusion += confusion_matrix(classifier.predict(sample.image), sample.mask, num_classes)
    return mean_iou(confusion)[0]
