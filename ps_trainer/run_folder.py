"""The run folder: config.yaml, metrics.jsonl (one JSON object per evaluation), pictures."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterator

from ps_trainer.config import Config, dump_config

log = logging.getLogger(__name__)


class RunFolder:
    """Paths inside a run folder and the metrics log."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.previews = self.root / "previews"
        self.metrics = self.root / "metrics.jsonl"
        self.config = self.root / "config.yaml"
        self.curves = self.root / "curves.png"

    def create(self, cfg: Config) -> "RunFolder":
        for path in (self.root, self.checkpoints, self.previews):
            path.mkdir(parents=True, exist_ok=True)
        self.config.write_text(dump_config(cfg))
        return self

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
