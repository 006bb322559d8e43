"""GTA5 (Richter et al., "Playing for Data", ECCV 2016): 24,966 frames of a video game,
labelled in Cityscapes' label ids and mapped here to Cityscapes' 19 train ids, so that a
model trained on it is scored on Cityscapes (synthetic -> real domain adaptation).

Layout, as distributed::

    root/images/00001.png   root/labels/00001.png

The labels are palette PNGs whose indices are the label ids (the palette only colors them);
a single-channel index PNG is read as it is. GTA5 has no official validation split (domain
adaptation papers train on all of it and validate on Cityscapes), so the reader serves
"train" only; a split list (``data.labelled_list``) restricts it. In the real data set some
images differ from their labels by a few pixels: such a pair is an UnreadableImage, skipped
and counted by the samplers like any other unusable file, rather than a label stretched
over an image it was not drawn for.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ps_trainer.config import SOURCE_SPLITS
from ps_trainer.data.readers.cityscapes import CLASS_NAMES, LABEL_TO_TRAIN_ID
from ps_trainer.data.readers.files import (ImageMaskFiles, as_index_mask, check_split,
                                           files_with_extensions, read_label_ids, require_dir)
from ps_trainer.data.readers.registry import READERS

GTA5_SPLITS = SOURCE_SPLITS["gta5"]
IMAGE_DIR, LABEL_DIR, EXTENSION = "images", "labels", ".png"


@READERS.register("gta5")
class GTA5Dataset(ImageMaskFiles):
    """GTA5 frames with their labels as Cityscapes train ids (255 = ignore)."""

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES
    read_mask = staticmethod(read_label_ids)

    def __init__(self, root: str | Path, split: str = "train"):
        check_split(split, GTA5_SPLITS)
        super().__init__(require_dir(Path(root), "dataset root"), split)
        image_dir = require_dir(self.root / IMAGE_DIR, "image folder")
        label_dir = require_dir(self.root / LABEL_DIR, "label folder")
        for image in files_with_extensions(image_dir, (EXTENSION,)):
            self._add(image, label_dir / image.name)
        self._require_pairs()

    def labels(self, raw_mask: np.ndarray, path: Path) -> np.ndarray:
        return LABEL_TO_TRAIN_ID[as_index_mask(raw_mask, path)]
