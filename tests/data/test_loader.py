"""Background loader processes: the same batches as the sampler they run, in a fixed order per
seed, unusable files counted and logged once, the cache forwarded, the processes ended."""
from __future__ import annotations

import logging
import multiprocessing

import numpy as np
import pytest
import torch

from ps_trainer.data import Sample, SegmentationDataset, UnreadableImage
from ps_trainer.data.loader import LoaderSampler, loader_workers_for, make_sampler
from ps_trainer.data.sampler import ImageSampler
from support import process_alive, wait_for

ENTROPY = [3, 1, 0, 0]           # (seed, task, replica, restart)


class Numbered(SegmentationDataset):
    """Image i is filled with value i, its mask with i % 3; indices in `broken` are unreadable.
    Reads are counted across the processes forked from this one."""
    num_classes, class_names = 3, ("a", "b", "c")

    def __init__(self, n=10, size=(12, 20), broken=(), masks=True):
        self.n, self.size, self.broken, self.has_masks = n, size, set(broken), masks
        shared = multiprocessing.get_context("fork")
        self.reads, self.bad_reads = shared.Value("i", 0), shared.Value("i", 0)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        with self.reads.get_lock():
            self.reads.value += 1
        if i in self.broken:
            with self.bad_reads.get_lock():
                self.bad_reads.value += 1
            raise UnreadableImage(f"image {i}: corrupt")
        image = np.full((*self.size, 3), i, np.uint8)
        return Sample(image, np.full(self.size, i % 3, np.uint8) if self.has_masks else None)


def values(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0] * 255).round().long().tolist()


@pytest.fixture
def samplers():
    """samplers(...) -> a LoaderSampler, closed after the test."""
    made = []

    def make(*args, **kwargs):
        made.append(LoaderSampler(*args, **kwargs))
        return made[-1]

    yield make
    for sampler in made:
        sampler.close()


def test_batches_alternate_between_loaders_each_a_sampler_on_its_own_seed(samplers):
    data = Numbered()
    loader = samplers(data, 5, 8, ENTROPY, loader_workers=2)
    got = [loader.sample() for _ in range(4)]
    # Independently: loader k is an ImageSampler seeded by (entropy, round 0, k), in turn.
    own = [ImageSampler(data, 5, 8, np.random.default_rng(
        np.random.SeedSequence(ENTROPY, spawn_key=(0, k)))) for k in (0, 1)]
    expected = [own[j % 2].sample() for j in range(4)]
    for (images, masks), (want_images, want_masks) in zip(got, expected):
        assert images.dtype == torch.float32 and masks.dtype == torch.int64
        assert torch.equal(images, want_images) and torch.equal(masks, want_masks)
        assert masks[:, 0, 0].tolist() == [v % 3 for v in values(images)]    # pairs aligned


def test_closing_ends_the_processes_and_a_new_round_does_not_replay(samplers):
    loader = samplers(Numbered(masks=False), 5, 8, ENTROPY, loader_workers=2)
    first, masks = loader.sample()
    assert masks is None
    pids = loader.loader_pids()
    assert len(pids) == 2 and all(process_alive(p) for p in pids)
    loader.close()
    assert loader.loader_pids() == []
    wait_for(lambda: not any(process_alive(p) for p in pids), 30, what="the loaders to end")
    again, _ = loader.sample()
    assert not torch.equal(first, again)


def test_an_unusable_image_is_counted_and_logged_once_whichever_loader_met_it(samplers, caplog):
    data = Numbered(n=6, broken={1, 4})
    loader = samplers(data, 16, 8, ENTROPY, loader_workers=2)
    with caplog.at_level(logging.WARNING, logger="ps_trainer.data.loader"):
        for _ in range(6):
            assert not {1, 4} & set(values(loader.sample()[0]))
    assert loader.skipped == 2
    logged = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert len(logged) == 2 and any("image 1" in m for m in logged) and any("image 4" in m
                                                                            for m in logged)
    loader.close()
    assert data.bad_reads.value == 4               # each of the two loaders read each once


def test_every_image_unusable_is_one_clear_error(samplers):
    loader = samplers(Numbered(n=2, broken={0, 1}), 2, 8, ENTROPY, loader_workers=1)
    with pytest.raises(RuntimeError, match="^all 2 images are unusable; check the data$"):
        loader.sample()
    assert loader.skipped == 2


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20])
def test_each_loader_keeps_prepared_images_within_its_cache(samplers, cache_bytes):
    data = Numbered(n=6)
    loader = samplers(data, 30, 8, ENTROPY, loader_workers=1, prefetch_batches=1,
                      cache_bytes=cache_bytes)
    for _ in range(3):
        loader.sample()
    loader.close()
    if cache_bytes:
        assert data.reads.value == 6               # each image decoded once, then kept
    else:
        assert data.reads.value >= 90 and data.reads.value % 30 == 0   # every draw a read


def test_no_loader_workers_is_the_in_thread_sampler_on_the_tasks_generator():
    rng = np.random.default_rng(0)
    sampler = make_sampler(Numbered(), 4, 8, rng, ENTROPY, loader_workers=0)
    assert isinstance(sampler, ImageSampler) and sampler.rng is rng


def test_auto_loader_workers_leave_cpu_steps_alone_and_feed_gpu_steps():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert loader_workers_for("auto", cpu, 8) == 0
    assert loader_workers_for("auto", cuda, 8) == 7
    assert loader_workers_for("auto", cuda, 1) == loader_workers_for("auto", cuda, 0.5) == 1
    assert loader_workers_for(3, cpu, 1) == 3
