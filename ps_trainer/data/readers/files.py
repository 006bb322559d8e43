"""Image/mask file pairs on disk: decoding that never lets a cv2 None escape, and the base
class of the readers (listing bookkeeping: skipped files are logged and counted)."""
from __future__ import annotations

import abc
import logging
from pathlib import Path

import cv2
import numpy as np

from ps_trainer.data.base import Sample, SegmentationDataset, UnreadableImage

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_PALETTE = 3  # the IHDR color type of an indexed-color PNG


def check_split(split: str, allowed: tuple[str, ...]) -> None:
    """Raise ValueError unless `split` is one of `allowed`."""
    if split not in allowed:
        raise ValueError(f"split must be one of {', '.join(allowed)}; got {split!r}")


def require_dir(path: Path, what: str) -> Path:
    """Return `path` if it is a directory, else raise FileNotFoundError naming it."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _decode(path: Path, flags: int) -> np.ndarray:
    # Reading the bytes ourselves separates "cannot be read" from "cannot be decoded", and
    # cv2.imdecode raises (rather than returning None) for an empty file.
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise UnreadableImage(f"{path}: cannot be read ({error.strerror or error})") from error
    try:
        decoded = cv2.imdecode(data, flags)
    except cv2.error as error:
        raise UnreadableImage(f"{path}: cannot be decoded ({error.err or error})") from error
    if decoded is None:
        raise UnreadableImage(f"{path}: cannot be decoded as an image")
    return decoded


def read_rgb(path: Path) -> np.ndarray:
    """The image at `path` as uint8 (H, W, 3) RGB; raises UnreadableImage."""
    bgr = _decode(path, cv2.IMREAD_COLOR)  # grey and alpha images come back as 3-channel BGR
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # a copy, not a negative-stride view


def read_mask_file(path: Path) -> np.ndarray:
    """The mask file at `path` as stored: (H, W) or (H, W, C) with BGR(A) channel order."""
    return _decode(path, cv2.IMREAD_UNCHANGED)


def read_label_ids(path: Path) -> np.ndarray:
    """An index mask as stored: a palette PNG's indices (cv2 would give their colors, which
    need not be unique), else the file as :func:`read_mask_file` reads it."""
    try:
        with open(path, "rb") as file:
            head = file.read(26)   # signature, IHDR length and type, width, height, depth, type
    except OSError as error:
        raise UnreadableImage(f"{path}: cannot be read ({error.strerror or error})") from error
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR" and len(head) == 26 \
            and head[25] == _PNG_PALETTE:
        return _palette_indices(path)
    return read_mask_file(path)


def _palette_indices(path: Path) -> np.ndarray:
    from PIL import Image  # cv2 cannot keep palette indices; pillow can (torchvision needs it)

    try:
        with Image.open(path) as image:
            return np.array(image, dtype=np.uint8)   # (H, W) palette indices
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImage(f"{path}: cannot be decoded ({error})") from error


def as_index_mask(raw: np.ndarray, path: Path) -> np.ndarray:
    """A stored mask as uint8 (H, W) indices; raises UnreadableImage for a color mask."""
    if raw.ndim == 3:
        color = raw[..., :3]  # alpha, if any, carries no labels
        if not (np.array_equal(color[..., 0], color[..., 1])
                and np.array_equal(color[..., 0], color[..., 2])):
            raise UnreadableImage(
                f"{path}: mask has colors (a palette PNG?); expected single-channel class indices")
        raw = color[..., 0]
    if raw.dtype == np.uint16:
        if raw.size and int(raw.max()) > np.iinfo(np.uint8).max:
            raise UnreadableImage(f"{path}: 16-bit mask has values above 255")
        raw = raw.astype(np.uint8)
    if raw.dtype != np.uint8:
        raise UnreadableImage(f"{path}: mask has pixel type {raw.dtype}; expected 8-bit indices")
    return np.ascontiguousarray(raw)


class ImageMaskFiles(SegmentationDataset):
    """Base of the readers of image/mask file pairs: listing bookkeeping and loading."""

    read_mask = staticmethod(read_mask_file)   # how a mask file is decoded

    def __init__(self, root: Path, split: str):
        self.root = root
        self.split = split
        self.pairs: list[tuple[Path, Path]] = []
        self.skipped: list[tuple[str, str]] = []

    def _skip(self, path: Path, reason: str) -> None:
        """Leave `path` out of the listing, counting it and saying why."""
        self.skipped.append((str(path), reason))
        logging.getLogger(type(self).__module__).warning("skipping %s: %s", path, reason)

    def _add(self, image: Path, mask: Path) -> None:
        """Keep the pair if both files exist; skip the image otherwise."""
        if not image.is_file():
            self._skip(image, "image file is missing")
        elif not mask.is_file():
            self._skip(image, f"no matching mask {mask}")
        else:
            self.pairs.append((image, mask))

    def _require_pairs(self) -> None:
        """Raise ValueError if the listing found nothing usable."""
        if not self.pairs:
            raise ValueError(f"no usable image/mask pairs under {self.root} for split "
                             f"{self.split!r} ({len(self.skipped)} skipped)")

    @abc.abstractmethod
    def labels(self, raw_mask: np.ndarray, path: Path) -> np.ndarray:
        """Class indices (uint8 (H, W), 255 = ignore) from a stored mask; raises UnreadableImage."""

    def image_id(self, image: Path) -> str:
        """The id split lists name an image by (its file name without the extension)."""
        return image.stem

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image_path, mask_path = self.pairs[index]
        image = read_rgb(image_path)
        raw_mask = self.read_mask(mask_path)
        if raw_mask.shape[:2] != image.shape[:2]:
            raise UnreadableImage(
                f"{mask_path}: mask is {raw_mask.shape[1]}x{raw_mask.shape[0]} but image "
                f"{image_path} is {image.shape[1]}x{image.shape[0]}")
        return Sample(image, self.labels(raw_mask, mask_path))


def files_with_extensions(directory: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix.lower() in extensions)
