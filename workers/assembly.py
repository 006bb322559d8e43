"""Build tasks and the multi-task model from a Config (used by launch, workers and tools)."""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from ps_trainer.config import Config, ConfigError
from ps_trainer.data.splits import num_classes_of
from ps_trainer.model import MultiTaskModel
from ps_trainer.model.backbones import trunk_geometry
from ps_trainer.core.shards import shards_of_head
from ps_trainer_workers.tasks import TASKS, Task, TaskContext, make_task


def task_context(cfg: Config) -> TaskContext:
    geometry = trunk_geometry(cfg.model)
    return TaskContext(image_size=cfg.data.image_size, num_classes=num_classes_of(cfg.data),
                       trunk_stride=geometry.stride, stage_channels=geometry.stage_channels,
                       stage_strides=geometry.stage_strides)


def build_task(cfg: Config, name: str) -> Task:
    """One configured task; unknown names and bad options fail with the key path."""
    if name not in TASKS:
        raise ConfigError(f"tasks.{name}", f"unknown task {name!r}: choose from "
                                           f"{', '.join(TASKS.names())}")
    try:
        return make_task(name, task_context(cfg), cfg.tasks[name].options)
    except ConfigError as err:
        raise err.under(f"tasks.{name}.options") from None


def build_tasks(cfg: Config, names: Optional[Iterable[str]] = None) -> dict[str, Task]:
    return {name: build_task(cfg, name) for name in (names or cfg.task_names)}


def task_shards(cfg: Config) -> dict[str, tuple[str, str]]:
    """Task name -> the shards its pushes carry (the trunk and the head it trains)."""
    return {name: shards_of_head(task.head_name) for name, task in build_tasks(cfg).items()}


def build_model(cfg: Config, tasks: dict[str, Task], seed: Optional[int] = None) -> MultiTaskModel:
    """Trunk + the heads `tasks` train (a borrowed head is built by the task that owns it).
    With `seed`, initialisation is reproducible; a head's initial weights depend only on
    (seed, head name), so models with different task sets agree."""
    trunk_channels = trunk_geometry(cfg.model).channels
    heads = {}
    for task in tasks.values():
        name = task.head_name
        if name in heads:
            continue
        owner = tasks.get(name) or build_task(cfg, name)
        if seed is not None:
            torch.manual_seed(_head_seed(seed, name))
        heads[name] = owner.head(trunk_channels)
    if seed is not None:
        torch.manual_seed(seed)
    return MultiTaskModel(cfg.model, heads)


def _head_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + sum(ord(c) * 31 ** i for i, c in enumerate(name))) % 2 ** 31
