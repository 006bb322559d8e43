"""Batches of training images (and masks) as torch tensors, skipping unusable files.

Every image is made by a :mod:`~ps_trainer.data.crops` pipeline: by default the shorter side
resized to ``image_size`` and a random square (centred for evaluation); segmentation may use
rescaled ``crop_size`` crops instead. Prepared images are cached in memory
up to ``cache_images`` so that a worker decodes (or renders) each image once; an unusable one
is read, logged and counted once, then never drawn again.
"""
from __future__ import annotations

import logging
from typing import Iterator, Optional

import numpy as np
import torch

from ps_trainer.data.base import Sample, SegmentationDataset, UnreadableImage
from ps_trainer.data.crops import Crops, SquareCrops, crop_square, resize_short_side

log = logging.getLogger(__name__)
_MAX_CONSECUTIVE_FAILURES = 100


class ImageSampler:
    """Random batches from a dataset: images (B, 3, H, W) float32 in [0, 1], masks (B, H, W)
    int64, each image made by `crops` (default: a random `image_size` square)."""

    def __init__(self, dataset: SegmentationDataset, batch_size: int, image_size: int,
                 rng: np.random.Generator, cache_images: int = 8192,
                 crops: Optional[Crops] = None):
        if len(dataset) == 0:
            raise ValueError("cannot sample batches from an empty dataset")
        self.dataset = dataset
        self.batch_size = batch_size
        self.image_size = image_size
        self.crops = crops or SquareCrops(image_size)
        self.rng = rng
        self.skipped = 0               # distinct unusable images met so far
        self._bad: set[int] = set()    # their indices: never read again (bounded by the dataset)
        self._cache: dict[int, Sample] = {}
        self._cache_limit = cache_images
        h, w = self.crops.size
        self._images = np.empty((batch_size, h, w, 3), np.uint8)
        self._masks = np.empty((batch_size, h, w), np.uint8) if dataset.has_masks else None

    def sample(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        failures = 0
        i = 0
        while i < self.batch_size:
            index = int(self.rng.integers(len(self.dataset)))
            if index in self._bad:
                continue
            sample = self._load(index)
            if sample is None:
                failures += 1
                if failures >= _MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(f"{failures} unusable images in a row; "
                                       f"{self.skipped} skipped so far — check the data")
                continue
            failures = 0
            self._put(i, sample)
            i += 1
        return to_tensors(self._images, self._masks)

    def _load(self, index: int) -> Optional[Sample]:
        sample = self._cache.get(index)
        if sample is not None:
            return sample
        try:
            sample = self.crops.prepare(self.dataset[index])
        except UnreadableImage as err:
            self._bad.add(index)
            self.skipped = len(self._bad)
            log.warning("skipping unusable image (%d skipped so far): %s", self.skipped, err)
            if self.skipped == len(self.dataset):
                raise RuntimeError(f"all {self.skipped} images are unusable; check the data") from None
            return None
        if len(self._cache) < self._cache_limit:
            self._cache[index] = sample
        return sample

    def _put(self, i: int, sample: Sample) -> None:
        cropped = self.crops.crop(sample, self.rng)
        self._images[i] = cropped.image
        if self._masks is not None:
            self._masks[i] = cropped.mask


def iterate_eval(dataset: SegmentationDataset, batch_size: int, image_size: int
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The whole dataset once, in order, centre-cropped; unusable files are skipped and logged."""
    images, masks = [], []
    for index in range(len(dataset)):
        try:
            image, mask = crop_square(resize_short_side(dataset[index], image_size), image_size)
        except UnreadableImage as err:
            log.warning("skipping unusable validation image: %s", err)
            continue
        images.append(image)
        masks.append(mask)
        if len(images) == batch_size:
            yield to_tensors(np.stack(images), np.stack(masks))
            images, masks = [], []
    if images:
        yield to_tensors(np.stack(images), np.stack(masks))


def to_tensors(images: np.ndarray, masks: Optional[np.ndarray]):
    # (B, S, S, 3) uint8 -> (B, 3, S, S) float32 in [0, 1]; masks (B, S, S) uint8 -> int64
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    y = torch.from_numpy(masks).long() if masks is not None else None
    return x, y
