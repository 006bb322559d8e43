"""What every image source provides: index-addressed RGB images and (optionally) masks.

Images are uint8 (H, W, 3) RGB; masks are uint8 (H, W) class indices with 255 = ignore.
Readers of files on disk raise :class:`UnreadableImage` for a file that cannot be decoded
(or whose mask does not match); the samplers skip it, log it and count it.
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

IGNORE_INDEX = 255
log = logging.getLogger(__name__)


class UnreadableImage(Exception):
    """An image or mask that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class Sample:
    image: np.ndarray                  # (H, W, 3) uint8 RGB
    mask: Optional[np.ndarray] = None  # (H, W) uint8, 255 = ignore


class SegmentationDataset(abc.ABC):
    """A finite, index-addressed collection of images with (optional) segmentation masks."""

    num_classes: int
    class_names: tuple[str, ...]
    has_masks: bool = True

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Sample:
        """The sample at `index`; raises UnreadableImage for a file that cannot be used."""


class Subset(SegmentationDataset):
    """A view of some indices of another dataset (optionally dropping its masks)."""

    def __init__(self, base: SegmentationDataset, indices, with_masks: bool = True):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.num_classes = base.num_classes
        self.class_names = base.class_names
        self.has_masks = with_masks and base.has_masks

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        sample = self.base[int(self.indices[index])]
        return sample if self.has_masks else Sample(sample.image)


class Concat(SegmentationDataset):
    """Several datasets with the same classes, one after another."""

    def __init__(self, parts: list[SegmentationDataset]):
        if not parts:
            raise ValueError("Concat needs at least one dataset")
        self.parts = parts
        self.num_classes = parts[0].num_classes
        self.class_names = parts[0].class_names
        self.has_masks = all(p.has_masks for p in parts)
        self._ends = np.cumsum([len(p) for p in parts])

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        part = int(np.searchsorted(self._ends, index, side="right"))
        start = 0 if part == 0 else int(self._ends[part - 1])
        return self.parts[part][index - start]
