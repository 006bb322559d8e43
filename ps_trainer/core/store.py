"""ParameterStore: the parameter server's state and update rule, without Ray.

It holds named flat float32 pieces of the model (1-D tensors: numpy-backed in the server
actor, the model's own buffers in the single-process trainer), the optimizer state, the balancing method
and a version counter, and handles one push at a time (the actor in ``server.py`` adapts it
to Ray; the local trainer calls it directly). A push goes: receive -> check -> weight -> apply:

- staleness = version - base_version; above ``max_staleness_updates`` (or from before a restore)
  the push is dropped; under the ``scale`` policy the step is scaled by 1/(1+staleness);
- a NaN/Inf gradient or loss is rejected and counted, never applied;
- the task's balancing weight and the staleness factor multiply the *step* (the learning rate
  of this push's update), so they act under Adam and RMSProp too; clipping scales the gradient;
- ``sync: k`` for a task averages k accepted pushes of that task into one update (Doersch &
  Zisserman 2017 keep workers of one task synchronous and tasks asynchronous to each other);
  a group whose oldest push has grown staler than ``max_staleness_updates`` is dropped, not applied.

The store only knows task names and the keys each task's pushes carry.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import torch

from ps_trainer.core.balancing import Balancer, make_balancer
from ps_trainer.config import Config, OptimizerConfig, ServerConfig
from ps_trainer.core.optim import FlatOptimizer, learning_rate
from ps_trainer.core.params import readonly_tensor
from ps_trainer.core.protocol import (APPLIED, FENCED, NONFINITE, QUEUED, STALE, PushDecision,
                                      PushResult, PushStats)
from ps_trainer.core.runtime import streamed_zeros_like


class ParameterStore:
    def __init__(self, weights: Mapping[str, torch.Tensor], task_keys: Mapping[str, tuple[str, ...]],
                 optimizer: OptimizerConfig, server: ServerConfig, balancer: Balancer,
                 sync: Mapping[str, int], total_updates: int, incarnation: int = 0):
        self.incarnation = incarnation                # pushes of another are fenced off
        self.weights = dict(weights)                  # key -> 1-D float32 tensor, updated in place
        self.task_keys = {t: tuple(k for k in keys if k in self.weights)
                          for t, keys in task_keys.items()}
        self.server_cfg = server
        self.optimizer_cfg = optimizer
        self.optimizer = FlatOptimizer(optimizer)
        for key, tensor in self.weights.items():
            if tensor.dtype != torch.float32 or tensor.dim() != 1:
                raise ValueError(f"piece {key!r} must be a 1-D float32 tensor")
            self.optimizer.add_piece(key, tensor)
        self.balancer = balancer
        self.sync = {t: int(sync.get(t, 1)) for t in task_keys}
        self.total_updates = total_updates
        self.version = 0
        self.norm_stats: dict[str, dict[str, np.ndarray]] = {}
        # Sync groups: per task, one float32 accumulator per key, and how many pushes it holds.
        self._acc = {t: {k: streamed_zeros_like(self.weights[k]) for k in keys}
                     for t, keys in self.task_keys.items() if self.sync[t] > 1}
        self._acc_count = {t: 0 for t in self._acc}
        self._acc_factor = {t: 0.0 for t in self._acc}
        self._acc_base = {t: 0 for t in self._acc}
        self.dropped_in_groups = 0          # groups dropped because their oldest push went stale

    # ----------------------------------------------------------------- the hot path

    def push(self, task: str, base_version: int, grads: Mapping[str, np.ndarray | torch.Tensor],
             stats: PushStats, norm_stats: Optional[Mapping[str, np.ndarray]] = None) -> PushResult:
        """Receive -> check -> weight -> apply (or queue in the task's sync group): a store
        that holds every piece the push carries decides and applies in one call."""
        g = self.receive(task, grads)
        decision = self.decide(task, base_version, self.part_norm2(g, stats), stats, norm_stats)
        self.execute(task, g, decision)
        return decision.result

    def receive(self, task: str, grads: Mapping) -> dict[str, torch.Tensor]:
        """The push's pieces held here, as tensors (views, no copies), with shapes checked."""
        if task not in self.task_keys:
            raise KeyError(f"push from unknown task {task!r}; known: {', '.join(self.task_keys)}")
        out = {}
        for key in self.task_keys[task]:
            grad = grads.get(key)
            if grad is None or tuple(grad.shape) != tuple(self.weights[key].shape):
                got = None if grad is None else tuple(grad.shape)
                raise ValueError(f"push from {task!r}: piece {key!r} expected shape "
                                 f"{tuple(self.weights[key].shape)}, got {got}")
            out[key] = grad if isinstance(grad, torch.Tensor) else readonly_tensor(grad)
        return out

    def part_norm2(self, g: Mapping[str, torch.Tensor], stats: PushStats) -> float:
        """Squared L2 norm of the pieces held here (NaN or Inf if any value is), or of the whole
        push as the worker reported it when server.verify_gradients is off."""
        if not self.server_cfg.verify_gradients and stats.grad_norm is not None:
            return stats.grad_norm ** 2
        return sum(float(torch.linalg.vector_norm(t, dtype=torch.float32)) ** 2
                   for t in g.values())

    def decide(self, task: str, base_version: int, norm2: float, stats: PushStats,
               norm_stats: Optional[Mapping[str, np.ndarray]] = None) -> PushDecision:
        """The one decision for a whole push: staleness, finiteness, clip factor and step
        factor, from `norm2`, the squared norm of the whole push (the sum of its parts when the
        model is split over several stores). Observes the balancer for accepted pushes."""
        if stats.incarnation != self.incarnation:
            return PushDecision(FENCED, self.version, 0)
        staleness = self.version - base_version
        if staleness < 0 or staleness > self.server_cfg.max_staleness_updates:
            return PushDecision(STALE, self.version, staleness)
        if not (math.isfinite(stats.loss) and math.isfinite(norm2)):
            return PushDecision(NONFINITE, self.version, staleness)
        step_factor = self.balancer.weight(task) * self._staleness_factor(staleness)
        grad_scale = self._clip_factor(math.sqrt(norm2))
        self.balancer.observe(task, stats.loss, stats.shared_grad_norm)
        if norm_stats:
            self._keep_norm_stats(task, norm_stats)
        if self.sync[task] == 1:
            return PushDecision(APPLIED, self.version, staleness, grad_scale, step_factor)
        # The group's oldest push would be applied too stale: drop what the group holds.
        reset = bool(self._acc_count[task]) and \
            self.version - self._acc_base[task] > self.server_cfg.max_staleness_updates
        count = (0 if reset else self._acc_count[task]) + 1
        reason = APPLIED if count >= self.sync[task] else QUEUED
        return PushDecision(reason, self.version, staleness, grad_scale, step_factor, reset)

    def execute(self, task: str, g: Mapping[str, torch.Tensor], decision: PushDecision) -> int:
        """Carry out a decision on the pieces held here; returns the pushes of the task's sync
        group dropped unapplied (its oldest went stale). Every store of a split model gets the
        same decisions in the same order, so their versions and sync groups move together."""
        if not decision.accepted:
            return 0
        dropped = 0
        if decision.reset_group:
            dropped = self._acc_count[task]
            self._reset_group(task)
            self.dropped_in_groups += 1
        if self.sync[task] == 1:
            self._apply(g, decision.grad_scale, decision.step_factor)
            return dropped
        acc = self._acc[task]
        for key, t in g.items():
            acc[key].add_(t, alpha=decision.grad_scale)
        base = decision.version - decision.staleness
        first = self._acc_count[task] == 0
        self._acc_base[task] = base if first else min(self._acc_base[task], base)
        self._acc_factor[task] += decision.step_factor
        self._acc_count[task] += 1
        if decision.reason == APPLIED:     # the group is full: apply its mean, mean step factor
            count = self._acc_count[task]
            self._apply(acc, 1.0 / count, self._acc_factor[task] / count)
            self._reset_group(task)
        return dropped

    def _staleness_factor(self, staleness: int) -> float:
        return 1.0 / (1 + staleness) if self.server_cfg.staleness_policy == "scale" else 1.0

    def _clip_factor(self, norm: float) -> float:
        clip = self.optimizer_cfg.clip_grad_norm
        return min(1.0, clip / (norm + 1e-12)) if clip > 0 else 1.0

    def _reset_group(self, task: str) -> None:
        for t in self._acc[task].values():
            t.zero_()
        self._acc_count[task] = 0
        self._acc_factor[task] = 0.0

    def _apply(self, g: Mapping[str, torch.Tensor], grad_scale: float, step_factor: float) -> None:
        lr = learning_rate(self.optimizer_cfg, self.version, self.total_updates) * step_factor
        for key, t in g.items():
            self.optimizer.step(key, self.weights[key], t, lr, grad_scale)
        self.version += 1

    def _keep_norm_stats(self, task: str, norm_stats: Mapping[str, np.ndarray]) -> None:
        kept = self.norm_stats.setdefault(task, {})
        for shard, array in norm_stats.items():
            if shard not in kept:
                kept[shard] = np.array(array, dtype=np.float32)
            else:
                np.copyto(kept[shard], array)

    # ----------------------------------------------------------------- reading and state

    @property
    def lr(self) -> float:
        return learning_rate(self.optimizer_cfg, self.version, self.total_updates)

    def state(self, copy: bool = True) -> dict:
        """Everything a checkpoint needs, as numpy copies (safe to keep while pushes continue),
        or views when the caller serialises them before the next push (an actor's reply)."""
        return {"version": self.version,
                "weights": {k: t.detach().cpu().numpy().copy() if copy else t.detach().numpy()
                            for k, t in self.weights.items()},
                "optimizer": self.optimizer.state_dict(copy), "balancer": self.balancer.state_dict(),
                "norm_stats": {t: {s: a.copy() for s, a in shards.items()}
                               for t, shards in self.norm_stats.items()}}

    def load_state(self, state: Mapping) -> None:
        missing = set(self.weights) - set(state["weights"])
        if missing:
            raise KeyError(f"checkpoint lacks pieces {sorted(missing)}")
        for key, tensor in self.weights.items():
            src = np.asarray(state["weights"][key], dtype=np.float32)
            if src.shape != tuple(tensor.shape):
                raise ValueError(f"checkpoint piece {key!r} has shape {src.shape}, "
                                 f"model needs {tuple(tensor.shape)}")
            tensor.copy_(readonly_tensor(src))   # a restored state may be read-only (Ray)
        self.optimizer.load_state_dict(state["optimizer"])
        self.balancer.load_state_dict(state["balancer"])
        self.norm_stats = {t: {s: np.array(a, np.float32) for s, a in shards.items()}
                           for t, shards in state.get("norm_stats", {}).items()}
        self.version = int(state["version"])
        for task in self._acc:                # a partly filled sync group is not resumed
            self._reset_group(task)


def make_store(cfg: Config, weights: Mapping[str, torch.Tensor],
               task_keys: Mapping[str, tuple[str, ...]], incarnation: int = 0) -> ParameterStore:
    """The store the config describes, over `weights` (1-D float32 tensors)."""
    balancer = make_balancer(cfg.balancing.method, cfg.task_names, cfg.balancing.options)
    sync = {name: t.sync for name, t in cfg.tasks.items()}
    return ParameterStore(weights, task_keys, cfg.optimizer, cfg.server, balancer, sync,
                          cfg.run.max_updates, incarnation)
