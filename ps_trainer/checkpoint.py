"""Atomic, checksummed checkpoints; keep the last K and the best.

A checkpoint is a ``torch.save`` file of plain containers and tensors (loadable with
``torch.load(path, weights_only=True)``) next to a ``.sha256`` file. Both are written to a
temporary name, flushed and renamed, the checksum last: a crash mid-write leaves either the
previous checkpoint or a file without a checksum, which :meth:`CheckpointManager.latest`
skips (as it skips any file whose checksum does not match) in favour of the one before.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)
FORMAT = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")


class CorruptCheckpoint(Exception):
    """A checkpoint whose bytes do not match its checksum, or that cannot be read."""


def _to_torch(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {k: _to_torch(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_torch(v) for v in obj)
    return obj


def _to_numpy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(v) for v in obj)
    return obj


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: str | Path, payload: dict) -> int:
    """Write `payload` (numpy arrays allowed) atomically with its checksum; returns bytes written."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(_to_torch({"format": FORMAT, **payload}), buffer)
    data = buffer.getvalue()
    _atomic_write(path, data)
    _atomic_write(_sidecar(path), (hashlib.sha256(data).hexdigest() + "\n").encode())
    return len(data)


def load_checkpoint(path: str | Path) -> dict:
    """Verify the checksum and load; numpy arrays come back as numpy. Raises CorruptCheckpoint."""
    path = Path(path)
    try:
        data = path.read_bytes()
        expected = _sidecar(path).read_text().strip()
    except OSError as err:
        raise CorruptCheckpoint(f"{path}: cannot read checkpoint or its checksum ({err})") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CorruptCheckpoint(f"{path}: checksum mismatch (file {actual[:12]}…, "
                                f"recorded {expected[:12]}…)")
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as err:
        raise CorruptCheckpoint(f"{path}: unreadable ({err})") from None
    if payload.get("format") != FORMAT:
        raise CorruptCheckpoint(f"{path}: unknown format {payload.get('format')!r}")
    return _to_numpy(payload)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


class CheckpointManager:
    """`step-<version>.pt` files in one folder: keeps the last `keep_last` and `best.pt`."""

    def __init__(self, directory: str | Path, keep_last: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep_last = keep_last
        self.best_score = self._read_best_score()

    def save(self, payload: dict, step: int, score: Optional[float] = None) -> tuple[Path, int]:
        """Write step-<step>.pt; also best.pt when `score` beats the best so far."""
        path = self.directory / f"step-{step:09d}.pt"
        size = save_checkpoint(path, {**payload, "step": step, "score": score})
        if score is not None and (self.best_score is None or score > self.best_score):
            save_checkpoint(self.best_path, {**payload, "step": step, "score": score})
            self.best_score = score
        self._prune()
        return path, size

    @property
    def best_path(self) -> Path:
        return self.directory / "best.pt"

    def steps(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        found = [(int(m.group(1)), p) for p in self.directory.iterdir()
                 if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Optional[tuple[Path, dict]]:
        """The newest checkpoint that verifies; corrupt ones are logged and skipped."""
        for path in reversed(self.steps()):
            try:
                return path, load_checkpoint(path)
            except CorruptCheckpoint as err:
                log.error("skipping corrupt checkpoint: %s", err)
        return None

    def _prune(self) -> None:
        for path in self.steps()[: -self.keep_last]:
            path.unlink(missing_ok=True)
            _sidecar(path).unlink(missing_ok=True)

    def _read_best_score(self) -> Optional[float]:
        if not self.best_path.exists():
            return None
        try:
            return load_checkpoint(self.best_path).get("score")
        except CorruptCheckpoint as err:
            log.error("ignoring corrupt best checkpoint: %s", err)
            return None
