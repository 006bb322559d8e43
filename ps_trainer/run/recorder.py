"""The run's record: each evaluation's checkpoint, its ``metrics.jsonl`` line, its pictures.

Both runtimes hand every evaluation to a :class:`RunRecorder` (the local loop directly, the
distributed run through the evaluator actor). Its checkpoints are what ``--resume`` and the
coordinator's server recovery fall back on, so it writes the checkpoint first, then the line
(which names the checkpoint), then the pictures (which may fail without losing anything).
"""
from __future__ import annotations

import logging
import time
from typing import Optional, Protocol, Sequence

import numpy as np

from ps_trainer.core.checkpoint import CheckpointManager
from ps_trainer.config import Config, config_to_dict
from ps_trainer.observe.plots import plot_curves, write_previews
from ps_trainer.run.run_folder import RunFolder

log = logging.getLogger(__name__)


class Scored(Protocol):
    """What the recorder reads of an evaluation result (ps_trainer.run.evaluator.EvalResult)."""
    miou: float
    per_class_iou: list
    pixel_accuracy: float


class Previewer(Protocol):
    """What draws previews (ps_trainer.run.evaluator.EvaluationLoop): images, truths, predictions."""

    def previews(self, count: int) -> tuple[Sequence[np.ndarray], Sequence[np.ndarray],
                                            Sequence[np.ndarray]]: ...


class RunRecorder:
    """Writes an evaluation's outputs into the run folder."""

    def __init__(self, cfg: Config, run: RunFolder):
        self.cfg = cfg
        self.run = run
        self.checkpoints = CheckpointManager(run.checkpoints, cfg.eval.keep_last)
        # The recorder is the folder's only writer (an evaluator's replacement starts after it
        # is gone): a write its predecessor never finished is left as a temporary file.
        self.checkpoints.remove_partial_writes()

    def checkpoint(self, step: int, time_s: float, server_payload: dict) -> None:
        """A checkpoint of a state not scored yet (the final one, before its evaluation; the
        evaluation's record rewrites it with its score)."""
        payload = {**server_payload, "config": config_to_dict(self.cfg), "time_s": time_s}
        self.checkpoints.save(payload, step)

    def record(self, step: int, time_s: float, server_payload: dict,
               result: Optional[Scored], loop: Optional[Previewer],
               extra: dict) -> dict:
        """Checkpoint, then one metrics.jsonl line, then pictures; returns the line."""
        start = time.perf_counter()
        payload = {**server_payload, "config": config_to_dict(self.cfg), "time_s": time_s}
        path, size = self.checkpoints.save(payload, step, result.miou if result else None)
        record = {"step": step, "time_s": round(time_s, 3),
                  "miou": result.miou if result else None,
                  "per_class_iou": result.per_class_iou if result else None,
                  "pixel_accuracy": result.pixel_accuracy if result else None,
                  "eval_images": result.images if result else None,
                  "checkpoint": str(path), "checkpoint_bytes": size,
                  "checkpoint_seconds": round(time.perf_counter() - start, 4), **extra}
        self.run.append(record)
        self._pictures(step, loop)
        return record

    def _pictures(self, step: int, loop: Optional[Previewer]) -> None:
        try:
            if loop is not None and self.cfg.eval.previews:
                write_previews(self.run.previews / f"step-{step:09d}.png",
                               *loop.previews(self.cfg.eval.previews))
                for old in sorted(self.run.previews.glob("step-*.png"))[: -self.cfg.eval.keep_last]:
                    old.unlink(missing_ok=True)       # as many as checkpoints are kept
            plot_curves(self.run.curves, self.run.records(), title=self.cfg.run.name)
        except Exception as err:  # pictures are for people; never lose a run over one
            log.warning("could not write pictures: %s", err)
