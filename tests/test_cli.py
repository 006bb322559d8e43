"""The ps-trainer command: exit codes and messages, local training, eval of a checkpoint."""
from __future__ import annotations

import subprocess
import sys

from ps_trainer.runlog import RunFolder


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
