"""Batch sampling: shapes, cropping, skipping unusable files, bounded caching; splits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ps_trainer.config import DataConfig
from ps_trainer.data import Sample, SegmentationDataset, UnreadableImage, build_splits
from ps_trainer.data.sampler import (EvalReader, ImageSampler, crop_square, iterate_eval,
                                     resize_short_side)


class Stripes(SegmentationDataset):
    """Image i is filled with value i; mask = i % 3; indices in `broken` are unreadable."""
    num_classes, class_names = 3, ("a", "b", "c")

    def __init__(self, n=10, size=(12, 20), broken=()):
        self.n, self.size, self.broken, self.loads = n, size, set(broken), 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.loads += 1
        if i in self.broken:
            raise UnreadableImage(f"image {i}: corrupt")
        image = np.full((*self.size, 3), i, np.uint8)
        return Sample(image, np.full(self.size, i % 3, np.uint8))


def test_batches_are_square_tensors_in_unit_range():
    sampler = ImageSampler(Stripes(), batch_size=5, image_size=8, rng=np.random.default_rng(0))
    images, masks = sampler.sample()
    assert images.shape == (5, 3, 8, 8) and images.dtype == torch.float32
    assert masks.shape == (5, 8, 8) and masks.dtype == torch.int64
    values = images[:, 0, 0, 0] * 255
    torch.testing.assert_close(masks[:, 0, 0], values.round().long() % 3)   # pairs stay aligned


def test_unreadable_images_are_skipped_and_counted():
    data = Stripes(n=4, broken={1, 2})
    sampler = ImageSampler(data, batch_size=16, image_size=8, rng=np.random.default_rng(0))
    images, _ = sampler.sample()
    assert set((images[:, 0, 0, 0] * 255).round().long().tolist()) <= {0, 3}
    assert sampler.skipped >= 2
    with pytest.raises(RuntimeError, match="all 2 images are unusable"):
        ImageSampler(Stripes(n=2, broken={0, 1}), 2, 8, np.random.default_rng(0)).sample()


def test_an_unreadable_image_is_read_and_counted_once():
    """A bad file is remembered: later batches neither decode it again nor count it again."""
    class Counting(Stripes):
        def __getitem__(self, i):
            self.bad_reads = getattr(self, "bad_reads", 0) + (i in self.broken)
            return super().__getitem__(i)

    data = Counting(n=4, broken={1, 2})
    sampler = ImageSampler(data, batch_size=16, image_size=8, rng=np.random.default_rng(0))
    for _ in range(20):
        sampler.sample()
    assert data.bad_reads == 2 and sampler.skipped == 2


def test_cache_is_bounded_in_bytes_and_avoids_reloading():
    data = Stripes(n=6)
    prepared = resize_short_side(data[0], 8)             # what the sampler keeps
    per_image = prepared.image.nbytes + prepared.mask.nbytes
    assert per_image == 8 * 13 * 4                        # (8, 13) RGB + mask, uint8
    sampler = ImageSampler(data, batch_size=30, image_size=8, rng=np.random.default_rng(0),
                           cache_bytes=4 * per_image + per_image // 2)
    sampler.sample()
    assert len(sampler._cache) == 4 and sampler.cached_bytes == 4 * per_image   # full, kept
    loads = data.loads
    images, _ = sampler.sample()
    drawn = (images[:, 0, 0, 0] * 255).round().long().tolist()     # image i is filled with i
    assert data.loads - loads == sum(i not in sampler._cache for i in drawn)   # the rest reread

    loads = data.loads
    full = ImageSampler(data, 30, 8, np.random.default_rng(1), cache_bytes=6 * per_image)
    full.sample()
    full.sample()
    assert data.loads - loads == 6                       # each image decoded once
    loads = data.loads
    uncached = ImageSampler(data, 30, 8, np.random.default_rng(1), cache_bytes=0)
    uncached.sample()
    assert data.loads - loads == 30 and uncached.cached_bytes == 0


def test_resize_then_centre_crop_keeps_aspect_and_labels():
    sample = Sample(np.zeros((10, 20, 3), np.uint8), np.arange(200, dtype=np.uint8).reshape(10, 20) % 4)
    resized = resize_short_side(sample, 5)
    assert resized.image.shape == (5, 10, 3) and set(np.unique(resized.mask)) <= {0, 1, 2, 3}
    image, mask = crop_square(resized, 5)
    assert image.shape == (5, 5, 3) and mask.shape == (5, 5)
    _, ignore = crop_square(Sample(np.zeros((5, 5, 3), np.uint8)), 5)
    assert (ignore == 255).all()


def test_eval_iterates_everything_once_in_order_skipping_unusable():
    batches = list(iterate_eval(Stripes(n=7, broken={3}), batch_size=4))
    firsts = torch.cat([(b[0][:, 0, 0, 0] * 255).round().long() for b in batches]).tolist()
    assert firsts == [0, 1, 2, 4, 5, 6]
    assert [tuple(b[0].shape) for b in batches] == [(4, 3, 12, 20), (2, 3, 12, 20)]   # own size
    masks = torch.cat([m for _, m in batches])
    assert masks.shape == (6, 12, 20) and masks[:, 0, 0].tolist() == [0, 1, 2, 1, 2, 0]


class Sizes(Stripes):
    """Stripes whose image i has the size sizes[i]; image i without a mask when i in `bare`."""

    def __init__(self, sizes, bare=(), **kw):
        super().__init__(n=len(sizes), **kw)
        self.sizes, self.bare, self.reads = sizes, set(bare), []

    def __getitem__(self, i):
        self.reads.append(i)
        self.size = self.sizes[i]
        sample = super().__getitem__(i)
        return Sample(sample.image) if i in self.bare else sample


def test_eval_batches_hold_consecutive_images_of_one_size():
    data = Sizes([(8, 8), (8, 8), (8, 8), (6, 10), (8, 8), (8, 8)], bare={4})
    batches = list(iterate_eval(data, batch_size=2))
    shapes = [(2, 8, 8), (1, 8, 8), (1, 6, 10), (2, 8, 8)]      # (B, H, W): a new size starts a batch
    assert [(b[0].shape[0], *b[0].shape[2:]) for b in batches] == shapes
    assert [tuple(m.shape) for _, m in batches] == shapes
    assert (batches[-1][1][0] == 255).all() and (batches[-1][1][1] == 5 % 3).all()   # no mask: ignore


def test_eval_reader_reads_a_bad_image_once_and_caches_within_its_budget():
    data = Sizes([(8, 8)] * 5, broken={2})
    per_image = 8 * 8 * 3 + 8 * 8                        # image and mask bytes
    reader = EvalReader(data, cache_bytes=2 * per_image)
    for _ in range(3):
        assert [int(x[0, 0, 0, 0] * 255 + 0.5) for x, _ in reader.batches(1)] == [0, 1, 3, 4]
    # pass 1 reads all five; later passes only the two that did not fit the cache (3, 4)
    assert data.reads == [0, 1, 2, 3, 4, 3, 4, 3, 4]
    assert reader.unusable == {2}
    streamed = Sizes([(8, 8)] * 3)
    reader = EvalReader(streamed, cache_bytes=0)
    list(reader.batches(2)), list(reader.batches(2))
    assert streamed.reads == [0, 1, 2, 0, 1, 2]           # nothing kept: read again each pass


def test_synthetic_splits_are_disjoint_nested_and_val_is_seed_independent():
    cfg = DataConfig(image_size=32, labelled=4, unlabelled=10, val=5)
    a, b = build_splits(cfg, seed=0), build_splits(cfg, seed=1)
    np.testing.assert_array_equal(a.val[0].image, b.val[0].image)        # same val for every seed
    assert not np.array_equal(a.labelled[0].image, b.labelled[0].image)  # labels vary by seed
    bigger = build_splits(DataConfig(image_size=32, labelled=8, unlabelled=10, val=5), seed=0)
    np.testing.assert_array_equal(bigger.labelled[3].image, a.labelled[3].image)   # nested
    assert a.unlabelled[0].mask is None and a.labelled[0].mask is not None
    assert not np.array_equal(a.unlabelled[0].image, a.labelled[0].image)
    assert (len(a.unlabelled), len(a.labelled), len(a.val), a.num_classes) == (10, 4, 5, 6)


def test_shifted_fraction_mixes_domains_in_the_unlabelled_pool():
    cfg = DataConfig(image_size=32, unlabelled=10, shifted_fraction=0.3, val_domain="shifted")
    splits = build_splits(cfg, seed=0)
    assert [len(p) for p in splits.unlabelled.parts] == [7, 3]
    assert splits.val.domain.palette == "shifted"


def test_val_is_every_image_on_disk_unless_limited_and_256_synthetic_scenes(tmp_path):
    import cv2

    for split, count in (("train", 2), ("val", 300)):
        for folder in ("images", "masks"):
            (tmp_path / folder / split).mkdir(parents=True)
        for i in range(count):
            assert cv2.imwrite(str(tmp_path / "images" / split / f"{i:03d}.png"), np.zeros((2, 2, 3)))
            assert cv2.imwrite(str(tmp_path / "masks" / split / f"{i:03d}.png"), np.zeros((2, 2)))
    disk = DataConfig(source="folder", root=str(tmp_path), num_classes=2, labelled=2)
    assert disk.val is None and len(build_splits(disk, seed=0).val) == 300
    first = build_splits(DataConfig(source="folder", root=str(tmp_path), num_classes=2, labelled=2,
                                    val=5), 0)
    assert [p[0].name for p in first.val.base.pairs[:5]] == [f"{i:03d}.png" for i in range(5)]
    assert len(first.val) == 5 and list(first.val.indices) == [0, 1, 2, 3, 4]
    assert len(build_splits(DataConfig(image_size=32), seed=0).val) == 256
