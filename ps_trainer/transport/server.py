"""ParameterServer: the Ray actor around :class:`ParameterStore` (see ARCHITECTURE.md).

- ``pull(keys, have_version) -> (version, {key: ObjectRef})``: weights are published with one
  ``ray.put`` per piece per published version (lazily, when someone pulls, and at most every
  ``server.publish_every_updates`` updates); every pull of that version gets the same reference, so
  workers on the node read the object store without copies. A caller that is current gets
  ``(version, {})``; otherwise only the pieces changed since ``have_version``.
- ``push(task, worker_id, base_version, grads, stats, norm_stats)`` hands the push to the store
  and returns a :class:`PushResult` (a model held by one actor). A piece of ``grads`` is an
  array (through the object store) or, from a worker on this node, a ``BufferRef`` into the
  worker's shared push buffer, mapped once by ``attach_push_buffer`` (``push_buffers.py``).

A model split over several actors (``server.actors > 1``) is pushed all-or-nothing: the worker
sends each actor but the first its part with ``stage`` (checked, its squared norm returned,
held until decided) and the first actor its own part with ``push_first``, whose arguments
include the staged norms, so Ray runs it only once every part is staged. Actor 0 makes the one
decision for the whole push (finite, norm, clip factor, staleness, weight, sync group), sends it
to every other actor with ``commit`` and applies its own part. Actor 0 is the only one that
calls ``commit``, and Ray runs one caller's calls to an actor in order, so every actor carries
out the same decisions in the same order: versions, optimizer steps and sync groups move
together. A snapshot (``snapshots.py``) uses the same ordered channel: actor 0 tells the others
when to copy their state, and each hands its copy to the taker directly.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Mapping, Optional, Sequence

import numpy as np
import ray
import torch

from ps_trainer.config import Config
from ps_trainer.observe.metrics import RateMeter, Reporter, ServerMetrics
from ps_trainer.core.protocol import (APPLIED, QUEUED, REJECT_REASONS, STALE_GROUP, PushDecision,
                                      PushResult, PushStats, ServerStatus)
from ps_trainer.transport.snapshots import summary_of
from ps_trainer.transport.push_buffers import SUPPORTED as SHARED_PUSHES, AttachedBuffers, BufferRef
from ps_trainer.core.params import readonly_tensor
from ps_trainer.core.runtime import huge_page_zeros, set_threads
from ps_trainer.core.store import make_store

log = logging.getLogger(__name__)
_EMA_DECAY = 0.9   # for the loss and staleness averages in status() and the metrics


def _ema(old: Optional[float], new: float) -> float:
    return new if old is None else _EMA_DECAY * old + (1 - _EMA_DECAY) * new


class ParameterServer:
    """Ray actor holding some pieces of the model (all of them when ``server.actors`` is 1)."""

    def __init__(self, cfg: Config, index: int, weights: Mapping[str, np.ndarray],
                 task_keys: Mapping[str, tuple[str, ...]], state: Optional[dict] = None, hub=None,
                 peers: Sequence = (), incarnation: int = 0):
        set_threads(cfg.server.num_cpus)
        # Own writable copies (arguments arrive as read-only views of the object store), in
        # huge-page memory: every update streams them whole.
        own = {k: huge_page_zeros(int(np.asarray(a).size)).copy_(
                   readonly_tensor(np.asarray(a, dtype=np.float32).reshape(-1)))
               for k, a in weights.items()}
        self._store = make_store(cfg, own, task_keys, incarnation)
        if state is not None:
            self._store.load_state(state)
        self._publish_every = cfg.server.publish_every_updates
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
        if state is not None:        # counts go on from the restored version, not from 0
            self._applied.update({t: int(n) for t, n in state.get("applied", {}).items()
                                  if t in self._applied})
        self._rejected: dict[str, int] = {}          # "<task>/<reason>" -> count
        self._groups_dropped: dict[str, int] = {}    # task -> sync groups dropped stale
        self._reporter = Reporter.to_hub(f"server/{index}", self._metrics.registry, hub,
                                         cfg.metrics.report_every_s)
        self._rate = RateMeter(self._metrics.updates_per_s, cfg.metrics.report_every_s)
        self._index = index
        self._peers = list(peers)                     # actor 0 of a split model: the others
        self._staged: dict[int, tuple[int, dict, int]] = {}   # push id -> (base, grads, bytes)
        self._push_buffers = AttachedBuffers()        # same-node workers' shared gradients
        self.lost_parts = 0                           # decided parts never staged here (a bug)
        self._held: dict[str, tuple[str, dict]] = {}  # snapshot taker -> (round, state copy)

    # ------------------------------------------------------------------ hot path

    def pull(self, keys: tuple[str, ...], have_version: int) -> tuple[int, dict, int]:
        """(the published version, references to the pieces of `keys` changed since
        `have_version`, this actor's incarnation: pushes computed on these weights carry it)."""
        if self._store.version - self._published_version >= self._publish_every:
            self._publish()
        incarnation = self._store.incarnation
        if self._published_version <= have_version:
            return self._published_version, {}, incarnation
        return self._published_version, {k: self._refs[k] for k in keys
                                          if self._put_at[k] > have_version}, incarnation

    def push(self, task: str, worker_id: int, base_version: int, grads: Mapping[str, np.ndarray],
             stats: PushStats, norm_stats: Optional[Mapping[str, np.ndarray]] = None) -> PushResult:
        start = time.perf_counter()
        grads = self._push_buffers.resolve(grads)
        g = self._store.receive(task, grads)
        decision = self._store.decide(task, base_version, self._store.part_norm2(g, stats),
                                      stats, norm_stats)
        self._carry_out(task, g, decision, stats, sum(a.nbytes for a in grads.values()), start)
        return decision.result

    def attach_push_buffer(self, node: str, buffer: dict) -> Optional[int]:
        """Map a worker's shared push buffer (``PushBuffers.describe()``); returns the id its
        pushes name, or None (another node, or the file cannot be opened here): the worker
        then pushes through the object store."""
        if not SHARED_PUSHES or node != ray.get_runtime_context().get_node_id():
            return None
        try:
            return self._push_buffers.attach(**buffer)
        except OSError as err:
            log.warning("server %d: pushes of process %s go through the object store: cannot "
                        "map its shared push buffer (%s)", self._index, buffer.get("pid"), err)
            return None

    # ------------------------------------------------------------------ split model

    def stage(self, push_id: int, task: str, base_version: int,
              grads: Mapping[str, np.ndarray], stats: PushStats) -> float:
        """Hold this actor's part of a push until actor 0 decides it; returns the part's
        squared norm (NaN or Inf when the part is not finite). A part in a worker's shared
        buffer is copied: the worker may reuse its region before actor 0's decision arrives."""
        grads = {k: np.array(self._push_buffers.view(a)) if isinstance(a, BufferRef) else a
                 for k, a in grads.items()}
        g = self._store.receive(task, grads)
        self._drop_undecided()
        self._staged[push_id] = (base_version, g, sum(a.nbytes for a in grads.values()))
        return self._store.part_norm2(g, stats)

    def push_first(self, push_id: int, task: str, worker_id: int, base_version: int,
                   grads: Mapping[str, np.ndarray], stats: PushStats,
                   norm_stats: Optional[Mapping[str, np.ndarray]], *staged_norm2: float
                   ) -> PushResult:
        """Actor 0's part of a split push: decide for the whole push, send the decision to
        the other actors, apply its own part."""
        start = time.perf_counter()
        grads = self._push_buffers.resolve(grads)
        g = self._store.receive(task, grads)
        own = self._store.part_norm2(g, stats)
        # Without verification every part reports the worker's whole-push norm: count it once.
        norm2 = own + sum(staged_norm2) if self._store.server_cfg.verify_gradients or \
            stats.grad_norm is None else own
        decision = self._store.decide(task, base_version, norm2, stats, norm_stats)
        for peer in self._peers:
            peer.commit.remote(push_id, task, decision)
        self._carry_out(task, g, decision, stats, sum(a.nbytes for a in grads.values()), start)
        return decision.result

    def commit(self, push_id: int, task: str, decision: PushDecision) -> None:
        """Carry out actor 0's decision on the part staged here."""
        start = time.perf_counter()
        staged = self._staged.pop(push_id, None)
        if staged is None:
            if decision.accepted:   # stage() always runs first: this would be a protocol bug
                self.lost_parts += 1
                log.error("server %d: no staged part for accepted push %d of %s",
                          self._index, push_id, task)
            return
        _, g, nbytes = staged
        self._carry_out(task, g, decision, None, nbytes, start)

    def _carry_out(self, task: str, g, decision: PushDecision, stats: Optional[PushStats],
                   nbytes: int, start: float) -> None:
        dropped = self._store.execute(task, g, decision)
        if dropped:
            self._dropped_group(task, dropped)
        if decision.reason == APPLIED:
            for key in self._store.task_keys[task]:
                self._modified_at[key] = self._store.version
        self._record(task, decision.result, stats, nbytes, time.perf_counter() - start)

    def _dropped_group(self, task: str, pushes: int) -> None:
        """A sync group dropped unapplied: counted as rejected (reason stale_group), and said
        in the log the first time and every 100th, since a group that keeps going stale
        never trains its task (lower tasks.<task>.sync, or raise max_staleness_updates)."""
        self._metrics.rejected(task, STALE_GROUP).inc(pushes)
        key = f"{task}/{STALE_GROUP}"
        self._rejected[key] = self._rejected.get(key, 0) + pushes
        self._groups_dropped[task] = self._groups_dropped.get(task, 0) + 1
        if self._index == 0 and self._groups_dropped[task] % 100 == 1:
            log.warning("server: %d sync group(s) of %s dropped because their oldest push went "
                        "stale (%d pushes); lower tasks.%s.sync or raise "
                        "server.max_staleness_updates", self._groups_dropped[task], task,
                        self._rejected[key], task)

    def _drop_undecided(self) -> None:
        """Parts whose push can no longer be applied (too stale already: its worker died
        before asking actor 0) are let go, so that the staging area stays bounded."""
        limit = self._store.version - self._store.server_cfg.max_staleness_updates
        for push_id in [p for p, (base, _, _) in self._staged.items() if base < limit]:
            del self._staged[push_id]

    def snapshot_first(self, taker: str, round_id: str) -> tuple[dict, dict]:
        """Actor 0's part of a snapshot (``snapshots.py``): every other actor is told to hold
        its state through the ordered decision channel, so that it takes it after exactly the
        decisions made here; this actor's own state and its summary are returned as two
        objects (``num_returns=2``). Views, not copies: Ray serialises the reply before the
        next push, and nothing here waits for the other actors."""
        for peer in self._peers:
            peer.hold_snapshot.remote(taker, round_id)
        state = self.state()
        return summary_of(state), state

    def hold_snapshot(self, taker: str, round_id: str) -> None:
        """Copy this actor's state for `taker`'s round (replacing its previous one)."""
        self._held[taker] = (round_id, {**self._store.state(copy=True),
                                        "applied": dict(self._applied)})

    def held_snapshot(self, taker: str, round_id: str, _first_summary=None
                      ) -> tuple[Optional[dict], Optional[dict]]:
        """The state held for `taker`'s round and its summary, handed over once; (None, None)
        when the hold has not arrived yet. `_first_summary` (actor 0's answer, a dependency)
        makes Ray run this only after actor 0 has sent the hold."""
        held = self._held.get(taker)
        if held is None or held[0] != round_id:
            return None, None
        del self._held[taker]
        return summary_of(held[1]), held[1]

    def _publish(self) -> None:
        start = time.perf_counter()
        version = self._store.version
        for key, tensor in self._store.weights.items():
            if self._modified_at[key] > self._put_at.get(key, -1):
                self._refs[key] = ray.put(tensor.numpy())
                self._put_at[key] = version
        self._published_version = version
        self._metrics.publish_seconds.observe(time.perf_counter() - start)

    def _record(self, task: str, result: PushResult, stats: Optional[PushStats], nbytes: int,
                seconds: float):
        """Metrics for one push; `stats` (the loss) only where the push was decided."""
        m = self._metrics
        m.received(task).inc()
        m.push_bytes(task).inc(nbytes)
        m.staleness(task).observe(max(result.staleness, 0))
        self._staleness_ema = _ema(self._staleness_ema, result.staleness)
        if result.reason == APPLIED:
            m.applied(task).inc()
            self._applied[task] += 1
        elif result.reason != QUEUED:
            m.rejected(task, result.reason).inc()
            key = f"{task}/{result.reason}"
            self._rejected[key] = self._rejected.get(key, 0) + 1
        if result.accepted and stats is not None:
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
        """This actor's state for a checkpoint (views: Ray serialises the reply at once), with
        the updates applied per task so far."""
        return {**self._store.state(copy=False), "applied": dict(self._applied)}

    def status(self) -> ServerStatus:
        self._rate.update(self._store.version)   # falls to 0 when no push comes
        self._reporter.maybe()                     # ... and the endpoint hears of it
        return ServerStatus(
            index=self._index, node=ray.get_runtime_context().get_node_id(),
            version=self._store.version, lr=self._store.lr, applied=dict(self._applied),
            rejected=dict(self._rejected), staleness=self._staleness_ema,
            losses=dict(self._loss_ema), weights=self._store.balancer.weights(),
            lost_parts=self.lost_parts, staged=len(self._staged),
            push_buffers=len(self._push_buffers))

    def ping(self) -> int:
        return self._store.version

    def process(self) -> dict:
        """Where this actor's process runs: {"node", "pid"} (for ``ps-trainer chaos``)."""
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
