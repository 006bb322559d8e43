"""Batches of images (and masks) as torch tensors, skipping unusable files.

Training: every image is made by a :mod:`~ps_trainer.data.crops` pipeline: by default the
shorter side resized to ``image_size`` and a random square; segmentation may use rescaled
``crop_size`` crops instead. Prepared images are cached in memory up to ``cache_bytes`` so
that a process decodes (or renders) each image once while there is room; an unusable one is
read, logged and counted once, then never drawn again. Background loader processes run the
same sampler (``ps_trainer/data/loader.py``). Evaluation (:class:`EvalReader`) streams whole images at
their own resolution; ``ps_trainer/model/inference.py`` applies the test scale.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from ps_trainer.config import DataConfig
from ps_trainer.data.base import IGNORE_INDEX, Sample, SegmentationDataset, UnreadableImage
from ps_trainer.data.crops import Crops, SquareCrops, crop_square, resize_short_side

log = logging.getLogger(__name__)
_MAX_CONSECUTIVE_FAILURES = 100
DEFAULT_CACHE_BYTES = DataConfig.cache_mb << 20


class ImageSampler:
    """Random batches from a dataset: images (B, 3, H, W) float32 in [0, 1], masks (B, H, W)
    int64, each image made by `crops` (default: a random `image_size` square).

    Prepared images are kept while they fit in `cache_bytes` (image and mask bytes), never
    evicted: draws are uniform, so any policy hits as often, and eviction would only churn
    memory. An unusable image is logged, or handed to `on_unusable(index, error)` instead.
    `weights` (one per image, any positive scale) draws images in proportion to them
    instead of uniformly (rare-class sampling, ``data/class_stats.py``)."""

    def __init__(self, dataset: SegmentationDataset, batch_size: int, image_size: int,
                 rng: np.random.Generator, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 crops: Optional[Crops] = None,
                 on_unusable: Optional[Callable[[int, UnreadableImage], None]] = None,
                 weights: Optional[np.ndarray] = None):
        if len(dataset) == 0:
            raise ValueError("cannot sample batches from an empty dataset")
        self._cdf = None if weights is None else draw_cdf(weights, len(dataset))
        self.dataset = dataset
        self.batch_size = batch_size
        self.image_size = image_size
        self.crops = crops or SquareCrops(image_size)
        self.rng = rng
        self.skipped = 0               # distinct unusable images met so far
        self._bad: set[int] = set()    # their indices: never read again (bounded by the dataset)
        self._cache: dict[int, Sample] = {}
        self._cache_limit_bytes = cache_bytes
        self.cached_bytes = 0
        self._on_unusable = on_unusable or self._log_unusable
        h, w = self.crops.size
        self._images = np.empty((batch_size, h, w, 3), np.uint8)
        self._masks = np.empty((batch_size, h, w), np.uint8) if dataset.has_masks else None

    def sample(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return to_tensors(*self.sample_arrays())

    def close(self) -> None:
        """Nothing to end: the batches are made in the caller's thread."""

    def sample_arrays(self) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """A batch as uint8 arrays, images (B, H, W, 3) and masks (B, H, W) (or None), in
        buffers that the next call overwrites."""
        failures = 0
        i = 0
        while i < self.batch_size:
            index = self._draw()
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
        return self._images, self._masks

    def _draw(self) -> int:
        if self._cdf is None:
            return int(self.rng.integers(len(self.dataset)))
        return int(np.searchsorted(self._cdf, self.rng.random(), side="right"))

    def _load(self, index: int) -> Optional[Sample]:
        sample = self._cache.get(index)
        if sample is not None:
            return sample
        try:
            sample = self.crops.prepare(self.dataset[index])
        except UnreadableImage as err:
            self._bad.add(index)
            self.skipped = len(self._bad)
            self._on_unusable(index, err)
            if self.skipped == len(self.dataset):
                raise RuntimeError(f"all {self.skipped} images are unusable; check the data") from None
            return None
        size = sample.image.nbytes + (sample.mask.nbytes if sample.mask is not None else 0)
        if self.cached_bytes + size <= self._cache_limit_bytes:
            self._cache[index] = sample
            self.cached_bytes += size
        return sample

    def _log_unusable(self, index: int, err: UnreadableImage) -> None:
        log.warning("skipping unusable image (%d skipped so far): %s", self.skipped, err)

    def _put(self, i: int, sample: Sample) -> None:
        cropped = self.crops.crop(sample, self.rng)
        self._images[i] = cropped.image
        if self._masks is not None:
            self._masks[i] = cropped.mask


def draw_cdf(weights: np.ndarray, count: int) -> np.ndarray:
    """The cumulative shares of `count` non-negative image weights (a positive sum), to draw
    from with one uniform number."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (count,) or not np.all(np.isfinite(weights)) or weights.min() < 0 \
            or weights.sum() <= 0:
        raise ValueError(f"image weights must be {count} finite values >= 0 with a positive "
                         f"sum, got shape {weights.shape}")
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0 + 1e-12      # searchsorted never runs past the last image
    return cdf


class EvalReader:
    """A validation split read in order, one pass per evaluation, each image at its own
    resolution. An unusable image is skipped, logged and counted once, and not read again.
    Samples are kept as read (uint8) up to `cache_bytes`: a small split (the synthetic scenes,
    256 x 16 KiB) is read once, a large one is streamed (only one batch is held)."""

    def __init__(self, dataset: SegmentationDataset, cache_bytes: int = 0):
        self.dataset = dataset
        self.unusable: set[int] = set()   # bounded by the dataset
        self._cache: dict[int, Sample] = {}
        self._cache_bytes = cache_bytes
        self._cached_bytes = 0

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of up to `batch_size` consecutive images of one size: (B, 3, H, W) float32 in
        [0, 1] and masks (B, H, W) int64 (255 where an image has none)."""
        images, masks = [], []
        for sample in self.samples():
            if images and images[0].shape != sample.image.shape:
                yield to_tensors(np.stack(images), np.stack(masks))
                images, masks = [], []
            images.append(sample.image)
            masks.append(sample.mask if sample.mask is not None
                         else np.full(sample.image.shape[:2], IGNORE_INDEX, np.uint8))
            if len(images) == batch_size:
                yield to_tensors(np.stack(images), np.stack(masks))
                images, masks = [], []
        if images:
            yield to_tensors(np.stack(images), np.stack(masks))

    def samples(self) -> Iterator[Sample]:
        """Every usable sample once, in order."""
        for index in range(len(self.dataset)):
            if index in self.unusable:
                continue
            sample = self._cache.get(index)
            if sample is None:
                sample = self._read(index)
            if sample is not None:
                yield sample

    def _read(self, index: int) -> Optional[Sample]:
        try:
            sample = self.dataset[index]
        except UnreadableImage as err:
            self.unusable.add(index)
            log.warning("skipping unusable validation image (%d so far): %s",
                        len(self.unusable), err)
            return None
        size = sample.image.nbytes + (sample.mask.nbytes if sample.mask is not None else 0)
        if self._cached_bytes + size <= self._cache_bytes:
            self._cache[index] = sample
            self._cached_bytes += size
        return sample


def iterate_eval(dataset: SegmentationDataset, batch_size: int
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over `dataset` in batches (see :class:`EvalReader`), nothing cached."""
    return EvalReader(dataset).batches(batch_size)


def to_tensors(images: np.ndarray, masks: Optional[np.ndarray]):
    # (B, S, S, 3) uint8 -> (B, 3, S, S) float32 in [0, 1]; masks (B, S, S) uint8 -> int64
    return batch_tensors(torch.from_numpy(images),
                         torch.from_numpy(masks) if masks is not None else None)


def batch_tensors(images: torch.Tensor, masks: Optional[torch.Tensor]):
    """uint8 images (B, H, W, 3) -> (B, 3, H, W) float32 in [0, 1], masks (B, H, W) uint8 ->
    int64, on the tensors' own device."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    y = masks.long() if masks is not None else None
    return x, y
