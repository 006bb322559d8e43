"""The ps-trainer command: exit codes and messages, local training, eval of a checkpoint."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from ps_trainer.tools.cli import main
from ps_trainer.config import ConfigError
from ps_trainer.run.config_gate import load_run_config
from ps_trainer.run.run_folder import RunFolder
from support import untrained_checkpoint


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ps_trainer.tools.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_malformed_config_exits_non_zero_with_the_key_on_stderr(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer:\n  lr: -1\ntasks:\n  rotation: {workers: 1}\n")
    result = cli("train", "--config", str(bad))
    assert result.returncode == 2
    assert "optimizer.lr" in result.stderr and "must be > 0" in result.stderr
    assert result.stdout == ""
    typo = cli("train", "--config", str(bad), "--set", "optimizer.lr=0.1", "--set", "tasks.rotaton.workers=1")
    assert typo.returncode == 2 and "tasks.rotaton" in typo.stderr


def test_missing_config_and_missing_run_folder(tmp_path):
    assert "does not exist" in cli("train", "--config", str(tmp_path / "nope.yaml")).stderr
    result = cli("train", "--resume", str(tmp_path))
    assert result.returncode == 1 and "not a run folder" in result.stderr


def test_local_train_then_eval_the_checkpoint(tmp_path, tiny):
    overrides = [a for o in tiny(tmp_path, ("rotation", "segmentation"),
                                 extra=["run.max_updates=20"]) for a in ("--set", o)]
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    result = cli("train", "--mode", "local", "--config", str(empty), *overrides)
    assert result.returncode == 0, result.stderr
    line = [row for row in result.stdout.splitlines() if row.startswith("final mIoU:")]
    assert line, result.stdout
    recorded = RunFolder(tmp_path / "run").records()[-1]
    assert line[0] == f"final mIoU: {recorded['miou']:.4f}"
    evaluated = cli("eval", "--checkpoint", recorded["checkpoint"])
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"mIoU: {recorded['miou']:.4f}" in evaluated.stdout


@pytest.mark.ray
def test_a_distributed_run_whose_data_cannot_be_read_fails_in_one_line(ray_session, tmp_path, tiny,
                                                                       capsys):
    missing = tmp_path / "no-such-dataset"
    overrides = [a for o in tiny(tmp_path, ("rotation",), extra=[
        "run.name=cli-nodata", "run.max_updates=100000", "data.source=folder",
        f"data.root={missing}", "data.num_classes=3"]) for a in ("--set", o)]
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    assert main(["train", "--config", str(empty), *overrides]) == 1
    captured = capsys.readouterr()
    (line,) = [row for row in captured.err.splitlines() if row.startswith("ps-trainer:")]
    assert "could not start" in line and f"dataset root not found: {missing}" in line
    assert "final mIoU: n/a" in captured.out      # nothing was trained, and that is said


def _damaged(tmp_path, good: Path, how: str) -> Path:
    path = tmp_path / f"{how}.pt"
    if how == "missing":
        return path
    if how == "text":
        path.write_text("not a checkpoint\n")
        return path
    data = good.read_bytes()
    if how in ("truncated", "truncated-no-checksum"):
        data = data[: len(data) // 2]
    path.write_bytes(data)
    if how == "truncated":             # the checksum of the whole file beside half of it
        shutil.copy(f"{good}.sha256", f"{path}.sha256")
    return path


@pytest.mark.parametrize("how, message", [
    ("missing", "no such checkpoint file"),
    ("text", "not a checkpoint"),
    ("truncated", "checksum mismatch"),
    ("truncated-no-checksum", "no checksum file"),
])
@pytest.mark.parametrize("command", ["eval", "finetune", "export"])
def test_a_bad_checkpoint_is_named_in_one_line(tmp_path, tiny_config, capsys, command, how, message):
    good = Path(untrained_checkpoint(tiny_config()))
    path = _damaged(tmp_path, good, how)
    capsys.readouterr()
    extra = {"finetune": ["--labels", "2", "--out", str(tmp_path / "ft")],
             "export": ["--out", str(tmp_path / "trunk.pth")]}.get(command, [])
    assert main([command, "--checkpoint", str(path), *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith(f"ps-trainer: {path}: ") and message in err[0]


def test_a_checkpoint_copied_without_its_checksum_is_used_with_a_warning(tmp_path, tiny_config):
    good = Path(untrained_checkpoint(tiny_config()))
    copy = _damaged(tmp_path, good, "copy")
    result = cli("eval", "--checkpoint", str(copy), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "mIoU: " in result.stdout
    assert "no checksum file copy.pt.sha256" in result.stderr and "Traceback" not in result.stderr
    bad = cli("eval", "--checkpoint", str(_damaged(tmp_path, good, "truncated")), timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "checksum mismatch" in bad.stderr


@pytest.mark.parametrize("command", [["status"], ["scale", "--task", "rotation", "--workers", "2"],
                                     ["train", "--config", "configs/quickstart.yaml"]])
def test_status_and_scale_fail_fast_where_no_cluster_answers(command):
    start = time.monotonic()
    result = cli(*command, "--address", "127.0.0.1:1", timeout=60)
    assert time.monotonic() - start < 20
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:1" in lines[0] and "cannot reach a Ray cluster" in lines[0]


def test_status_without_any_cluster_says_so_in_one_line(monkeypatch, capsys):
    import ray._private.services as services

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir=None: None)
    assert main(["status"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--address auto" in err[0] and "Ray" in err[0]


def test_version_comes_from_the_package():
    import configparser

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    result = cli("--version", timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"ps-trainer {setup['metadata']['version']}"


# --------------------------------------------------------------------------- data export

GTA5_SIZE, CITYSCAPES_SIZE = (1052, 1914), (1024, 2048)
# Synthetic class (sky, ground, road, building, vegetation, object) -> Cityscapes train id
# (sky, terrain, road, building, vegetation, car), written out independently of the exporter.
SYNTHETIC_TRAIN_IDS = np.array([10, 9, 0, 2, 8, 13], dtype=np.uint8)


def export_args(layout, size, out, *extra):
    return ["data", "export", "--layout", layout, "--size", "x".join(map(str, size)),
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A GTA5-layout and a Cityscapes-layout export at full resolution, written by the CLI."""
    root = tmp_path_factory.mktemp("exported")
    assert main(export_args("gta5", GTA5_SIZE, root / "gta5", "--train", "3", "--seed", "1")) == 0
    assert main(export_args("cityscapes", CITYSCAPES_SIZE, root / "cityscapes", "--train", "2",
                            "--val", "2", "--domain", "shifted", "--seed", "2")) == 0
    return root / "gta5", root / "cityscapes"


def expected_scene(seed, split_index, index, size, domain):
    """The scene the exporter documents: rendered square at the longer side, centre cut."""
    from ps_trainer.data.synthetic import render_scene

    height, width = size
    side = max(size)
    image, mask = render_scene(np.random.default_rng([seed, split_index, index]), side, domain)
    top, left = (side - height) // 2, (side - width) // 2
    return image[top:top + height, left:left + width], mask[top:top + height, left:left + width]


def test_data_export_writes_each_layout_at_full_resolution(exported):
    from PIL import Image

    from ps_trainer.config import SHIFTED_DOMAIN, DomainConfig
    from ps_trainer.data.readers import CityscapesDataset, GTA5Dataset

    gta5_root, cityscapes_root = exported
    gta5 = GTA5Dataset(gta5_root)
    assert [image.name for image, _ in gta5.pairs] == ["00001.png", "00002.png", "00003.png"]
    with Image.open(gta5.pairs[0][1]) as label:
        assert label.mode == "P" and label.size == GTA5_SIZE[::-1]     # as GTA5 ships them
    val = CityscapesDataset(cityscapes_root, "val")
    assert len(CityscapesDataset(cityscapes_root, "train")) == 2 and len(val) == 2
    assert val.pairs[1][1].name == "synthval_000001_000019_gtFine_labelIds.png"
    assert cv2.imread(str(val.pairs[1][1]), cv2.IMREAD_UNCHANGED).ndim == 2
    for data, seed, split_index, index, size, domain in (
            (gta5, 1, 0, 2, GTA5_SIZE, DomainConfig()),
            (val, 2, 1, 1, CITYSCAPES_SIZE, SHIFTED_DOMAIN)):
        image, classes = expected_scene(seed, split_index, index, size, domain)
        sample = data[index]
        np.testing.assert_array_equal(sample.image, image)             # PNG: lossless
        np.testing.assert_array_equal(sample.mask, SYNTHETIC_TRAIN_IDS[classes])


def test_a_gta5_and_a_cityscapes_export_are_one_class_space(tmp_path):
    from ps_trainer.data.readers import CityscapesDataset, GTA5Dataset

    for layout in ("gta5", "cityscapes"):
        assert main(export_args(layout, (48, 80), tmp_path / layout, "--train", "2", "--val",
                                "0", "--seed", "5")) == 0
    gta5, city = GTA5Dataset(tmp_path / "gta5"), CityscapesDataset(tmp_path / "cityscapes", "train")
    assert gta5.class_names == city.class_names
    for i in range(2):
        np.testing.assert_array_equal(gta5[i].image, city[i].image)
        np.testing.assert_array_equal(gta5[i].mask, city[i].mask)


@pytest.mark.parametrize("args, message", [
    (["--layout", "gta5", "--size", "1024by2048"], "--size must be HEIGHTxWIDTH"),
    (["--layout", "gta5", "--size", "8x2048"], "at least 16x16"),
    (["--layout", "gta5", "--size", "64x64", "--val", "2"], "gta5 layout has no val split"),
    (["--layout", "cityscapes", "--size", "64x64", "--train", "-1"], "must be >= 0"),
    (["--layout", "cityscapes", "--size", "64x64", "--out", "{full}"], "is not an empty folder"),
])
def test_data_export_mistakes_are_one_line(tmp_path, capsys, args, message):
    full = tmp_path / "full"
    full.mkdir()
    (full / "old.png").write_bytes(b"")
    args = [a.format(full=full) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "new")]
    assert main(["data", "export", *out, *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "new").exists()


def gta5_to_cityscapes(tmp_path, tiny, exported, *extra):
    gta5_root, cityscapes_root = exported
    return load_run_config(None, tiny(tmp_path, ("rotation", "segmentation"), extra=[
        "run.name=gta5-to-cityscapes", "eval.every_updates=6",
        "data.source=cityscapes", f"data.root={cityscapes_root}", "data.labelled=3",
        "data.unlabelled=0", "data.val=null", "data.labelled_from.source=gta5",
        f"data.labelled_from.root={gta5_root}", "tasks.segmentation.batch_size=2",
        "tasks.rotation.batch_size=2", *extra]))


@pytest.mark.ray
def test_gta5_labelled_cityscapes_unlabelled_and_val_train_distributed(ray_session, tmp_path,
                                                                       tiny, exported):
    """The case the per-split sources are for, through the distributed runtime: segmentation
    on full-resolution GTA5-layout frames, rotation on Cityscapes-layout ones, scored on the
    Cityscapes-layout val split at full resolution by sliding windows."""
    import ray

    from ps_trainer.run.launch import start_coordinator, start_metrics
    from support import wait_for

    cfg = gta5_to_cityscapes(tmp_path, tiny, exported, "run.max_updates=100000",
                             "eval.mode=slide", "eval.crop_size=[512,1024]",
                             "eval.stride=[512,1024]", "eval.batch_size=2")
    hub, _ = start_metrics(cfg)
    coordinator = start_coordinator(cfg, None, hub)
    done = coordinator.run.remote()
    try:
        applied = lambda: ray.get(coordinator.status.remote()).servers[0].applied  # noqa: E731
        wait_for(lambda: min(applied().values()) > 0, what="a push of each task")
        wait_for(lambda: RunFolder(cfg.run.out_dir).records(), what="an evaluation")
        coordinator.stop.remote()
        summary = ray.get(done, timeout=120)
    finally:
        ray.kill(coordinator)
        ray.kill(hub)
    assert summary.error is None and summary.miou is not None
    assert summary.applied["segmentation"] > 0 and summary.applied["rotation"] > 0
    record = RunFolder(cfg.run.out_dir).records()[-1]
    assert len(record["per_class_iou"]) == 19 and record["miou"] == summary.miou
    assert record["eval_images"] == 2            # both 1024x2048 val frames, in 512x1024 windows


def test_a_distributed_run_asking_more_labels_than_the_list_holds_stops_before_ray(
        tmp_path, tiny, exported, monkeypatch):
    from ps_trainer.run import launch

    def must_not_start(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(launch, "connect", must_not_start)
    with pytest.raises(ConfigError, match=r"'data.labelled': 4 is more than the gta5 train split"
                                          r".*\(3 usable images\)"):
        launch.run_distributed(gta5_to_cityscapes(tmp_path, tiny, exported, "data.labelled=4"))


def test_scale_with_a_negative_count_fails_before_asking_any_cluster():
    start = time.monotonic()
    result = cli("scale", "--task", "rotation", "--workers", "-1", "--address", "10.255.255.1:1",
                 timeout=60)
    assert time.monotonic() - start < 15           # no connection attempted to that address
    assert result.returncode == 1 and result.stderr.strip() == (
        "ps-trainer: --workers must be >= 0, got -1")


@pytest.mark.ray
def test_train_without_an_address_starts_its_own_ray_beside_a_dead_cluster(tmp_path, tiny):
    """`ray start` left a cluster's address behind and the cluster died (every process of it
    SIGKILLed, as an OOM kill or a reboot leaves it): train without --address starts a
    local Ray of its own instead of retrying the dead one's GCS."""
    import contextlib
    import os
    import signal as signals
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="psd"))   # short: Ray's socket paths fit 107 bytes
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run(["ray", "start", "--head", "--port=0", "--num-cpus=1",
                              "--include-dashboard=false", "--disable-usage-stats"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert started.returncode == 0, started.stderr
    address_file = ray_tmp / "ray" / "ray_current_cluster"
    assert address_file.exists()                   # the address a plain ray.init() would join
    processes = subprocess.run(["pgrep", "-f", str(ray_tmp)],
                               capture_output=True, text=True).stdout.split()
    try:
        assert processes
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signals.SIGKILL)   # the cluster is gone; its file stays
        overrides = [a for o in tiny(tmp_path, extra=["run.max_updates=20"])
                     for a in ("--set", o)]
        empty = tmp_path / "empty.yaml"
        empty.write_text("{}\n")
        result = subprocess.run([sys.executable, "-m", "ps_trainer.tools.cli", "train", "--config",
                                 str(empty), *overrides], capture_output=True, text=True,
                                env=env, timeout=180)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "final mIoU:" in result.stdout
    finally:
        # Only this test's processes (`ray stop` would end every Ray on the machine, the
        # session's own included).
        for pid in subprocess.run(["pgrep", "-f", str(ray_tmp)], capture_output=True,
                                  text=True).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signals.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
