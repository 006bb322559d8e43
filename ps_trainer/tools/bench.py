"""``ps-trainer bench``: how fast the parameter server is, measured side by side in one run.

    ps-trainer bench --quick --out bench.json     # under a minute: a smoke test
    ps-trainer bench --out bench.json             # the full table (tens of minutes on 2 cores)

1. Round trip (pull + push + apply) for trunks of ~1M, ~11M and ~25M parameters, with the
   compute stubbed out: our server vs. the memory-copy floor (the bytes that must move, one
   trunk each way, over this machine's measured memcpy bandwidth) and vs. a naive server
   written the way Ray's parameter-server example does it (torch state_dict pickled per
   call, the driver in the loop). Beside it, the server's own passes for one update timed
   without Ray (check + apply, one copy for the publish): the part of the ratio that is the
   update's memory traffic rather than Ray's cost per call.
2. Scaling: total updates/s with 1, 2, 4, 8 stub workers, and with 1..n server actors.
3. End to end: time for the quickstart model to reach a target mIoU, asynchronous runtime
   vs. the single-process synchronous loop.
4. Memory: resident memory of the server and a worker over a long run of updates.
5. Hardware efficiency (emulated accelerator-bound workers) and statistical efficiency
   (mIoU against updates, synchronous loop vs. asynchronous runtime): see ``efficiency.py``.
6. Real sizes (``--sections real_sizes``, not part of the default run): ResNet-50 and
   ResNet-101 trunks with AdamW, and how many GPU workers one server actor feeds: see
   ``real_sizes.py``.
7. Data: images/s from 2048 x 1024 PNGs to 512 x 1024 crops with 0, 1, 2 loader processes,
   the time a step waits for its batch, memory per process: see ``data_bench.py``.

``--sections trunks,scaling,memory,end_to_end,hardware,statistical,real_sizes,data`` runs a
subset (the default: every section but real_sizes). Every row names the optimizer the server
ran (SGD with momentum 0.9 unless it says otherwise).

Ratios hold across machines; absolute figures only on the same machine.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import ray
import torch
from torch import nn

from ps_trainer.tools import data_bench, efficiency, real_sizes
from ps_trainer.transport.client import ParameterClient
from ps_trainer.config import Config, config_from_dict
from ps_trainer.core.params import FlatModel, ShardLayout, plan_pieces
from ps_trainer.core.protocol import PushStats
from ps_trainer.transport.push_buffers import SUPPORTED as SHARED_PUSHES, PushBuffers
from ps_trainer.core.runtime import huge_page_zeros, set_threads
from ps_trainer.transport.server import ParameterServer
from ps_trainer.core.shards import TRUNK_SHARD, head_shard
from ps_trainer.core.store import make_store

log = logging.getLogger(__name__)
TASK = "bench"
_TENSORS_PER_TRUNK = 64     # a trunk is many tensors (conv weights); the naive server pays per tensor
# Object store for the bench's own Ray: room for a 25M trunk's pushes and published versions,
# and no more (a much larger store costs page faults on every transfer; README, "Performance").
# The real_sizes section sizes it for its own runs (object_store_bytes).
OBJECT_STORE_BYTES = 1 << 30
# The server's optimizer by name: a learning rate small enough that weights stay finite.
_OPTIMIZERS = {"sgd": {"name": "sgd", "lr": 1e-6, "momentum": 0.9, "weight_decay": 0.0,
                       "schedule": "constant"},
               "adamw": {"name": "adamw", "lr": 1e-6, "schedule": "constant"}}


SECTIONS = ("trunks", "scaling", "memory", "end_to_end", "hardware", "statistical", "real_sizes",
            "data")
# What a plain `ps-trainer bench` runs: real_sizes adds minutes and a larger object store.
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s != "real_sizes")
# --quick's statistical section: the quickstart shrunk to seconds (a smoke test of the section).
_TINY_RUN = ("data.image_size=32", "data.unlabelled=64", "data.val=16", "model.widths=[8,16]",
             "model.blocks=[1,1]", "tasks.self_training.options.rampup_steps=10")


@dataclass(frozen=True)
class BenchPlan:
    """What to measure; --quick shrinks every part."""
    trunk_params: tuple[int, ...] = (1_000_000, 11_000_000, 25_000_000)
    updates: tuple[int, ...] = (600, 200, 100)       # per trunk size, per worker
    # Updates before each timing of the round trip and scaling; None: enough for the steady
    # state (warmup_updates()). --quick, a smoke test, needs no steady state.
    warmup: Optional[int] = None
    scaling_workers: tuple[int, ...] = (1, 2, 4, 8)
    scaling_actors: tuple[int, ...] = (1, 2, 4)
    scaling_params: int = 1_000_000
    scaling_updates: int = 200
    memory_updates: int = 20_000
    memory_params: int = 1_000_000
    end_to_end: bool = True
    target_miou: float = 0.37
    end_to_end_config: str = "configs/quickstart.yaml"
    end_to_end_seeds: tuple[int, ...] = (0, 1, 2)
    # hardware efficiency: stub workers whose step is a wait (an accelerator step)
    hardware_params: tuple[int, ...] = (1_000_000, 11_000_000, 25_000_000)
    hardware_workers: tuple[int, ...] = (1, 2, 4, 8)
    hardware_actors: tuple[int, ...] = (1, 2, 4)
    hardware_step_s: float = 0.025
    hardware_updates: int = 30                       # per worker
    # statistical efficiency: the quickstart, local vs. async with these workers per task
    statistical_config: str = "configs/quickstart.yaml"
    statistical_workers: tuple[int, ...] = (1, 2, 4)
    statistical_updates: int = 1200
    statistical_evals: int = 6
    statistical_target: float = 0.33                 # reached by the quickstart within the budget
    statistical_extra: tuple[str, ...] = ()
    real_sizes: real_sizes.RealSizesPlan = real_sizes.RealSizesPlan()
    data: data_bench.DataBenchPlan = data_bench.DataBenchPlan()
    sections: tuple[str, ...] = DEFAULT_SECTIONS

    @classmethod
    def quick(cls) -> "BenchPlan":
        return cls(trunk_params=(1_000_000,), updates=(100,), warmup=10, scaling_workers=(1, 2),
                   scaling_actors=(1, 2), scaling_updates=60, memory_updates=1_000,
                   end_to_end=False, hardware_params=(1_000_000,), hardware_workers=(1, 2),
                   hardware_actors=(1, 2), hardware_step_s=0.05, hardware_updates=10,
                   statistical_workers=(1,), statistical_updates=120, statistical_evals=3,
                   statistical_extra=_TINY_RUN, real_sizes=real_sizes.RealSizesPlan.quick(),
                   data=data_bench.DataBenchPlan.quick())


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


def _bench_config(actors: int = 1, grad_dtype: str = "float32", verify: bool = True,
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


def _start(cfg: Config, params: int, workers: int):
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


def _kill(*groups) -> None:
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
    cfg = _bench_config(actors, grad_dtype, verify, inflight, pushes, optimizer)
    servers, stubs = _start(cfg, params, workers)
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
        _kill(stubs, servers)
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
    cfg = _bench_config(inflight=1, optimizer=optimizer)
    servers, stubs = _start(cfg, params, max(workers))
    try:
        ray.get([w.run.remote(warmup, 0, step_s) for w in stubs])
        rates = {}
        for n in workers:
            start = time.perf_counter()
            ray.get([w.run.remote(updates, 0, step_s) for w in stubs[:n]])
            rates[n] = n * updates / (time.perf_counter() - start)
    finally:
        _kill(stubs, servers)
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
        _kill(stubs, [server])
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
        cfg = _bench_config(optimizer=optimizer)
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


def round_trip(plan: BenchPlan, bandwidth: float) -> list[dict]:
    rows = []
    for params, updates in zip(plan.trunk_params, plan.updates):
        # The passes first, against a floor measured beside them: both are memory-bound, and
        # this machine's bandwidth moves over a bench run.
        passes = server_passes(params)
        passes_floor_s = 2 * 4 * params / memcpy_bandwidth()
        ours = measure_ours(params, updates, warmup=plan.warmup)
        naive = measure_naive(params, max(updates // 3, 5), warmup=plan.warmup)
        floor_s = 2 * 4 * params / bandwidth          # one fp32 trunk pulled, one pushed
        row = {"params": params, "updates_per_s": ours["updates_per_s"],
               "mb_per_s": ours["mb_per_s"], "naive_updates_per_s": naive["updates_per_s"],
               "speedup_vs_naive": ours["updates_per_s"] / naive["updates_per_s"],
               "floor_s": floor_s, "floor_ratio": ours["seconds_per_update"] / floor_s,
               "breakdown": ours["breakdown"], "server_passes": passes,
               "server_passes_floor_s": passes_floor_s,
               "server_passes_floor_ratio": passes["total_ms"] / 1000 / passes_floor_s,
               "shared_memory_pushes": ours["shared_memory_pushes"],
               "optimizer": ours["optimizer"]}
        bf16 = measure_ours(params, updates, grad_dtype="bfloat16", warmup=plan.warmup)
        row["bf16_updates_per_s"] = bf16["updates_per_s"]
        trusting = measure_ours(params, updates, verify=False, warmup=plan.warmup)
        row["unverified_updates_per_s"] = trusting["updates_per_s"]
        row["unverified_floor_ratio"] = trusting["seconds_per_update"] / floor_s
        objects = measure_ours(params, updates, pushes="object_store", warmup=plan.warmup)
        row["object_store_updates_per_s"] = objects["updates_per_s"]
        row["object_store_floor_ratio"] = objects["seconds_per_update"] / floor_s
        rows.append(row)
        log.info("trunk %.1fM: %.1f upd/s (%.0f MB/s), naive %.1f upd/s: %.1fx; floor ratio %.2f",
                 params / 1e6, row["updates_per_s"], row["mb_per_s"], row["naive_updates_per_s"],
                 row["speedup_vs_naive"], row["floor_ratio"])
    return rows


def scaling(plan: BenchPlan) -> list[dict]:
    rows = []
    for workers in plan.scaling_workers:
        r = measure_ours(plan.scaling_params, plan.scaling_updates, workers=workers,
                         warmup=plan.warmup)
        rows.append({"workers": workers, "server_actors": 1, "updates_per_s": r["updates_per_s"],
                     "optimizer": r["optimizer"]})
        log.info("scaling: %d workers, 1 server actor: %.1f upd/s", workers, r["updates_per_s"])
    workers = max(plan.scaling_workers)
    for actors in plan.scaling_actors:
        if actors == 1:
            continue
        r = measure_ours(plan.scaling_params, plan.scaling_updates, workers=workers, actors=actors,
                         warmup=plan.warmup)
        rows.append({"workers": workers, "server_actors": actors,
                     "updates_per_s": r["updates_per_s"], "optimizer": r["optimizer"]})
        log.info("scaling: %d workers, %d server actors: %.1f upd/s", workers, actors, r["updates_per_s"])
    return rows


def memory(plan: BenchPlan) -> dict:
    """Private memory of a server and a worker after warm-up and at the end of a long run."""
    cfg = _bench_config()
    servers, stubs = _start(cfg, plan.memory_params, 1)
    try:
        every = max(plan.memory_updates // 20, 1)
        warm = min(plan.memory_updates // 10, 2000)
        ray.get(stubs[0].run.remote(warm))
        server_before = ray.get(servers[0].private_bytes.remote())
        result = ray.get(stubs[0].run.remote(plan.memory_updates, every))
        server_after = ray.get(servers[0].private_bytes.remote())
    finally:
        _kill(stubs, servers)
    worker_before, worker_after = result["memory"][0][1], result["memory"][-1][1]
    out = {"updates": plan.memory_updates, "params": plan.memory_params,
           "optimizer": cfg.optimizer.name,
           "server_private_start_mb": server_before / 1e6,
           "server_private_end_mb": server_after / 1e6,
           "server_growth_mb": (server_after - server_before) / 1e6,
           "worker_private_start_mb": worker_before / 1e6,
           "worker_private_end_mb": worker_after / 1e6,
           "worker_growth_mb": (worker_after - worker_before) / 1e6}
    log.info("memory over %d updates: server %+.1f MB, worker %+.1f MB", plan.memory_updates,
             out["server_growth_mb"], out["worker_growth_mb"])
    return out


def object_store_bytes(plan: BenchPlan) -> int:
    """OBJECT_STORE_BYTES, or what the real_sizes section needs (in steps of 256 MiB) when it
    runs: a 42.5M trunk's published versions for 8 workers do not fit in 1 GiB."""
    if "real_sizes" not in plan.sections:
        return OBJECT_STORE_BYTES
    step = 256 << 20
    need = -(-plan.real_sizes.store_need_bytes() // step) * step
    return max(OBJECT_STORE_BYTES, need)


def run_bench(plan: BenchPlan, out: Optional[str] = None, scratch_dir: Optional[str] = None) -> dict:
    """Every section of `plan.sections` (a section not run is None in the report); the
    efficiency plots are written beside `out`, training runs into `scratch_dir` (default:
    <out>-runs beside `out`, else runs/bench)."""
    if scratch_dir is None:
        scratch_dir = str(Path(out).with_name(Path(out).stem + "-runs")) if out else "runs/bench"
    bandwidth = memcpy_bandwidth()
    # The data section needs no Ray: alone, it runs without one competing for the cores.
    started = not ray.is_initialized() and set(plan.sections) != {"data"}
    if started:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
                 object_store_memory=object_store_bytes(plan))
    store = (int(ray.available_resources().get("object_store_memory", OBJECT_STORE_BYTES))
             if ray.is_initialized() else OBJECT_STORE_BYTES)
    plots = Path(out).parent if out else Path(scratch_dir)
    stem = Path(out).stem if out else "bench"
    parts = {
        "trunks": lambda: round_trip(plan, bandwidth),
        "scaling": lambda: scaling(plan),
        "memory": lambda: memory(plan),
        "end_to_end": lambda: efficiency.time_to_target(
            plan.end_to_end_config, plan.target_miou, plan.end_to_end_seeds,
            f"{scratch_dir}/end_to_end") if plan.end_to_end else None,
        "hardware": lambda: efficiency.hardware_efficiency(
            plan.hardware_params, plan.hardware_workers, plan.hardware_actors,
            plan.hardware_step_s, plan.hardware_updates, store),
        "statistical": lambda: efficiency.statistical_efficiency(
            plan.statistical_config, plan.statistical_workers, plan.statistical_updates,
            plan.statistical_evals, f"{scratch_dir}/statistical", plan.statistical_target,
            plan.statistical_extra),
        "real_sizes": lambda: real_sizes.measure(plan.real_sizes, store),
        "data": lambda: data_bench.data_path(plan.data),
    }
    try:
        report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                              "torch": torch.__version__, "ray": ray.__version__},
                  "plan": dataclasses.asdict(plan), "memcpy_gb_per_s": bandwidth / 1e9}
        for name in SECTIONS:
            report[name] = parts[name]() if name in plan.sections else None
    finally:
        if started:
            ray.shutdown()
    if report["hardware"]:
        efficiency.plot_hardware(plots / f"{stem}-hardware.png", report["hardware"])
    if report["statistical"]:
        efficiency.plot_statistical(plots / f"{stem}-statistical.png", report["statistical"])
    if out:
        Path(out).write_text(json.dumps(report, indent=2))
    return report


def _format_trunks(rows: list[dict]) -> list[str]:
    """The round trip per trunk size as a table, then where an update's time goes."""
    lines = ["", "| trunk params | ours upd/s | MB/s | naive upd/s | speedup | floor ratio "
                 "| bf16 upd/s | unverified upd/s (floor ratio) "
                 "| object-store pushes upd/s (floor ratio) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['params'] / 1e6:.0f}M | {r['updates_per_s']:.1f} | "
                     f"{r['mb_per_s']:.0f} | {r['naive_updates_per_s']:.1f} | "
                     f"{r['speedup_vs_naive']:.1f}x | {r['floor_ratio']:.2f} | "
                     f"{r['bf16_updates_per_s']:.1f} | {r['unverified_updates_per_s']:.1f} "
                     f"({r['unverified_floor_ratio']:.2f}) | "
                     f"{r['object_store_updates_per_s']:.1f} "
                     f"({r['object_store_floor_ratio']:.2f}) |")
    lines.append(f"(optimizer: {_optimizers(rows)})")
    lines += ["", "where an update's time goes (ms per update): server apply / publish, "
                  "worker push / pull / wait"]
    for r in rows:
        b = r["breakdown"]
        p = r["server_passes"]
        lines.append(f"- {r['params'] / 1e6:.0f}M: server {b['server_apply_ms']} / "
                     f"{b['server_publish_ms']}, worker {b['worker_push_ms']} / "
                     f"{b['worker_pull_ms']} / {b['worker_wait_ms']}; the server's passes "
                     f"without Ray: check + apply {p['apply_ms']:.2f} (norm "
                     f"{p['norm_ms']:.2f}) + copy {p['copy_ms']:.2f} = "
                     f"{r['server_passes_floor_ratio']:.2f}x the floor")
    return lines


def format_report(report: dict) -> str:
    lines = [f"memcpy {report['memcpy_gb_per_s']:.2f} GB/s on {report['machine']['cpus']} CPUs"]
    if report.get("trunks"):
        lines += _format_trunks(report["trunks"])
    if report.get("scaling"):
        lines += ["", f"scaling (optimizer: {_optimizers(report['scaling'])}):",
                  "| workers | server actors | upd/s |", "|---:|---:|---:|"]
        lines += [f"| {r['workers']} | {r['server_actors']} | {r['updates_per_s']:.1f} |"
                  for r in report["scaling"]]
    m = report.get("memory")
    if m:
        lines += ["", f"memory over {m['updates']} updates ({m['params'] / 1e6:.0f}M params): "
                      f"private memory of the server {m['server_private_start_mb']:.0f} -> "
                      f"{m['server_private_end_mb']:.0f} MB ({m['server_growth_mb']:+.1f}; "
                      f"optimizer {m['optimizer']}), of a "
                      f"worker {m['worker_private_start_mb']:.0f} -> "
                      f"{m['worker_private_end_mb']:.0f} MB ({m['worker_growth_mb']:+.1f})"]
    e = report.get("end_to_end")
    if e:
        lines += format_time_to_target(e)
    if report.get("hardware"):
        lines += ["", "hardware efficiency (emulated accelerator step of "
                      f"{1000 * report['hardware'][0]['step_s']:.0f} ms; ideal = workers / step; "
                      f"optimizer: {_optimizers(report['hardware'])}):",
                  "| params | server actors | workers | upd/s | ideal | efficiency |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['params'] / 1e6:.0f}M | {r['server_actors']} | {r['workers']} | "
                  f"{r['updates_per_s']:.1f} | {r['ideal_updates_per_s']:.1f} | "
                  f"{r['efficiency']:.0%} |" for r in report["hardware"]]
    if report.get("data"):
        lines += data_bench.format_data(report["data"])
    st = report.get("statistical")
    if st:
        lines += ["", f"statistical efficiency ({st['updates']} updates, target mIoU "
                      f"{st['target_miou']}):",
                  "| run | mean staleness | final mIoU | updates to target | vs. local |",
                  "|---|---:|---:|---:|---:|"]
        for r in st["runs"]:
            name = "local" if r["mode"] == "local" else f"async x{r['workers_per_task']}/task"
            ratio = r["updates_ratio_vs_local"]
            final = r["final_miou"]
            lines.append(f"| {name} | {r['mean_staleness']:.1f} | "
                         f"{'-' if final is None else f'{final:.3f}'} | "
                         f"{r['updates_to_target'] or '-'} | "
                         f"{'-' if ratio is None else f'{ratio:.2f}'} |")
    if report.get("real_sizes"):
        lines += real_sizes.format_section(report["real_sizes"])
    return "\n".join(lines)


def _optimizers(rows: list[dict]) -> str:
    return ", ".join(sorted({r["optimizer"] for r in rows}))


def format_time_to_target(e: dict) -> list[str]:
    """The end-to-end section as a table: a row per seed and mode, then the mean ratios."""
    lines = ["", f"time to mIoU {e['target_miou']:.2f} ({e['config']}):",
             "| seed | run | seconds | updates | staleness | updates/s |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in e["runs"]:
        seconds, updates = r["seconds_to_target"], r["updates_to_target"]
        lines.append(f"| {r['seed']} | {r['mode']} | "
                     f"{'not reached' if seconds is None else f'{seconds:.1f}'} | "
                     f"{updates or '-'} | {r['mean_staleness']:.1f} | {r['updates_per_s']:.1f} |")
    for what, name in (("seconds_ratio", "time"), ("updates_ratio", "updates")):
        ratio = e[what]
        if ratio["mean"] is None:
            lines.append(f"distributed / local {name}: no seed reached the target in both")
            continue
        spread = "" if ratio["std"] is None else f" ± {ratio['std']:.2f}"
        lines.append(f"distributed / local {name}: {ratio['mean']:.2f}{spread} "
                     f"({ratio['seeds_reached']} of {ratio['seeds']} seeds reached it in both)")
    return lines
