"""Config: every mistake fails at start with the key path, the bad value and what is allowed."""
from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys

import pytest

from ps_trainer.config import (DATA_SOURCES, SOURCE_CLASSES, SOURCE_SPLITS, Config, ConfigError,
                               ResolvedSplit, config_from_dict, config_to_dict, dump_config, load_config)
from ps_trainer.recipes.experiment import load_experiment
from ps_trainer.run.config_gate import load_run_config, saved_run_config

BASE = ["tasks.rotation.workers=1"]


def error_of(overrides, loader=load_config) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loader(None, BASE + overrides)
    return info.value


def test_unknown_key_names_path_and_suggests_closest():
    err = error_of(["optimizer.lrr=0.1"])
    assert err.key == "optimizer.lrr"
    assert "did you mean 'lr'" in str(err)
    assert "allowed keys" in str(err)


def test_unknown_section_is_an_unknown_key():
    err = error_of(["optimiser.lr=0.1"])
    assert err.key == "optimiser" and "did you mean 'optimizer'" in str(err)


def test_wrong_type_names_expected_type():
    err = error_of(["run.seed=abc"])
    assert err.key == "run.seed"
    assert "expected int" in str(err) and "'abc'" in str(err)
    err = error_of(["optimizer.lr=abc"])        # a string that is not a number, for a float
    assert err.key == "optimizer.lr" and "expected float" in str(err) and "'abc'" in str(err)
    err = error_of(["tasks.rotation.prefetch=sometimes"])
    assert err.key == "tasks.rotation.prefetch" and "auto, true or false" in str(err)


def test_bool_is_not_an_int():
    assert error_of(["run.max_updates=true"]).key == "run.max_updates"


@pytest.mark.parametrize("override,key", [
    ("tasks.rotation.workers=-1", "tasks.rotation.workers"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-0.1", "optimizer.lr"),
    ("optimizer.momentum=1.0", "optimizer.momentum"),
    ("server.max_staleness_updates=-3", "server.max_staleness_updates"),
    ("data.shifted_fraction=1.5", "data.shifted_fraction"),
    ("metrics.port=70000", "metrics.port"),
    ("model.blocks=[1,1]", "model.blocks"),
    ("run.compute_slots_per_node=-1", "run.compute_slots_per_node"),
    ("run.compute_slots_per_node=many", "run.compute_slots_per_node"),
    ("run.compute_slots_per_node=true", "run.compute_slots_per_node"),
    ("data.loader_workers=-1", "data.loader_workers"),
    ("data.loader_workers=many", "data.loader_workers"),
    ("data.loader_workers=true", "data.loader_workers"),
    ("data.prefetch_batches=0", "data.prefetch_batches"),
    ("data.cache_mb=-1", "data.cache_mb"),
])
def test_out_of_range(override, key):
    err = error_of([override])
    assert err.key == key
    assert "not allowed" in str(err)


def test_loader_workers_are_auto_or_a_count():
    assert load_config(None, BASE).data.loader_workers == "auto"
    assert load_config(None, BASE + ["data.loader_workers=2"]).data.loader_workers == 2
    assert load_config(None, BASE + ["data.loader_workers=0"]).data.loader_workers == 0


def test_unknown_push_transport_lists_choices():
    err = error_of(["server.same_node_pushes=shm"])
    assert err.key == "server.same_node_pushes"
    assert "shared_memory" in str(err) and "object_store" in str(err)


def test_unknown_norm_lists_choices():
    err = error_of(["model.norm=btach"], loader=load_run_config)
    assert err.key == "model.norm"
    assert "did you mean 'batch'" in str(err) and "switchable" in str(err)


def test_unknown_task_fails_with_registry_names():
    err = error_of(["tasks.rotaton.workers=1"], loader=load_run_config)
    assert err.key == "tasks.rotaton"
    assert "jigsaw" in str(err)


def test_bad_task_option_names_full_path():
    err = error_of(["tasks.rotation.options.no_such_option=1"], loader=load_run_config)
    assert err.key == "tasks.rotation.options.no_such_option"


def test_segmentation_without_labels():
    err = error_of(["tasks.segmentation.workers=1", "data.labelled=0"])
    assert err.key == "data.labelled"
    assert "labelled" in str(err)


def test_unknown_balancing_method_and_bad_static_weight():
    assert error_of(["balancing.method=gradnrom"], loader=load_run_config).key == "balancing.method"
    err = error_of(["balancing.method=static", "balancing.options.weights.rotation=-1"],
                   loader=load_run_config)
    assert err.key == "balancing.options.weights.rotation"


def test_the_gate_checks_a_saved_config_and_a_task_that_trains_a_missing_head():
    """A checkpoint's config passes the same checks as a file's; self-training without the
    segmentation task it trains is refused by name."""
    saved = config_to_dict(load_config(None, BASE))
    saved["model"]["norm"] = "btach"
    with pytest.raises(ConfigError, match="model.norm"):
        saved_run_config(saved)
    err = error_of(["tasks.self_training.workers=1"], loader=load_run_config)
    assert err.key == "tasks.self_training" and "tasks.segmentation" in str(err)


def test_the_schema_imports_no_plugin():
    """config.py checks keys, types and ranges only: importing it loads no registry."""
    code = ("import sys, ps_trainer.config; "
            "print(sorted(m for m in sys.modules if m.startswith(('ps_trainer.model', "
            "'ps_trainer.core.balancing', 'ps_trainer_workers'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_disk_source_needs_root():
    assert error_of(["data.source=voc"]).key == "data.root"


def test_overrides_are_typed_like_the_field():
    cfg = load_config(None, BASE + ["optimizer.lr=1e-3", "model.widths=[4,8]", "model.blocks=[1,2]",
                                    "metrics.enabled=false", "optimizer.betas=[0.5,0.9]"])
    assert cfg.optimizer.lr == pytest.approx(1e-3) and isinstance(cfg.optimizer.lr, float)
    assert cfg.model.widths == (4, 8) and cfg.model.blocks == (1, 2)
    assert cfg.metrics.enabled is False
    assert cfg.optimizer.betas == (0.5, 0.9)


def test_override_of_a_value_as_section_fails():
    assert error_of(["run.seed.x=1"]).key == "run.seed"


def test_config_is_frozen_picklable_and_round_trips(tmp_path):
    cfg = load_config(None, BASE + ["tasks.rotation.options.all_rotations=false"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.seed = 3
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("load, what", [(load_config, "config"), (load_experiment, "experiment")])
def test_missing_and_malformed_files(tmp_path, load, what):
    """Configs and experiment grids share one YAML reader, which names the file."""
    with pytest.raises(ConfigError, match=f"{what} file .*nope.yaml.* does not exist"):
        load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- name: a\n")
    with pytest.raises(ConfigError, match="list.yaml must hold a mapping"):
        load(listed)


@pytest.mark.parametrize("name", ["quickstart"])
def test_shipped_configs_load(name):
    cfg = load_run_config(f"configs/{name}.yaml")
    assert isinstance(cfg, Config) and "segmentation" in cfg.tasks


def test_a_users_own_config_gets_the_settings_the_quickstart_was_measured_with():
    """The measured settings are the defaults: a config that says nothing of them runs the
    quickstart's recipe (pushes at the full step, turns on one slot per core, no prefetch on a
    CPU worker), and the quickstart no longer spells them out."""
    import torch

    from ps_trainer.core.compute_slots import slot_count
    from ps_trainer.core.runtime import prefetches, usable_cores

    for cfg in (load_config(None, BASE), load_run_config("configs/quickstart.yaml")):
        assert cfg.server.staleness_policy == "unscaled"
        assert slot_count(cfg.run.compute_slots_per_node) == usable_cores()
        for task in cfg.tasks.values():
            assert prefetches(task.prefetch, torch.device("cpu")) is False
            assert prefetches(task.prefetch, torch.device("cuda")) is True
    import yaml

    raw = yaml.safe_load(open("configs/quickstart.yaml"))
    assert "staleness_policy" not in raw["server"] and "compute_slots_per_node" not in raw["run"]
    assert not any("prefetch" in task for task in raw["tasks"].values())


def test_publish_interval_longer_than_the_staleness_bound_is_refused():
    """Pushes are computed on the last published version: with publish_every_updates above
    max_staleness_updates + 1 every push is stale before the first publish and nothing is applied."""
    err = error_of(["server.max_staleness_updates=2", "server.publish_every_updates=4"])
    assert err.key == "server.publish_every_updates"
    assert "server.max_staleness_updates + 1 (3)" in str(err) and "\n" not in str(err)
    cfg = load_config(None, BASE + ["server.max_staleness_updates=2", "server.publish_every_updates=3"])
    assert cfg.server.publish_every_updates == 3                      # the bound itself is fine


@pytest.mark.parametrize("override,key", [
    ("optimizer.weight_decay=inf", "optimizer.weight_decay"),
    ("optimizer.weight_decay=.inf", "optimizer.weight_decay"),
    ("eval.every_s=inf", "eval.every_s"),
    ("run.max_minutes=.nan", "run.max_minutes"),
    ("optimizer.betas=[0.9,.inf]", "optimizer.betas[1]"),
    ("run.target_miou=-.inf", "run.target_miou"),
    ("tasks.rotation.num_cpus=inf", "tasks.rotation.num_cpus"),
])
def test_non_finite_floats_are_refused_everywhere(override, key):
    err = error_of([override])
    assert err.key == key and "must be a finite number" in str(err)


def test_old_spellings_load_with_a_deprecation_warning(tmp_path, caplog):
    """YAML written for earlier versions keeps working: each old key or value is mapped to
    the new one and named in a warning."""
    old = tmp_path / "old.yaml"
    old.write_text("server: {shards: 2, max_staleness: 9, publish_every: 3, "
                   "staleness_policy: drop}\noptimizer: {name: adam}\nfinetune: {optimizer: adam}\n"
                   "tasks: {rotation: {workers: 1}}\n")
    with caplog.at_level("WARNING", logger="ps_trainer.config"):
        cfg = load_config(old)
    assert (cfg.server.actors, cfg.server.max_staleness_updates, cfg.server.publish_every_updates,
            cfg.server.staleness_policy) == (2, 9, 3, "unscaled")
    assert cfg.optimizer.name == "adamw" and cfg.finetune.optimizer == "adamw"
    warned = caplog.text
    for name in ("server.shards", "server.max_staleness", "server.publish_every",
                 "'drop'", "'adam'"):
        assert name in warned and "deprecated" in warned
    # --set takes the old spelling too, and a saved config with old names round-trips
    assert load_config(None, BASE + ["server.shards=4"]).server.actors == 4
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_an_old_and_a_new_spelling_together_are_refused():
    err = error_of(["server.shards=2", "server.actors=3"])
    assert err.key == "server.shards" and "server.actors" in str(err)


def test_a_new_spelling_of_a_value_is_checked_like_any_other():
    assert error_of(["server.staleness_policy=sometimes"]).key == "server.staleness_policy"
    assert "unscaled" in str(error_of(["server.staleness_policy=sometimes"]))


SLIDE = ["eval.mode=slide", "eval.crop_size=[512,1024]", "eval.stride=[341,682]"]


@pytest.mark.parametrize("overrides,key,says", [
    (["eval.mode=tiles"], "eval.mode", "whole, slide"),
    (["eval.mode=slide"], "eval.crop_size", "with eval.mode 'slide'"),
    (["eval.mode=slide", "eval.crop_size=[512,1024]"], "eval.stride", "with eval.mode 'slide'"),
    (SLIDE + ["eval.stride=[341,1025]"], "eval.stride", "at most eval.crop_size [512, 1024]"),
    (SLIDE + ["eval.crop_size=[0,1024]"], "eval.crop_size", "both >= 1"),
    (["eval.crop_size=[512,1024]"], "eval.crop_size", "unless eval.mode is 'slide'"),
    (["eval.scale=[0,1024]"], "eval.scale", "both >= 1"),
    (["eval.scales=[]"], "eval.scales", "one or more"),
    (["eval.scales=[0.1]"], "eval.scales", "[0.25, 4]"),
    (["eval.num_gpus=-1"], "eval.num_gpus", ">= 0"),
    (["eval.cache_bytes=-1"], "eval.cache_bytes", ">= 0"),
    (["data.val=-2"], "data.val", "null (every image"),
])
def test_evaluation_settings_are_checked(overrides, key, says):
    err = error_of(overrides)
    assert err.key == key and says in str(err)


def test_evaluation_defaults_and_a_published_style_setting():
    cfg = load_config(None, BASE)
    assert (cfg.eval.mode, cfg.eval.scale, cfg.eval.flip, cfg.eval.scales, cfg.eval.num_gpus,
            cfg.data.val) == ("whole", None, False, (1.0,), 0.0, None)
    cfg = load_config(None, BASE + SLIDE + ["eval.scale=[1024,2048]", "eval.flip=true",
                                            "eval.scales=[0.75,1.0,1.25]", "eval.num_gpus=1"])
    assert (cfg.eval.crop_size, cfg.eval.stride, cfg.eval.scale) == ((512, 1024), (341, 682),
                                                                    (1024, 2048))
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_data_val_zero_is_the_old_spelling_of_every_image(caplog):
    with caplog.at_level("WARNING", logger="ps_trainer.config"):
        cfg = load_config(None, BASE + ["data.val=0"])
    assert cfg.data.val is None and "data.val" in caplog.text and "deprecated" in caplog.text
    assert error_of(["data.val=false"]).key == "data.val"     # a boolean is no old spelling


# --------------------------------------------------------------------------- per-split data

CITYSCAPES = ["data.source=cityscapes", "data.root=/data/cityscapes"]
GTA5_LABELLED = ["data.labelled_from.source=gta5", "data.labelled_from.root=/data/gta5"]


@pytest.mark.parametrize("overrides, key, says", [
    (["data.source=gta5", "data.root=/data/gta5"], "data.val_from.split",
     "gta5 has the splits train (validate on another data set: data.val_from"),
    (CITYSCAPES + ["data.labelled_from.source=gta5"], "data.labelled_from.root",
     "its source 'gta5' is not data.source"),
    (CITYSCAPES + ["data.val_from.source=voc", "data.val_from.root=/data/voc"], "data.val_from",
     "the validation images (voc, 21 classes) and the labelled images (cityscapes, 19 classes)"),
    (CITYSCAPES + ["data.unlabelled_from.source=folder", "data.unlabelled_from.root=/f"],
     "data.num_classes", "data.unlabelled_from reads a folder"),
    (CITYSCAPES + ["data.unlabelled_from.source=folder", "data.unlabelled_from.root=/f",
                   "data.num_classes=6"], "data.unlabelled_from",
     "the unlabelled images (folder, 6 classes)"),
    (CITYSCAPES + ["data.labelled_from.split=trainval"], "data.labelled_from.split",
     "cityscapes has the splits train, val, test"),
    (CITYSCAPES + ["data.labelled_from.source=synthetic"], "data.labelled_from.source",
     "per-split sources and lists name data sets on disk"),
    (["data.labelled_from.source=gta5", "data.labelled_from.root=/g"], "data.unlabelled_from.source",
     "'synthetic' is not allowed"),
    (["data.labelled_list=labeled.txt"], "data.labelled_list", "data.source is 'synthetic'"),
    (CITYSCAPES + ["data.labelled_list=a.txt", "data.labelled_from.list=b.txt"],
     "data.labelled_list", "give the list once"),
    (CITYSCAPES + ["data.labelled_from.sorce=gta5"], "data.labelled_from.sorce",
     "did you mean 'source'"),
    (CITYSCAPES + ["data.val_from.source=kitti"], "data.val_from.source", "gta5"),
])
def test_per_split_sources_are_checked_in_one_line(overrides, key, says):
    err = error_of(overrides)
    assert err.key == key and says in str(err) and "\n" not in str(err)


def test_gta5_labelled_with_cityscapes_unlabelled_and_val(tmp_path, monkeypatch):
    """The case the per-split sources exist for: the defaults fill in the rest, and every
    path is made absolute in the driver."""
    monkeypatch.chdir(tmp_path)
    cfg = load_run_config(None, BASE + ["data.source=cityscapes", "data.root=cityscapes",
                                        "data.labelled_from.source=gta5",
                                        "data.labelled_from.root=gta5",
                                        "data.labelled_from.list=gta5-1_8.txt",
                                        "data.val_from.list=val-list.txt"]).data
    labelled, unlabelled, val = (cfg.split_source(r) for r in ("labelled", "unlabelled", "val"))
    assert (labelled.source, labelled.root, labelled.split, labelled.list) == (
        "gta5", str(tmp_path / "gta5"), "train", str(tmp_path / "gta5-1_8.txt"))
    assert (unlabelled.source, unlabelled.root, unlabelled.split, unlabelled.list) == (
        "cityscapes", str(tmp_path / "cityscapes"), "train", None)
    assert (val.source, val.root, val.split, val.list) == (
        "cityscapes", str(tmp_path / "cityscapes"), "val", str(tmp_path / "val-list.txt"))
    listed = load_run_config(None, BASE + ["data.source=voc", "data.root=voc",
                                           "data.labelled_list=splits/1464.txt",
                                           "data.labelled_from.split=train_aug"]).data
    assert listed.split_source("labelled").list == str(tmp_path / "splits" / "1464.txt")
    assert listed.split_source("labelled").split == "train_aug"
    assert listed.split_source("unlabelled").list is None


def test_configs_without_per_split_sources_mean_what_they_did():
    cfg = load_config(None, BASE + CITYSCAPES).data
    assert [cfg.split_source(r) for r in ("labelled", "unlabelled", "val")] == [
        ResolvedSplit("cityscapes", "/data/cityscapes", "train", None),
        ResolvedSplit("cityscapes", "/data/cityscapes", "train", None),
        ResolvedSplit("cityscapes", "/data/cityscapes", "val", None)]
    assert cfg.unlabelled_excludes_labelled is True
    saved = config_to_dict(load_config(None, BASE))
    for key in ("labelled_from", "unlabelled_from", "val_from", "labelled_list",
                "unlabelled_excludes_labelled"):
        del saved["data"][key]                 # a checkpoint written before these keys
    assert config_from_dict(saved) == load_config(None, BASE)


def test_the_optimizers_registered_are_the_ones_the_config_allows():
    from ps_trainer.config.schema import OPTIMIZERS as ALLOWED
    from ps_trainer.core.optim import OPTIMIZERS

    assert set(OPTIMIZERS) == set(ALLOWED)
    for name in OPTIMIZERS:
        rule = OPTIMIZERS.get(name)
        assert rule.name == name and rule.state_names


def test_reader_tables_are_the_config_tables():
    """The splits and classes the config checks are those the readers have."""
    from ps_trainer.data.readers import READERS
    from ps_trainer.data.synthetic import CLASS_NAMES

    for source in READERS:
        if source != "folder":
            assert READERS.get(source).num_classes == SOURCE_CLASSES[source]
    assert SOURCE_CLASSES["synthetic"] == len(CLASS_NAMES)
    assert set(SOURCE_SPLITS) == set(READERS) and set(DATA_SOURCES) == {"synthetic", *READERS}
