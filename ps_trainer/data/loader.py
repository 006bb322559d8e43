"""Batches made off the training thread: background loader processes that decode and crop.

    sampler = make_sampler(dataset, batch_size=16, image_size=64, rng=rng, entropy=entropy,
                           loader_workers=2, crops=RescaleCrops((512, 1024)))
    images, masks = sampler.sample()          # the next batch, made while the step ran
    sampler.close()                           # ends the loader processes

With ``loader_workers: 0`` the worker's :class:`ImageSampler` makes each batch in its own
thread, drawing from the task's generator (the quickstart's path, unchanged). Otherwise
:class:`LoaderSampler` runs PyTorch's ``DataLoader`` over an endless stream of batches: each
loader process holds an ``ImageSampler`` of its own (its own cache, its own generator) and
the batches come back in turn, loader 0, 1, ..., so the stream depends only on the seeds and
the number of loaders. Processes are forked: they start in a fraction of a second, where
spawned ones re-import torch for seconds, and they inherit the dataset instead of pickling it.
They run numpy, OpenCV and torch code only (no Ray calls, no logging) and end with the worker
(the DataLoader's own watchdog ends them within seconds if it is killed).

A batch on its way to a CUDA step travels as uint8 (a quarter of the float32 bytes), pinned,
and is copied to the device without blocking the host and converted there; a batch for a CPU
step is converted in the loader process, so the training thread only receives it.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
from typing import Iterator, Optional, Union

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ps_trainer.data.base import SegmentationDataset
from ps_trainer.data.crops import Crops
from ps_trainer.data.sampler import (DEFAULT_CACHE_BYTES, ImageSampler, batch_tensors, draw_cdf,
                                     to_tensors)

log = logging.getLogger(__name__)
_START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def loader_workers_for(setting, device: torch.device, num_cpus: float) -> int:
    """`data.loader_workers` for one worker: a number as given; "auto" is 0 for a CPU step
    (it uses the worker's cores itself) and the worker's CPUs but one for a GPU step."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    return max(1, math.floor(num_cpus) - 1)


def make_sampler(dataset: SegmentationDataset, batch_size: int, image_size: int,
                 rng: np.random.Generator, entropy: list[int], loader_workers: int = 0,
                 prefetch_batches: int = 2, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 crops: Optional[Crops] = None, device: torch.device = torch.device("cpu"),
                 weights: Optional[np.ndarray] = None):
    """An :class:`ImageSampler` drawing from `rng` (no loader workers), or a
    :class:`LoaderSampler` whose processes seed themselves from `entropy`; `weights`: per-image
    draw weights (None: uniform)."""
    if loader_workers == 0:
        return ImageSampler(dataset, batch_size, image_size, rng, cache_bytes, crops,
                            weights=weights)
    return LoaderSampler(dataset, batch_size, image_size, entropy, loader_workers,
                         prefetch_batches, cache_bytes, crops, device, weights)


class _BatchStream(IterableDataset):
    """Endless batches, made in a loader process: (images, masks, unusable, error), where
    `unusable` lists the (index, reason) of images found unusable since the last batch and
    `error` ends the stream (every image unusable, or too many in a row)."""

    def __init__(self, dataset: SegmentationDataset, batch_size: int, image_size: int,
                 entropy: list[int], cache_bytes: int, crops: Optional[Crops], as_uint8: bool,
                 weights: Optional[np.ndarray] = None):
        self.dataset = dataset
        self.weights = weights
        self.batch_size = batch_size
        self.image_size = image_size
        self.entropy = list(entropy)
        self.cache_bytes = cache_bytes
        self.crops = crops
        self.as_uint8 = as_uint8
        self.round = 0             # one more each time the loader processes are started again

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        loader = info.id if info is not None else 0
        rng = np.random.default_rng(np.random.SeedSequence(self.entropy,
                                                           spawn_key=(self.round, loader)))
        found: list[tuple[int, str]] = []
        sampler = ImageSampler(self.dataset, self.batch_size, self.image_size, rng,
                               self.cache_bytes, self.crops,
                               on_unusable=lambda index, err: found.append((index, str(err))),
                               weights=self.weights)
        while True:
            try:
                images, masks = sampler.sample_arrays()
            except RuntimeError as err:
                yield None, None, tuple(found), str(err)
                return
            if self.as_uint8:     # copies: the sampler writes the next batch into its buffers
                batch = (torch.from_numpy(images.copy()),
                         None if masks is None else torch.from_numpy(masks.copy()))
            else:
                batch = to_tensors(images, masks)
            yield (*batch, tuple(found), None)
            found.clear()


class LoaderSampler:
    """:class:`ImageSampler`'s interface (``sample()``, ``skipped``, ``dataset``) over
    `loader_workers` background processes, each `prefetch_batches` batches ahead.

    An unusable image is logged and counted once here, whichever loader met it. Batches for a
    CUDA `device` come pinned and are returned on the device."""

    def __init__(self, dataset: SegmentationDataset, batch_size: int, image_size: int,
                 entropy: list[int], loader_workers: int, prefetch_batches: int = 2,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, crops: Optional[Crops] = None,
                 device: torch.device = torch.device("cpu"),
                 weights: Optional[np.ndarray] = None):
        if len(dataset) == 0:
            raise ValueError("cannot sample batches from an empty dataset")
        if weights is not None:
            draw_cdf(weights, len(dataset))         # refused here, not in a loader process
        self.dataset = dataset
        self.device = device
        self.skipped = 0                  # distinct unusable images met by any loader
        self._bad: set[int] = set()       # bounded by the dataset
        cuda = device.type == "cuda"
        self._stream = _BatchStream(dataset, batch_size, image_size, entropy, cache_bytes,
                                    crops, as_uint8=cuda, weights=weights)
        # A private generator: making the iterator draws a seed from it, not from torch's
        # global one (which the step's own random draws use).
        self._loader = DataLoader(self._stream, batch_size=None, num_workers=loader_workers,
                                  prefetch_factor=prefetch_batches, pin_memory=cuda,
                                  multiprocessing_context=_START_METHOD,
                                  generator=torch.Generator())
        self._batches = None              # the running iterator: its processes are alive
        self._rounds = 0

    def sample(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self._batches is None:
            self._stream.round = self._rounds      # a new round never replays an old one
            self._rounds += 1
            self._batches = _start(self._loader)
        images, masks, unusable, error = next(self._batches)
        self._count(unusable)
        if error is not None:
            raise RuntimeError(error)
        if self.device.type != "cuda":
            return images, masks
        # Pinned uint8 -> the device without blocking the host, converted there.
        images = images.to(self.device, non_blocking=True)
        masks = None if masks is None else masks.to(self.device, non_blocking=True)
        return batch_tensors(images, masks)

    def loader_pids(self) -> list[int]:
        """Process ids of the running loader processes (none before the first batch)."""
        return [w.pid for w in getattr(self._batches, "_workers", ())]

    def close(self) -> None:
        """End the loader processes; a later :meth:`sample` starts new ones on new streams."""
        batches, self._batches = self._batches, None
        if batches is not None:
            batches._shutdown_workers()     # what the iterator's __del__ does, now

    def _count(self, unusable: tuple) -> None:
        for index, reason in unusable:
            if index not in self._bad:
                self._bad.add(index)
                self.skipped = len(self._bad)
                log.warning("skipping unusable image (%d skipped so far): %s", self.skipped,
                            reason)


def _start(loader: DataLoader):
    """The loader's iterator, its processes forked while OpenCV runs on one thread: they
    inherit that (one core each), and no thread of OpenCV's pool (which a fork does not copy)
    is left for them to wait on: a forked child that resized its pool hung on the threads of
    its parent's. This process keeps its own setting."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return iter(loader)
    finally:
        cv2.setNumThreads(threads)


Sampler = Union[ImageSampler, LoaderSampler]      # what a TaskLoop draws its batches from
