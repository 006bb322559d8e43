"""PASCAL VOC segmentation: JPEG images, color-coded class masks, id lists per split.

Layout::

    root/JPEGImages/<id>.jpg   root/SegmentationClass/<id>.png
    root/ImageSets/Segmentation/<split>.txt   (one id per line)

The masks are palette PNGs; cv2 expands them to color, so colors are mapped back to
indices through the standard VOC color map. A mask stored as single-channel indices (as in
the SBD-augmented "SegmentationClassAug" sets) is used as it is.

The split ``train_aug`` is the SBD-augmented training set (10,582 images, Hariharan et al.
2011) that semi-supervised papers draw their labelled lists from: its list is
``ImageSets/SegmentationAug/train_aug.txt`` or ``ImageSets/Segmentation/train_aug.txt``, its
masks ``SegmentationClassAug/`` (else ``SegmentationClass/``, where some setups keep the
augmented masks). List lines may be ids or "image mask" paths
(``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ps_trainer.config import SOURCE_SPLITS
from ps_trainer.data.base import IGNORE_INDEX, UnreadableImage
from ps_trainer.data.readers.files import ImageMaskFiles, check_split, require_dir
from ps_trainer.data.split_lists import list_id
from ps_trainer.data.readers.registry import READERS

VOC_SPLITS = SOURCE_SPLITS["voc"]
CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
IMAGE_DIR, MASK_DIR, LIST_DIR = "JPEGImages", "SegmentationClass", "ImageSets/Segmentation"
IMAGE_EXTENSION, MASK_EXTENSION = ".jpg", ".png"
AUG_SPLIT, AUG_MASK_DIR = "train_aug", "SegmentationClassAug"
AUG_LISTS = ("ImageSets/SegmentationAug/train_aug.txt", "ImageSets/Segmentation/train_aug.txt")


def voc_color(index: int) -> tuple[int, int, int]:
    """The RGB color of palette `index` in the VOC color map (bits of the index interleaved)."""
    r = g = b = 0
    for bit in range(8):
        r |= ((index >> (3 * bit)) & 1) << (7 - bit)
        g |= ((index >> (3 * bit + 1)) & 1) << (7 - bit)
        b |= ((index >> (3 * bit + 2)) & 1) << (7 - bit)
    return r, g, b


def _pack(r, g, b):
    """Red, green and blue (scalars or arrays) as one int32 key per color."""
    r, g, b = (np.asarray(c, dtype=np.int32) for c in (r, g, b))
    return (r << 16) | (g << 8) | b


def _color_table() -> tuple[np.ndarray, np.ndarray]:
    # Class colors plus the border color (palette index 255); all map to what they index.
    indices = list(range(len(CLASS_NAMES))) + [IGNORE_INDEX]
    keys = np.array([_pack(*voc_color(i)) for i in indices], dtype=np.int32)
    order = np.argsort(keys)
    return keys[order], np.array(indices, dtype=np.uint8)[order]


COLOR_KEYS, COLOR_INDICES = _color_table()  # sorted packed RGB -> class index


def colors_to_indices(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W) indices of a (H, W, 3) RGB mask; colors not in the map become 255."""
    keys = _pack(rgb[..., 0], rgb[..., 1], rgb[..., 2])
    slot = np.minimum(np.searchsorted(COLOR_KEYS, keys), len(COLOR_KEYS) - 1)
    return np.where(COLOR_KEYS[slot] == keys, COLOR_INDICES[slot],
                    np.uint8(IGNORE_INDEX)).astype(np.uint8)


@READERS.register("voc")
class VOCDataset(ImageMaskFiles):
    """PASCAL VOC 2012 segmentation (21 classes, 255 = border / ignore)."""

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(self, root: str | Path, split: str):
        check_split(split, VOC_SPLITS)
        super().__init__(require_dir(Path(root), "dataset root"), split)
        id_list, mask_dir = self._list_and_masks(split)
        image_dir = require_dir(self.root / IMAGE_DIR, "image folder")
        for line in id_list.read_text().splitlines():
            if line.strip():
                image_id = list_id(line.split()[0])  # an id, or an "image mask" pair of paths
                self._add(image_dir / f"{image_id}{IMAGE_EXTENSION}",
                          mask_dir / f"{image_id}{MASK_EXTENSION}")
        self._require_pairs()

    def _list_and_masks(self, split: str) -> tuple[Path, Path]:
        """The id list of `split` and the folder of its masks."""
        if split != AUG_SPLIT:
            id_list = self.root / LIST_DIR / f"{split}.txt"
            if not id_list.is_file():
                raise FileNotFoundError(f"split list not found: {id_list}")
            return id_list, require_dir(self.root / MASK_DIR, "mask folder")
        lists = [self.root / name for name in AUG_LISTS]
        id_list = next((p for p in lists if p.is_file()), None)
        if id_list is None:
            raise FileNotFoundError(f"split list not found: {lists[0]} (or {lists[1]})")
        aug_masks = self.root / AUG_MASK_DIR
        return id_list, aug_masks if aug_masks.is_dir() else require_dir(self.root / MASK_DIR,
                                                                         "mask folder")

    def labels(self, raw_mask: np.ndarray, path: Path) -> np.ndarray:
        if raw_mask.dtype != np.uint8:
            raise UnreadableImage(f"{path}: mask has pixel type {raw_mask.dtype}; expected 8-bit")
        if raw_mask.ndim == 2:
            bad = raw_mask[(raw_mask >= self.num_classes) & (raw_mask != IGNORE_INDEX)]
            if bad.size:
                raise UnreadableImage(f"{path}: index mask has values outside 0-20 and 255 "
                                      f"(e.g. {int(bad[0])})")
            return np.ascontiguousarray(raw_mask)
        bgr = raw_mask[..., :3]  # alpha, if any, carries no labels
        return colors_to_indices(bgr[..., ::-1])
