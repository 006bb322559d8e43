"""The final state comes first: a run's final checkpoint is on disk before its final
evaluation, and a final evaluation slower than its limit ends the run without its score but
with the checkpoint, and without its evaluator being replaced mid-way."""
from __future__ import annotations

import pytest

from ps_trainer.core.checkpoint import CheckpointManager, load_checkpoint
from ps_trainer.run.launch import run_distributed
from ps_trainer.run.run_folder import RunFolder

# 64 validation images scored on 16-px windows every 2 px: hundreds of windows per image,
# seconds of scoring against a 0.5 s limit (and no earlier evaluation to scale it by).
SLOW_FINAL = ["data.val=64", "eval.mode=slide", "eval.crop_size=[16,16]", "eval.stride=[2,2]",
              "eval.final_timeout_s=0.5", "eval.every_s=600", "run.max_updates=40"]


@pytest.mark.ray
def test_a_slow_final_evaluation_keeps_the_final_checkpoint_and_its_evaluator(
        ray_session, tiny_config):
    cfg = tiny_config(extra=[*SLOW_FINAL, "run.name=slow-final"])
    summary = run_distributed(cfg)
    assert summary.stopped_by == "max_updates" and summary.updates >= 40
    assert summary.miou is None and summary.final is None          # no score in time ...
    assert summary.runtime.restarts.get("evaluator", 0) == 0        # ... and nobody killed
    steps = CheckpointManager(RunFolder(cfg.run.out_dir).checkpoints, 3).steps()
    final = load_checkpoint(steps[-1])                              # ... but the final state
    assert final["servers"][0]["version"] == summary.updates and final["score"] is None
