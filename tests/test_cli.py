"""The ps-trainer command: exit codes and messages, local training, eval of a checkpoint."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ps_trainer.cli import main
from ps_trainer.run_folder import RunFolder
from support import untrained_checkpoint


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ps_trainer.cli", *args], capture_output=True,
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
