"""The run folder: config.yaml, metrics.jsonl (one JSON object per evaluation), pictures.

A folder belongs to one run (``run.id`` in its config.yaml and in each checkpoint's config):
a new run refuses a folder that holds another run's checkpoints, unless told to overwrite
them, so that pruning and restores only ever see the run's own.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

from ps_trainer.config import Config, dump_config

log = logging.getLogger(__name__)


class RunFolderInUse(ValueError):
    """A new run pointed at a folder holding another run's checkpoints (one line)."""


def with_run_id(cfg: Config) -> Config:
    """`cfg` with a new run id when it has none."""
    if cfg.run.id:
        return cfg
    return cfg.replace(run=replace(cfg.run, id=uuid.uuid4().hex[:12]))


class RunFolder:
    """Paths inside a run folder and the metrics log."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.previews = self.root / "previews"
        self.metrics = self.root / "metrics.jsonl"
        self.config = self.root / "config.yaml"
        self.curves = self.root / "curves.png"

    def create(self, cfg: Config, overwrite: bool = False, resuming: bool = False
               ) -> "RunFolder":
        """Make the folder for run `cfg.run.id` and write its config. A folder holding another
        run's checkpoints is refused (RunFolderInUse), or with `overwrite` emptied first; a
        run `resuming` from this folder's checkpoint continues in it (they are its own)."""
        owner = self.owner()
        if self.holds_checkpoints() and owner != cfg.run.id and not resuming:
            if not overwrite:
                whose = f"run {owner}" if owner else "an earlier run"
                raise RunFolderInUse(
                    f"{self.root} holds the checkpoints of {whose}: continue it with "
                    f"--resume {self.root}, train into another run.out_dir, or pass "
                    f"--overwrite to delete them")
            log.warning("deleting the checkpoints and metrics of %s in %s (--overwrite)",
                        f"run {owner}" if owner else "an earlier run", self.root)
            for path in (self.checkpoints, self.previews):
                shutil.rmtree(path, ignore_errors=True)
            for path in (self.metrics, self.curves):
                path.unlink(missing_ok=True)
        for path in (self.root, self.checkpoints, self.previews):
            path.mkdir(parents=True, exist_ok=True)
        self.config.write_text(dump_config(cfg))
        return self

    def owner(self) -> Optional[str]:
        """The run id in the folder's config.yaml (None: no config, or one written before runs
        had ids)."""
        try:
            saved = yaml.safe_load(self.config.read_text())
        except (OSError, yaml.YAMLError):
            return None
        run = saved.get("run") if isinstance(saved, dict) else None
        return run.get("id") if isinstance(run, dict) else None

    def holds_checkpoints(self) -> bool:
        return self.checkpoints.is_dir() and any(
            p.suffix == ".pt" for p in self.checkpoints.iterdir())

    def append(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")

    def records(self) -> list[dict]:
        return list(self._read())

    def _read(self) -> Iterator[dict]:
        if not self.metrics.exists():
            return
        for n, line in enumerate(self.metrics.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash: skip it, keep the rest
                log.warning("%s:%d is not valid JSON; skipped", self.metrics, n)


def _jsonable(obj: Any) -> Any:
    """NaN/Inf -> None (JSON has no NaN); numpy scalars and arrays -> Python."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
