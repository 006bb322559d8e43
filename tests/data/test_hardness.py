"""ARCHITECTURE.md (Data): the synthetic scenes must be hard in the ways real images are. A CNN trained on
the labels must stay far above a per-pixel color classifier fitted on the same labels, and
few labels must be clearly worse than many (or unlabelled images have nothing to add)."""
from __future__ import annotations

import pytest

from ps_trainer.data.color_baseline import color_baseline_miou
from ps_trainer.data.splits import build_splits
from ps_trainer.run.launch import load_run_config, run_local

pytestmark = pytest.mark.slow

SMALL = ["data.image_size=32", "data.val=64", "model.widths=[8,16,32]", "model.blocks=[1,1,1]",
         "model.stem_stride=1", "optimizer.name=adamw", "optimizer.lr=0.003", "eval.every_s=1e9",
         "metrics.enabled=false", "run.max_updates=300", "tasks.segmentation.workers=1",
         "tasks.segmentation.batch_size=16", "tasks.segmentation.options.scale_range=[0.8,1.4]"]


def train(tmp_path, labels: int):
    cfg = load_run_config(None, SMALL + [f"data.labelled={labels}",
                                         f"run.out_dir={tmp_path / f'n{labels}'}"])
    return cfg, run_local(cfg).miou


def test_trained_model_is_far_above_a_color_classifier_on_the_same_labels(tmp_path):
    cfg, model_miou = train(tmp_path, 256)
    splits = build_splits(cfg.data, cfg.run.seed)
    color = color_baseline_miou(splits.labelled, splits.val, splits.num_classes)
    assert model_miou >= color + 0.08, (model_miou, color)      # measured: 0.45 vs 0.29


def test_few_labels_are_clearly_worse_than_many(tmp_path):
    _, few = train(tmp_path, 8)
    _, many = train(tmp_path, 256)
    assert many >= few + 0.08, (few, many)                         # measured: 0.29 vs 0.45
