"""Cityscapes fine annotations, with labelIds mapped to the 19 official train ids.

Layout::

    root/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
    root/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ps_trainer.config import SOURCE_SPLITS
from ps_trainer.data.base import IGNORE_INDEX
from ps_trainer.data.readers.files import (ImageMaskFiles, as_index_mask, check_split,
                                           require_dir)
from ps_trainer.data.readers.registry import READERS

CITYSCAPES_SPLITS = SOURCE_SPLITS["cityscapes"]
IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"

# (labelId, name) of the evaluated classes, in train-id order (cityscapesScripts labels.py).
TRAIN_CLASSES = (
    (7, "road"), (8, "sidewalk"), (11, "building"), (12, "wall"), (13, "fence"),
    (17, "pole"), (19, "traffic light"), (20, "traffic sign"), (21, "vegetation"),
    (22, "terrain"), (23, "sky"), (24, "person"), (25, "rider"), (26, "car"),
    (27, "truck"), (28, "bus"), (31, "train"), (32, "motorcycle"), (33, "bicycle"),
)
CLASS_NAMES = tuple(name for _, name in TRAIN_CLASSES)


def _label_to_train_id() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, (label_id, _) in enumerate(TRAIN_CLASSES):
        table[label_id] = train_id
    return table


LABEL_TO_TRAIN_ID = _label_to_train_id()

# The color of each labelId 0..33 (cityscapesScripts labels.py): the palette of GTA5's labels.
LABEL_COLORS = (
    (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (111, 74, 0), (81, 0, 81),
    (128, 64, 128), (244, 35, 232), (250, 170, 160), (230, 150, 140), (70, 70, 70),
    (102, 102, 156), (190, 153, 153), (180, 165, 180), (150, 100, 100), (150, 120, 90),
    (153, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35),
    (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)


@READERS.register("cityscapes")
class CityscapesDataset(ImageMaskFiles):
    """Cityscapes leftImg8bit images with gtFine labels as train ids (255 = ignore)."""

    num_classes = len(TRAIN_CLASSES)
    class_names = CLASS_NAMES

    def __init__(self, root: str | Path, split: str):
        check_split(split, CITYSCAPES_SPLITS)
        super().__init__(require_dir(Path(root), "dataset root"), split)
        image_root = require_dir(self.root / "leftImg8bit" / split, "split folder")
        mask_root = require_dir(self.root / "gtFine" / split, "split folder")
        for image in sorted(image_root.glob(f"*/*{IMAGE_SUFFIX}")):
            stem = image.name[: -len(IMAGE_SUFFIX)]
            self._add(image, mask_root / image.parent.name / f"{stem}{MASK_SUFFIX}")
        self._require_pairs()

    def image_id(self, image: Path) -> str:
        """`aachen_000000_000019` for `aachen_000000_000019_leftImg8bit.png`."""
        return image.name[: -len(IMAGE_SUFFIX)]

    def labels(self, raw_mask: np.ndarray, path: Path) -> np.ndarray:
        return LABEL_TO_TRAIN_ID[as_index_mask(raw_mask, path)]
