"""Self-supervised pretext tasks, segmentation, self-training and domain-adaptive self-training:
each registers itself in ``TASKS``.

    task = make_task("rotation", context, {"all_rotations": False})
    inputs, targets = task.make_batch(images, rng)
    loss = task.loss(model("rotation", inputs), targets)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from ps_trainer_workers.tasks import (colorization, denoising, domain_adaptation,  # noqa: F401
                                      exemplar, inpainting, jigsaw, relative_position, rotation,
                                      segmentation, self_training)
from ps_trainer_workers.tasks.base import Task, TaskContext
from ps_trainer_workers.tasks.registry import TASKS

__all__ = ["TASKS", "Task", "TaskContext", "make_task"]


def make_task(name: str, context: TaskContext, options_mapping: Optional[Mapping] = None) -> Task:
    """Build task `name` with its options validated from plain config data."""
    cls = TASKS.get(name)
    return cls(context, cls.Options.from_mapping(options_mapping))
