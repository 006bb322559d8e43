"""self_training in the runtimes: its pushes train the trunk and the segmentation head, in the
single-process loop and as its own workers beside a pretext task on Ray; semi-supervised
fine-tuning; and the config gate for a borrowed head."""
from __future__ import annotations

import numpy as np
import pytest
import ray

from ps_trainer.core.checkpoint import CheckpointManager
from ps_trainer.config import ConfigError
from ps_trainer.recipes.finetune import finetune, finetune_config
from ps_trainer.run.launch import initial_model, run_distributed, run_local
from ps_trainer.run.run_folder import RunFolder
from ps_trainer_workers.assembly import task_shards

SEMI = ("rotation", "segmentation", "self_training")
CONFIDENT = ["tasks.self_training.options.threshold=0.2"]      # tiny models are unsure


def test_its_pushes_carry_the_trunk_and_the_segmentation_head(tiny_config):
    cfg = tiny_config(tasks=SEMI)
    assert task_shards(cfg)["self_training"] == ("trunk", "head/segmentation")
    assert task_shards(cfg)["rotation"] == ("trunk", "head/rotation")


def test_without_segmentation_in_the_run_it_fails_at_start(tiny_config):
    with pytest.raises(ConfigError, match="tasks.self_training.*add tasks.segmentation"):
        tiny_config(tasks=("rotation", "self_training"))


def test_local_run_trains_it_round_robin(tiny_config):
    cfg = tiny_config(tasks=SEMI, extra=["run.max_updates=30", "eval.every_s=600", *CONFIDENT])
    summary = run_local(cfg)
    assert summary.applied == {"rotation": 10, "segmentation": 10, "self_training": 10}
    assert 0.0 <= summary.miou <= 1.0


def test_self_training_pushes_alone_move_the_segmentation_head(tiny_config, tmp_path):
    """Segmentation frozen out (0 workers; the labels come through a fixed teacher trained
    on them): only self_training's pushes reach its head."""
    teacher_run = tiny_config(extra=["run.max_updates=6", "eval.every_s=600",
                                     f"run.out_dir={tmp_path / 'teacher'}"])
    run_local(teacher_run)
    teacher = CheckpointManager(RunFolder(teacher_run.run.out_dir).checkpoints, 3).steps()[-1]
    cfg = tiny_config(tasks=SEMI, extra=["run.max_updates=12", "eval.every_s=600",
                                         "tasks.segmentation.workers=0", *CONFIDENT,
                                         "tasks.self_training.options.teacher=checkpoint",
                                         f"tasks.self_training.options.teacher_checkpoint={teacher}"])
    _, flat = initial_model(cfg)
    before = flat.params["head/segmentation"].numpy().copy()
    summary = run_local(cfg)
    assert summary.applied == {"rotation": 6, "self_training": 6}
    run = RunFolder(cfg.run.out_dir)
    state = CheckpointManager(run.checkpoints, 3).latest()[1]["servers"][0]
    after = np.asarray(state["weights"]["head/segmentation"])
    assert np.abs(after - before).max() > 1e-4


def test_with_no_labels_reaching_its_head_it_fails_at_start(tiny_config):
    """No segmentation workers and a teacher that is the student itself: nothing would ever
    learn from a label."""
    with pytest.raises(ConfigError, match="tasks.segmentation.workers.*no labels at all"):
        tiny_config(tasks=SEMI, extra=["tasks.segmentation.workers=0"])
    tiny_config(tasks=("segmentation", "domain_adaptation"),   # reads source labels itself
                extra=["tasks.segmentation.workers=0"])


@pytest.mark.ray
def test_distributed_run_has_self_training_workers(ray_session, tiny_config):
    cfg = tiny_config(tasks=SEMI, extra=["run.max_updates=150", "run.name=semi", *CONFIDENT])
    summary = run_distributed(cfg)
    assert summary.updates >= 150
    applied = summary.applied
    assert applied["self_training"] > 0 and applied["segmentation"] > 0
    assert summary.miou is not None
    assert not ray.util.list_named_actors()                 # the run cleaned up its actors


def test_finetune_with_unlabelled_tasks_trains_both(tiny_config, tmp_path):
    base = tiny_config(tasks=("rotation", "segmentation"),
                       extra=["finetune.steps=8", "finetune.batch_size=4",
                              "finetune.warmup_updates=0",
                              "finetune.unlabelled_tasks=[self_training]"])
    cfg = finetune_config(base, 4, str(tmp_path / "x"))
    assert cfg.task_names == ("segmentation", "self_training")
    assert cfg.run.max_updates == 16                         # 8 steps for each task
    summary = finetune(base, None, labels=4, out_dir=str(tmp_path / "ft"))
    assert summary.applied == {"segmentation": 8, "self_training": 8}


def test_self_training_in_rounds_learns_from_the_last_rounds_model(tiny_config, tmp_path,
                                                                  monkeypatch):
    """Round 1 fine-tunes with the pulled teacher; round 2 starts again and learns from round
    1's checkpoint, named by a relative path that the config gate makes absolute."""
    extra = ["finetune.steps=6", "finetune.batch_size=4", "finetune.warmup_updates=0",
             "finetune.unlabelled_tasks=[self_training]", *CONFIDENT]
    first = finetune(tiny_config(tasks=SEMI, extra=extra), None, labels=4,
                     out_dir=str(tmp_path / "round-1"))
    assert first.applied == {"segmentation": 6, "self_training": 6}
    monkeypatch.chdir(tmp_path)
    second = tiny_config(tasks=SEMI, extra=[
        *extra, "tasks.self_training.options.teacher=checkpoint",
        "tasks.self_training.options.teacher_checkpoint=round-1/checkpoints/best.pt"])
    path = second.tasks["self_training"].options["teacher_checkpoint"]
    assert path == str(tmp_path / "round-1" / "checkpoints" / "best.pt")
    summary = finetune(second, None, labels=4, out_dir=str(tmp_path / "round-2"))
    assert summary.applied == {"segmentation": 6, "self_training": 6}
    assert 0.0 <= summary.miou <= 1.0
