"""How a sampler turns a dataset image into a fixed-size training crop: two small steps, a
`prepare` applied once per image (its result is what the sampler caches) and a random `crop`
applied each time the image is drawn.

- :class:`SquareCrops` (the default): the shorter side resized to ``size`` once, then a random
  ``size`` x ``size`` square.
- :class:`RescaleCrops`: the segmentation pipeline of the literature (mmsegmentation's
  RandomResize + RandomCrop with ``cat_max_ratio``; DeepLab, UniMatch): the original image is
  rescaled by a random ratio of a base size, padded (label 255 = ignore) to at least the crop,
  and cropped to ``crop_size`` [H, W], retrying a few times for a crop in which no single class
  covers more than ``cat_max_ratio`` of the labelled pixels. Flip and photometric jitter are
  applied by the task on the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import cv2
import numpy as np

from ps_trainer.data.base import IGNORE_INDEX, Sample

_CAT_MAX_TRIES = 10         # mmsegmentation's RandomCrop


class Crops(Protocol):
    size: tuple[int, int]            # (H, W) of every crop

    def prepare(self, sample: Sample) -> Sample: ...

    def crop(self, sample: Sample, rng: np.random.Generator) -> Sample: ...


def resize_short_side(sample: Sample, size: int) -> Sample:
    h, w = sample.image.shape[:2]
    if min(h, w) == size:
        return sample
    scale = size / min(h, w)
    return resize(sample, (max(size, round(h * scale)), max(size, round(w * scale))))


def resize(sample: Sample, hw: tuple[int, int]) -> Sample:
    """Image resized with area (shrinking) or linear (growing) interpolation, mask nearest."""
    h, w = sample.image.shape[:2]
    if (h, w) == tuple(hw):
        return sample
    shrink = hw[0] * hw[1] < h * w
    image = cv2.resize(sample.image, (hw[1], hw[0]),
                       interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    mask = None if sample.mask is None else cv2.resize(sample.mask, (hw[1], hw[0]),
                                                       interpolation=cv2.INTER_NEAREST)
    return Sample(image, mask)


def crop_at(sample: Sample, top: int, left: int, hw: tuple[int, int]) -> Sample:
    """The (H, W) window at (top, left); a missing mask is all ignore."""
    h, w = hw
    image = sample.image[top: top + h, left: left + w]
    if sample.mask is None:
        return Sample(image, np.full((h, w), IGNORE_INDEX, np.uint8))
    return Sample(image, sample.mask[top: top + h, left: left + w])


def crop_square(sample: Sample, size: int, rng: Optional[np.random.Generator] = None):
    """A size x size crop: random if `rng` is given, else centred. Masks default to ignore."""
    h, w = sample.image.shape[:2]
    if rng is None:
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    cropped = crop_at(sample, top, left, (size, size))
    return cropped.image, cropped.mask


@dataclass(frozen=True)
class SquareCrops:
    """The shorter side at `side`, then a random square."""
    side: int

    @property
    def size(self) -> tuple[int, int]:
        return (self.side, self.side)

    def prepare(self, sample: Sample) -> Sample:
        return resize_short_side(sample, self.side)

    def crop(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return Sample(*crop_square(sample, self.side, rng))


@dataclass(frozen=True)
class RescaleCrops:
    """Random rescale of the original, then a `crop_size` crop with `cat_max_ratio`.

    The ratio is drawn from `ratio_range` and multiplies `base_size` [H, W] (null: the image's
    own size); the image is resized to fit inside that scale keeping its aspect ratio
    (mmsegmentation's ``keep_ratio``), e.g. Cityscapes: base (1024, 2048), ratio (0.5, 2.0),
    crop (512, 1024), cat_max_ratio 0.75."""
    crop_size: tuple[int, int]
    ratio_range: tuple[float, float] = (0.5, 2.0)
    base_size: Optional[tuple[int, int]] = None
    cat_max_ratio: float = 0.75

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.crop_size)

    def prepare(self, sample: Sample) -> Sample:
        return sample                       # the original: every rescale starts from it

    def crop(self, sample: Sample, rng: np.random.Generator) -> Sample:
        scaled = self._pad(resize(sample, self._scaled_size(sample, rng)))
        h, w = scaled.image.shape[:2]
        ch, cw = self.crop_size
        for _ in range(_CAT_MAX_TRIES):
            top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            out = crop_at(scaled, top, left, (ch, cw))
            if self.cat_max_ratio >= 1.0 or _largest_class_share(out.mask) < self.cat_max_ratio:
                break
        return out

    def _scaled_size(self, sample: Sample, rng: np.random.Generator) -> tuple[int, int]:
        h, w = sample.image.shape[:2]
        ratio = float(rng.uniform(*self.ratio_range))
        bh, bw = self.base_size or (h, w)
        # Fit inside (bh, bw) * ratio keeping the aspect ratio (long side to the long bound).
        long_bound, short_bound = max(bh, bw) * ratio, min(bh, bw) * ratio
        factor = min(long_bound / max(h, w), short_bound / min(h, w))
        return max(1, round(h * factor)), max(1, round(w * factor))

    def _pad(self, sample: Sample) -> Sample:
        """Pad bottom and right to the crop size: image 0, mask ignore."""
        h, w = sample.image.shape[:2]
        ph, pw = max(self.crop_size[0] - h, 0), max(self.crop_size[1] - w, 0)
        if not (ph or pw):
            return sample
        image = np.pad(sample.image, ((0, ph), (0, pw), (0, 0)))
        mask = None if sample.mask is None else np.pad(sample.mask, ((0, ph), (0, pw)),
                                                        constant_values=IGNORE_INDEX)
        return Sample(image, mask)


def _largest_class_share(mask: np.ndarray) -> float:
    labels = mask[mask != IGNORE_INDEX]
    if labels.size == 0:
        return 0.0
    counts = np.bincount(labels.ravel())
    # mmsegmentation requires more than one class in the crop as well
    return float(counts.max() / labels.size) if np.count_nonzero(counts) > 1 else 1.0
