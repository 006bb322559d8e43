"""Atomic, checksummed checkpoints; keep the last K and the best.

A checkpoint is a ``torch.save`` file of plain containers and tensors (loadable with
``torch.load(path, weights_only=True)``) next to a ``.sha256`` file. Each is written to a
temporary name, flushed and renamed, and the folder is fsynced so that the renames survive a
power cut. The checksum file goes first and lists the new checksum and the one it replaces, so a
file rewritten in place (``best.pt``) verifies at every instant: before the data's rename the old
bytes match a later line, after it the new bytes match the first. Readers read the data
first and the checksum file second (it is only ever ahead of the data, never behind).

A crash mid-write leaves the previous checkpoint (or, for a new name, a lone checksum file that
nothing lists). A ``.pt`` without its ``.sha256`` (copied by hand) loads with a warning when it
is a valid checkpoint and is refused otherwise; a ``.pt`` whose bytes match no recorded checksum
is refused, and :meth:`CheckpointManager.latest` falls back to the one before.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ps_trainer.core.params import Piece

log = logging.getLogger(__name__)
FORMAT = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")


class CorruptCheckpoint(ValueError):
    """A checkpoint that is missing, cannot be read, or whose bytes match no recorded checksum.
    (A ValueError: bad input the CLI reports in one line.)"""


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


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temporary name beside `path`, fsync, rename: readers see the old
    file or the new one, never part of one. A failed write leaves no temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):     # the write's own error is the one to report
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (the new name lives in the directory's data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, payload: dict) -> int:
    """Write `payload` (numpy arrays allowed) atomically with its checksum; returns bytes written."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(_to_torch({"format": FORMAT, **payload}), buffer)
    data = buffer.getvalue()
    # Checksum first, keeping the ones it replaces: see the module docstring. Two of them, so
    # that a write that crashed between its two renames does not hide the bytes still on disk.
    recorded = [hashlib.sha256(data).hexdigest()] + _recorded_checksums(path)[:2]
    atomic_write(_sidecar(path), "".join(f"{c}\n" for c in recorded).encode())
    atomic_write(path, data)
    return len(data)


def load_checkpoint(path: str | Path) -> dict:
    """Verify the checksum and load; numpy arrays come back as numpy. Raises CorruptCheckpoint
    with a one-line message naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CorruptCheckpoint(f"{path}: no such checkpoint file")
    try:
        data = path.read_bytes()       # before the checksums: those are never behind the data
    except OSError as err:
        raise CorruptCheckpoint(f"{path}: cannot read the checkpoint ({err.strerror})") from None
    recorded = _recorded_checksums(path)
    actual = hashlib.sha256(data).hexdigest()
    if recorded and actual not in recorded:
        raise CorruptCheckpoint(f"{path}: checksum mismatch (file {actual[:12]}…, "
                                f"recorded {recorded[0][:12]}…): truncated or corrupt")
    payload = _parse(path, data, checked=bool(recorded))
    if not recorded:
        log.warning("%s has no checksum file %s beside it; loaded it unverified (it is a valid "
                    "checkpoint)", path, _sidecar(path).name)
    return payload


def _parse(path: Path, data: bytes, checked: bool) -> dict:
    missing = "" if checked else f"; it has no checksum file {_sidecar(path).name} either"
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as err:  # torch raises many kinds, with messages over several lines
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorruptCheckpoint(f"{path}: not a checkpoint, torch.load failed "
                                f"({reason}){missing}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CorruptCheckpoint(f"{path}: not a ps_trainer checkpoint (format {found!r}, "
                                f"expected {FORMAT}){missing}")
    return _to_numpy(payload)


def _recorded_checksums(path: Path) -> list[str]:
    """The checksums in `path`'s checksum file, newest first; [] when there is none."""
    try:
        return [line.strip() for line in _sidecar(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as err:
        raise CorruptCheckpoint(f"{path}: cannot read its checksum file ({err})") from None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def saved_version(payload: dict) -> int:
    """The version of a checkpoint's server state (every server actor's is the same)."""
    return int(payload["servers"][0]["version"])


def saved_plan(payload: dict) -> list[Piece]:
    """Which server actor held which piece of the checkpointed model."""
    return [Piece(**p) for p in payload["plan"]]


def run_id_of(payload: dict) -> Optional[str]:
    """The id of the run that wrote a checkpoint (None: written before runs had ids)."""
    run = payload.get("config", {}).get("run", {})
    return run.get("id") if isinstance(run, dict) else None


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

    def latest(self, run_id: Optional[str] = None) -> Optional[tuple[Path, dict]]:
        """The newest checkpoint that verifies (and, given `run_id`, that run `run_id`
        wrote); corrupt ones and other runs' are logged and skipped."""
        for path in reversed(self.steps()):
            try:
                payload = load_checkpoint(path)
            except CorruptCheckpoint as err:
                log.error("skipping corrupt checkpoint: %s", err)
                continue
            writer = run_id_of(payload)
            if run_id is not None and writer is not None and writer != run_id:
                log.error("skipping %s: written by run %s, not this run (%s)", path, writer,
                          run_id)
                continue
            return path, payload
        return None

    def remove_partial_writes(self) -> list[Path]:
        """Delete the temporary files of writes that never finished (their writer was killed
        between writing and renaming: each may be a full checkpoint's size); returns them.
        Only for the folder's one writer, when it starts: a live writer's file would go too."""
        partial = [p for p in self.directory.iterdir()
                   if p.name.startswith(".") and p.name.endswith(".tmp")]
        for path in partial:
            path.unlink(missing_ok=True)
        if partial:
            log.warning("removed %d unfinished checkpoint write(s) in %s", len(partial),
                        self.directory)
        return partial

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
