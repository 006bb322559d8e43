"""Readers of segmentation datasets on disk, chosen by `data.source`."""
from __future__ import annotations

from typing import Optional

from ps_trainer.data.base import SegmentationDataset
from ps_trainer.data.readers.cityscapes import CityscapesDataset
from ps_trainer.data.readers.folder import FolderDataset
from ps_trainer.data.readers.gta5 import GTA5Dataset
from ps_trainer.data.readers.registry import READERS
from ps_trainer.data.readers.voc import VOCDataset


def open_dataset(source: str, root: str, split: str,
                 num_classes: Optional[int] = None) -> SegmentationDataset:
    """The `split` of the dataset at `root` laid out as `source` (folder | cityscapes | gta5 | voc).

    `num_classes` is required for "folder"; for the others it may be left out or must match.
    """
    if source not in READERS:
        raise ValueError(f"unknown data source {source!r}; allowed: {', '.join(READERS)}")
    reader = READERS.get(source)
    if reader is FolderDataset:
        if num_classes is None:
            raise ValueError("num_classes is required for data source 'folder'")
        return FolderDataset(root, split, num_classes)
    if num_classes is not None and num_classes != reader.num_classes:
        raise ValueError(f"data source {source!r} has {reader.num_classes} classes; "
                         f"num_classes {num_classes} does not match")
    return reader(root, split)


__all__ = ["READERS", "CityscapesDataset", "FolderDataset", "GTA5Dataset", "VOCDataset",
           "open_dataset"]
