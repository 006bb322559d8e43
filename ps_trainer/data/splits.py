"""The three splits a run uses: unlabelled (pretext tasks), labelled (segmentation), validation.

Synthetic scenes: the validation images and the unlabelled pool depend only on the data
(``data.seed``-free: fixed seeds below), so every run and every experiment seed is scored on
the same images; the labelled images are the first N of a pool drawn with ``run.seed``, so
N = 8 is a subset of N = 16 and seeds vary which images are labelled. ``data.val_split:
test`` scores on test images instead, from a stream of their own: settings are chosen on the
validation images and reported on the test images.
Disk datasets: each split reads its own data set (``data.<split>_from``, by default
``data.source`` at ``data.root``: train, train, val), restricted to a split list if one is
given. Labelled = the first N of a ``run.seed`` permutation of its pool (N larger than the
pool is a ConfigError); unlabelled = its pool without masks, less the labelled images
(``data.unlabelled_excludes_labelled``), the first K in listing order (0: all); validation =
its pool, every image unless ``data.val`` names how many (the first M).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ps_trainer.config import (SOURCE_CLASSES, SPLIT_ROLES, ConfigError, DataConfig,
                               ResolvedSplit)
from ps_trainer.data.base import Concat, SegmentationDataset, Subset

# Stream ids so that the splits never share an image.
_VAL_STREAM, _UNLABELLED_STREAM, _SHIFTED_STREAM, _LABELLED_STREAM, _TEST_STREAM = 1, 2, 3, 4, 5
_LABELLED_POOL = 100_000
SYNTHETIC_VAL_IMAGES = 256   # data.val: null with synthetic scenes, which have no end


@dataclass(frozen=True)
class Splits:
    unlabelled: SegmentationDataset
    labelled: SegmentationDataset
    val: SegmentationDataset
    num_classes: int
    class_names: tuple[str, ...]


def num_classes_of(cfg: DataConfig) -> int:
    """Segmentation classes of the configured data (every split has the same), known without
    reading any file."""
    source = cfg.split_source("labelled").source if cfg.on_disk else cfg.source
    return SOURCE_CLASSES.get(source) or int(cfg.num_classes)


def build_splits(cfg: DataConfig, seed: int) -> Splits:
    splits = _synthetic(cfg, seed) if cfg.source == "synthetic" else _on_disk(cfg, seed)
    if len(splits.val) == 0:
        raise ValueError(f"data source {cfg.source!r} has no validation images")
    return splits


def check_splits_here(cfg: DataConfig, seed: int) -> bool:
    """Build the splits in this process if every data set is reachable here, so that what
    the workers would fail on (a list line naming no image, data.labelled above its pool)
    fails at start in one line; False when some root is not here (only the workers' nodes
    may hold the data: they say so when they start)."""
    roots = {cfg.split_source(role).root for role in SPLIT_ROLES} if cfg.on_disk else set()
    if not all(root and os.path.isdir(root) for root in roots):
        return False
    build_splits(cfg, seed)
    return True


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
    labelled_domain = (cfg.shifted_domain if cfg.labelled_domain == "shifted"
                       else cfg.source_domain)
    labelled = Subset(scenes(_LABELLED_POOL, _LABELLED_STREAM, labelled_domain, run_seed=seed),
                      np.arange(cfg.labelled))
    val_domain = cfg.shifted_domain if cfg.val_domain == "shifted" else cfg.source_domain
    val = scenes(cfg.val or SYNTHETIC_VAL_IMAGES,
                 _TEST_STREAM if cfg.val_split == "test" else _VAL_STREAM, val_domain)
    return Splits(unlabelled, labelled, val, len(CLASS_NAMES), tuple(CLASS_NAMES))


def _stream_seed(stream: int, run_seed: int) -> int:
    return stream * 1_000_003 + run_seed


def _on_disk(cfg: DataConfig, seed: int) -> Splits:
    opened: dict[tuple, SegmentationDataset] = {}   # a data set used by two splits is read once
    labelled_data, labelled_pool = _pool(cfg, "labelled", opened)
    if cfg.labelled > len(labelled_pool):
        raise ConfigError("data.labelled", f"{cfg.labelled} is more than the "
                                           f"{_describe(cfg.split_source('labelled'))} "
                                           f"holds ({len(labelled_pool)} usable images); "
                                           f"set data.labelled to at most {len(labelled_pool)}")
    order = np.random.default_rng(seed).permutation(len(labelled_pool))
    labelled_indices = labelled_pool[order[: cfg.labelled]]
    unlabelled_data, unlabelled_pool = _pool(cfg, "unlabelled", opened)
    if cfg.unlabelled_excludes_labelled:
        unlabelled_pool = _without(unlabelled_data, unlabelled_pool, labelled_data,
                                   labelled_indices)
    if cfg.unlabelled:
        unlabelled_pool = unlabelled_pool[: cfg.unlabelled]
    val_data, val_pool = _pool(cfg, "val", opened)
    if cfg.val:
        val_pool = val_pool[: cfg.val]
    return Splits(Subset(unlabelled_data, unlabelled_pool, with_masks=False),
                  Subset(labelled_data, labelled_indices), Subset(val_data, val_pool),
                  labelled_data.num_classes, tuple(labelled_data.class_names))


def _pool(cfg: DataConfig, role: str, opened: dict) -> tuple[SegmentationDataset, np.ndarray]:
    """Split `role`'s data set and the indices of its images (those its list names, if any)."""
    from ps_trainer.data.readers import open_dataset
    from ps_trainer.data.split_lists import SplitListError, listed_indices

    split = cfg.split_source(role)
    key = (split.source, split.root, split.split)
    if key not in opened:
        opened[key] = open_dataset(split.source, split.root, split.split,
                                   cfg.num_classes if split.source == "folder" else None)
    data = opened[key]
    if split.list is None:
        return data, np.arange(len(data))
    try:
        return data, listed_indices(data, split.list)
    except SplitListError as err:
        raise ConfigError(_list_key(cfg, role), str(err)) from None


def _list_key(cfg: DataConfig, role: str) -> str:
    if role == "labelled" and cfg.labelled_list is not None:
        return "data.labelled_list"
    return f"data.{role}_from.list"


def _describe(split: ResolvedSplit) -> str:
    where = f"{split.source} {split.split} split at {split.root}"
    return f"list {split.list} of the {where}" if split.list else where


def _without(data: SegmentationDataset, pool: np.ndarray, other: SegmentationDataset,
             taken: np.ndarray) -> np.ndarray:
    """`pool` (indices into `data`), in order, less the images `taken` from `other`."""
    if data is other:
        return pool[~np.isin(pool, taken)]
    taken_files = set(_image_files(other, taken))
    return pool[np.array([f not in taken_files for f in _image_files(data, pool)], dtype=bool)]


def _image_files(data: SegmentationDataset, indices: np.ndarray) -> list[str]:
    """The image files of a reader at `indices`, under its root with links resolved (one
    data set reached through two spellings of its root gives the same names)."""
    root = os.path.realpath(data.root)
    return [os.path.join(root, os.path.relpath(data.pairs[int(i)][0], data.root))
            for i in indices]
