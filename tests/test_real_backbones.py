"""A ResNet-50 at output stride 8 with the DeepLabV3+ head trains through every runtime: the
distributed one (on the session's Ray), the single-process loop and few-label fine-tuning
(small images, CPU, a few steps each)."""
from __future__ import annotations

import numpy as np
import pytest

from ps_trainer.core.checkpoint import CheckpointManager, load_checkpoint
from ps_trainer.recipes.finetune import finetune
from ps_trainer.run.launch import initial_model, run_distributed, run_local
from ps_trainer.run.run_folder import RunFolder

RESNET50_DEEPLAB = ["model.backbone=resnet50", "model.output_stride=8", "model.norm=group",
                    "tasks.segmentation.options.head=deeplabv3plus",
                    "tasks.segmentation.batch_size=2", "tasks.rotation.batch_size=2",
                    "data.image_size=32", "data.val=4", "eval.batch_size=4", "eval.previews=1",
                    "eval.every_s=600"]


def _trunk_moved(cfg) -> float:
    """Largest change of a trunk weight between the initial model and the last checkpoint."""
    _, flat = initial_model(cfg)
    state = CheckpointManager(RunFolder(cfg.run.out_dir).checkpoints, 3).latest()[1]
    after = np.asarray(state["servers"][0]["weights"]["trunk"])
    return float(np.abs(after - flat.params["trunk"].numpy()).max())


@pytest.mark.ray
@pytest.mark.slow
def test_distributed(ray_session, tiny_config):
    cfg = tiny_config(extra=[*RESNET50_DEEPLAB, "run.max_updates=6", "run.name=r50"])
    summary = run_distributed(cfg)
    assert summary.updates >= 6 and summary.applied["segmentation"] > 0
    assert summary.miou is not None and _trunk_moved(cfg) > 0


def test_local(tiny_config):
    cfg = tiny_config(extra=[*RESNET50_DEEPLAB, "run.max_updates=4"])
    summary = run_local(cfg)
    assert summary.applied == {"rotation": 2, "segmentation": 2}
    assert summary.miou is not None and _trunk_moved(cfg) > 0
    checkpoint = load_checkpoint(CheckpointManager(RunFolder(cfg.run.out_dir).checkpoints,
                                                   3).steps()[-1])
    assert checkpoint["config"]["model"]["backbone"] == "resnet50"


def test_finetune(tmp_path, tiny_config):
    cfg = tiny_config(extra=[*RESNET50_DEEPLAB, "finetune.steps=3", "finetune.batch_size=2",
                             "finetune.warmup_updates=0"])
    summary = finetune(cfg, None, labels=2, out_dir=str(tmp_path / "ft"))
    assert summary.updates == 3 and 0 <= summary.miou <= 1
