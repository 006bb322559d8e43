"""domain_adaptation in the runtimes: paired batches from both splits (labelled source images,
unlabelled target images), rare-class draws, the single-process loop, and its own workers
beside segmentation and a pretext task on Ray."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ps_trainer.config import ConfigError
from ps_trainer.data.class_stats import class_presence
from ps_trainer.data.splits import build_splits
from ps_trainer.run.launch import run_distributed, run_local
from ps_trainer_workers.worker import task_inputs

ADAPT = ("rotation", "segmentation", "domain_adaptation")
SHIFTED = ["data.shifted_fraction=1.0", "data.val_domain=shifted", "data.labelled=32"]


@pytest.mark.parametrize("loaders", [0, 1])
def test_batches_pair_labelled_source_and_unlabelled_target_images(tiny_config, loaders):
    cfg = tiny_config(tasks=ADAPT, extra=[*SHIFTED, f"data.loader_workers={loaders}",
                                          "tasks.domain_adaptation.batch_size=4"])
    splits = build_splits(cfg.data, cfg.run.seed)
    task, sampler, _ = task_inputs(cfg, "domain_adaptation", 0)
    try:
        images, masks = sampler.sample()
    finally:
        sampler.close()
    assert images.shape[0] == 8 and masks.shape[0] == 8
    assert (masks[4:] == 255).all() and (masks[:4] != 255).any()
    source = {splits.labelled[i].image.tobytes() for i in range(len(splits.labelled))}
    target = {splits.unlabelled[i].image.tobytes() for i in range(len(splits.unlabelled))}
    as_uint8 = (images.permute(0, 2, 3, 1) * 255).round().byte().numpy()
    assert all(a.tobytes() in source for a in as_uint8[:4])     # whole images: tiny_config's
    assert all(a.tobytes() in target for a in as_uint8[4:])     # crops are the image size


def test_rare_classes_are_drawn_more_often_than_uniform_draws_would(tiny_config):
    extra = [*SHIFTED, "data.labelled=64", "tasks.domain_adaptation.batch_size=64"]
    shares = {}
    for temperature in (0.0, 0.01):
        cfg = tiny_config(tasks=ADAPT, extra=[
            *extra, f"tasks.domain_adaptation.options.rare_class_temperature={temperature}"])
        _, sampler, _ = task_inputs(cfg, "domain_adaptation", 0)
        drawn = np.concatenate([sampler.sample()[1][:64].numpy() for _ in range(4)])
        shares[temperature] = np.bincount(drawn.ravel(), minlength=256)[:7]
    pixels, _ = class_presence(build_splits(cfg.data, 0).labelled, 7)
    rarest = int(np.argmin(np.where(pixels > 0, pixels, pixels.max() + 1)))
    assert shares[0.01][rarest] > 1.5 * shares[0.0][rarest]


def test_local_run_trains_it_beside_segmentation_and_a_pretext_task(tiny_config):
    cfg = tiny_config(tasks=ADAPT, extra=[*SHIFTED, "run.max_updates=18", "eval.every_s=600"])
    summary = run_local(cfg)
    assert summary.applied == {"rotation": 6, "segmentation": 6, "domain_adaptation": 6}
    assert 0.0 <= summary.miou <= 1.0


def test_without_segmentation_in_the_run_it_fails_at_start(tiny_config):
    with pytest.raises(ConfigError, match="tasks.domain_adaptation.*add tasks.segmentation"):
        tiny_config(tasks=("rotation", "domain_adaptation"))


@pytest.mark.ray
def test_distributed_run_has_domain_adaptation_workers(ray_session, tiny_config):
    cfg = tiny_config(tasks=ADAPT, extra=[*SHIFTED, "run.max_updates=90", "run.name=adapt"])
    summary = run_distributed(cfg)
    assert summary.updates >= 90
    assert summary.applied["domain_adaptation"] > 0 and summary.applied["segmentation"] > 0
    assert summary.miou is not None
