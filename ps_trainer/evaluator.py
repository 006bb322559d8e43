"""Evaluation: mIoU of the segmentation head on the validation split.

:class:`EvaluationLoop` scores a model (plain, testable without Ray); :class:`Evaluator` is
the Ray actor that, when the schedule says (``ps_trainer.schedule.EvalSchedule``), takes a
consistent snapshot of the server actors, scores it and hands it to the
:class:`~ps_trainer.recorder.RunRecorder`, which checkpoints it — the checkpoints that server
recovery falls back on — and records it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import ray
import torch
import torch.nn.functional as F

from ps_trainer.config import Config
from ps_trainer.data.base import SegmentationDataset
from ps_trainer.data.sampler import iterate_eval
from ps_trainer.data.splits import build_splits
from ps_trainer.metrics import EvaluatorMetrics, Reporter
from ps_trainer.model import MultiTaskModel, shard_of
from ps_trainer.params import FlatModel, Piece, ShardLayout, load_norm_stats, load_pieces
from ps_trainer.protocol import SetupError
from ps_trainer.recorder import RunRecorder
from ps_trainer.run_folder import RunFolder
from ps_trainer.runtime import set_threads
from ps_trainer.schedule import EvalSchedule
from ps_trainer.segmetrics import confusion_matrix, mean_iou, pixel_accuracy

log = logging.getLogger(__name__)
SEGMENTATION = "segmentation"


@dataclass(frozen=True)
class EvalResult:
    miou: float
    per_class_iou: list[float]
    pixel_accuracy: float
    seconds: float


class EvaluationLoop:
    """Scores the segmentation head over the whole validation split (one confusion matrix)."""

    def __init__(self, model: MultiTaskModel, val: SegmentationDataset, num_classes: int,
                 image_size: int, batch_size: int, device: torch.device = torch.device("cpu")):
        self.model = model.to(device)
        self.flat = FlatModel(self.model, ShardLayout.of(self.model, shard_of))
        self.num_classes = num_classes
        self.device = device
        # The split is fixed: prepare its tensors once.
        self.batches = list(iterate_eval(val, batch_size, image_size))
        if not self.batches:
            raise ValueError("the validation split has no usable images")

    def load_pieces(self, states: Sequence[dict], plan: Sequence[Piece]) -> None:
        """Weights from server states (one per server actor, as in a checkpoint)."""
        load_pieces(self.flat, states, plan)
        load_norm_stats(self.flat, states, SEGMENTATION)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, H, W) class ids."""
        self.model.eval()
        logits = self.model(SEGMENTATION, images.to(self.device))
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.argmax(1).cpu()

    def evaluate(self) -> EvalResult:
        start = time.perf_counter()
        confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        for images, masks in self.batches:
            confusion += confusion_matrix(self.predict(images), masks, self.num_classes)
        miou, per_class = mean_iou(confusion)
        return EvalResult(miou, [None if np.isnan(v) else float(v) for v in per_class],
                          pixel_accuracy(confusion), time.perf_counter() - start)

    def previews(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images, masks = self.batches[0]
        images, masks = images[:count], masks[:count]
        rgb = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        return rgb, masks.numpy().astype(np.uint8), self.predict(images).numpy().astype(np.uint8)


def make_evaluation_loop(cfg: Config, model_factory: Callable[[], MultiTaskModel],
                         device: torch.device) -> Optional[EvaluationLoop]:
    """The loop for this config, or None when no segmentation task is configured."""
    if SEGMENTATION not in cfg.tasks:
        return None
    splits = build_splits(cfg.data, cfg.run.seed)
    return EvaluationLoop(model_factory(), splits.val, splits.num_classes, cfg.data.image_size,
                          cfg.eval.batch_size, device)


class Evaluator:
    """Ray actor (``max_concurrency=2``): :meth:`run` loops, control calls come in between.

    The evaluation data and the run folder are opened on first use, not in ``__init__``: an
    error there (data that cannot be read, a run folder that cannot be written) is then a
    :class:`SetupError` of the call that met it (see ``protocol.py``)."""

    def __init__(self, cfg: Config, servers: list, plan: tuple[Piece, ...],
                 model_factory: Callable[[], MultiTaskModel], run_dir: str,
                 time_offset_s: float = 0.0, hub=None):
        set_threads(cfg.eval.num_cpus)
        self._cfg = cfg
        self._servers = list(servers)
        self._plan = plan
        self._model_factory = model_factory
        self._run_dir = run_dir
        self._loop: Optional[EvaluationLoop] = None   # None also where no head is scored
        self._recorder: Optional[RunRecorder] = None  # both made by _open()
        self._start = time.monotonic() - time_offset_s
        self._stop = threading.Event()
        self._lock = threading.Lock()   # one evaluation at a time (loop thread vs. final call)
        self._metrics = EvaluatorMetrics()
        send = (lambda source, fams: hub.report.remote(source, fams)) if hub else (lambda *a: None)
        self._reporter = Reporter("evaluator", self._metrics.registry, send,
                                  cfg.metrics.report_every_s)
        self.latest: Optional[dict] = None

    def set_servers(self, servers: list) -> None:
        self._servers = list(servers)

    def stop(self) -> None:
        self._stop.set()

    def latest_record(self) -> Optional[dict]:
        return self.latest

    def ping(self) -> bool:
        return True

    def is_set_up(self) -> bool:
        """Whether the evaluation data and the run folder are open."""
        return self._recorder is not None

    def process(self) -> dict:
        """Where this actor's process runs: {"node", "pid"} (for ``ps-trainer chaos``)."""
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def run(self) -> None:
        """Evaluate when the schedule says (ps_trainer.schedule.EvalSchedule)."""
        with self._lock:
            self._open()                     # errors show at once, not at the first evaluation
        schedule = EvalSchedule.of(self._cfg, time.monotonic())
        while not self._stop.wait(0.25):
            if schedule.due(time.monotonic(), self._version):
                record = self._evaluate({}, periodic=True)
                schedule.done(time.monotonic(), record["step"] if record else None)

    def _version(self) -> Optional[int]:
        try:
            return ray.get(self._servers[0].ping.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return None

    def evaluate_now(self, extra: Optional[dict] = None) -> Optional[dict]:
        """Pull the full server state, score it, checkpoint it; None if a server is down.
        A ``final`` evaluation also ends the periodic loop, so that its record is the last."""
        extra = extra or {}
        if extra.get("final"):
            self._stop.set()
        return self._evaluate(extra)

    def _open(self) -> RunRecorder:
        if self._recorder is None:
            try:
                device = torch.device("cuda" if ray.get_gpu_ids() else "cpu")
                self._loop = make_evaluation_loop(self._cfg, self._model_factory, device)
                self._recorder = RunRecorder(self._cfg, RunFolder(self._run_dir))
            except Exception as err:
                raise SetupError.of("the evaluator", err) from err
        return self._recorder

    def _evaluate(self, extra: dict, periodic: bool = False) -> Optional[dict]:
        with self._lock:
            if periodic and self._stop.is_set():   # the final evaluation came first, or is due
                return None
            recorder = self._open()
            try:
                states = ray.get(self._servers[0].snapshot.remote())   # one point in time
                statuses = ray.get([s.status.remote() for s in self._servers])
            except ray.exceptions.RayActorError as err:
                log.warning("evaluation skipped: a server is unreachable (%s)", type(err).__name__)
                return None
            return self._score_and_record(recorder, states, statuses, extra)

    def _score_and_record(self, recorder: RunRecorder, states, statuses, extra: dict) -> dict:
        result = None
        if self._loop is not None:
            self._loop.load_pieces(states, self._plan)
            result = self._loop.evaluate()
            self._metrics.miou.set(result.miou)
            self._metrics.eval_seconds.observe(result.seconds)
        step = int(states[0]["version"])
        s0 = statuses[0]
        info = {"losses": s0.losses, "weights": s0.weights, "applied": s0.applied, "lr": s0.lr,
                "staleness": s0.staleness, **extra}
        payload = {"servers": states, "plan": [asdict(p) for p in self._plan]}
        record = recorder.record(step, time.monotonic() - self._start, payload, result,
                                 self._loop, info)
        self._metrics.evaluations.inc()
        self._metrics.checkpoint_seconds.observe(record["checkpoint_seconds"])
        self._metrics.checkpoint_bytes.set(record["checkpoint_bytes"])
        if recorder.checkpoints.best_score is not None:
            self._metrics.best_miou.set(recorder.checkpoints.best_score)
        self._reporter.now()
        self.latest = record
        return record
