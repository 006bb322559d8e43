"""TaskWorker: one (task, replica) computing gradients and pushing them without waiting.

The step itself is :class:`TaskLoop` (plain, testable without Ray): batch -> forward ->
backward, gradients landing in flat shard buffers. The actor joins it to a
:class:`ParameterClient`, which speaks the protocol:

    loop: [take a compute slot, with run.compute_slots_per_node]
          -> take newer weights (a prefetched pull that has arrived, or a pull now)
          -> step -> push to every server shard without waiting (<= `inflight` outstanding)
          -> [let the slot go]
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Callable, Optional

import numpy as np
import ray
import torch

from ps_trainer.config import Config
from ps_trainer.data.loader import Sampler, loader_workers_for, make_sampler
from ps_trainer.data.paired import PairedSampler
from ps_trainer.data.splits import build_splits
from ps_trainer.data.streams import stream_entropy
from ps_trainer.observe.metrics import Reporter, WorkerMetrics, worker_source
from ps_trainer.model import MultiTaskModel, shard_of
from ps_trainer.core.shards import shards_of_head
from ps_trainer.transport.client import ParameterClient
from ps_trainer.core.params import FlatModel, Piece, ShardLayout
from ps_trainer.core.protocol import (NONFINITE, OVERFLOW, RETRIED, STALE, PushResult, PushStats,
                                      SetupError, WorkerStatus)
from ps_trainer.core.runtime import actor_device, prefetches, prepare_compute, set_threads
from ps_trainer.core.compute_slots import ComputeSlots, slot_count
from ps_trainer_workers.assembly import build_model, build_task
from ps_trainer_workers.tasks import Task
from ps_trainer_workers.precision import StepPrecision
from ps_trainer_workers.tasks.base import TaskModel

log = logging.getLogger(__name__)
# A dead server shows as a failed call, or as lost weights it had published (it owned them).
_SERVER_GONE = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)
# ... but these say only that it did not answer in time: it may well be alive (a network
# drop, a paused process). Retried against the same actors, with backoff.
_TRANSIENT = (ray.exceptions.ActorUnavailableError, ray.exceptions.ObjectFetchTimedOutError,
              ray.exceptions.GetTimeoutError)
_RETRY_BACKOFF_S = (0.1, 5.0)         # first and longest wait between retries
_REPLACEMENT_WAIT_S = 30.0            # after a death, how long to wait for set_servers before
                                      # trying the same servers again (they may be fine)


class TaskLoop:
    """One task's training step on a model bound to flat buffers (no Ray, no optimizer)."""

    def __init__(self, task: Task, flat: FlatModel, sampler: Sampler,
                 rng: np.random.Generator, device: torch.device = torch.device("cpu"),
                 precision: Optional[StepPrecision] = None):
        self.task = task
        self.flat = flat
        self.model: MultiTaskModel = flat.model
        self.sampler = sampler
        self.rng = rng
        self.device = device
        self.precision = precision or StepPrecision("fp32", device)
        self.shards = shards_of_head(task.head_name)
        self._view = TaskModel(self.model, task.head_name)
        self._shared = list(self.model.trunk.last_shared_parameters())

    def step(self, while_computing: Optional[Callable[[], None]] = None) -> Optional[PushStats]:
        """Compute the task's gradients into ``flat.grads``; returns what is reported, or None
        when an fp16 step overflowed (nothing to push; the loss scale was lowered).
        `while_computing` runs once the backward pass is queued, before the step waits for
        it: on a GPU, CPU work there (staging the next weights) overlaps the step."""
        start = time.perf_counter()
        images, masks = self.sampler.sample()
        # No-ops on the CPU. On CUDA, batches from loader processes arrive on the device
        # already (pinned, copied without blocking); in-thread batches are copied here.
        images = images.to(self.device, non_blocking=True)
        masks = None if masks is None else masks.to(self.device, non_blocking=True)
        self.flat.zero_grad()
        self.model.train()
        with self.precision.autocast():
            loss = self.task.training_loss(self._view, images, self.rng, masks)
            total = loss + self.model.regularization(self.task.head_name)
        (total * self.precision.loss_scale_factor).backward()
        if while_computing is not None:
            while_computing()
        # .grad is read after the step: the client may bind the gradients to another buffer
        # between steps (shared-memory pushes rotate through regions).
        if not self.precision.unscale(self.flat.grads[s] for s in self.shards):
            return None
        shared_norm = float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in self._shared])))
        return PushStats(loss=float(loss.detach()), shared_grad_norm=shared_norm,
                         step_time_s=time.perf_counter() - start, samples=int(images.shape[0]))

    def norm_stats(self) -> dict[str, np.ndarray]:
        """Running statistics of the norm layers this task trains (empty for GroupNorm & co)."""
        return {s: self.flat.stats[s].cpu().numpy() for s in self.shards if s in self.flat.stats}


def task_inputs(cfg: Config, task_name: str, replica: int, restart: int = 0,
                device: torch.device = torch.device("cpu"), num_cpus: Optional[float] = None
                ) -> tuple[Task, Sampler, np.random.Generator]:
    """A task, its batch sampler (labelled or unlabelled images, in this thread or in
    `data.loader_workers` processes) and its random generator, deterministic per (seed, task,
    replica, restart). `num_cpus`: the worker's CPUs (default: its task's num_cpus)."""
    task = build_task(cfg, task_name)
    splits = build_splits(cfg.data, cfg.run.seed)
    needs_unlabelled = task.uses_both_splits or not task.uses_labels
    if len(splits.unlabelled) == 0 and needs_unlabelled:
        raise ValueError(f"task {task_name!r} has no unlabelled images: the pool is empty once "
                         f"the {len(splits.labelled)} labelled ones are left out (set "
                         f"data.unlabelled_excludes_labelled: false, or label fewer)")
    entropy = stream_entropy(cfg.run.seed, cfg.task_names.index(task_name), replica, restart)
    rng = np.random.default_rng(entropy)
    d = cfg.data
    loaders = loader_workers_for(d.loader_workers, device,
                                 cfg.tasks[task_name].num_cpus if num_cpus is None else num_cpus)

    def sampler_of(dataset, stream_entropy, weights=None):
        return make_sampler(dataset, cfg.tasks[task_name].batch_size, d.image_size, rng,
                            stream_entropy, loaders, d.prefetch_batches, d.cache_mb << 20,
                            task.crops(), device, weights)

    if task.uses_both_splits:
        # Two streams: the labelled one keeps the task's entropy, the other extends it.
        sampler = PairedSampler(
            sampler_of(splits.labelled, entropy, task.labelled_weights(splits.labelled)),
            sampler_of(splits.unlabelled, [*entropy, 1]))
    elif task.uses_labels:
        sampler = sampler_of(splits.labelled, entropy, task.labelled_weights(splits.labelled))
    else:
        sampler = sampler_of(splits.unlabelled, entropy)
    return task, sampler, rng


def make_task_loop(cfg: Config, task_name: str, replica: int,
                   device: torch.device = torch.device("cpu"), restart: int = 0) -> TaskLoop:
    """A TaskLoop with its own model copy (trunk + this task's head)."""
    task, sampler, rng = task_inputs(cfg, task_name, replica, restart, device)
    model = build_model(cfg, {task_name: task}, seed=cfg.run.seed).to(device)
    prepare_compute(cfg.run, model, device)
    return TaskLoop(task, FlatModel(model, ShardLayout.of(model, shard_of)), sampler, rng, device,
                    StepPrecision.of(cfg.run, device))


class TaskWorker:
    """Ray actor (created with ``max_concurrency=2``: the loop runs in one thread, control
    calls — stop, set_servers, status — in the other). Its data, model, parameter client and
    compute slots are made when :meth:`run` starts, not in ``__init__``: a failure there, or in
    the first training step (the first batch, a teacher checkpoint loaded on first use), is a
    :class:`SetupError` of that call (see ``protocol.py``). `restart` numbers this actor among
    the replica's incarnations (``data/streams.py``): a replacement draws new batches."""

    def __init__(self, cfg: Config, task_name: str, replica: int, servers: list,
                 plan: tuple[Piece, ...], hub=None, restart: int = 0):
        set_threads(cfg.tasks[task_name].num_cpus)
        self._cfg = cfg
        self._task = task_name
        self._replica = replica
        self._restart = restart
        self._plan = plan
        self._loop: Optional[TaskLoop] = None              # both made by _open()
        self._client: Optional[ParameterClient] = None
        self._slots: Optional[ComputeSlots] = None
        self._set_up = False                               # opened and took its first step
        self._results = collections.Counter()
        self._metrics = WorkerMetrics(task_name, replica)
        self._servers = servers
        self._stop = threading.Event()
        self._steps = 0
        self._reported = {"pulled": 0, "pushed": 0, "skipped": 0}
        self._reporter = Reporter.to_hub(worker_source(task_name, replica),
                                         self._metrics.registry, hub, cfg.metrics.report_every_s)

    # ------------------------------------------------------------------ control thread

    def stop(self) -> None:
        self._stop.set()

    def set_servers(self, servers: list) -> None:
        """Point at replacement server actors; the loop re-pulls before its next step."""
        self._servers = servers

    def status(self) -> WorkerStatus:
        loop = self._loop
        return WorkerStatus(task=self._task, replica=self._replica, steps=self._steps,
                            node=ray.get_runtime_context().get_node_id(),
                            results=dict(self._results),
                            skipped_images=loop.sampler.skipped if loop else 0,
                            restart=self._restart)

    def ping(self) -> bool:
        return True

    def is_set_up(self) -> bool:
        """Whether the loop has set itself up and taken its first training step."""
        return self._set_up

    def process(self) -> dict:
        """Where this actor's process runs: {"node", "pid", "loader_pids"} (for ``ps-trainer
        chaos``; loader_pids: its running loader processes)."""
        loop = self._loop
        pids = getattr(loop.sampler, "loader_pids", list)() if loop else []
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "loader_pids": pids}

    # ------------------------------------------------------------------ loop thread

    def _open(self) -> None:
        cfg, task = self._cfg, self._task
        try:
            device = actor_device(ray.get_gpu_ids())
            loop = make_task_loop(cfg, task, self._replica, device, self._restart)
            pieces = tuple(p for p in self._plan if p.shard in loop.shards)
            client = ParameterClient(self._servers, pieces, loop.flat,
                                     cfg.tasks[task].inflight, cfg.server.grad_dtype,
                                     report_norm=not cfg.server.verify_gradients,
                                     prefetch=prefetches(cfg.tasks[task].prefetch, device),
                                     shared_memory=cfg.server.same_node_pushes == "shared_memory",
                                     on_result=self._record, on_timing=self._timing)
            job = ray.get_runtime_context().get_job_id()
            slots = ComputeSlots(slot_count(cfg.run.compute_slots_per_node),
                                 f"{job}-{cfg.run.name}")
        except Exception as err:
            raise SetupError.of(f"worker {task}/{self._replica}", err) from err
        self._client, self._loop, self._slots = client, loop, slots

    def _step(self) -> Optional[PushStats]:
        """One training step; the first one still counts as setting up (it reads the first
        batch, and a task may load what it needs on first use)."""
        if self._set_up:
            return self._loop.step(self._client.stage_arrived)
        try:
            stats = self._loop.step(self._client.stage_arrived)
        except torch.cuda.OutOfMemoryError:
            raise                  # the device's memory at this moment, not this worker's setup
        except Exception as err:
            raise SetupError.of(f"worker {self._task}/{self._replica}", err) from err
        self._set_up = True
        return stats

    def run(self, max_steps: Optional[int] = None) -> WorkerStatus:
        """Train until stopped (or `max_steps`); returns the worker's status."""
        if self._loop is None:
            self._open()
        try:
            self._train(max_steps)
        finally:
            self._loop.sampler.close()          # its loader processes end with the run
        self._client.drain()
        self._reporter.now()
        return self.status()

    def _train(self, max_steps: Optional[int]) -> None:
        servers = None
        backoff = 0.0
        while not self._stop.is_set() and (max_steps is None or self._steps < max_steps):
            try:
                if servers is not self._servers:          # first start, or servers replaced
                    servers = self._servers
                    self._client.reconnect(servers)
                with self._slots:
                    if self._stop.is_set():        # told to stop while waiting for a turn
                        break
                    self._client.refresh()
                    stats = self._step()
                    if stats is not None:     # None: an fp16 overflow, nothing to push
                        self._client.push(self._task, self._replica, stats,
                                          self._loop.norm_stats(), self._loop.shards)
                self._steps += 1
                backoff = 0.0
                if stats is None:
                    self._results[OVERFLOW] += 1
                else:
                    self._observe(stats)
            except _TRANSIENT as err:
                first, longest = _RETRY_BACKOFF_S
                backoff = min(longest, backoff * 2 if backoff else first)
                log.warning("%s/%d: a server did not answer (%s); retrying in %.1f s",
                            self._task, self._replica, type(err).__name__, backoff)
                self._results[RETRIED] += 1
                servers = None                    # in-flight calls abandoned, weights re-pulled
                self._stop.wait(backoff)
            except _SERVER_GONE as err:
                log.warning("%s/%d: a server is gone (%s); waiting for a replacement",
                            self._task, self._replica, type(err).__name__)
                deadline = time.monotonic() + _REPLACEMENT_WAIT_S
                while (self._servers is servers and not self._stop.is_set()
                       and time.monotonic() < deadline):
                    time.sleep(0.05)
                if self._servers is servers:      # none came: the same ones, once more
                    servers = None

    def _observe(self, stats: PushStats) -> None:
        """Per-step metrics: counters advance by the client's deltas (no growing state)."""
        m, c, last = self._metrics, self._client, self._reported
        m.steps.inc()
        m.step_seconds.observe(stats.step_time_s)
        for name, total, counter in (("pulled", c.pulled_bytes, m.pull_bytes),
                                     ("pushed", c.pushed_bytes, m.push_bytes),
                                     ("skipped", self._loop.sampler.skipped, m.images_skipped)):
            if total > last[name]:
                counter.inc(total - last[name])
                last[name] = total
        self._reporter.maybe()

    def _timing(self, what: str, seconds: float) -> None:
        (self._metrics.pull_seconds if what == "pull" else self._metrics.wait_seconds).observe(seconds)

    def _record(self, result: PushResult) -> None:
        self._results[result.reason] += 1
        if result.reason == NONFINITE:
            log.warning("%s/%d: push rejected: non-finite loss or gradient (step %d)",
                        self._task, self._replica, self._steps)
        elif result.reason == STALE and self._results[STALE] % 100 == 1:
            log.info("%s/%d: %d pushes dropped as stale so far", self._task, self._replica,
                     self._results[STALE])
