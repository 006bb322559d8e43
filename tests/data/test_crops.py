"""Training crops: the default square, and the literature's rescale + crop with cat_max_ratio."""
from __future__ import annotations

import numpy as np
import pytest

from ps_trainer.data.base import IGNORE_INDEX, Sample
from ps_trainer.data.crops import RescaleCrops, SquareCrops


def _sample(h, w, seed=0):
    """An image whose red channel is the column index mod 256 and whose mask is column // 32:
    a crop's mask can be checked against its image."""
    cols = np.broadcast_to(np.arange(w), (h, w))
    image = np.stack([cols % 256, np.zeros((h, w)), np.full((h, w), 7)], -1).astype(np.uint8)
    return Sample(image, (cols // 32).astype(np.uint8))


@pytest.mark.parametrize("shape,base,ratio,expected", [
    ((1024, 2048), (1024, 2048), 0.5, (512, 1024)),     # Cityscapes at half scale
    ((1052, 1914), (1024, 2048), 0.5, (512, 932)),      # GTA5: the short side bounds it
    ((100, 200), None, 2.0, (200, 400)),                # no base: the image's own size
])
def test_rescale_fits_the_scaled_base_keeping_the_aspect_ratio(shape, base, ratio, expected):
    crops = RescaleCrops((16, 16), (ratio, ratio), base)
    assert crops._scaled_size(_sample(*shape), np.random.default_rng(0)) == expected


def test_crop_has_the_crop_size_and_its_mask_stays_aligned_with_its_image():
    crops = RescaleCrops((64, 96), (1.0, 1.0), cat_max_ratio=1.0)
    rng = np.random.default_rng(1)
    for _ in range(5):
        out = crops.crop(_sample(80, 250), rng)
        assert out.image.shape == (64, 96, 3) and out.mask.shape == (64, 96)
        np.testing.assert_array_equal(out.mask, out.image[..., 0].astype(np.int64) // 32)


def test_an_image_smaller_than_the_crop_is_padded_with_ignore():
    out = RescaleCrops((64, 64), (1.0, 1.0)).crop(_sample(40, 50), np.random.default_rng(0))
    assert out.image.shape == (64, 64, 3)
    assert (out.mask[40:] == IGNORE_INDEX).all() and (out.mask[:, 50:] == IGNORE_INDEX).all()
    assert (out.image[40:] == 0).all()
    assert (out.mask[:40, :50] != IGNORE_INDEX).all()


def test_cat_max_ratio_prefers_crops_no_class_dominates():
    """Class 0 fills columns 0..223, class 1 the rest: only crops starting at 177..192 have no
    class above 75 %, 8 % of the positions; with retries they come far more often."""
    mask = (np.arange(256) >= 224).astype(np.uint8)[None].repeat(64, 0)
    sample = Sample(np.zeros((64, 256, 3), np.uint8), mask)

    def share_ok(ratio):
        rng = np.random.default_rng(0)
        crops = RescaleCrops((64, 64), (1.0, 1.0), cat_max_ratio=ratio)
        good = 0
        for _ in range(300):
            out = crops.crop(sample, rng)
            good += np.bincount(out.mask.ravel(), minlength=2).max() / out.mask.size < 0.75
        return good / 300

    assert share_ok(1.0) < 0.2 and share_ok(0.75) > 0.4


def test_square_crops_are_todays_default():
    crops = SquareCrops(32)
    prepared = crops.prepare(_sample(64, 128))
    assert prepared.image.shape[:2] == (32, 64)
    out = crops.crop(prepared, np.random.default_rng(0))
    assert out.image.shape == (32, 32, 3) and crops.size == (32, 32)


def test_segmentation_loop_trains_on_crop_size_crops(tiny_config):
    from ps_trainer_workers.worker import make_task_loop

    cfg = tiny_config(extra=["tasks.segmentation.options.crop_size=[24,40]",
                             "tasks.segmentation.options.rescale_range=[0.75,1.5]",
                             "tasks.segmentation.options.jitter_probability=1.0"])
    loop = make_task_loop(cfg, "segmentation", 0)
    images, masks = loop.sampler.sample()
    assert images.shape[-2:] == (24, 40) and masks.shape[-2:] == (24, 40)
    assert np.isfinite(loop.step().loss)
