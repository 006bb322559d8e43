"""Split lists in the forms semi-supervised papers publish, VOC's SBD-augmented set, and the
splits they make: the labelled images a list names, an unlabelled pool without them, and the
errors (one line, naming the file and the line)."""
from __future__ import annotations

import dataclasses
import logging

import cv2
import numpy as np
import pytest

from ps_trainer.config import ConfigError, SplitSource
from ps_trainer.data.readers import CityscapesDataset, GTA5Dataset, VOCDataset
from ps_trainer.data.split_lists import SplitListError, listed_indices
from ps_trainer.data.splits import build_splits, check_splits_here
from ps_trainer.run.config_gate import load_run_config

CITY_FRAMES = [("aachen", "aachen_000000_000019"), ("aachen", "aachen_000001_000019"),
               ("bonn", "bonn_000000_000019"), ("bonn", "bonn_000004_000019"),
               ("zurich", "zurich_000002_000019")]


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def image(seed, size=(8, 12)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def make_cityscapes(root, split="train", frames=CITY_FRAMES):
    for i, (city, stem) in enumerate(frames):
        write(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image(i))
        write(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
              np.full((8, 12), 7 + i, np.uint8))
    return root


def make_gta5(root, count=4):
    for i in range(count):
        write(root / "images" / f"{i + 1:05d}.png", image(i))
        write(root / "labels" / f"{i + 1:05d}.png", np.full((8, 12), 26, np.uint8))
    return root


def write_list(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def names(data, indices):
    return [data.pairs[int(i)][0].name for i in indices]


# --------------------------------------------------------------------------- list forms

@pytest.fixture
def cityscapes(tmp_path):
    return CityscapesDataset(make_cityscapes(tmp_path / "cityscapes"), "train")


WANTED = ["bonn_000004_000019", "aachen_000000_000019"]   # in the list's order


@pytest.mark.parametrize("form", [
    "{stem}",                                                          # an id
    "leftImg8bit/train/{city}/{stem}_leftImg8bit.png",                 # an image path
    "leftImg8bit/train/{city}/{stem}_leftImg8bit.png "                 # UniMatch: image label
    "gtFine/train/{city}/{stem}_gtFine_labelTrainIds.png",
    "/leftImg8bit/train/{city}/{stem}_leftImg8bit.png",                # a leading slash
    "{root}/leftImg8bit/train/{city}/{stem}_leftImg8bit.png",          # an absolute path
    "./{city}/{stem}_leftImg8bit.png",                                 # a tail of the path
    "{stem}_leftImg8bit.png\t# a comment after a tab",                 # a file name
])
def test_every_published_form_names_the_same_cityscapes_images(cityscapes, tmp_path, form):
    lines = ["# labelled 1/16", ""] + [
        form.format(stem=stem, city=stem.split("_")[0], root=cityscapes.root) for stem in WANTED]
    indices = listed_indices(cityscapes, write_list(tmp_path / "labeled.txt", lines))
    assert names(cityscapes, indices) == [f"{stem}_leftImg8bit.png" for stem in WANTED]


@pytest.mark.parametrize("line", ["00003", "00003.png", "images/00003.png",
                                  "images/00003.png labels/00003.png"])
def test_gta5_lists(tmp_path, line):
    data = GTA5Dataset(make_gta5(tmp_path / "gta5"))
    indices = listed_indices(data, write_list(tmp_path / "list.txt", [line, "00001"]))
    assert names(data, indices) == ["00003.png", "00001.png"]


def test_a_line_naming_no_image_is_one_line_naming_file_and_line(cityscapes, tmp_path):
    path = write_list(tmp_path / "labeled.txt", ["aachen_000000_000019", "",
                                                 "leftImg8bit/val/frankfurt/frankfurt_000000_000294"
                                                 "_leftImg8bit.png"])
    with pytest.raises(SplitListError) as info:
        listed_indices(cityscapes, path)
    message = str(info.value)
    assert "\n" not in message and f"{path}, line 3" in message
    assert "frankfurt_000000_000294" in message and "'train'" in message


def test_a_line_matching_two_images_asks_for_the_path(tmp_path):
    frames = [("aachen", "x_000000_000019"), ("bonn", "x_000000_000019")]
    data = CityscapesDataset(make_cityscapes(tmp_path / "c", frames=frames), "train")
    with pytest.raises(SplitListError, match=r"line 1: 'x_000000_000019' names 2 images"):
        listed_indices(data, write_list(tmp_path / "l.txt", ["x_000000_000019"]))
    path_line = "leftImg8bit/train/bonn/x_000000_000019_leftImg8bit.png"
    indices = listed_indices(data, write_list(tmp_path / "p.txt", [path_line]))
    assert data.pairs[int(indices[0])][0].parent.name == "bonn"


def test_repeated_lines_are_used_once(cityscapes, tmp_path, caplog):
    path = write_list(tmp_path / "l.txt", ["bonn_000000_000019", "aachen_000001_000019",
                                           "bonn_000000_000019"])
    with caplog.at_level(logging.WARNING):
        indices = listed_indices(cityscapes, path)
    assert names(cityscapes, indices) == ["bonn_000000_000019_leftImg8bit.png",
                                          "aachen_000001_000019_leftImg8bit.png"]
    assert any("more than once" in r.getMessage() for r in caplog.records)


def test_a_missing_or_empty_list(cityscapes, tmp_path):
    with pytest.raises(FileNotFoundError, match="split list not found"):
        listed_indices(cityscapes, tmp_path / "absent.txt")
    with pytest.raises(SplitListError, match="names no images"):
        listed_indices(cityscapes, write_list(tmp_path / "empty.txt", ["", "# nothing"]))


# --------------------------------------------------------------------------- VOC train_aug

VOC_IDS = ["2007_000032", "2007_000039", "2008_000002", "2011_003255"]


def make_voc_aug(root, list_dir="ImageSets/SegmentationAug", mask_dir="SegmentationClassAug",
                 deeplab_lines=True):
    for i, image_id in enumerate(VOC_IDS):
        write(root / "JPEGImages" / f"{image_id}.jpg", image(i))
        write(root / mask_dir / f"{image_id}.png", np.full((8, 12), i * 5, np.uint8))
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" if deeplab_lines else i
             for i in VOC_IDS[:3]]
    (root / list_dir).mkdir(parents=True, exist_ok=True)
    write_list(root / list_dir / "train_aug.txt", lines)
    return root


@pytest.mark.parametrize("list_dir, mask_dir, deeplab_lines", [
    ("ImageSets/SegmentationAug", "SegmentationClassAug", True),    # DeepLab's setup
    ("ImageSets/Segmentation", "SegmentationClassAug", False),      # ids beside train.txt
    ("ImageSets/Segmentation", "SegmentationClass", False),         # augmented masks in place
])
def test_voc_reads_the_sbd_augmented_training_set(tmp_path, list_dir, mask_dir, deeplab_lines):
    root = make_voc_aug(tmp_path, list_dir, mask_dir, deeplab_lines)
    data = VOCDataset(root, "train_aug")
    assert [p[0].stem for p in data.pairs] == VOC_IDS[:3]
    assert [p[1].parent.name for p in data.pairs] == [mask_dir] * 3
    for i in range(3):                          # single-channel index masks, used as stored
        assert set(np.unique(data[i].mask)) == {i * 5}
    lists = {"ids": ["2008_000002"], "UniMatch": ["JPEGImages/2008_000002.jpg "
                                                  "SegmentationClass/2008_000002.png"]}
    for lines in lists.values():
        indices = listed_indices(data, write_list(tmp_path / "labeled.txt", lines))
        assert names(data, indices) == ["2008_000002.jpg"]


def test_voc_train_aug_without_its_list(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(FileNotFoundError, match=r"SegmentationAug.train_aug\.txt.*Segmentation."
                                                r"train_aug\.txt"):
        VOCDataset(tmp_path, "train_aug")


# --------------------------------------------------------------------------- the splits

def disk_config(tmp_path, *extra):
    return load_run_config(None, ["tasks.rotation.workers=1", "tasks.segmentation.workers=1",
                                  "data.source=cityscapes", f"data.root={tmp_path / 'cityscapes'}",
                                  "data.unlabelled=0", "data.val=0", *extra]).data


@pytest.fixture
def two_sets(tmp_path):
    make_cityscapes(tmp_path / "cityscapes")
    make_cityscapes(tmp_path / "cityscapes", "val", CITY_FRAMES[:2])
    make_gta5(tmp_path / "gta5", count=6)
    return tmp_path


def files_of(subset):
    return [subset.base.pairs[int(i)][0] for i in subset.indices]


def test_a_labelled_list_is_the_labelled_split_and_leaves_the_unlabelled_pool(two_sets):
    path = write_list(two_sets / "labeled.txt", WANTED)
    splits = build_splits(disk_config(two_sets, f"data.labelled_list={path}",
                                      "data.labelled=2"), seed=0)
    labelled = {p.name for p in files_of(splits.labelled)}
    assert labelled == {f"{stem}_leftImg8bit.png" for stem in WANTED}
    unlabelled = files_of(splits.unlabelled)
    assert len(unlabelled) == len(CITY_FRAMES) - 2 and not labelled & {p.name for p in unlabelled}
    assert not splits.unlabelled.has_masks and splits.labelled.has_masks
    kept = build_splits(disk_config(two_sets, f"data.labelled_list={path}", "data.labelled=2",
                                    "data.unlabelled_excludes_labelled=false"), seed=0)
    assert len(kept.unlabelled) == len(CITY_FRAMES)


def test_fewer_labelled_than_listed_are_drawn_from_the_list_by_seed(two_sets):
    path = write_list(two_sets / "labeled.txt", [stem for _, stem in CITY_FRAMES[:4]])
    listed = {f"{stem}_leftImg8bit.png" for _, stem in CITY_FRAMES[:4]}
    drawn = []
    for seed in range(6):
        splits = build_splits(disk_config(two_sets, f"data.labelled_list={path}",
                                          "data.labelled=2"), seed=seed)
        labelled = {p.name for p in files_of(splits.labelled)}
        unlabelled = {p.name for p in files_of(splits.unlabelled)}
        assert len(labelled) == 2 and labelled <= listed and not labelled & unlabelled
        assert len(unlabelled) == len(CITY_FRAMES) - 2
        drawn.append(frozenset(labelled))
    assert len(set(drawn)) > 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_a_list_the_pools_are_disjoint_and_cover_the_train_split(two_sets, seed):
    splits = build_splits(disk_config(two_sets, "data.labelled=2"), seed=seed)
    labelled, unlabelled = set(files_of(splits.labelled)), set(files_of(splits.unlabelled))
    assert len(labelled) == 2 and not labelled & unlabelled
    assert len(labelled | unlabelled) == len(CITY_FRAMES)


def test_exclusion_holds_through_another_spelling_of_the_root(two_sets):
    (two_sets / "link").symlink_to(two_sets / "cityscapes")
    cfg = disk_config(two_sets, "data.labelled=2")
    # The driver resolves links in the roots it is given; a config built elsewhere may not.
    cfg = dataclasses.replace(cfg, unlabelled_from=SplitSource(root=str(two_sets / "link")))
    splits = build_splits(cfg, seed=0)
    assert splits.unlabelled.base is not splits.labelled.base
    labelled = {p.name for p in files_of(splits.labelled)}
    unlabelled = {p.name for p in files_of(splits.unlabelled)}
    assert len(unlabelled) == len(CITY_FRAMES) - 2 and not labelled & unlabelled


def test_gta5_labelled_cityscapes_unlabelled_and_val(two_sets):
    cfg = disk_config(two_sets, "data.labelled=6", "data.labelled_from.source=gta5",
                      f"data.labelled_from.root={two_sets / 'gta5'}")
    splits = build_splits(cfg, seed=0)
    assert isinstance(splits.labelled.base, GTA5Dataset) and len(splits.labelled) == 6
    assert isinstance(splits.unlabelled.base, CityscapesDataset)
    assert len(splits.unlabelled) == len(CITY_FRAMES)     # another data set: nothing excluded
    assert splits.val.base.split == "val" and len(splits.val) == 2
    assert splits.num_classes == 19 and splits.class_names[0] == "road"


def test_more_labelled_than_the_pool_is_one_config_error_at_start(two_sets):
    path = write_list(two_sets / "labeled.txt", WANTED)
    cfg = disk_config(two_sets, f"data.labelled_list={path}", "data.labelled=3")
    with pytest.raises(ConfigError) as info:
        build_splits(cfg, seed=0)
    assert info.value.key == "data.labelled" and "\n" not in str(info.value)
    assert "3 is more than the list" in str(info.value) and "at most 2" in str(info.value)
    with pytest.raises(ConfigError, match="at most 2"):
        check_splits_here(cfg, seed=0)      # the driver finds it before any actor starts


def test_a_list_line_not_in_the_data_set_is_a_config_error_naming_the_line(two_sets):
    path = write_list(two_sets / "labeled.txt", ["aachen_000000_000019", "ulm_000009_000019"])
    with pytest.raises(ConfigError) as info:
        build_splits(disk_config(two_sets, f"data.labelled_list={path}"), seed=0)
    assert info.value.key == "data.labelled_list" and "line 2: 'ulm_000009_000019'" in str(info.value)
    val_list = write_list(two_sets / "val.txt", ["zurich_000002_000019"])   # a train frame
    with pytest.raises(ConfigError) as info:
        build_splits(disk_config(two_sets, f"data.val_from.list={val_list}", "data.labelled=2"),
                     seed=0)
    assert info.value.key == "data.val_from.list" and "line 1" in str(info.value)


def test_check_splits_here_leaves_data_it_cannot_see_to_the_workers(two_sets):
    cfg = disk_config(two_sets, "data.labelled_from.source=gta5",
                      f"data.labelled_from.root={two_sets / 'not-on-this-machine'}")
    assert check_splits_here(cfg, seed=0) is False
    assert check_splits_here(disk_config(two_sets, "data.labelled=2"), seed=0) is True


def test_an_unlabelled_task_with_every_image_labelled_says_why_it_has_none(two_sets, tmp_path):
    from ps_trainer_workers.worker import task_inputs

    cfg = load_run_config(None, ["tasks.rotation.workers=1", "tasks.segmentation.workers=1",
                                 f"run.out_dir={tmp_path / 'run'}", "data.source=cityscapes",
                                 f"data.root={two_sets / 'cityscapes'}",
                                 f"data.labelled={len(CITY_FRAMES)}"])
    with pytest.raises(ValueError, match=r"'rotation' has no unlabelled images.*the 5 labelled"):
        task_inputs(cfg, "rotation", replica=0)
    _, sampler, _ = task_inputs(cfg, "segmentation", replica=0)
    assert len(sampler.dataset) == len(CITY_FRAMES)
