"""ParameterServer: the Ray actor around :class:`ParameterStore` (see DESIGN.md).

- ``pull(keys, have_version) -> (version, {key: ObjectRef})``: weights are published with one
  ``ray.put`` per piece per published version (lazily, when someone pulls, and at most every
  ``server.publish_every`` updates); every pull of that version gets the same reference, so
  workers on the node read the object store without copies. A caller that is current gets
  ``(version, {})``; otherwise only the pieces changed since ``have_version``.
- ``push(task, worker_id, base_version, grads, stats, norm_stats)`` hands the push to the store
  and returns a :class:`PushResult`.
"""
from __future__ import annotations

import logging
import time
from typing import Mapping, Optional

import numpy as np
import ray
import torch

from ps_trainer.balancing import make_balancer
from ps_trainer.config import Config
from ps_trainer.metrics import RateMeter, Reporter, ServerMetrics
from ps_trainer.protocol import APPLIED, QUEUED, REJECT_REASONS, PushResult, PushStats
from ps_trainer.runtime import set_threads
from ps_trainer.store import ParameterStore

log = logging.getLogger(__name__)
_EMA_DECAY = 0.9   # for the loss and staleness averages in status() and the metrics


def _ema(old: Optional[float], new: float) -> float:
    return new if old is None else _EMA_DECAY * old + (1 - _EMA_DECAY) * new


def make_store(cfg: Config, weights: Mapping[str, torch.Tensor],
               task_keys: Mapping[str, tuple[str, ...]]) -> ParameterStore:
    """The store the config describes, over `weights` (1-D float32 tensors)."""
    balancer = make_balancer(cfg.balancing.method, cfg.task_names, cfg.balancing.options)
    sync = {name: t.sync for name, t in cfg.tasks.items()}
    return ParameterStore(weights, task_keys, cfg.optimizer, cfg.server, balancer, sync,
                          cfg.run.max_updates)


class ParameterServer:
    """Ray actor holding some pieces of the model (all of them when ``server.shards`` is 1)."""

    def __init__(self, cfg: Config, index: int, weights: Mapping[str, np.ndarray],
                 task_keys: Mapping[str, tuple[str, ...]], state: Optional[dict] = None, hub=None):
        set_threads(cfg.server.num_cpus)
        # Own writable copies: arguments arrive as read-only views of the object store.
        own = {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in weights.items()}
        self._store = make_store(cfg, own, task_keys)
        if state is not None:
            self._store.load_state(state)
        self._publish_every = cfg.server.publish_every
        self._published_version = -1
        self._refs: dict[str, ray.ObjectRef] = {}
        self._put_at: dict[str, int] = {}
        self._modified_at = {k: self._store.version for k in own}
        self._metrics = ServerMetrics(index)
        for task in cfg.task_names:          # series exist (at 0) before the first event
            for reason in REJECT_REASONS:
                self._metrics.rejected(task, reason)
        self._loss_ema: dict[str, float] = {}
        self._staleness_ema = 0.0
        self._applied: dict[str, int] = {t: 0 for t in cfg.task_names}
        self._rejected: dict[str, int] = {}          # "<task>/<reason>" -> count
        send = (lambda source, fams: hub.report.remote(source, fams)) if hub else (lambda *a: None)
        self._reporter = Reporter(f"server/{index}", self._metrics.registry, send,
                                  cfg.metrics.report_every_s)
        self._rate = RateMeter(self._metrics.updates_per_s, cfg.metrics.report_every_s)
        self._index = index

    # ------------------------------------------------------------------ hot path

    def pull(self, keys: tuple[str, ...], have_version: int) -> tuple[int, dict]:
        if self._store.version - self._published_version >= self._publish_every:
            self._publish()
        if self._published_version <= have_version:
            return self._published_version, {}
        return self._published_version, {k: self._refs[k] for k in keys
                                          if self._put_at[k] > have_version}

    def push(self, task: str, worker_id: int, base_version: int, grads: Mapping[str, np.ndarray],
             stats: PushStats, norm_stats: Optional[Mapping[str, np.ndarray]] = None) -> PushResult:
        start = time.perf_counter()
        result = self._store.push(task, base_version, grads, stats, norm_stats)
        if result.reason == APPLIED:
            for key in self._store.task_keys[task]:
                self._modified_at[key] = self._store.version
        self._record(task, result, stats, grads, time.perf_counter() - start)
        return result

    def _publish(self) -> None:
        start = time.perf_counter()
        version = self._store.version
        for key, tensor in self._store.weights.items():
            if self._modified_at[key] > self._put_at.get(key, -1):
                self._refs[key] = ray.put(tensor.numpy())
                self._put_at[key] = version
        self._published_version = version
        self._metrics.publish_seconds.observe(time.perf_counter() - start)

    def _record(self, task: str, result: PushResult, stats: PushStats, grads, seconds: float):
        m = self._metrics
        m.received(task).inc()
        m.push_bytes(task).inc(sum(a.nbytes for a in grads.values()))
        m.staleness(task).observe(max(result.staleness, 0))
        self._staleness_ema = _ema(self._staleness_ema, result.staleness)
        if result.reason == APPLIED:
            m.applied(task).inc()
            self._applied[task] += 1
        elif result.reason != QUEUED:
            m.rejected(task, result.reason).inc()
            key = f"{task}/{result.reason}"
            self._rejected[key] = self._rejected.get(key, 0) + 1
        if result.accepted:
            self._loss_ema[task] = _ema(self._loss_ema.get(task), stats.loss)
            m.task_loss(task).set(self._loss_ema[task])
            m.task_weight(task).set(self._store.balancer.weight(task))
        m.apply_seconds.observe(seconds)
        m.version.set(self._store.version)
        self._rate.update(self._store.version)
        m.lr.set(self._store.lr)
        self._reporter.maybe()

    # ------------------------------------------------------------------ control

    def state(self) -> dict:
        """The full server state for a checkpoint (copies)."""
        return self._store.state()

    def status(self) -> dict:
        self._rate.update(self._store.version)   # falls to 0 when no push comes
        self._reporter.maybe()                     # ... and the endpoint hears of it
        return {"index": self._index, "node": ray.get_runtime_context().get_node_id(),
                "version": self._store.version, "lr": self._store.lr,
                "applied": dict(self._applied), "rejected": dict(self._rejected),
                "staleness": self._staleness_ema,
                "losses": dict(self._loss_ema),
                "weights": self._store.balancer.weights()}

    def ping(self) -> int:
        return self._store.version
