"""Split lists: text files naming some images of a data set, one per line, in the forms that
semi-supervised segmentation papers publish (e.g. the 1/16 ... 1/2 labelled lists):

    2007_000032                                       an id (VOC; a Cityscapes frame
    aachen_000000_000019                              `<city>_<seq>_<frame>`; GTA5 `00001`)
    leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png      an image path
    JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png        "image label"

Only the first column is read: the image names the pair (a label path such as Cityscapes'
``*_labelTrainIds.png`` need not exist; the reader finds its own label). An image path may
be relative to the data set's root, carry a leading ``/`` or any prefix before it (an
absolute path), or be a tail of it (``aachen/aachen_000000_000019_leftImg8bit.png``, a
file name). Blank lines and lines starting with ``#`` are skipped. A line that names no
image of the data set, or more than one, is an error naming the file and the line.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the readers use list_id; this module only reads their listings
    from ps_trainer.data.readers.files import ImageMaskFiles

log = logging.getLogger(__name__)


class SplitListError(ValueError):
    """A split list that cannot be used; the message names the file and the line."""


def read_split_list(path: str | Path) -> list[tuple[int, str]]:
    """(line number, first column) of every entry of the list at `path`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split list not found: {path}")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            entries.append((number, fields[0]))
    if not entries:
        raise SplitListError(f"{path}: the split list names no images")
    return entries


def list_id(entry: str) -> str:
    """The id of a list entry: itself, or the file name without extension of a path."""
    return PurePosixPath(entry).stem if "/" in entry or "." in entry else entry


def listed_indices(dataset: ImageMaskFiles, path: str | Path) -> np.ndarray:
    """Indices into `dataset` of the images the list at `path` names, in its order; an
    image named twice is kept once (with a warning)."""
    lookup = _Lookup(dataset)
    chosen: dict[int, int] = {}          # dataset index -> first line naming it
    repeated = 0
    for number, entry in read_split_list(path):
        found = lookup.find(entry)
        where = f"{path}, line {number}: {entry!r}"
        if not found:
            raise SplitListError(f"{where} is not in the {type(dataset).__name__} at "
                                 f"{dataset.root} (split {dataset.split!r}; "
                                 f"{len(dataset)} usable images)")
        if len(found) > 1:
            names = ", ".join(str(dataset.pairs[i][0]) for i in sorted(found)[:2])
            raise SplitListError(f"{where} names {len(found)} images ({names}); give its path")
        (index,) = found
        repeated += index in chosen
        chosen.setdefault(index, number)
    if repeated:
        log.warning("%s names %d images more than once; each is used once", path, repeated)
    return np.fromiter(chosen, dtype=np.int64, count=len(chosen))


class _Lookup:
    """The images of a reader by id, by relative path and by every tail of that path."""

    def __init__(self, dataset: ImageMaskFiles):
        self._by_path: dict[str, int] = {}
        self._by_tail: dict[str, set[int]] = defaultdict(set)
        self._by_id: dict[str, set[int]] = defaultdict(set)
        for index, (image, _) in enumerate(dataset.pairs):
            parts = image.relative_to(dataset.root).parts
            self._by_path["/".join(parts)] = index
            for start in range(len(parts)):
                self._by_tail["/".join(parts[start:])].add(index)
            self._by_id[dataset.image_id(image)].add(index)

    def find(self, entry: str) -> set[int]:
        """The indices `entry` may name: a whole relative path (after any prefix) first,
        else a tail of one, else an id."""
        parts = [p for p in PurePosixPath(entry).parts if p not in ("/", ".")]
        for start in range(len(parts)):    # the entry itself, then without its first parts
            index = self._by_path.get("/".join(parts[start:]))
            if index is not None:
                return {index}
        return set(self._by_tail.get("/".join(parts), ())) or set(self._by_id.get(entry, ()))
