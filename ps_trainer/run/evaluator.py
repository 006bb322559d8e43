"""Evaluation: mIoU of the segmentation head on the validation split.

:class:`EvaluationLoop` scores a model (plain, testable without Ray); :class:`Evaluator` is
the Ray actor that, when the schedule says (``ps_trainer.core.schedule.EvalSchedule``), takes a
consistent snapshot of the server actors, scores it and hands it to the
:class:`~ps_trainer.run.recorder.RunRecorder`, which checkpoints it — the checkpoints that server
recovery falls back on — and records it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import ray
import torch

from ps_trainer.config import Config, EvalConfig
from ps_trainer.data.base import SegmentationDataset
from ps_trainer.data.sampler import EvalReader
from ps_trainer.data.splits import build_splits
from ps_trainer.model.inference import predict_logits
from ps_trainer.observe.metrics import EvaluatorMetrics, Reporter
from ps_trainer.model import MultiTaskModel, shard_of
from ps_trainer.core.params import FlatModel, Piece, ShardLayout, load_norm_stats, load_pieces
from ps_trainer.core.protocol import SetupError
from ps_trainer.run.recorder import RunRecorder
from ps_trainer.run.run_folder import RunFolder
from ps_trainer.core.runtime import actor_device, set_threads
from ps_trainer.core.schedule import EvalSchedule
from ps_trainer.core.segmetrics import confusion_counts, mean_iou, pixel_accuracy
from ps_trainer.transport.snapshots import SnapshotIncomplete, take_snapshot

log = logging.getLogger(__name__)
SEGMENTATION = "segmentation"
_SNAPSHOT_TIMEOUT_S = 300.0   # a server that does not give its state in this time is stalled
_PREVIEW_SIDE = 512   # previews of large images are shrunk to this long side (pixels)


@dataclass(frozen=True)
class EvalResult:
    miou: float
    per_class_iou: list[float]
    pixel_accuracy: float
    seconds: float
    images: int = 0                      # validation images scored
    skipped: int = 0                     # unusable ones, left out
    # int64 (C, C): rows = truth, columns = prediction (ps_trainer.core.segmetrics)
    confusion: Optional[np.ndarray] = field(default=None, compare=False, repr=False)


class EvaluationLoop:
    """Scores the segmentation head over the whole validation split (one confusion matrix).

    The split is streamed: one batch is read, predicted (``ps_trainer.model.inference``: whole or
    sliding-window, at the test scale, with flips and scales as ``eval`` says) and counted at a
    time, so memory does not grow with the split. The counts add up on the loop's device."""

    def __init__(self, model: MultiTaskModel, val: SegmentationDataset, num_classes: int,
                 cfg: EvalConfig, device: torch.device = torch.device("cpu")):
        self.model = model.to(device)
        self.flat = FlatModel(self.model, ShardLayout.of(self.model, shard_of))
        self.reader = EvalReader(val, cfg.cache_bytes)
        self.num_classes = num_classes
        self.cfg = cfg
        self.device = device
        self._previews = _Previews(0)
        # Slide mode holds (K, H, W) sums per image: one image at a time, its windows batched.
        self._images_per_batch = cfg.batch_size if cfg.mode == "whole" else 1
        if next(self.reader.samples(), None) is None:       # fail at setup, not later
            raise ValueError("the validation split has no usable images")

    def load_pieces(self, states: Sequence[dict], plan: Sequence[Piece]) -> None:
        """Weights from server states (one per server actor, as in a checkpoint)."""
        load_pieces(self.flat, states, plan)
        load_norm_stats(self.flat, states, SEGMENTATION)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, H, W) class ids, on the loop's device."""
        self.model.eval()
        logits = predict_logits(self._forward, images.to(self.device), self.cfg)
        return logits.argmax(1)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(SEGMENTATION, images)

    def evaluate(self) -> EvalResult:
        start = time.perf_counter()
        confusion = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64,
                                device=self.device)
        previews = _Previews(self.cfg.previews)
        scored = 0
        for images, masks in self.reader.batches(self._images_per_batch):
            predictions = self.predict(images)                           # (B, H, W)
            confusion += confusion_counts(predictions, masks.to(self.device), self.num_classes)
            previews.add(images, masks, predictions)
            scored += len(images)
        if not scored:
            raise ValueError("the validation split has no usable images")
        self._previews = previews
        counts = confusion.cpu().numpy()
        miou, per_class = mean_iou(counts)
        return EvalResult(miou, [None if np.isnan(v) else float(v) for v in per_class],
                          pixel_accuracy(counts), time.perf_counter() - start,
                          images=scored, skipped=len(self.reader.unusable), confusion=counts)

    def previews(self, count: int) -> tuple[list, list, list]:
        """The first `count` validation images of the last evaluation: RGB, truth, prediction."""
        return self._previews.rows(count)


class _Previews:
    """The first `count` images of an evaluation, kept small (the long side at most
    ``_PREVIEW_SIDE`` pixels): uint8 RGB (H, W, 3), truth and prediction (H, W)."""

    def __init__(self, count: int):
        self.count = count
        self.images: list[np.ndarray] = []
        self.truths: list[np.ndarray] = []
        self.predictions: list[np.ndarray] = []

    def add(self, images: torch.Tensor, masks: torch.Tensor, predictions: torch.Tensor) -> None:
        for i in range(min(len(images), self.count - len(self.images))):
            rgb = (images[i].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            truth = masks[i].cpu().numpy().astype(np.uint8)
            pred = predictions[i].cpu().numpy().astype(np.uint8)
            factor = min(1.0, _PREVIEW_SIDE / max(rgb.shape[:2]))
            if factor < 1.0:
                size = (max(1, round(rgb.shape[1] * factor)), max(1, round(rgb.shape[0] * factor)))
                rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
                truth = cv2.resize(truth, size, interpolation=cv2.INTER_NEAREST)
                pred = cv2.resize(pred, size, interpolation=cv2.INTER_NEAREST)
            self.images.append(rgb)
            self.truths.append(truth)
            self.predictions.append(pred)

    def rows(self, count: int) -> tuple[list, list, list]:
        return self.images[:count], self.truths[:count], self.predictions[:count]


def make_evaluation_loop(cfg: Config, model_factory: Callable[[], MultiTaskModel],
                         device: torch.device) -> Optional[EvaluationLoop]:
    """The loop for this config, or None when no segmentation task is configured."""
    if SEGMENTATION not in cfg.tasks:
        return None
    splits = build_splits(cfg.data, cfg.run.seed)
    return EvaluationLoop(model_factory(), splits.val, splits.num_classes, cfg.eval, device)


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
        self._last_eval_s: Optional[float] = None
        self._reporter = Reporter.to_hub("evaluator", self._metrics.registry, hub,
                                         cfg.metrics.report_every_s)
        self.latest: Optional[dict] = None

    def set_servers(self, servers: list) -> None:
        self._servers = list(servers)

    def stop(self) -> None:
        self._stop.set()

    def latest_record(self) -> Optional[dict]:
        return self.latest

    def last_evaluation_s(self) -> Optional[float]:
        """Seconds the last evaluation's scoring took (None before the first)."""
        return self._last_eval_s

    def ping(self) -> bool:
        return True

    def is_set_up(self) -> bool:
        """Whether the evaluation data and the run folder are open."""
        return self._recorder is not None

    def process(self) -> dict:
        """Where this actor's process runs: {"node", "pid"} (for ``ps-trainer chaos``)."""
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def run(self) -> None:
        """Evaluate when the schedule says (ps_trainer.core.schedule.EvalSchedule)."""
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
        A ``final`` evaluation also ends the periodic loop, so that its record is the last,
        and checkpoints the state before scoring it (scoring a large split takes minutes)."""
        extra = extra or {}
        if extra.get("final"):
            self._stop.set()
        return self._evaluate(extra, checkpoint_first=bool(extra.get("final")))

    def _open(self) -> RunRecorder:
        if self._recorder is None:
            try:
                device = actor_device(ray.get_gpu_ids())
                self._loop = make_evaluation_loop(self._cfg, self._model_factory, device)
                if self._loop is not None:
                    log.info("evaluating %d validation images on %s (mode %s)",
                             len(self._loop.reader.dataset), device, self._cfg.eval.mode)
                self._recorder = RunRecorder(self._cfg, RunFolder(self._run_dir))
            except Exception as err:
                raise SetupError.of("the evaluator", err) from err
        return self._recorder

    def _evaluate(self, extra: dict, periodic: bool = False, checkpoint_first: bool = False
                  ) -> Optional[dict]:
        with self._lock:
            if periodic and self._stop.is_set():   # the final evaluation came first, or is due
                return None
            recorder = self._open()
            try:
                states = take_snapshot(self._servers, "evaluator",   # one point in time
                                       _SNAPSHOT_TIMEOUT_S)
                statuses = ray.get([s.status.remote() for s in self._servers],
                                   timeout=_SNAPSHOT_TIMEOUT_S)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError,
                    SnapshotIncomplete) as err:
                log.warning("evaluation skipped: a server is unreachable (%s)", type(err).__name__)
                return None
            if checkpoint_first:
                recorder.checkpoint(int(states[0]["version"]), time.monotonic() - self._start,
                                    self._payload(states))
            return self._score_and_record(recorder, states, statuses, extra)

    def _payload(self, states) -> dict:
        return {"servers": states, "plan": [asdict(p) for p in self._plan]}

    def _score_and_record(self, recorder: RunRecorder, states, statuses, extra: dict) -> dict:
        result = None
        if self._loop is not None:
            self._loop.load_pieces(states, self._plan)
            result = self._loop.evaluate()
            self._last_eval_s = result.seconds
            self._metrics.miou.set(result.miou)
            self._metrics.eval_seconds.observe(result.seconds)
        step = int(states[0]["version"])
        s0 = statuses[0]
        info = {"losses": s0.losses, "weights": s0.weights, "applied": s0.applied, "lr": s0.lr,
                "staleness": s0.staleness, **extra}
        record = recorder.record(step, time.monotonic() - self._start, self._payload(states),
                                 result, self._loop, info)
        self._metrics.evaluations.inc()
        self._metrics.checkpoint_seconds.observe(record["checkpoint_seconds"])
        self._metrics.checkpoint_bytes.set(record["checkpoint_bytes"])
        if recorder.checkpoints.best_score is not None:
            self._metrics.best_miou.set(recorder.checkpoints.best_score)
        self._reporter.now()
        self.latest = record
        return record
