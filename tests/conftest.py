"""Shared fixtures: one session-scoped local Ray cluster and small configs for fast runs."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)  # two cores shared by the test process and the Ray actors

# A model and data small enough for a few hundred updates in seconds on one core.
TINY = [
    "run.max_minutes=3", "run.progress_every_s=1",
    "data.image_size=32", "data.labelled=8", "data.unlabelled=64", "data.val=16",
    "model.widths=[8,16]", "model.blocks=[1,1]", "model.stem_stride=2",
    "optimizer.name=adamw", "optimizer.lr=0.003", "optimizer.schedule=constant",
    "server.num_cpus=0.25", "eval.num_cpus=0.25", "eval.every_s=2", "eval.batch_size=16",
    "eval.previews=2", "metrics.port=0", "metrics.report_every_s=0.5",
]


def tiny_overrides(tmp_path, tasks=("rotation", "segmentation"), workers=1, extra=()):
    """Overrides for a tiny run in `tmp_path` training `tasks`."""
    out = [f"run.out_dir={tmp_path / 'run'}", *TINY]
    for task in tasks:
        out += [f"tasks.{task}.workers={workers}", f"tasks.{task}.batch_size=8",
                f"tasks.{task}.num_cpus=0.25"]
    return out + list(extra)


@pytest.fixture
def tiny_config(tmp_path):
    """tiny_config(tasks=..., extra=[...]) -> a validated Config for a tiny run."""
    from ps_trainer.run.launch import load_run_config

    def make(tasks=("rotation", "segmentation"), workers=1, extra=()):
        return load_run_config(None, tiny_overrides(tmp_path, tasks, workers, extra))

    return make


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (2 CPUs), as CI runs it."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, namespace="ps_trainer_tests",
                 logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny():
    """The tiny_overrides function, for fixtures of any scope."""
    return tiny_overrides
