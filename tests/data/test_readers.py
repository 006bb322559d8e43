"""On-disk dataset readers: layouts, mask decoding, RGB order, skipping and failure modes."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from ps_trainer.data.base import UnreadableImage
from ps_trainer.data.readers import (CityscapesDataset, FolderDataset, GTA5Dataset, VOCDataset,
                                    open_dataset)
from ps_trainer.data.readers.voc import voc_color

H, W = 12, 16
RED_BGR, BLUE_BGR = (0, 0, 255), (255, 0, 0)


def write_image(path, seed=0, size=(H, W)):
    """A random BGR PNG/JPEG/BMP with a pure-red pixel at (0, 0) and pure blue at (0, 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    image[0, 0], image[0, 1] = RED_BGR, BLUE_BGR
    assert cv2.imwrite(str(path), image)
    return image


def write_mask(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask)


def index_mask(values, size=(H, W)):
    """A mask cycling through `values` in raster order."""
    return np.resize(np.asarray(values, dtype=np.uint8), size[0] * size[1]).reshape(size)


# --------------------------------------------------------------------------- folder

def make_folder(root, stems=("a", "b", "c", "d", "e"), without_mask=("d",)):
    for i, stem in enumerate(stems):
        write_image(root / "images" / f"{stem}.png", seed=i)
        if stem not in without_mask:
            write_mask(root / "masks" / f"{stem}.png", index_mask([i % 3, 255]))
    return root


def test_folder_holdout_split_and_skipping(tmp_path, caplog):
    root = make_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        train = FolderDataset(root, "train", num_classes=3)
    val = FolderDataset(root, "val", num_classes=3)
    # Sorted a..e: position 0 ("a") is held out; "d" has no mask.
    assert [p[0].name for p in val.pairs] == ["a.png"]
    assert [p[0].name for p in train.pairs] == ["b.png", "c.png", "e.png"]
    assert len(train) == 3 and len(val) == 1
    [(path, why)] = train.skipped
    assert path.endswith("d.png") and "mask" in why
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "d.png" in warnings[0]


def test_folder_holdout_takes_every_tenth(tmp_path):
    stems = [f"img{i:02d}" for i in range(21)]
    root = make_folder(tmp_path, stems, without_mask=())
    val = FolderDataset(root, "val", num_classes=3)
    train = FolderDataset(root, "train", num_classes=3)
    assert [p[0].stem for p in val.pairs] == ["img00", "img10", "img20"]
    assert len(train) == 18 and not {p[0].stem for p in train.pairs} & {"img00", "img10", "img20"}


def test_folder_decodes_mask_and_returns_rgb(tmp_path):
    root = make_folder(tmp_path, stems=("x", "y"), without_mask=())
    sample = FolderDataset(root, "train", num_classes=3)[0]   # "y", seed 1
    expected_bgr = write_image(tmp_path / "copy.png", seed=1)
    assert sample.image.dtype == np.uint8 and sample.image.shape == (H, W, 3)
    assert tuple(sample.image[0, 0]) == (255, 0, 0)
    assert tuple(sample.image[0, 1]) == (0, 0, 255)
    np.testing.assert_array_equal(sample.image, expected_bgr[..., ::-1])
    np.testing.assert_array_equal(sample.mask, index_mask([1, 255]))
    assert sample.mask.dtype == np.uint8 and sample.image.flags.c_contiguous


def test_folder_accepts_image_extensions_case_insensitively(tmp_path):
    for i, name in enumerate(["p.jpg", "q.JPEG", "r.bmp", "s.png"]):
        write_image(tmp_path / "images" / name, seed=i)
        write_mask(tmp_path / "masks" / f"{name.split('.')[0]}.png", index_mask([0, 1]))
    (tmp_path / "images" / "t.gif").write_bytes(b"GIF89a")   # not a listed extension
    write_mask(tmp_path / "masks" / "t.png", index_mask([0, 1]))
    train = FolderDataset(tmp_path, "train", num_classes=2)   # "p.jpg" is held out
    assert [p[0].name for p in train.pairs] == ["q.JPEG", "r.bmp", "s.png"]
    for i in range(len(train)):
        assert train[i].image.shape == (H, W, 3)


def test_folder_split_folders(tmp_path):
    for split, stems in (("train", ("a", "b")), ("val", ("c",))):
        for i, stem in enumerate(stems):
            write_image(tmp_path / "images" / split / f"{stem}.png", seed=i)
            write_mask(tmp_path / "masks" / split / f"{stem}.png", index_mask([i]))
    assert [p[0].name for p in FolderDataset(tmp_path, "train", 2).pairs] == ["a.png", "b.png"]
    assert [p[0].name for p in FolderDataset(tmp_path, "val", 2).pairs] == ["c.png"]


def test_folder_one_split_folder_missing(tmp_path):
    write_image(tmp_path / "images" / "train" / "a.png")
    write_mask(tmp_path / "masks" / "train" / "a.png", index_mask([0]))
    with pytest.raises(FileNotFoundError, match="val"):
        FolderDataset(tmp_path, "train", 2)


def test_folder_mask_split_folder_missing(tmp_path):
    for split in ("train", "val"):
        write_image(tmp_path / "images" / split / "a.png")
    (tmp_path / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match=r"masks.train"):
        FolderDataset(tmp_path, "train", 2)


def test_folder_class_names(tmp_path):
    root = make_folder(tmp_path)
    assert FolderDataset(root, "train", 3).class_names == ("class0", "class1", "class2")
    (root / "classes.txt").write_text("sky\n\nroad\ncar\n")
    assert FolderDataset(root, "train", 3).class_names == ("sky", "road", "car")
    with pytest.raises(ValueError, match="classes.txt"):
        FolderDataset(root, "train", 4)


def test_folder_rejects_out_of_range_mask_values(tmp_path):
    write_image(tmp_path / "images" / "a.png")
    write_image(tmp_path / "images" / "b.png")
    write_mask(tmp_path / "masks" / "b.png", index_mask([0, 1, 2, 255]))
    train = FolderDataset(tmp_path, "train", num_classes=3)
    assert train[0].mask.max() == 255
    narrow = FolderDataset(tmp_path, "train", num_classes=2)
    with pytest.raises(UnreadableImage, match=r"b\.png.*2"):
        narrow[0]


def test_folder_rejects_color_mask(tmp_path):
    write_image(tmp_path / "images" / "a.png")
    write_image(tmp_path / "images" / "b.png")
    write_mask(tmp_path / "masks" / "b.png", np.full((H, W, 3), (0, 0, 128), np.uint8))
    with pytest.raises(UnreadableImage, match="color"):
        FolderDataset(tmp_path, "train", 2)[0]


def test_folder_skips_second_image_with_same_stem(tmp_path):
    for name in ("a.png", "b.jpg", "b.png"):
        write_image(tmp_path / "images" / name)
    write_mask(tmp_path / "masks" / "b.png", index_mask([0]))
    train = FolderDataset(tmp_path, "train", 2)
    assert [p[0].name for p in train.pairs] == ["b.jpg"]
    assert [path.endswith("b.png") for path, _ in train.skipped] == [True]


@pytest.mark.parametrize("content", [b"", b"not an image at all" * 5])
def test_folder_corrupt_image(tmp_path, content):
    write_image(tmp_path / "images" / "a.png")
    (tmp_path / "images" / "b.png").write_bytes(content)
    write_mask(tmp_path / "masks" / "b.png", index_mask([0]))
    with pytest.raises(UnreadableImage, match=r"b\.png.*cannot be decoded"):
        FolderDataset(tmp_path, "train", 2)[0]


def test_folder_corrupt_mask(tmp_path):
    write_image(tmp_path / "images" / "a.png")
    write_image(tmp_path / "images" / "b.png")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "b.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(UnreadableImage, match=r"masks.b\.png.*cannot be decoded"):
        FolderDataset(tmp_path, "train", 2)[0]


def test_folder_size_mismatch(tmp_path):
    write_image(tmp_path / "images" / "a.png")
    write_image(tmp_path / "images" / "b.png")
    write_mask(tmp_path / "masks" / "b.png", index_mask([0], size=(H, W + 1)))
    with pytest.raises(UnreadableImage, match=r"b\.png.*17x12.*16x12"):
        FolderDataset(tmp_path, "train", 2)[0]


def test_folder_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FolderDataset(tmp_path / "nowhere", "train", 2)
    write_image(tmp_path / "images" / "a.png")
    with pytest.raises(FileNotFoundError, match="masks"):
        FolderDataset(tmp_path, "train", 2)


def test_folder_no_usable_files(tmp_path):
    root = make_folder(tmp_path, stems=("a", "b"), without_mask=("b",))
    with pytest.raises(ValueError, match=rf"{tmp_path}.*'train'"):
        FolderDataset(root, "train", 2)


def test_folder_bad_arguments(tmp_path):
    root = make_folder(tmp_path)
    with pytest.raises(ValueError, match="split"):
        FolderDataset(root, "test", 2)
    with pytest.raises(ValueError, match="num_classes"):
        FolderDataset(root, "train", 256)


# --------------------------------------------------------------------------- cityscapes

# Official cityscapesScripts table, labelId -> trainId, written out independently of the reader.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                        23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def make_cityscapes(root, split="train", frames=(("aachen", "aachen_000000_000019"),
                                                 ("bonn", "bonn_000001_000019"))):
    for i, (city, stem) in enumerate(frames):
        write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=i)
        write_mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                   index_mask(range(i, 256, 2)))
    return root


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    data = CityscapesDataset(make_cityscapes(tmp_path), "train")
    assert len(data) == 2 and data.num_classes == 19
    for i in range(2):
        label_ids = index_mask(range(i, 256, 2))
        expected = np.vectorize(lambda v: CITYSCAPES_TRAIN_IDS.get(int(v), 255))(label_ids)
        sample = data[i]
        np.testing.assert_array_equal(sample.mask, expected.astype(np.uint8))
        assert tuple(sample.image[0, 0]) == (255, 0, 0)
    # Between them the two masks use every label id, so every train id and 255 occur.
    seen = np.unique(np.concatenate([data[0].mask, data[1].mask]))
    assert set(seen.tolist()) == set(range(19)) | {255}


def test_cityscapes_class_names():
    names = CityscapesDataset.class_names
    assert len(names) == 19 and names[0] == "road" and names[6] == "traffic light"
    assert names[18] == "bicycle"


def test_cityscapes_test_split_and_skipping(tmp_path, caplog):
    root = make_cityscapes(tmp_path, "test")
    missing = root / "gtFine" / "test" / "bonn" / "bonn_000001_000019_gtFine_labelIds.png"
    missing.unlink()
    (root / "leftImg8bit" / "test" / "bonn" / "notes.txt").write_text("not a frame")
    with caplog.at_level(logging.WARNING):
        data = CityscapesDataset(root, "test")
    assert len(data) == 1 and data.pairs[0][0].parent.name == "aachen"
    assert len(data.skipped) == 1 and "bonn_000001_000019_leftImg8bit.png" in data.skipped[0][0]
    assert any("bonn_000001_000019" in r.getMessage() for r in caplog.records)


def test_cityscapes_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CityscapesDataset(tmp_path / "nowhere", "train")
    root = make_cityscapes(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit.val"):
        CityscapesDataset(root, "val")
    (root / "leftImg8bit" / "val").mkdir()
    with pytest.raises(FileNotFoundError, match=r"gtFine.val"):
        CityscapesDataset(root, "val")
    (root / "gtFine" / "val").mkdir()
    with pytest.raises(ValueError, match="'val'"):
        CityscapesDataset(root, "val")
    with pytest.raises(ValueError, match="split"):
        CityscapesDataset(root, "trainval")


def test_cityscapes_size_mismatch(tmp_path):
    root = make_cityscapes(tmp_path, frames=(("aachen", "aachen_0"),))
    write_mask(root / "gtFine" / "train" / "aachen" / "aachen_0_gtFine_labelIds.png",
               index_mask([7], size=(H + 1, W)))
    with pytest.raises(UnreadableImage, match="aachen_0_gtFine_labelIds"):
        CityscapesDataset(root, "train")[0]


# --------------------------------------------------------------------------- voc

# Colors of the standard VOC palette, written out independently of the reader.
VOC_COLORS = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 7: (128, 128, 128),
               15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}
UNKNOWN_COLOR = (10, 20, 30)


def voc_color_mask():
    """An RGB mask of known palette colors (and one color off the map) and its indices."""
    keys = list(VOC_COLORS) + [None]
    indices = index_mask(range(len(keys)))
    rgb = np.zeros((H, W, 3), np.uint8)
    expected = np.zeros((H, W), np.uint8)
    for slot, key in enumerate(keys):
        rgb[indices == slot] = VOC_COLORS[key] if key is not None else UNKNOWN_COLOR
        expected[indices == slot] = key if key is not None else 255
    return rgb, expected


def make_voc(root, train_ids=("2007_000032", "2007_000039"), val_ids=("2007_000033",)):
    rgb, _ = voc_color_mask()
    for split, ids in (("train", train_ids), ("val", val_ids)):
        lists = root / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids) + "\n")
        for n, image_id in enumerate(ids):
            write_image(root / "JPEGImages" / f"{image_id}.jpg", seed=n)
            write_mask(root / "SegmentationClass" / f"{image_id}.png", rgb[..., ::-1])
    return root


def test_voc_color_map():
    for index, color in VOC_COLORS.items():
        assert voc_color(index) == color


def test_voc_decodes_color_mask(tmp_path):
    data = VOCDataset(make_voc(tmp_path), "train")
    _, expected = voc_color_mask()
    assert len(data) == 2 and data.num_classes == 21 and data.class_names[15] == "person"
    halves = np.zeros((H, W, 3), np.uint8)
    halves[:, : W // 2], halves[:, W // 2:] = RED_BGR, BLUE_BGR
    cv2.imwrite(str(tmp_path / "JPEGImages" / "2007_000039.jpg"), halves)
    sample = data[1]
    np.testing.assert_array_equal(sample.mask, expected)
    assert sample.image.shape == (H, W, 3)
    # JPEG is lossy, so compare loosely, away from the red/blue edge.
    np.testing.assert_allclose(sample.image[H // 2, 2], (255, 0, 0), atol=40)
    np.testing.assert_allclose(sample.image[H // 2, W - 3], (0, 0, 255), atol=40)


def test_voc_decodes_true_palette_png(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    root = make_voc(tmp_path)
    _, expected = voc_color_mask()
    palette = [0] * 768
    for index in range(256):
        palette[3 * index: 3 * index + 3] = voc_color(index)
    # The color off the map is stored as palette entry 100, redefined to that color.
    palette[300:303] = UNKNOWN_COLOR
    indices = expected.copy()
    indices[index_mask(range(len(VOC_COLORS) + 1)) == len(VOC_COLORS)] = 100
    image = Image.fromarray(indices)
    image.putpalette(palette)  # an "L" image with a palette becomes a "P" image
    path = root / "SegmentationClass" / "2007_000033.png"
    image.save(path)
    with Image.open(path) as saved:
        assert saved.mode == "P"
    np.testing.assert_array_equal(VOCDataset(root, "val")[0].mask, expected)


def test_voc_index_mask_is_used_as_is(tmp_path):
    root = make_voc(tmp_path)
    write_mask(root / "SegmentationClass" / "2007_000033.png", index_mask([0, 5, 20, 255]))
    np.testing.assert_array_equal(VOCDataset(root, "val")[0].mask, index_mask([0, 5, 20, 255]))
    write_mask(root / "SegmentationClass" / "2007_000033.png", index_mask([0, 21]))
    with pytest.raises(UnreadableImage, match="2007_000033"):
        VOCDataset(root, "val")[0]


def test_voc_skips_listed_ids_with_missing_files(tmp_path, caplog):
    root = make_voc(tmp_path, train_ids=("a", "b", "c"))
    (root / "JPEGImages" / "b.jpg").unlink()
    (root / "SegmentationClass" / "c.png").unlink()
    with caplog.at_level(logging.WARNING):
        data = VOCDataset(root, "train")
    assert [p[0].name for p in data.pairs] == ["a.jpg"]
    assert [path.rsplit("/", 1)[-1] for path, _ in data.skipped] == ["b.jpg", "c.jpg"]
    assert "missing" in data.skipped[0][1] and "c.png" in data.skipped[1][1]
    assert sum("skipping" in r.getMessage() for r in caplog.records) == 2


def test_voc_corrupt_image_and_size_mismatch(tmp_path):
    root = make_voc(tmp_path)
    (root / "JPEGImages" / "2007_000033.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with pytest.raises(UnreadableImage, match=r"2007_000033\.jpg"):
        VOCDataset(root, "val")[0]
    write_mask(root / "SegmentationClass" / "2007_000032.png", index_mask([0], size=(4, 4)))
    with pytest.raises(UnreadableImage, match=r"2007_000032\.png.*4x4"):
        VOCDataset(root, "train")[0]


def test_voc_missing_paths_and_bad_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VOCDataset(tmp_path / "nowhere", "train")
    root = make_voc(tmp_path)
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.txt"):
        VOCDataset(root, "val")
    with pytest.raises(ValueError, match="split"):
        VOCDataset(root, "test")


# --------------------------------------------------------------------------- open_dataset

def test_open_dataset_dispatches(tmp_path):
    assert isinstance(open_dataset("folder", str(make_folder(tmp_path / "f")), "train", 3),
                      FolderDataset)
    assert isinstance(open_dataset("voc", str(make_voc(tmp_path / "v")), "val"), VOCDataset)
    city = open_dataset("cityscapes", str(make_cityscapes(tmp_path / "c")), "train", 19)
    assert isinstance(city, CityscapesDataset)
    assert [city.image_id(image) for image, _ in city.pairs] == ["aachen_000000_000019",
                                                                 "bonn_000001_000019"]
    write_image(tmp_path / "g" / "images" / "00001.png")
    write_mask(tmp_path / "g" / "labels" / "00001.png", index_mask([7, 26, 0]))
    gta5 = open_dataset("gta5", str(tmp_path / "g"), "train")
    assert isinstance(gta5, GTA5Dataset) and set(np.unique(gta5[0].mask)) == {0, 13, 255}


def test_open_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="cityscapes, folder, gta5, voc"):
        open_dataset("coco", str(tmp_path), "train")
    with pytest.raises(ValueError, match="num_classes"):
        open_dataset("folder", str(tmp_path), "train")
    with pytest.raises(ValueError, match="19"):
        open_dataset("cityscapes", str(tmp_path), "train", num_classes=20)
