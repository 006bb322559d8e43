"""The GTA5 reader: its layout at full resolution, palette labels mapped pixel by pixel to
Cityscapes' train ids, and the pairs it cannot use (skipped and counted)."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from ps_trainer.data.base import UnreadableImage
from ps_trainer.data.readers import GTA5Dataset, open_dataset
from ps_trainer.data.sampler import ImageSampler

Image = pytest.importorskip("PIL.Image")

H, W = 1052, 1914   # a GTA5 frame
# Cityscapes labelId -> trainId (cityscapesScripts labels.py), written out independently of
# the reader; every other label id is ignored (255).
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
             24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
POLE, POLEGROUP, GREY = 17, 18, (153, 153, 153)   # two label ids that share one color


def label_ids(seed: int, size=(H, W)) -> np.ndarray:
    """Random label ids 0..35 in blocks (GTA5 uses 0..33; 34 and 35 must be ignored too)."""
    blocks = np.random.default_rng(seed).integers(0, 36, (size[0] // 4 + 1, size[1] // 4 + 1))
    return np.kron(blocks, np.ones((4, 4), np.int64))[: size[0], : size[1]].astype(np.uint8)


def expected_train_ids(ids: np.ndarray) -> np.ndarray:
    table = np.full(256, 255, np.uint8)
    for label_id, train_id in TRAIN_IDS.items():
        table[label_id] = train_id
    return table[ids]


def write_palette_label(path, ids):
    """A palette PNG as GTA5 ships them: indices = label ids; pole and polegroup share a color."""
    path.parent.mkdir(parents=True, exist_ok=True)
    palette = np.random.default_rng(7).integers(0, 256, (256, 3), dtype=np.uint8)
    palette[POLE] = palette[POLEGROUP] = GREY
    image = Image.fromarray(ids)
    image.putpalette(palette.ravel().tolist())
    image.save(path)
    with Image.open(path) as saved:
        assert saved.mode == "P"


def write_image(path, seed, size=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), bgr)
    return bgr


def make_gta5(root, frames=("00001", "00002")):
    for i, name in enumerate(frames):
        write_image(root / "images" / f"{name}.png", seed=i)
        write_palette_label(root / "labels" / f"{name}.png", label_ids(seed=i))
    return root


@pytest.fixture(scope="module")
def gta5_root(tmp_path_factory):
    return make_gta5(tmp_path_factory.mktemp("gta5"))


def test_palette_labels_become_cityscapes_train_ids_pixel_by_pixel(gta5_root):
    data = GTA5Dataset(gta5_root)
    assert len(data) == 2 and data.num_classes == 19 and data.class_names[13] == "car"
    for i in range(2):
        sample = data[i]
        ids = label_ids(seed=i)
        assert sample.image.shape == (H, W, 3) and sample.mask.shape == (H, W)
        np.testing.assert_array_equal(sample.mask, expected_train_ids(ids))
        # Pole (a class) and polegroup (ignored) share a color: the indices tell them apart.
        assert set(np.unique(sample.mask[ids == POLE])) == {5}
        assert set(np.unique(sample.mask[ids == POLEGROUP])) == {255}
        bgr = cv2.imread(str(gta5_root / "images" / f"0000{i + 1}.png"))
        np.testing.assert_array_equal(sample.image, bgr[..., ::-1])
    seen = np.unique(np.concatenate([data[0].mask, data[1].mask]))
    assert set(seen.tolist()) == set(range(19)) | {255}


def test_single_channel_label_ids_are_read_as_they_are(tmp_path):
    write_image(tmp_path / "images" / "00001.png", seed=0, size=(40, 60))
    ids = label_ids(seed=3, size=(40, 60))
    (tmp_path / "labels").mkdir()
    assert cv2.imwrite(str(tmp_path / "labels" / "00001.png"), ids)
    np.testing.assert_array_equal(GTA5Dataset(tmp_path)[0].mask, expected_train_ids(ids))


def test_a_label_a_few_pixels_off_its_image_is_skipped_and_counted(tmp_path, caplog):
    make_gta5(tmp_path, frames=("00001", "00002", "00003"))
    # In the real data set some labels differ from their images by a few pixels.
    write_palette_label(tmp_path / "labels" / "00002.png", label_ids(seed=9, size=(H, W - 2)))
    data = GTA5Dataset(tmp_path)
    with pytest.raises(UnreadableImage, match=rf"00002\.png.*{W - 2}x{H}.*{W}x{H}"):
        data[1]
    sampler = ImageSampler(data, batch_size=4, image_size=32, rng=np.random.default_rng(0))
    with caplog.at_level(logging.WARNING):
        for _ in range(10):
            images, masks = sampler.sample()
            assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 32, 32)
    assert sampler.skipped == 1
    assert sum("00002.png" in r.getMessage() for r in caplog.records) == 1   # logged once


def test_a_frame_without_its_label_is_left_out_of_the_listing(tmp_path, caplog):
    make_gta5(tmp_path, frames=("00001", "00002", "00003"))
    (tmp_path / "labels" / "00003.png").unlink()
    (tmp_path / "images" / "notes.txt").write_text("not a frame")
    with caplog.at_level(logging.WARNING):
        data = GTA5Dataset(tmp_path)
    assert [image.name for image, _ in data.pairs] == ["00001.png", "00002.png"]
    assert len(data.skipped) == 1 and data.skipped[0][0].endswith("00003.png")


def test_a_corrupt_palette_label_is_unreadable(tmp_path):
    make_gta5(tmp_path, frames=("00001",))
    path = tmp_path / "labels" / "00001.png"
    path.write_bytes(path.read_bytes()[:200])   # a PNG header and the start of its data
    with pytest.raises(UnreadableImage, match=r"labels.00001\.png.*cannot be decoded"):
        GTA5Dataset(tmp_path)[0]


def test_only_a_train_split_and_named_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        GTA5Dataset(tmp_path / "nowhere")
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="label folder"):
        GTA5Dataset(tmp_path)
    (tmp_path / "labels").mkdir()
    with pytest.raises(ValueError, match="no usable image/mask pairs"):
        GTA5Dataset(tmp_path)
    with pytest.raises(ValueError, match="split must be one of train; got 'val'"):
        GTA5Dataset(tmp_path, "val")


def test_open_dataset_reads_gta5(gta5_root):
    data = open_dataset("gta5", str(gta5_root), "train", num_classes=19)
    assert isinstance(data, GTA5Dataset) and len(data) == 2
    with pytest.raises(ValueError, match="19"):
        open_dataset("gta5", str(gta5_root), "train", num_classes=21)
