"""The single-process trainer: trains every task, evaluates, checkpoints, resumes."""
from __future__ import annotations

import json
import math

import torch

from ps_trainer.core.checkpoint import CheckpointManager
from ps_trainer.run.launch import resume_from, run_local
from ps_trainer.run.run_folder import RunFolder


def test_local_run_writes_metrics_checkpoints_and_pictures(tiny_config):
    cfg = tiny_config(tasks=("rotation", "jigsaw", "segmentation"),
                      extra=["run.max_updates=60", "eval.every_updates=30", "eval.every_s=600"])
    summary = run_local(cfg)
    assert summary.updates == 60 and summary.stopped_by == "max_updates"
    assert summary.applied == {"rotation": 20, "jigsaw": 20, "segmentation": 20}   # round-robin
    run = RunFolder(cfg.run.out_dir)
    records = run.records()
    assert [r["step"] for r in records] == [30, 60, 60]     # every 30 updates, then the final one
    for r in records:
        assert {"miou", "per_class_iou", "step", "time_s", "losses", "weights"} <= set(r)
    assert records[-1]["miou"] == summary.miou and records[-1]["final"] is True
    assert records[-1]["applied"] == summary.applied
    newest = CheckpointManager(run.checkpoints, cfg.eval.keep_last).steps()[-1]
    raw = torch.load(newest, weights_only=True)
    assert raw["servers"][0]["version"] == 60 and "trunk" in raw["servers"][0]["weights"]
    assert run.curves.exists() and list(run.previews.glob("*.png"))
    assert json.loads(run.metrics.read_text().splitlines()[0])["step"] == 30


def test_local_training_lowers_the_losses(tiny_config):
    cfg = tiny_config(tasks=("rotation", "segmentation"),
                      extra=["run.max_updates=240", "eval.every_s=600"])
    run_local(cfg)
    losses = RunFolder(cfg.run.out_dir).records()[-1]["losses"]
    assert losses["segmentation"] < 0.75 * math.log(6)   # cross-entropy starts near ln(6 classes)
    assert losses["rotation"] < 0.9 * math.log(4)


def test_local_resume_continues_from_the_checkpoint_version(tiny_config):
    cfg = tiny_config(tasks=("rotation", "segmentation"), extra=["run.max_updates=20"])
    run_local(cfg)
    resumed_cfg, checkpoint = resume_from(cfg.run.out_dir, ["run.max_updates=30"])
    assert checkpoint["servers"][0]["version"] == 20
    summary = run_local(resumed_cfg, resume=checkpoint)
    assert summary.updates == 30
