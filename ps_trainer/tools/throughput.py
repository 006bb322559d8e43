"""The parameter server's throughput, measured with stub workers whose compute is stubbed out:
our server (``measure_ours``, ``measure_worker_counts``), a naive server written the way Ray's
parameter-server example does it (``measure_naive``), the server's own passes without Ray
(``server_passes``) and this machine's memory-copy bandwidth. ``bench`` and its sections
``efficiency`` and ``real_sizes`` build on these.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Optional, Sequence

import numpy as np
import ray
import torch
from torch import nn

from ps_trainer.config import Config, config_from_dict
from ps_trainer.core.params import FlatModel, ShardLayout, plan_pieces
from ps_trainer.core.protocol import PushStats
from ps_trainer.core.runtime import huge_page_zeros, set_threads
from ps_trainer.core.shards import TRUNK_SHARD, head_shard
from ps_trainer.core.store import make_store
from ps_trainer.transport.client import ParameterClient
from ps_trainer.transport.push_buffers import SUPPORTED as SHARED_PUSHES, PushBuffers
from ps_trainer.transport.server import ParameterServer

log = logging.getLogger(__name__)
TASK = "bench"
_TENSORS_PER_TRUNK = 64     # a trunk is many tensors (conv weights); the naive server pays per tensor
# Object store for the bench's own Ray: room for a 25M trunk's pushes and published versions,
# and no more (a much larger store costs page faults on every transfer; docs/performance.md).
# The real_sizes section sizes it for its own runs (object_store_bytes).
OBJECT_STORE_BYTES = 1 << 30
# The server's optimizer by name: a learning rate small enough that weights stay finite.
_OPTIMIZERS = {"sgd": {"name": "sgd", "lr": 1e-6, "momentum": 0.9, "weight_decay": 0.0,
                       "schedule": "constant"},
               "adamw": {"name": "adamw", "lr": 1e-6, "schedule": "constant"}}


# --------------------------------------------------------------------------- the stub model

class StubTrunk(nn.Module):
    """`params` parameters in `_TENSORS_PER_TRUNK` tensors, under the "trunk." prefix."""

    def __init__(self, params: int):
        super().__init__()
        sizes = np.full(_TENSORS_PER_TRUNK, params // _TENSORS_PER_TRUNK)
        sizes[-1] += params - sizes.sum()
        self.trunk = nn.ParameterList([nn.Parameter(torch.randn(int(n)) * 0.01) for n in sizes])
        self.head = nn.Parameter(torch.zeros(1000))


def _shard(name: str) -> str:
    return TRUNK_SHARD if name.startswith("trunk.") else head_shard(TASK)


def bench_config(actors: int = 1, grad_dtype: str = "float32", verify: bool = True,
                 inflight: int = 2, pushes: str = "shared_memory",
                 optimizer: str = "sgd") -> Config:
    return config_from_dict({
        "optimizer": _OPTIMIZERS[optimizer],
        "server": {"actors": actors, "num_cpus": 0.5, "grad_dtype": grad_dtype,
                   "max_staleness_updates": 1_000_000, "verify_gradients": verify,
                   "same_node_pushes": pushes},
        "tasks": {TASK: {"workers": 1, "inflight": inflight}},
        "metrics": {"enabled": False}})


def _flat(params: int) -> FlatModel:
    model = StubTrunk(params)
    return FlatModel(model, ShardLayout.of(model, _shard))


def _private_bytes() -> int:
    """Resident memory minus shared pages: the object store is shared memory that a process
    maps page by page as objects land, which plain RSS would count as growth."""
    with open("/proc/self/statm") as f:
        _, resident, shared = (int(v) for v in f.read().split()[:3])
    return (resident - shared) * os.sysconf("SC_PAGE_SIZE")


def _memory_bytes() -> dict:
    """This process's private memory, resident memory (RSS: shared pages it touched count,
    object-store pages among them) and the peak RSS since it started."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
    kib = {k: int(v.split()[0]) * 1024 for k, v in fields.items()}
    return {"private": _private_bytes(), "resident": kib["VmRSS"], "peak_resident": kib["VmHWM"]}


class StubWorker:
    """A worker whose step is free: pull (prefetched) -> push fixed gradients, through the
    real ParameterClient, so only the protocol and the server are measured."""

    def __init__(self, cfg: Config, servers: list, plan, params: int):
        set_threads(1)
        self.flat = _flat(params)
        for grad in self.flat.grads.values():
            grad.normal_(0, 1e-3)
        self.client = ParameterClient(servers, plan, self.flat, cfg.tasks[TASK].inflight,
                                      cfg.server.grad_dtype,
                                      report_norm=not cfg.server.verify_gradients,
                                      shared_memory=cfg.server.same_node_pushes == "shared_memory")
        self.stats = PushStats(loss=1.0, shared_grad_norm=1.0)

    def run(self, updates: int, memory_every: int = 0, step_s: float = 0.0) -> dict:
        """`updates` pushes; `step_s` > 0 waits that long per step, as a worker whose compute
        runs on an accelerator (the host CPU is free meanwhile)."""
        self.client.connect()
        memory = []
        start = time.perf_counter()
        for i in range(updates):
            self.client.refresh()
            if step_s:
                time.sleep(step_s)
            self.client.push(TASK, 0, self.stats)
            if memory_every and i % memory_every == 0:
                memory.append((i, _private_bytes()))
        self.client.drain()
        c = self.client
        return {"seconds": time.perf_counter() - start, "updates": updates, "memory": memory,
                "pulled_bytes": c.pulled_bytes, "pushed_bytes": c.pushed_bytes,
                "shared_links": c.shared_links,
                "pull_s": c.pull_seconds, "push_s": c.push_seconds, "wait_s": c.wait_seconds}

    def reset(self) -> None:
        """Zero the client's counters (after the warm-up)."""
        self.client.reset_counters()


class BenchServer(ParameterServer):
    """The real server, plus what the benchmark reads of it: private memory, the time its
    pushes (check + weight + apply) and publishes took, from its own Prometheus histograms,
    and the CPU time of its process (every thread: Ray's calls as well as the passes)."""

    def private_bytes(self) -> int:
        return _private_bytes()

    def memory_bytes(self) -> dict:
        return _memory_bytes()

    def seconds_spent(self) -> dict:
        out = {}
        for family in self._metrics.registry.collect():
            for sample in family.samples:
                if sample.name in ("ps_apply_seconds_sum", "ps_publish_seconds_sum"):
                    out[sample.name.split("_")[1]] = sample.value
        times = os.times()
        out["cpu"] = times.user + times.system
        return out


def start_stubs(cfg: Config, params: int, workers: int):
    flat = _flat(params)
    plan = plan_pieces(flat.layout, cfg.server.actors)
    arrays = flat.param_arrays()
    keys = {TASK: tuple(p.key for p in plan)}
    def server(i, peers=()):
        return ray.remote(BenchServer).options(num_cpus=0.5 / cfg.server.actors).remote(
            cfg, i, {p.key: arrays[p.shard][p.start:p.stop] for p in plan if p.server == i}, keys,
            peers=list(peers))

    others = [server(i) for i in range(1, cfg.server.actors)]
    servers = [server(0, others), *others]       # actor 0 sends its decisions to the others
    stubs = [ray.remote(StubWorker).options(num_cpus=0.01).remote(cfg, servers, plan, params)
             for _ in range(workers)]
    ray.get([s.ping.remote() for s in servers])
    return servers, stubs


def kill_actors(*groups) -> None:
    for group in groups:
        for actor in group:
            ray.kill(actor)


def warmup_updates(params: int, objects_per_update: int = 2) -> int:
    """Updates before timing: enough for fresh actor processes to have touched (page-faulted)
    the object store's pages twice over, so that the timing shows the steady state. An update
    puts `objects_per_update` trunk-sized objects there: the published version, and the push
    unless it went through shared memory."""
    store = OBJECT_STORE_BYTES
    if ray.is_initialized():
        store = int(ray.available_resources().get("object_store_memory", store))
    return int(min(max(10, 2 * store // (4 * params * objects_per_update)), 400))


def measure_ours(params: int, updates: int, workers: int = 1, actors: int = 1,
                 grad_dtype: str = "float32", verify: bool = True, step_s: float = 0.0,
                 inflight: int = 2, warmup: Optional[int] = None,
                 pushes: str = "shared_memory", optimizer: str = "sgd") -> dict:
    """Updates/s and bytes/s of the real server with `workers` stub workers (each step a
    wait of `step_s`), where the time of one update goes (ms per update, averaged), each
    server actor's CPU time per update, and server actor 0's memory after the warm-up and
    after the timed updates."""
    cfg = bench_config(actors, grad_dtype, verify, inflight, pushes, optimizer)
    servers, stubs = start_stubs(cfg, params, workers)
    try:
        shared = pushes == "shared_memory" and grad_dtype == "float32" and SHARED_PUSHES
        warm = warmup_updates(params, 1 if shared else 2) if warmup is None else warmup
        ray.get([w.run.remote(warm, 0, step_s) for w in stubs])
        ray.get([w.reset.remote() for w in stubs])
        memory_before = ray.get(servers[0].memory_bytes.remote())
        before = ray.get([s.seconds_spent.remote() for s in servers])
        start = time.perf_counter()
        results = ray.get([w.run.remote(updates, 0, step_s) for w in stubs])
        seconds = time.perf_counter() - start
        after = ray.get([s.seconds_spent.remote() for s in servers])
        memory_after = ray.get(servers[0].memory_bytes.remote())
    finally:
        kill_actors(stubs, servers)
    moved = sum(r["pulled_bytes"] + r["pushed_bytes"] for r in results)
    total = updates * workers
    per_update = lambda v: round(1000 * v / total, 3)                # noqa: E731
    spent = {k: sum(a[k] - b[k] for a, b in zip(after, before)) for k in ("apply", "publish")}
    breakdown = {"server_apply_ms": per_update(spent["apply"]),
                 "server_publish_ms": per_update(spent["publish"]),
                 **{f"worker_{k}_ms": per_update(sum(r[f"{k}_s"] for r in results))
                    for k in ("push", "pull", "wait")}}
    return {"updates_per_s": total / seconds, "mb_per_s": moved / seconds / 1e6,
            "seconds_per_update": seconds / total, "breakdown": breakdown,
            "server_cpu_ms": [per_update(a["cpu"] - b["cpu"]) for a, b in zip(after, before)],
            "shared_memory_pushes": all(r["shared_links"] for r in results),
            "optimizer": optimizer, "server_memory": {"before": memory_before,
                                                      "after": memory_after}}


def measure_worker_counts(params: int, updates: int, workers: Sequence[int], step_s: float,
                          optimizer: str = "sgd", warmup: int = 3) -> dict[int, float]:
    """Updates/s with each number in `workers` of stub workers (`updates` each, each step a
    wait of `step_s`, one push in flight), timed in turn on one server and one set of
    max(workers) stubs: starting the actors takes longer than the timing."""
    cfg = bench_config(inflight=1, optimizer=optimizer)
    servers, stubs = start_stubs(cfg, params, max(workers))
    try:
        ray.get([w.run.remote(warmup, 0, step_s) for w in stubs])
        rates = {}
        for n in workers:
            start = time.perf_counter()
            ray.get([w.run.remote(updates, 0, step_s) for w in stubs[:n]])
            rates[n] = n * updates / (time.perf_counter() - start)
    finally:
        kill_actors(stubs, servers)
    return rates


# --------------------------------------------------------------------------- the naive server

class NaiveModel(nn.Module):
    def __init__(self, params: int):
        super().__init__()
        self.inner = StubTrunk(params)

    def get_weights(self) -> dict:
        return {k: v.cpu() for k, v in self.state_dict().items()}

    def set_weights(self, weights: dict) -> None:
        self.load_state_dict(weights)


class NaiveServer:
    """Ray's documented parameter server: apply the gradients, return the state_dict."""

    def __init__(self, params: int):
        torch.set_num_threads(1)
        self.model = NaiveModel(params)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-6, momentum=0.9)

    def apply_gradients(self, *gradients):
        summed = [np.stack(g).sum(axis=0) for g in zip(*gradients)]
        self.optimizer.zero_grad()
        for p, g in zip(self.model.parameters(), summed):
            p.grad = torch.from_numpy(g)
        self.optimizer.step()
        return self.model.get_weights()

    def get_weights(self):
        return self.model.get_weights()


class NaiveWorker:
    """Sets the weights it is sent and returns its gradients (compute stubbed, as ours)."""

    def __init__(self, params: int):
        torch.set_num_threads(1)
        self.model = NaiveModel(params)
        self.grads = [np.random.default_rng(0).normal(0, 1e-3, p.shape).astype(np.float32)
                      for p in self.model.parameters()]

    def compute_gradients(self, weights):
        self.model.set_weights(weights)
        return self.grads


def measure_naive(params: int, updates: int, workers: int = 1,
                  warmup: Optional[int] = None) -> dict:
    """The asynchronous loop of Ray's parameter-server example, driver in the loop."""
    server = ray.remote(NaiveServer).options(num_cpus=0.5).remote(params)
    stubs = [ray.remote(NaiveWorker).options(num_cpus=0.01).remote(params) for _ in range(workers)]
    try:
        weights = server.get_weights.remote()
        for _ in range(warmup_updates(params) if warmup is None else warmup):
            weights = server.apply_gradients.remote(stubs[0].compute_gradients.remote(weights))
        ray.get(weights)
        start = time.perf_counter()
        pending = {w.compute_gradients.remote(weights): w for w in stubs}
        for _ in range(updates * workers):
            ready, _ = ray.wait(list(pending))
            worker = pending.pop(ready[0])
            weights = server.apply_gradients.remote(ready[0])
            pending[worker.compute_gradients.remote(weights)] = worker
        ray.get(list(pending))
        seconds = time.perf_counter() - start
    finally:
        kill_actors(stubs, [server])
    return {"updates_per_s": updates * workers / seconds, "seconds_per_update":
            seconds / (updates * workers)}


# --------------------------------------------------------------------------- the parts

def memcpy_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Bytes per second of one large np.copyto on this machine (best of `repeats`)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return nbytes / best


def server_passes(params: int, repeats: int = 21, optimizer: str = "sgd") -> dict:
    """The server's own work on one update, without Ray, in this process on one thread (ms,
    median of `repeats`): the real store's check + apply of one push with `optimizer` (a
    gradient in a shared push buffer, as from a worker on the node), the norm pass alone,
    and one copy of the weights into memory already mapped, the least a publish can cost.
    Each also as CPU time of this thread (``*_cpu_ms``): on a loaded machine the wall time
    includes waiting for a core. The process's torch threads are as before afterwards
    (later sections time the local loop here)."""
    cpu = {}

    def median_ms(name: str, work) -> float:
        work()                                          # first touch of every page
        wall_s, cpu_s = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.thread_time()
            work()
            cpu_s.append(time.thread_time() - start_cpu)
            wall_s.append(time.perf_counter() - start)
        cpu[f"{name}_cpu_ms"] = 1000 * float(np.median(cpu_s))
        return 1000 * float(np.median(wall_s))

    threads = torch.get_num_threads()
    set_threads(1)
    buffers = None
    try:
        cfg = bench_config(optimizer=optimizer)
        weights = {"trunk": huge_page_zeros(params)}
        store = make_store(cfg, weights, {TASK: ("trunk",)})
        buffers = PushBuffers({"trunk": params}, 1) if SHARED_PUSHES else None
        grad = buffers.views[0]["trunk"] if buffers else torch.empty(params)
        grad.normal_(0, 1e-3)
        published = torch.empty(params)
        stats = PushStats(loss=1.0, shared_grad_norm=1.0)
        out = {"apply_ms": median_ms("apply", lambda: store.push(
                   TASK, store.version, {"trunk": grad}, stats)),
               "norm_ms": median_ms("norm", lambda: store.part_norm2({"trunk": grad}, stats)),
               "copy_ms": median_ms("copy", lambda: published.copy_(weights["trunk"]))}
    finally:
        if buffers:
            buffers.close()
        torch.set_num_threads(threads)
    out["total_ms"] = out["apply_ms"] + out["copy_ms"]
    out.update(cpu, total_cpu_ms=cpu["apply_cpu_ms"] + cpu["copy_cpu_ms"], optimizer=optimizer)
    return out
