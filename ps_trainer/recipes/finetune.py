"""The few-label transfer protocol (``ps-trainer finetune``).

Start from a pretrained trunk (a checkpoint) or a random one (the supervised-only
baseline), train a fresh segmentation head — and, unless ``finetune.train_trunk`` is false,
the trunk — on the first N labelled images, and score mIoU on the validation split:

    ps-trainer finetune --checkpoint runs/pretrain/checkpoints/best.pt --labels 16
    ps-trainer finetune --checkpoint none --labels 16 --config configs/quickstart.yaml

With ``finetune.unlabelled_tasks`` (``--unlabelled-task self_training``) those tasks train
beside segmentation on the unlabelled pool, round-robin, each for ``finetune.steps`` steps:
semi-supervised fine-tuning, the second stage of S4L's recipe.

It runs the single-process trainer on a derived config with only the segmentation task, so
the optimizer, schedule, augmentation and evaluation are exactly those of training.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

from ps_trainer.config import (Config, FrozenDict, OptimizerConfig, TaskConfig, config_from_dict)
from ps_trainer.run.config_gate import check_run_config
from ps_trainer.run.evaluator import SEGMENTATION
from ps_trainer.core.params import Piece
from ps_trainer.core.schedule import RunSummary
from ps_trainer.core.shards import TRUNK_SHARD

log = logging.getLogger(__name__)


def finetune_config(base: Config, labels: int, out_dir: str, seed: Optional[int] = None) -> Config:
    """`base` reduced to the segmentation task on `labels` images, trained per `base.finetune`."""
    ft = base.finetune
    tasks = {name: dataclasses.replace(base.tasks.get(name, TaskConfig()), workers=1,
                                       batch_size=ft.batch_size, sync=1)
             for name in (SEGMENTATION, *ft.unlabelled_tasks)}
    optimizer = OptimizerConfig(name=ft.optimizer, lr=ft.lr, weight_decay=ft.weight_decay,
                                schedule="cosine", warmup_updates=ft.warmup_updates)
    # A run of its own (a new id), not the pretraining run whose checkpoint it starts from.
    run = dataclasses.replace(base.run, out_dir=out_dir, id=None,
                              max_updates=ft.steps * len(tasks),
                              max_minutes=max(base.run.max_minutes, 60.0),
                              seed=base.run.seed if seed is None else seed)
    return base.replace(
        run=run, data=dataclasses.replace(base.data, labelled=labels), optimizer=optimizer,
        tasks=FrozenDict(tasks), balancing=dataclasses.replace(
            base.balancing, method="equal", options=FrozenDict()),
        eval=dataclasses.replace(base.eval, every_s=1e9, every_updates=0, keep_last=1))


def trunk_of(checkpoint: dict) -> np.ndarray:
    """The full trunk shard from a checkpoint, assembled from its server pieces."""
    pieces = [Piece(**p) for p in checkpoint.get("plan", ()) if p["shard"] == TRUNK_SHARD]
    if not pieces:
        raise ValueError(f"the checkpoint holds no trunk (its plan has no {TRUNK_SHARD!r} pieces)")
    size = max(p.stop for p in pieces)
    trunk = np.empty(size, np.float32)
    for p in pieces:
        trunk[p.start: p.stop] = checkpoint["servers"][p.server]["weights"][p.key]
    return trunk


def model_config_of(checkpoint: dict, base: Config) -> Config:
    """`base` with the checkpoint's model section, so that the trunk layout matches."""
    model = config_from_dict({"model": checkpoint["config"]["model"],
                              "tasks": {SEGMENTATION: {}}}).model
    return base.replace(model=model)


def finetune(base: Config, checkpoint: Optional[dict], labels: int, out_dir: str,
             seed: Optional[int] = None, overwrite: bool = False) -> RunSummary:
    """Fine-tune on `labels` images from the checkpoint's trunk (or a random trunk when
    `checkpoint` is None); returns the local trainer's summary (with the final mIoU).
    `overwrite`: replace another run's checkpoints in `out_dir` (else refused)."""
    if checkpoint is not None:
        base = model_config_of(checkpoint, base)
    cfg = finetune_config(base, labels, out_dir, seed)
    check_run_config(cfg)
    initial = {TRUNK_SHARD: trunk_of(checkpoint)} if checkpoint is not None else None
    frozen = (TRUNK_SHARD,) if (checkpoint is not None and not cfg.finetune.train_trunk) else ()
    from ps_trainer.run.launch import run_local   # the launcher only to train

    summary = run_local(cfg, initial=initial, frozen=frozen, overwrite=overwrite)
    source = "pretrained" if checkpoint is not None else "random"
    extra = f" with {', '.join(cfg.finetune.unlabelled_tasks)}" if cfg.finetune.unlabelled_tasks else ""
    log.info("fine-tuned a %s trunk on %d labels%s: mIoU %.4f", source, labels, extra,
             summary.miou)
    return summary
