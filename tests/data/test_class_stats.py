"""Rare-class sampling: per-image class statistics and the draw weights made from them."""
from __future__ import annotations

import numpy as np
import pytest

from ps_trainer.data.base import Sample, SegmentationDataset
from ps_trainer.data.class_stats import class_presence, rare_class_weights
from ps_trainer.data.sampler import ImageSampler, draw_cdf


class Masks(SegmentationDataset):
    """8x8 images whose masks are given."""
    num_classes = 3
    class_names = ("a", "b", "c")

    def __init__(self, masks):
        self.masks = [np.asarray(m, np.uint8) for m in masks]

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        return Sample(np.full((*self.masks[i].shape, 3), i, np.uint8), self.masks[i])


def common_and_rare(n_common=9):
    """n_common images of class 0 only, one image that also holds a little of class 2."""
    masks = [np.zeros((8, 8)) for _ in range(n_common)]
    rare = np.zeros((8, 8))
    rare[:2, :2] = 2
    rare[7, 7] = 255                               # ignore pixels count for nothing
    return Masks(masks + [rare])


def test_class_presence_counts_pixels_and_images():
    pixels, present = class_presence(common_and_rare(), 3)
    assert pixels.tolist() == [9 * 64 + 59, 0, 4]
    assert present.sum(axis=0).tolist() == [10, 0, 1] and present[-1].tolist() == [True, False, True]


def test_rare_class_images_are_drawn_more_and_the_temperature_sets_how_much():
    data = common_and_rare()
    pixels, present = class_presence(data, 3)
    sharp = rare_class_weights(pixels, present, 0.01)
    sharp = sharp / sharp.sum()
    assert sharp[-1] > 0.9                         # the one image holding the rare class
    flat = rare_class_weights(pixels, present, 1e6)
    flat = flat / flat.sum()                       # each class 1/2: class 0 shared by 10 images
    np.testing.assert_allclose(flat[-1], 0.5 + 0.05, rtol=1e-3)
    np.testing.assert_allclose(flat[:-1], 0.05, rtol=1e-3)
    with pytest.raises(ValueError, match="temperature"):
        rare_class_weights(pixels, present, 0)


def test_a_sampler_draws_in_proportion_to_its_weights():
    data = common_and_rare()
    weights = np.zeros(len(data))
    weights[[2, 9]] = [1.0, 3.0]
    sampler = ImageSampler(data, 400, 8, np.random.default_rng(0), weights=weights)
    images, _ = sampler.sample_arrays()
    drawn = images[:, 0, 0, 0]                     # each image is filled with its own index
    assert set(np.unique(drawn)) == {2, 9}
    assert 0.68 < np.mean(drawn == 9) < 0.82       # 3 : 1
    for bad in (np.ones(3), -np.ones(10), np.zeros(10), np.full(10, np.nan)):
        with pytest.raises(ValueError, match="image weights"):
            draw_cdf(bad, 10)
