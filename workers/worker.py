"""TaskWorker: one (task, replica) computing gradients and pushing them without waiting.

The step itself is :class:`TaskLoop` (plain, testable without Ray): batch -> forward ->
backward, gradients landing in flat shard buffers. The actor adds the protocol around it:

    loop: take newer weights if a prefetched pull has arrived (and prefetch the next)
          -> step -> push to every server shard without waiting (<= `inflight` outstanding)
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Optional

import numpy as np
import ray
import torch

from ps_trainer.config import Config
from ps_trainer.data.sampler import ImageSampler
from ps_trainer.data.splits import build_splits
from ps_trainer.metrics import Reporter, WorkerMetrics
from ps_trainer.model import MultiTaskModel, shard_of
from ps_trainer.params import FlatModel, Piece, ShardLayout, encode_grad
from ps_trainer.protocol import NONFINITE, STALE, PushResult, PushStats
from ps_trainer.runtime import set_threads
from workers.assembly import build_model, build_task
from workers.tasks import Task

log = logging.getLogger(__name__)


class TaskLoop:
    """One task's training step on a model bound to flat buffers (no Ray, no optimizer)."""

    def __init__(self, task: Task, flat: FlatModel, sampler: ImageSampler,
                 rng: np.random.Generator, device: torch.device = torch.device("cpu")):
        self.task = task
        self.flat = flat
        self.model: MultiTaskModel = flat.model
        self.sampler = sampler
        self.rng = rng
        self.device = device
        self.shards = ("trunk", f"head/{task.name}")
        self._shared = [p.grad for p in self.model.trunk.last_shared_parameters()]

    def step(self) -> PushStats:
        """Compute the task's gradients into ``flat.grads``; returns what is reported."""
        start = time.perf_counter()
        images, masks = self.sampler.sample()
        inputs, targets = self.task.make_batch(images, self.rng, masks)
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        self.flat.zero_grad()
        self.model.train()
        loss = self.task.loss(self.model(self.task.name, inputs), targets)
        (loss + self.model.regularization(self.task.name)).backward()
        # The .grad tensors are views into the flat buffer, so they stay valid across steps.
        shared_norm = float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in self._shared])))
        return PushStats(loss=float(loss.detach()), shared_grad_norm=shared_norm,
                         step_time_s=time.perf_counter() - start, samples=int(images.shape[0]))

    def grads(self, dtype: str = "float32") -> dict[str, np.ndarray]:
        """This task's gradient shards as the arrays that travel (views when float32 on CPU)."""
        return {shard: encode_grad(self.flat.grads[shard], dtype) for shard in self.shards}

    def norm_stats(self) -> dict[str, np.ndarray]:
        """Running statistics of the norm layers this task trains (empty for GroupNorm & co)."""
        return {s: self.flat.stats[s].cpu().numpy() for s in self.shards if s in self.flat.stats}


def make_task_loop(cfg: Config, task_name: str, replica: int,
                   device: torch.device = torch.device("cpu")) -> TaskLoop:
    """A TaskLoop with its own model copy, deterministic per (seed, task, replica)."""
    task = build_task(cfg, task_name)
    model = build_model(cfg, {task_name: task}, seed=cfg.run.seed).to(device)
    flat = FlatModel(model, ShardLayout.of(model, shard_of))
    splits = build_splits(cfg.data, cfg.run.seed)
    dataset = splits.labelled if task.uses_labels else splits.unlabelled
    task_index = cfg.task_names.index(task_name)
    rng = np.random.default_rng([cfg.run.seed, task_index, replica])
    sampler = ImageSampler(dataset, cfg.tasks[task_name].batch_size, cfg.data.image_size, rng)
    return TaskLoop(task, flat, sampler, rng, device)


class _ServerLink:
    """The pieces one server actor owns that this worker reads and writes, and its version."""

    def __init__(self, handle, pieces: list[Piece]):
        self.handle = handle
        self.pieces = pieces
        self.keys = tuple(p.key for p in pieces)
        self.version = -1


class TaskWorker:
    """Ray actor (created with ``max_concurrency=2``: the loop runs in one thread, control
    calls — stop, set_servers, status — in the other)."""

    def __init__(self, cfg: Config, task_name: str, replica: int, servers: list,
                 plan: tuple[Piece, ...], hub=None):
        set_threads(cfg.tasks[task_name].num_cpus)
        self._device = torch.device("cuda" if ray.get_gpu_ids() else "cpu")
        self._cfg = cfg
        self._task = task_name
        self._replica = replica
        self._inflight = cfg.tasks[task_name].inflight
        self._loop = make_task_loop(cfg, task_name, replica, self._device)
        self._plan = tuple(p for p in plan if p.shard in self._loop.shards)
        self._links = self._connect(servers)
        self._stop = threading.Event()
        self._metrics = WorkerMetrics(task_name, replica)
        send = (lambda source, fams: hub.report.remote(source, fams)) if hub else (lambda *a: None)
        self._reporter = Reporter(f"worker/{task_name}/{replica}", self._metrics.registry, send,
                                  cfg.metrics.report_every_s)
        self._steps = 0
        self._results = collections.Counter()

    def _connect(self, servers: list) -> list[_ServerLink]:
        links = []
        for index, handle in enumerate(servers):
            pieces = [p for p in self._plan if p.server == index]
            if pieces:
                links.append(_ServerLink(handle, pieces))
        return links

    # ------------------------------------------------------------------ control thread

    def stop(self) -> None:
        self._stop.set()

    def set_servers(self, servers: list) -> None:
        """Point at replacement server actors; weights are pulled afresh."""
        self._links = self._connect(servers)

    def status(self) -> dict:
        return {"task": self._task, "replica": self._replica, "steps": self._steps,
                "node": ray.get_runtime_context().get_node_id(),
                "results": dict(self._results), "skipped_images": self._loop.sampler.skipped}

    def ping(self) -> bool:
        return True

    # ------------------------------------------------------------------ loop thread

    def run(self, max_steps: Optional[int] = None) -> dict:
        """Train until stopped (or `max_steps`); returns the worker's status."""
        pending: collections.deque = collections.deque()
        links, prefetch = None, None
        while not self._stop.is_set() and (max_steps is None or self._steps < max_steps):
            try:
                if links is not self._links:          # first start, or servers replaced
                    links, prefetch = self._links, None
                    pending.clear()
                    self._pull(links, self._request_pull(links))
                prefetch = self._maybe_take_prefetch(links, prefetch)
                stats = self._loop.step()
                self._metrics.step_seconds.observe(stats.step_time_s)
                self._push(links, stats, pending)
                self._steps += 1
                self._metrics.steps.inc()
                self._reporter.maybe()
            except ray.exceptions.RayActorError as err:
                log.warning("%s/%d: a server is unreachable (%s); waiting for a replacement",
                            self._task, self._replica, type(err).__name__)
                self._wait_for_new_servers(links)
        self._drain(pending)
        self._reporter.now()
        return self.status()

    def _request_pull(self, links: list[_ServerLink]) -> list:
        return [link.handle.pull.remote(link.keys, link.version) for link in links]

    def _maybe_take_prefetch(self, links, prefetch):
        """Apply a prefetched pull if it has arrived, then prefetch the next one."""
        if prefetch is None:
            return self._request_pull(links)
        ready, _ = ray.wait(prefetch, num_returns=len(prefetch), timeout=0)
        if len(ready) < len(prefetch):
            return prefetch
        self._pull(links, prefetch)
        return self._request_pull(links)

    def _pull(self, links: list[_ServerLink], refs: list) -> None:
        start = time.perf_counter()
        pulled = 0
        for link, (version, arrays) in zip(links, ray.get(refs)):
            if not arrays:
                continue
            values = ray.get(list(arrays.values()))  # zero-copy views of the object store
            by_key = {p.key: p for p in link.pieces}
            for key, array in zip(arrays, values):
                piece = by_key[key]
                self._loop.flat.load(piece.shard, array, piece.start)
                pulled += array.nbytes
            link.version = version
        if pulled:
            self._metrics.pull_bytes.inc(pulled)
            self._metrics.pull_seconds.observe(time.perf_counter() - start)

    def _push(self, links: list[_ServerLink], stats: PushStats, pending: collections.deque) -> None:
        if len(pending) >= self._inflight:
            start = time.perf_counter()
            self._record(ray.get(pending.popleft()))
            self._metrics.wait_seconds.observe(time.perf_counter() - start)
        grads = self._loop.grads(self._cfg.server.grad_dtype)
        norm_stats = self._loop.norm_stats()
        refs, sent = [], 0
        for i, link in enumerate(links):
            chunk = {p.key: grads[p.shard][p.start: p.stop] for p in link.pieces}
            sent += sum(a.nbytes for a in chunk.values())
            refs.append(link.handle.push.remote(self._task, self._replica, link.version, chunk,
                                                stats, norm_stats if i == 0 else None))
        self._metrics.push_bytes.inc(sent)
        pending.append(refs)

    def _record(self, results: list[PushResult]) -> None:
        for result in results:
            self._results[result.reason] += 1
            if result.reason == NONFINITE:
                log.warning("%s/%d: push rejected: non-finite loss or gradient (step %d)",
                            self._task, self._replica, self._steps)
        if results and results[0].reason == STALE and self._results[STALE] % 100 == 1:
            log.info("%s/%d: %d pushes dropped as stale so far", self._task, self._replica,
                     self._results[STALE])

    def _drain(self, pending: collections.deque) -> None:
        try:
            while pending:
                self._record(ray.get(pending.popleft()))
        except ray.exceptions.RayActorError:
            pending.clear()

    def _wait_for_new_servers(self, links) -> None:
        while self._links is links and not self._stop.is_set():
            time.sleep(0.05)
