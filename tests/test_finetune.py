"""The few-label protocol: from a random or a pretrained trunk, frozen or not."""
from __future__ import annotations

import numpy as np
import pytest

from ps_trainer.core.checkpoint import CheckpointManager, load_checkpoint
from ps_trainer.config import dump_config
from ps_trainer.recipes.finetune import finetune, finetune_config, trunk_of
from ps_trainer.run.launch import initial_model, load_run_config, run_local
from ps_trainer.core.params import plan_pieces

FT = ["finetune.steps=12", "finetune.batch_size=4", "finetune.warmup_updates=0"]


@pytest.fixture
def pretrained(tmp_path, tiny):
    cfg = load_run_config(None, tiny(tmp_path / "pre", ("rotation",),
                                     extra=["run.max_updates=10", *FT]))
    run_local(cfg)
    path = CheckpointManager(f"{cfg.run.out_dir}/checkpoints", 3).steps()[-1]
    return cfg, load_checkpoint(path)


def test_derived_config_trains_only_segmentation_on_n_labels(tiny_config):
    cfg = finetune_config(tiny_config(tasks=("rotation", "jigsaw")), 5, "/tmp/x", seed=3)
    assert list(cfg.tasks) == ["segmentation"] and cfg.data.labelled == 5
    assert cfg.run.max_updates == cfg.finetune.steps and cfg.run.seed == 3
    assert cfg.optimizer.lr == cfg.finetune.lr and cfg.balancing.method == "equal"


def test_trunk_is_assembled_from_server_pieces(tiny_config):
    _, flat = initial_model(tiny_config())
    trunk = flat.param_arrays()["trunk"]
    plan = plan_pieces(flat.layout, 3)
    servers = [{"weights": {p.key: trunk[p.start:p.stop] for p in plan if p.server == i
                            and p.shard == "trunk"}} for i in range(3)]
    checkpoint = {"plan": [p.__dict__ for p in plan], "servers": servers}
    np.testing.assert_array_equal(trunk_of(checkpoint), trunk)


def test_finetune_from_a_random_trunk(tmp_path, tiny_config):
    cfg = tiny_config(extra=FT)
    summary = finetune(cfg, None, labels=4, out_dir=str(tmp_path / "ft"))
    assert summary.updates == 12 and 0 <= summary.miou <= 1


def test_frozen_pretrained_trunk_is_loaded_and_stays_put(tmp_path, pretrained):
    cfg, checkpoint = pretrained
    frozen = cfg.replace(finetune=cfg.finetune.__class__(**{**cfg.finetune.__dict__,
                                                            "train_trunk": False}))
    finetune(frozen, checkpoint, labels=4, out_dir=str(tmp_path / "frozen"))
    after = load_checkpoint(CheckpointManager(tmp_path / "frozen" / "checkpoints", 1).steps()[-1])
    np.testing.assert_array_equal(trunk_of(after), trunk_of(checkpoint))
    # trained (default): the trunk starts from the checkpoint and moves
    finetune(cfg, checkpoint, labels=4, out_dir=str(tmp_path / "trained"))
    moved = load_checkpoint(CheckpointManager(tmp_path / "trained" / "checkpoints", 1).steps()[-1])
    assert not np.array_equal(trunk_of(moved), trunk_of(checkpoint))


def test_checkpoint_model_wins_over_the_base_config(tmp_path, pretrained, tiny_config):
    _, checkpoint = pretrained
    other = tiny_config(extra=[*FT, "model.widths=[4,8]"])          # a different trunk
    summary = finetune(other, checkpoint, labels=4, out_dir=str(tmp_path / "ft"))
    assert summary.updates == 12


def test_cli_finetune(tmp_path, pretrained):
    import subprocess
    import sys

    cfg, _ = pretrained
    path = CheckpointManager(f"{cfg.run.out_dir}/checkpoints", 3).steps()[-1]
    out = subprocess.run([sys.executable, "-m", "ps_trainer.tools.cli", "finetune", "--checkpoint",
                          str(path), "--labels", "4", "--out", str(tmp_path / "cli"),
                          "--unlabelled-task", "self_training"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("mIoU: ") and "pretrained trunk" in out.stdout
    saved = (tmp_path / "cli" / "config.yaml").read_text()
    assert "unlabelled_tasks:\n  - self_training" in saved and "self_training:" in saved
    config = tmp_path / "c.yaml"
    config.write_text(dump_config(cfg))
    scratch = subprocess.run([sys.executable, "-m", "ps_trainer.tools.cli", "finetune", "--checkpoint",
                              "none", "--labels", "4"], capture_output=True, text=True, timeout=60)
    assert scratch.returncode == 1 and "needs --config" in scratch.stderr


def test_a_checkpoint_without_a_trunk_is_named():
    with pytest.raises(ValueError, match="holds no trunk"):
        trunk_of({"plan": [{"shard": "head/rotation", "key": "head/rotation", "start": 0,
                            "stop": 4, "server": 0}], "servers": [{"weights": {}}]})
