"""The plain-folder layout: images and index masks matched by file stem.

Folder layout::

    root/images/<stem>.{png,jpg,jpeg,bmp}   root/masks/<stem>.png   [root/classes.txt]

Masks hold class indices (0 .. num_classes-1, 255 = ignore) in one 8-bit channel. With
``root/images/{train,val}`` and ``root/masks/{train,val}`` the split folders are used as they
are. Without them the images are sorted by file name and every 10th one, starting with the
first (positions 0, 10, 20, ...), is held out as "val"; "train" is all the others. The hold-out
is drawn from the image names before masks are matched, so adding or removing a mask never
moves another image between the splits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ps_trainer.config import SOURCE_SPLITS
from ps_trainer.data.base import IGNORE_INDEX, UnreadableImage
from ps_trainer.data.readers.files import (IMAGE_EXTENSIONS, ImageMaskFiles, as_index_mask,
                                           check_split, files_with_extensions, require_dir)
from ps_trainer.data.readers.registry import READERS

MASK_EXTENSION = ".png"
FOLDER_SPLITS = SOURCE_SPLITS["folder"]
HOLDOUT_EVERY = 10
CLASSES_FILE = "classes.txt"
MAX_CLASSES = IGNORE_INDEX  # class indices must stay below the ignore value in a uint8 mask


def read_class_names(path: Path, num_classes: int) -> tuple[str, ...]:
    """Names from `path`, one per non-blank line, or class0.. if the file is absent."""
    if not path.is_file():
        return tuple(f"class{i}" for i in range(num_classes))
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(names) != num_classes:
        raise ValueError(f"{path} names {len(names)} classes but num_classes is {num_classes}")
    return names


@READERS.register("folder")
class FolderDataset(ImageMaskFiles):
    """Images and index masks matched by file stem (see the module docstring for the layout)."""

    def __init__(self, root: str | Path, split: str, num_classes: int):
        check_split(split, FOLDER_SPLITS)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) \
                or not 2 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be an integer in [2, {MAX_CLASSES}]; "
                             f"got {num_classes!r}")
        super().__init__(require_dir(Path(root), "dataset root"), split)
        self.num_classes = num_classes
        self.class_names = read_class_names(self.root / CLASSES_FILE, num_classes)
        mask_dir, images = self._split_images()
        masks = {p.stem: p for p in files_with_extensions(mask_dir, (MASK_EXTENSION,))}
        taken: dict[str, Path] = {}
        for image in images:
            if image.stem in taken:
                self._skip(image, f"same stem as {taken[image.stem]}, so its mask is ambiguous")
                continue
            taken[image.stem] = image
            self._add(image, masks.get(image.stem, mask_dir / f"{image.stem}{MASK_EXTENSION}"))
        self._require_pairs()

    def _split_images(self) -> tuple[Path, list[Path]]:
        """The mask folder of this split and the split's image files."""
        image_dir = require_dir(self.root / "images", "image folder")
        mask_dir = require_dir(self.root / "masks", "mask folder")
        if any((image_dir / split).is_dir() for split in FOLDER_SPLITS):
            # One split folder present means the user laid out splits; the other must exist too.
            for split in FOLDER_SPLITS:
                require_dir(image_dir / split, "split folder")
            mask_dir = require_dir(mask_dir / self.split, "split folder")
            return mask_dir, files_with_extensions(image_dir / self.split, IMAGE_EXTENSIONS)
        images = files_with_extensions(image_dir, IMAGE_EXTENSIONS)
        held_out = self.split == "val"
        chosen = [p for i, p in enumerate(images) if (i % HOLDOUT_EVERY == 0) == held_out]
        return mask_dir, chosen

    def labels(self, raw_mask: np.ndarray, path: Path) -> np.ndarray:
        mask = as_index_mask(raw_mask, path)
        bad = mask[(mask >= self.num_classes) & (mask != IGNORE_INDEX)]
        if bad.size:
            shown = ", ".join(str(v) for v in np.unique(bad)[:5])
            raise UnreadableImage(f"{path}: mask values {shown} are >= num_classes "
                                  f"({self.num_classes}) and not the ignore value {IGNORE_INDEX}")
        return mask
