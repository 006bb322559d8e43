"""Batches of square training images (and masks) as torch tensors, skipping unusable files.

Every image is brought to ``image_size``: the shorter side is resized to it, then a square is
cropped (random for training, centred for evaluation). Prepared images are cached in memory
up to ``cache_images`` so that a worker decodes (or renders) each image once; an unusable one
is read, logged and counted once, then never drawn again.
"""
from __future__ import annotations

import logging
from typing import Iterator, Optional

import cv2
import numpy as np
import torch

from ps_trainer.data.base import IGNORE_INDEX, Sample, SegmentationDataset, UnreadableImage

log = logging.getLogger(__name__)
_MAX_CONSECUTIVE_FAILURES = 100


class ImageSampler:
    """Random batches from a dataset: images (B, 3, S, S) float32 in [0, 1], masks (B, S, S) int64."""

    def __init__(self, dataset: SegmentationDataset, batch_size: int, image_size: int,
                 rng: np.random.Generator, cache_images: int = 8192):
        if len(dataset) == 0:
            raise ValueError("cannot sample batches from an empty dataset")
        self.dataset = dataset
        self.batch_size = batch_size
        self.image_size = image_size
        self.rng = rng
        self.skipped = 0               # distinct unusable images met so far
        self._bad: set[int] = set()    # their indices: never read again (bounded by the dataset)
        self._cache: dict[int, Sample] = {}
        self._cache_limit = cache_images
        s = image_size
        self._images = np.empty((batch_size, s, s, 3), np.uint8)
        self._masks = np.empty((batch_size, s, s), np.uint8) if dataset.has_masks else None

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
            self._put(i, sample, train=True)
            i += 1
        return to_tensors(self._images, self._masks)

    def _load(self, index: int) -> Optional[Sample]:
        sample = self._cache.get(index)
        if sample is not None:
            return sample
        try:
            sample = resize_short_side(self.dataset[index], self.image_size)
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

    def _put(self, i: int, sample: Sample, train: bool) -> None:
        image, mask = crop_square(sample, self.image_size, self.rng if train else None)
        self._images[i] = image
        if self._masks is not None:
            self._masks[i] = mask


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


def resize_short_side(sample: Sample, size: int) -> Sample:
    h, w = sample.image.shape[:2]
    if min(h, w) == size:
        return sample
    scale = size / min(h, w)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))  # cv2 takes (w, h)
    image = cv2.resize(sample.image, new, interpolation=cv2.INTER_AREA)
    mask = None
    if sample.mask is not None:
        mask = cv2.resize(sample.mask, new, interpolation=cv2.INTER_NEAREST)
    return Sample(image, mask)


def crop_square(sample: Sample, size: int, rng: Optional[np.random.Generator] = None):
    """A size x size crop: random if `rng` is given, else centred. Masks default to ignore."""
    h, w = sample.image.shape[:2]
    if rng is None:
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    image = sample.image[top: top + size, left: left + size]
    if sample.mask is None:
        return image, np.full((size, size), IGNORE_INDEX, np.uint8)
    return image, sample.mask[top: top + size, left: left + size]
