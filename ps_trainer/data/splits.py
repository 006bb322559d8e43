"""The three splits a run uses: unlabelled (pretext tasks), labelled (segmentation), validation.

Synthetic scenes: the validation images and the unlabelled pool depend only on the data
(``data.seed``-free: fixed seeds below), so every run and every experiment seed is scored on
the same images; the labelled images are the first N of a pool drawn with ``run.seed``, so
N = 8 is a subset of N = 16 and seeds vary which images are labelled.
Disk datasets: labelled = the first N of a ``run.seed`` permutation of the train split;
unlabelled = the train split without masks; validation = the val split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ps_trainer.config import SOURCE_CLASSES, DataConfig
from ps_trainer.data.base import Concat, SegmentationDataset, Subset

# Stream ids so that the splits never share an image.
_VAL_STREAM, _UNLABELLED_STREAM, _SHIFTED_STREAM, _LABELLED_STREAM = 1, 2, 3, 4
_LABELLED_POOL = 100_000


@dataclass(frozen=True)
class Splits:
    unlabelled: SegmentationDataset
    labelled: SegmentationDataset
    val: SegmentationDataset
    num_classes: int
    class_names: tuple[str, ...]


def num_classes_of(cfg: DataConfig) -> int:
    """Segmentation classes of the configured source, known without reading any file."""
    return SOURCE_CLASSES.get(cfg.source) or int(cfg.num_classes)


def build_splits(cfg: DataConfig, seed: int) -> Splits:
    splits = _synthetic(cfg, seed) if cfg.source == "synthetic" else _on_disk(cfg, seed)
    if len(splits.val) == 0:
        raise ValueError(f"data source {cfg.source!r} has no validation images")
    return splits


def _synthetic(cfg: DataConfig, seed: int) -> Splits:
    from ps_trainer.data.synthetic import CLASS_NAMES, SyntheticScenes

    def scenes(count, stream, domain, masks=True, run_seed=0):
        return SyntheticScenes(count, cfg.image_size, seed=_stream_seed(stream, run_seed),
                               domain=domain, with_masks=masks)

    n_shifted = int(round(cfg.unlabelled * cfg.shifted_fraction))
    parts = [p for p in (
        scenes(cfg.unlabelled - n_shifted, _UNLABELLED_STREAM, cfg.source_domain, masks=False),
        scenes(n_shifted, _SHIFTED_STREAM, cfg.shifted_domain, masks=False)) if len(p)]
    unlabelled = Concat(parts) if parts else scenes(0, _UNLABELLED_STREAM, cfg.source_domain, False)
    labelled = Subset(scenes(_LABELLED_POOL, _LABELLED_STREAM, cfg.source_domain, run_seed=seed),
                      np.arange(cfg.labelled))
    val_domain = cfg.shifted_domain if cfg.val_domain == "shifted" else cfg.source_domain
    val = scenes(cfg.val, _VAL_STREAM, val_domain)
    return Splits(unlabelled, labelled, val, len(CLASS_NAMES), tuple(CLASS_NAMES))


def _stream_seed(stream: int, run_seed: int) -> int:
    return stream * 1_000_003 + run_seed


def _on_disk(cfg: DataConfig, seed: int) -> Splits:
    from ps_trainer.data.readers import open_dataset

    train = open_dataset(cfg.source, cfg.root, "train", cfg.num_classes)
    val = open_dataset(cfg.source, cfg.root, "val", cfg.num_classes)
    order = np.random.default_rng(seed).permutation(len(train))
    labelled = Subset(train, order[: cfg.labelled])
    unlabelled_count = len(train) if cfg.unlabelled == 0 else min(cfg.unlabelled, len(train))
    unlabelled = Subset(train, np.arange(unlabelled_count), with_masks=False)
    if cfg.val:
        val = Subset(val, np.arange(min(cfg.val, len(val))))
    return Splits(unlabelled, labelled, val, train.num_classes, tuple(train.class_names))
