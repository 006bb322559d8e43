"""A run folder belongs to one run: a new run refuses another run's checkpoints (or deletes
them with --overwrite), a resumed run continues in its own, and a restore never picks
another run's checkpoint."""
from __future__ import annotations

import shutil

import pytest

from ps_trainer.core.checkpoint import CheckpointManager, run_id_of
from ps_trainer.tools.cli import main
from ps_trainer.run.launch import resume_from, run_local
from ps_trainer.run.run_folder import RunFolder, RunFolderInUse

SHORT = ["run.max_updates=6", "eval.every_s=600"]


def test_a_new_run_refuses_a_folder_holding_another_runs_checkpoints(tiny_config, tmp_path):
    cfg = tiny_config(extra=SHORT)
    run_local(cfg)
    folder = RunFolder(cfg.run.out_dir)
    before = {p.name: p.read_bytes() for p in folder.checkpoints.iterdir()}
    config_before = folder.config.read_text()
    with pytest.raises(RunFolderInUse, match="--resume .*--overwrite"):
        run_local(tiny_config(extra=SHORT))
    assert {p.name: p.read_bytes() for p in folder.checkpoints.iterdir()} == before
    assert folder.config.read_text() == config_before          # nothing lost, nothing written


def test_overwrite_replaces_the_other_runs_checkpoints_and_metrics(tiny_config):
    cfg = tiny_config(extra=SHORT)
    run_local(cfg)
    folder = RunFolder(cfg.run.out_dir)
    first = folder.owner()
    run_local(tiny_config(extra=["run.max_updates=4", "eval.every_s=600"]), overwrite=True)
    assert folder.owner() not in (None, first)
    assert run_id_of(CheckpointManager(folder.checkpoints, 3).latest()[1]) == folder.owner()
    assert [p.name for p in CheckpointManager(folder.checkpoints, 3).steps()] == [
        "step-000000004.pt"]                                     # the 6-update one is gone
    assert [r["step"] for r in folder.records()] == [4]


def test_a_resumed_run_keeps_its_id_and_its_folder(tiny_config):
    cfg = tiny_config(extra=SHORT)
    run_local(cfg)
    folder = RunFolder(cfg.run.out_dir)
    first = folder.owner()
    resumed, checkpoint = resume_from(cfg.run.out_dir, ["run.max_updates=10"])
    assert resumed.run.id == first
    summary = run_local(resumed, resume=checkpoint)
    assert summary.updates == 10 and folder.owner() == first
    assert run_id_of(CheckpointManager(folder.checkpoints, 3).latest()[1]) == first


def test_a_restore_skips_a_newer_checkpoint_of_another_run(tiny_config, tmp_path):
    cfg = tiny_config(extra=SHORT)
    run_local(cfg)
    folder = RunFolder(cfg.run.out_dir)
    mine = folder.owner()
    other = tiny_config(extra=["run.max_updates=8", "eval.every_s=600",
                               f"run.out_dir={tmp_path / 'other'}"])
    run_local(other)
    stranger = RunFolder(other.run.out_dir).checkpoints / "step-000000008.pt"
    for suffix in ("", ".sha256"):                  # a newer step of another run, copied in
        shutil.copy(f"{stranger}{suffix}", folder.checkpoints / f"step-000000008.pt{suffix}")
    path, payload = CheckpointManager(folder.checkpoints, 3).latest(mine)
    assert path.name == "step-000000006.pt" and run_id_of(payload) == mine
    assert CheckpointManager(folder.checkpoints, 3).latest()[0].name == "step-000000008.pt"


def test_train_into_another_runs_folder_is_one_line_and_exit_1(tiny, tmp_path, capsys):
    overrides = [a for o in tiny(tmp_path, extra=SHORT) for a in ("--set", o)]
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    assert main(["train", "--mode", "local", "--config", str(empty), *overrides]) == 0
    capsys.readouterr()
    assert main(["train", "--mode", "local", "--config", str(empty), *overrides]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds the checkpoints of run" in err
    assert main(["train", "--mode", "local", "--config", str(empty), *overrides,
                 "--overwrite"]) == 0


@pytest.mark.parametrize("change, message", [
    ("server.actors=2", "holds 1 server actor state.*server.actors=1"),
    ("model.widths=[8,24]", "model does not fit.*trunk"),
    ("optimizer.name=sgd", "optimizer.name=adamw"),
])
def test_an_incompatible_resume_is_one_line_at_start(tiny, tmp_path, capsys, change, message):
    overrides = [a for o in tiny(tmp_path, extra=SHORT) for a in ("--set", o)]
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    assert main(["train", "--mode", "local", "--config", str(empty), *overrides]) == 0
    capsys.readouterr()
    folder = RunFolder(tmp_path / "run")
    config_before = folder.config.read_text()
    assert main(["train", "--resume", str(folder.root), "--set", change]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    import re
    assert re.search(message, err), err
    assert folder.config.read_text() == config_before         # nothing touched
