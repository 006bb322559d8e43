"""Single-process synchronous trainer: ``ps-trainer train --config ... --mode local``.

All tasks train one model in one process, round-robin, through the same
:class:`ParameterStore` the distributed server uses (one optimizer, the same balancing and
update rule, staleness always 0), and the store updates the model's own flat buffers in place.
It is the debugging path and the synchronous baseline the distributed trainer is measured against.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Mapping, Optional, Protocol


from ps_trainer.config import Config
from ps_trainer.run.evaluator import EvaluationLoop
from ps_trainer.run.recorder import RunRecorder
from ps_trainer.core.params import FlatModel, Piece
from ps_trainer.observe.progress import Progress
from ps_trainer.core.protocol import PushStats
from ps_trainer.run.run_folder import RunFolder
from ps_trainer.core.schedule import TARGET_MIOU, EvalSchedule, RunSummary, StopRule
from ps_trainer.core.store import make_store

log = logging.getLogger(__name__)


class StepLoop(Protocol):
    """What the trainer needs of a task's loop (ps_trainer_workers.worker.TaskLoop)."""
    shards: tuple[str, ...]

    def step(self) -> Optional[PushStats]: ...


class LocalTrainer:
    def __init__(self, cfg: Config, flat: FlatModel, loops: Mapping[str, StepLoop],
                 eval_loop: Optional[EvaluationLoop], run: RunFolder, frozen: tuple[str, ...] = ()):
        self.cfg = cfg
        self.flat = flat
        self.loops = dict(loops)
        self.eval_loop = eval_loop
        weights = {shard: flat.params[shard] for shard in flat.params}
        # A frozen shard is left out of every task's keys: the store never updates it.
        task_keys = {t: tuple(s for s in loop.shards if s not in frozen)
                     for t, loop in self.loops.items()}
        self.store = make_store(cfg, weights, task_keys)
        self.plan = tuple(Piece(s, s, 0, w.numel(), 0) for s, w in weights.items())
        self.recorder = RunRecorder(cfg, run)
        self.progress = Progress(cfg.task_names)
        self.steps = {t: 0 for t in self.loops}

    def train(self) -> RunSummary:
        """Round-robin over tasks until the stop rule (ps_trainer.core.schedule) says so."""
        start = time.monotonic()
        stop_rule = StopRule.of(self.cfg)
        schedule = EvalSchedule.of(self.cfg, start)
        order = tuple(self.loops)
        latest, stopped_by, i = None, None, 0
        while stopped_by is None:
            task = order[i % len(order)]
            i += 1
            self._step(task)
            now = time.monotonic()
            if schedule.due(now, lambda: self.store.version):
                latest = self.evaluate(now - start)
                schedule.done(time.monotonic(), self.store.version)
            self.progress.maybe_log(self.store.version, self.progress.losses(),
                                    self.store.balancer.weights(),
                                    latest["miou"] if latest else None,
                                    self.cfg.run.progress_every_s, per_task=self.steps)
            stopped_by = stop_rule.reason(self.store.version, time.monotonic() - start, latest)
        if stopped_by != TARGET_MIOU:
            latest = self.evaluate(time.monotonic() - start, final=True)
        return RunSummary(updates=self.store.version, elapsed_s=time.monotonic() - start,
                          miou=latest["miou"], reached_target_s=stop_rule.reached(latest),
                          stopped_by=stopped_by, applied=dict(self.steps), final=latest)

    def _step(self, task: str) -> None:
        loop = self.loops[task]
        self._load_norm_stats(task)
        stats = loop.step()
        if stats is None:            # an fp16 overflow: the step is skipped, as a worker's is
            return
        grads = {shard: self.flat.grads[shard] for shard in self.store.task_keys[task]}
        norm_stats = {s: self.flat.stats[s].cpu().numpy() for s in loop.shards if s in self.flat.stats}
        self.store.push(task, self.store.version, grads, stats, norm_stats)
        self.progress.observe(task, stats.loss)
        self.steps[task] += 1

    def _load_norm_stats(self, task: str) -> None:
        """Each task keeps its own norm statistics, as its workers do in the distributed run."""
        for shard, array in self.store.norm_stats.get(task, {}).items():
            self.flat.load_stats(shard, array)

    def evaluate(self, time_s: float, final: bool = False) -> dict:
        state = self.store.state()
        result = None
        if self.eval_loop is not None:
            self.eval_loop.load_pieces([state], self.plan)
            result = self.eval_loop.evaluate()
        extra = {"losses": self.progress.losses(), "weights": self.store.balancer.weights(),
                 "applied": dict(self.steps), "lr": self.store.lr,
                 **({"final": True} if final else {})}
        payload = {"servers": [state], "plan": [asdict(p) for p in self.plan]}
        return self.recorder.record(self.store.version, time_s, payload, result, self.eval_loop, extra)
