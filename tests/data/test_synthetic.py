"""The synthetic-scene generator: determinism, layout, occlusion, scales and domains."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from ps_trainer.config import SHIFTED_DOMAIN, DomainConfig
from ps_trainer.data import synthetic as S
from ps_trainer.data.base import SegmentationDataset
from ps_trainer.data.scenes.raster import _fill
from ps_trainer.data.scenes.scenery import _draw_layout
from ps_trainer.data.synthetic import CLASS_NAMES, SyntheticScenes, render_scene

NUM_CLASSES = len(CLASS_NAMES)
PLAIN_DOMAIN = DomainConfig(texture=0.0, lighting=0.0, noise=0.0, blur=1.5)


def masks_of(dataset: SegmentationDataset, count: int) -> list[np.ndarray]:
    return [dataset[i].mask for i in range(count)]


def footprints(layout: S.Layout, size: int) -> list[np.ndarray]:
    """Each segment's pixels when drawn alone (what it would cover if nothing hid it)."""
    result = []
    for segment in layout.segments:
        canvas = np.zeros((size, size), dtype=np.uint8)
        for shape in segment.shapes:
            _fill(canvas, shape, 1, size)
        result.append(canvas.astype(bool))
    return result


# --------------------------------------------------------------------------- basics

@pytest.mark.parametrize("size", [16, 37, 64, 130])
def test_render_gives_uint8_image_and_mask_of_the_requested_size(size):
    image, mask = render_scene(np.random.default_rng([0, size]), size, DomainConfig())
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert mask.shape == (size, size) and mask.dtype == np.uint8
    assert mask.max() < NUM_CLASSES
    assert image.std() > 5, "a scene is not a flat color"


def test_sizes_below_16_are_refused():
    with pytest.raises(ValueError):
        render_scene(np.random.default_rng(0), 15, DomainConfig())
    with pytest.raises(ValueError):
        SyntheticScenes(4, 8, seed=0)


def test_dataset_is_deterministic_per_seed_and_index_whatever_the_access_order():
    a, b = SyntheticScenes(10, 32, seed=5), SyntheticScenes(10, 32, seed=5)
    later_first = [b[i] for i in (7, 3, 3, 0)]
    for got, i in zip(later_first, (7, 3, 3, 0)):
        expected = a[i]
        np.testing.assert_array_equal(got.image, expected.image)
        np.testing.assert_array_equal(got.mask, expected.mask)
    image, mask = render_scene(np.random.default_rng([5, 3]), 32, DomainConfig())
    np.testing.assert_array_equal(a[3].image, image)
    np.testing.assert_array_equal(a[3].mask, mask)


def test_different_indices_and_seeds_give_different_scenes():
    scenes, other_seed = SyntheticScenes(6, 32, seed=1), SyntheticScenes(6, 32, seed=2)
    images = [scenes[i].image for i in range(6)]
    for i in range(6):
        for j in range(i + 1, 6):
            assert not np.array_equal(images[i], images[j])
        assert not np.array_equal(images[i], other_seed[i].image)
    assert not all(np.array_equal(scenes[0].mask, scenes[i].mask) for i in range(1, 6))


def test_dataset_interface_lengths_masks_and_bounds():
    scenes = SyntheticScenes(3, 24, seed=0, with_masks=False)
    assert len(scenes) == 3 and scenes.num_classes == NUM_CLASSES >= 6
    assert scenes.class_names == CLASS_NAMES and not scenes.has_masks
    assert scenes[2].mask is None and scenes[2].image.shape == (24, 24, 3)
    assert SyntheticScenes(3, 24, seed=0).has_masks
    with pytest.raises(IndexError):
        scenes[3]
    assert len(list(scenes)) == 3  # iteration stops at IndexError


def test_every_class_appears_in_a_good_share_of_images():
    masks = masks_of(SyntheticScenes(200, 32, seed=11), 200)
    share = np.mean([[np.any(m == c) for c in range(NUM_CLASSES)] for m in masks], axis=0)
    assert np.all(share >= 0.5), dict(zip(CLASS_NAMES, share.round(2)))
    pixels = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=NUM_CLASSES)
    assert pixels.min() / pixels.sum() > 0.05, "no class is a sliver of the data"


def test_layout_is_drawn_in_continuous_coordinates_so_sizes_agree():
    for index in range(5):
        small = render_scene(np.random.default_rng([3, index]), 64, DomainConfig())[1]
        large = render_scene(np.random.default_rng([3, index]), 256, DomainConfig())[1]
        shrunk = cv2.resize(large, (64, 64), interpolation=cv2.INTER_NEAREST)
        assert np.mean(shrunk == small) > 0.9


# --------------------------------------------------------------------------- domains

def test_mask_does_not_depend_on_the_domain_but_the_image_does():
    domains = [DomainConfig(), SHIFTED_DOMAIN, PLAIN_DOMAIN]
    sets = [SyntheticScenes(20, 48, seed=4, domain=d) for d in domains]
    for i in range(20):
        samples = [s[i] for s in sets]
        for other in samples[1:]:
            np.testing.assert_array_equal(samples[0].mask, other.mask)
            assert np.abs(samples[0].image.astype(int) - other.image).mean() > 5


def test_shifted_palette_moves_the_color_of_the_sky():
    """Source skies lean blue (B > R on average); shifted (dusk) skies lean red."""
    def sky_blue_minus_red(domain):
        pixels = []
        for i in range(80):
            image, mask = render_scene(np.random.default_rng([9, i]), 32, domain)
            pixels.append(image[mask == S.SKY].astype(float))
        pixels = np.concatenate(pixels)
        return (pixels[:, 2] - pixels[:, 0]).mean()

    source = sky_blue_minus_red(DomainConfig())
    shifted = sky_blue_minus_red(DomainConfig(palette="shifted"))
    assert source > 10 and shifted < -10, (source, shifted)


def test_appearance_knobs_act_in_the_expected_direction():
    def mean_local_contrast(domain):
        total = 0.0
        for i in range(20):
            image = render_scene(np.random.default_rng([8, i]), 48, domain)[0].astype(float)
            total += np.abs(np.diff(image, axis=1)).mean()
        return total / 20

    base = mean_local_contrast(DomainConfig())
    assert mean_local_contrast(DomainConfig(noise=4.0)) > 1.3 * base
    assert mean_local_contrast(DomainConfig(blur=1.5)) < 0.8 * base
    assert mean_local_contrast(DomainConfig(texture=0.0, noise=0.0)) < 0.8 * base


# --------------------------------------------------------------------------- occlusion, scale

def test_mask_shows_each_segment_exactly_where_no_later_segment_covers_it():
    size = 48
    for index in range(25):
        layout = _draw_layout(np.random.default_rng([6, index]))
        ids = S.rasterise(layout, size)
        covered_later = np.zeros((size, size), dtype=bool)
        for k, footprint in reversed(list(enumerate(footprints(layout, size)))):
            np.testing.assert_array_equal(ids == k, footprint & ~covered_later)
            covered_later |= footprint
        assert covered_later.all(), "sky and ground leave no pixel unlabelled"
        np.testing.assert_array_equal(render_scene(np.random.default_rng([6, index]), size)[1],
                                      S.MATERIAL_CLASS[[s.material for s in layout.segments]][ids])


def test_props_are_drawn_from_far_to_near():
    """A prop's lowest point is where it stands; nearer props stand lower in the image."""
    for index in range(100):
        layout = _draw_layout(np.random.default_rng([7, index]))
        boxes, groups = S.segment_boxes(layout), np.array([s.group for s in layout.segments])
        assert np.all(np.diff(groups[groups > 0]) >= 0)
        bottoms = [boxes[groups == g, 3].max() for g in np.unique(groups[groups > 0])]
        assert np.all(np.diff(bottoms) >= 0)


def test_objects_are_often_partly_hidden_by_nearer_props():
    size, scenes_with_partial = 48, 0
    for index in range(60):
        layout = _draw_layout(np.random.default_rng([2, index]))
        prints = footprints(layout, size)
        for k, segment in enumerate(layout.segments):
            if S.MATERIAL_CLASS[segment.material] != S.OBJECT or prints[k].sum() < 8:
                continue
            nearer = np.zeros((size, size), dtype=bool)
            for j in range(k + 1, len(prints)):
                if layout.segments[j].group != segment.group:
                    nearer |= prints[j]
            hidden = (prints[k] & nearer).sum() / prints[k].sum()
            if 0.05 < hidden < 0.95:
                scenes_with_partial += 1
                break
    assert scenes_with_partial >= 0.3 * 60


def test_objects_come_at_many_scales_larger_lower_in_the_image():
    areas, bottoms = [], []
    for index in range(80):
        mask = render_scene(np.random.default_rng([3, index]), 128, DomainConfig())[1]
        count, _, stats, _ = cv2.connectedComponentsWithStats((mask == S.OBJECT).astype(np.uint8))
        for left, top, width, height, area in stats[1:]:
            if area >= 4:
                areas.append(area)
                bottoms.append(top + height)
    areas = np.array(areas)
    low, high = np.percentile(areas, [10, 90])
    assert high / low >= 10, (low, high)
    assert np.corrcoef(bottoms, np.sqrt(areas))[0, 1] > 0.4


# --------------------------------------------------------------------------- previews

def test_preview_cli_writes_a_grid_and_reports_speed(tmp_path, capsys):
    S.main(["--out", str(tmp_path), "--count", "6", "--size", "32", "--bench", "6",
            "--domain", "shifted"])
    written = list(tmp_path.glob("*.png"))
    assert len(written) == 1
    grid = cv2.imread(str(written[0]))
    assert grid.shape == (2 * 34, 4 * 66, 3)  # 6 tiles in rows of 4, image | mask + gutter
    assert "images/s" in capsys.readouterr().out


def test_the_overcast_palette_is_a_third_domain_grey_and_dark():
    """Overcast skies are less saturated and roads darker than either other palette's."""
    def sky_saturation_and_road_value(palette):
        sky, road = [], []
        for i in range(80):
            image, mask = render_scene(np.random.default_rng([9, i]), 32,
                                       DomainConfig(palette=palette))
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(float)
            sky.append(hsv[mask == S.SKY][:, 1])
            road.append(hsv[mask == S.ROAD][:, 2])
        return np.concatenate(sky).mean(), np.concatenate(road).mean()

    overcast = sky_saturation_and_road_value("overcast")
    for other in ("source", "shifted"):
        theirs = sky_saturation_and_road_value(other)
        assert overcast[0] < theirs[0] and overcast[1] < theirs[1], (other, overcast, theirs)


def test_splits_label_either_domain_and_test_images_are_their_own():
    from ps_trainer.config import ConfigError, DataConfig
    from ps_trainer.data.splits import build_splits

    plain = build_splits(DataConfig(labelled=4, val=8), 0)
    oracle = build_splits(DataConfig(labelled=4, val=8, labelled_domain="shifted"), 0)
    test = build_splits(DataConfig(labelled=4, val=8, val_split="test"), 0)
    for i in range(4):          # same scenes (masks), the shifted domain's look
        np.testing.assert_array_equal(oracle.labelled[i].mask, plain.labelled[i].mask)
        assert np.abs(oracle.labelled[i].image.astype(int) - plain.labelled[i].image).mean() > 5
    val_images = {plain.val[i].image.tobytes() for i in range(8)}
    assert not val_images & {test.val[i].image.tobytes() for i in range(8)}
    with pytest.raises(ConfigError, match="val_split"):
        DataConfig(source="folder", root="/tmp", num_classes=3, val_split="test")
