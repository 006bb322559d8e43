"""The run-config gate: every way a run's config comes in — a YAML file with ``--set``
overrides, or the config saved in a checkpoint — passes here and comes out checked in every
section, the plugins' choices and options included, with its paths made absolute.

:mod:`ps_trainer.config` checks the schema (keys, types, ranges); it imports nothing of the
plugins. The choices that belong to a registry are checked here, above both: the norm
(``model/norms``), the balancing method and its options (``balancing``), and the tasks, their
options and the heads they train (the task registry of ``ps_trainer_workers.tasks``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from ps_trainer.core.balancing import BALANCERS
from ps_trainer.config import (SPLIT_ROLES, Config, ConfigError, DataConfig, apply_overrides,
                               config_from_dict, load_config)
from ps_trainer.model.norms import NORMS
from ps_trainer.config.options import FrozenDict, check_choice
from ps_trainer.config.registry import Registry


def load_run_config(path: Optional[str], overrides=()) -> Config:
    """A config file (or the defaults, for None) plus overrides, checked in full; paths are
    made absolute here, in the driver, because actors run in other working directories."""
    return absolute_paths(check_run_config(load_config(path, overrides)))


def saved_run_config(saved: dict, overrides=()) -> Config:
    """The config a checkpoint was written with (plain data), plus overrides, checked in full."""
    return absolute_paths(check_run_config(config_from_dict(apply_overrides(saved, overrides))))


def check_run_config(cfg: Config) -> Config:
    """`cfg` if every registry choice in it exists and its options are valid; else the
    ConfigError names the key path."""
    _in_section("model", lambda: check_choice("norm", cfg.model.norm, NORMS.names()))
    _in_section("balancing", lambda: _check_balancing(cfg))
    _check_tasks(cfg, task_registry())
    return cfg


def task_registry() -> Registry:
    """The registered tasks. Imported here, when a config is checked, not at import time:
    the control plane stays free of task code until a run is assembled."""
    from ps_trainer_workers.tasks import TASKS

    return TASKS


def absolute_paths(cfg: Config) -> Config:
    """run.out_dir, model.pretrained, the data's roots and split lists and the tasks' file
    options (their ``path_keys``) resolved against the driver's working directory."""
    run = dataclasses.replace(cfg.run, out_dir=_absolute(cfg.run.out_dir))
    model = cfg.model
    if model.pretrained:
        model = dataclasses.replace(model, pretrained=_absolute(model.pretrained))
    data = _absolute_data_paths(cfg.data)
    tasks, registry = {}, task_registry()
    for name, task_cfg in cfg.tasks.items():
        options = dict(task_cfg.options)
        for key in registry.get(name).Options.path_keys:
            if options.get(key):
                options[key] = _absolute(options[key])
        tasks[name] = dataclasses.replace(task_cfg, options=FrozenDict(options))
    return cfg.replace(run=run, model=model, data=data, tasks=FrozenDict(tasks))


def _absolute_data_paths(data: DataConfig) -> DataConfig:
    """data.root, data.labelled_list and the roots and lists of data.<split>_from, absolute."""
    changes = {key: _absolute(getattr(data, key)) for key in ("root", "labelled_list")
               if getattr(data, key)}
    for role in SPLIT_ROLES:
        given = getattr(data, f"{role}_from")
        if given is not None:
            paths = {key: _absolute(getattr(given, key)) for key in ("root", "list")
                     if getattr(given, key)}
            changes[f"{role}_from"] = dataclasses.replace(given, **paths)
    return dataclasses.replace(data, **changes)


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _check_balancing(cfg: Config) -> None:
    check_choice("method", cfg.balancing.method, BALANCERS.names())
    try:
        BALANCERS.get(cfg.balancing.method).Options.from_mapping(cfg.balancing.options)
    except ConfigError as err:
        raise err.under("options") from None


def _check_tasks(cfg: Config, tasks: Registry) -> None:
    for name, task_cfg in cfg.tasks.items():
        if name not in tasks:
            raise ConfigError(f"tasks.{name}", f"unknown task {name!r}: choose from "
                                               f"{', '.join(tasks.names())}")
        cls = tasks.get(name)
        try:
            cls.Options.from_mapping(task_cfg.options)
        except ConfigError as err:
            raise err.under(f"tasks.{name}.options") from None
        if cls.head_of is not None and cls.head_of not in cfg.tasks:
            raise ConfigError(f"tasks.{name}", f"{name!r} trains the {cls.head_of!r} head: "
                                               f"add tasks.{cls.head_of} to the run")
    _check_labels_reach_the_head(cfg, tasks)


def _check_labels_reach_the_head(cfg: Config, tasks: Registry) -> None:
    """A pseudo-labelling task trains a head from the head's own predictions: something must
    bring labels to it — workers of the head's own task, a task that reads labels itself, or
    a fixed teacher trained on labels before. Otherwise the run trains on no labels at all."""
    for name, task_cfg in cfg.tasks.items():
        cls = tasks.get(name)
        head = cls.head_of
        if head is None or cls.uses_labels or task_cfg.workers == 0:
            continue
        labelled = [t for t, c in cfg.tasks.items() if c.workers > 0 and tasks.get(t).uses_labels
                    and (t == head or tasks.get(t).head_of == head)]
        if labelled or task_cfg.options.get("teacher") == "checkpoint":
            continue
        raise ConfigError(f"tasks.{head}.workers",
                          f"0, but {name!r} trains the {head!r} head from its own predictions: "
                          f"give tasks.{head} workers (or a teacher: checkpoint), or the run "
                          f"learns from no labels at all")


def _in_section(section: str, check) -> None:
    try:
        check()
    except ConfigError as err:
        raise err.under(section) from None
