"""The server at the sizes of real trunks, with AdamW, and how many GPU workers it feeds.

    ps-trainer bench --sections real_sizes --out real.json   # about 8 minutes on 2 cores
    ps-trainer bench --quick --sections real_sizes           # tiny sizes: a smoke test

For a ResNet-50 trunk (23,508,032 parameters: torchvision's ResNet-50 without its fc) and a
ResNet-101 trunk (42,500,160), `repeats` times each, with the same stub workers as the rest of
``ps-trainer bench`` (their compute is free or a wait; the pushes and pulls are real):

- the server's passes for one update without Ray: check + AdamW apply, one copy (publish);
- the round trip with one worker whose compute is free, so that the server is the bottleneck:
  pushes through shared memory (a worker on the server's node) and as objects (a worker on
  another node, less the network);
- emulated accelerator scaling: 1, 2, 4, 8 workers whose step is a wait of an assumed GPU
  step (one server and 8 workers started once, timed with 1, 2, 4 and then all 8 of them);
- server actor 0's memory over the round trip;
- each server actor's CPU time per update (its process, every thread), and on a trunk so
  small that its passes take no time, the fixed CPU cost of an update: one actor, then the
  model split over two (what actor 0's decision round adds, what the other actor spends).

From those, a model (:func:`feed_model`; a model, not a multi-node measurement) of the updates/s
that k server actors on separate nodes sustain and so how many GPU workers they feed: each
actor does 1/k of the passes and moves 1/k of the bytes, and pays the fixed cost per update;
actor 0 also sends its decision to each other actor. CPU time rather than wall time, since on
a shared machine an actor's wall time includes waiting for a core. The network caps it: each
actor's node receives a 1/k part of every push and sends a 1/k part of every pulled version.
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Optional, Sequence

log = logging.getLogger(__name__)

# torchvision's ResNet-50 and ResNet-101 without their fc: what `model.backbone` resnet50 and
# resnet101 train (tests/test_bench.py counts them on the real trunks).
RESNET50_TRUNK_PARAMS = 23_508_032
RESNET101_TRUNK_PARAMS = 42_500_160


@dataclass(frozen=True)
class TrunkSize:
    """One size to measure; `gpu_step_s` is an assumed step of a GPU worker (no GPU measured)."""
    name: str
    params: int
    gpu_step_s: float
    updates: int                    # timed updates of each round trip


@dataclass(frozen=True)
class RealSizesPlan:
    """What the real_sizes section measures. The GPU steps are assumptions: a ResNet-50 step
    at 512x512 on a current GPU takes about 0.15 s, a ResNet-101 step about 0.25 s."""
    sizes: tuple[TrunkSize, ...] = (TrunkSize("resnet50", RESNET50_TRUNK_PARAMS, 0.15, 60),
                                    TrunkSize("resnet101", RESNET101_TRUNK_PARAMS, 0.25, 40))
    optimizer: str = "adamw"
    repeats: int = 3
    # Updates before each round trip; None: enough for the steady state (warmup_updates()).
    warmup: Optional[int] = None
    workers: tuple[int, ...] = (1, 2, 4, 8)       # emulated accelerator scaling
    scaling_updates: int = 12                     # per worker
    probe_params: int = 100_000                   # Ray's fixed cost per update
    probe_updates: int = 200
    split_actors: tuple[int, ...] = (1, 2, 4, 8)  # the model's server actors
    nic_gbit_s: float = 100.0                     # the model's network, per node and direction

    @classmethod
    def quick(cls) -> "RealSizesPlan":
        return cls(sizes=(TrunkSize("tiny", 200_000, 0.02, 20),), repeats=1, warmup=5,
                   workers=(1, 2), scaling_updates=5, probe_updates=30, split_actors=(1, 2))

    def store_need_bytes(self) -> int:
        """The object store that every emulated scaling run fits in."""
        from ps_trainer.tools.efficiency import object_store_need_bytes

        return max(object_store_need_bytes(s.params, max(self.workers), 1, versions_per_worker=2)
                   for s in self.sizes)


def measure(plan: RealSizesPlan, store_bytes: int) -> dict:
    """Every figure `plan.repeats` times (the repeats interleaved, so that a slow minute of a
    shared machine does not land on one size), then mean ± std and the model."""
    runs = []
    for repeat in range(plan.repeats):
        probe = _probe(plan)
        sizes = [_measure_size(size, plan, store_bytes) for size in plan.sizes]
        runs.append({"probe": probe, "sizes": sizes})
        log.info("real sizes: repeat %d of %d done", repeat + 1, plan.repeats)
    fixed = {k: _stat([getattr(r["probe"], k) for r in runs])
             for k in ("call_ms", "decision_ms", "part_ms")}
    sizes = [_summarise(size, [r["sizes"][i] for r in runs], fixed, plan)
             for i, size in enumerate(plan.sizes)]
    return {"optimizer": plan.optimizer, "repeats": plan.repeats, "nic_gbit_s": plan.nic_gbit_s,
            "fixed": fixed, "sizes": sizes}


@dataclass(frozen=True)
class CallCosts:
    """A server actor's CPU time per update that does not grow with the trunk (ms)."""
    call_ms: float          # one actor: a push and a pull
    decision_ms: float      # what a split push adds to actor 0, per other actor
    part_ms: float          # another actor of a split model: a staged part, its commit, a pull


def _probe(plan: RealSizesPlan) -> CallCosts:
    """The fixed costs, on a trunk whose passes are negligible (pushes as objects, as from
    other nodes)."""
    from ps_trainer.tools.throughput import measure_ours

    cpu_ms = {}
    for actors in (1, 2):
        r = measure_ours(plan.probe_params, plan.probe_updates, actors=actors,
                         warmup=20 if plan.warmup is None else plan.warmup,
                         pushes="object_store", optimizer=plan.optimizer)
        cpu_ms[actors] = r["server_cpu_ms"]
    (single,), (first, other) = cpu_ms[1], cpu_ms[2]
    return CallCosts(single, max(first - single, 0.0), other)


def _measure_size(size: TrunkSize, plan: RealSizesPlan, store_bytes: int) -> dict:
    from ps_trainer.tools.throughput import measure_ours, measure_worker_counts, server_passes
    from ps_trainer.tools.efficiency import fits_object_store

    started = time.perf_counter()
    passes = server_passes(size.params, optimizer=plan.optimizer)
    shared = measure_ours(size.params, size.updates, warmup=plan.warmup,
                          optimizer=plan.optimizer)
    objects = measure_ours(size.params, size.updates, warmup=plan.warmup,
                           pushes="object_store", optimizer=plan.optimizer)
    fitting = [n for n in plan.workers
               if fits_object_store(size.params, n, 1, store_bytes, versions_per_worker=2)]
    if len(fitting) < len(plan.workers):
        log.info("real sizes: %s: %s workers skipped: exceed the object store", size.name,
                 sorted(set(plan.workers) - set(fitting)))
    scaling = measure_worker_counts(size.params, plan.scaling_updates, fitting, size.gpu_step_s,
                                    plan.optimizer) if fitting else {}
    log.info("real sizes: %s: passes %.1f ms, round trip %.1f upd/s (objects %.1f), scaling %s "
             "(%.0f s)", size.name, passes["total_ms"], shared["updates_per_s"],
             objects["updates_per_s"], {n: round(u, 1) for n, u in scaling.items()},
             time.perf_counter() - started)
    return {"passes": passes, "shared": shared, "objects": objects, "scaling": scaling}


def _summarise(size: TrunkSize, runs: list[dict], fixed: dict, plan: RealSizesPlan) -> dict:
    """One size's row: each figure's mean ± std over the repeats, and the model."""
    def stat(get) -> dict:
        return _stat([get(r) for r in runs])

    passes = {k: stat(lambda r, k=k: r["passes"][k])
              for k in ("apply_ms", "norm_ms", "copy_ms", "total_ms", "apply_cpu_ms",
                        "copy_cpu_ms", "total_cpu_ms")}
    memory = {k: stat(lambda r, k=k: r["shared"]["server_memory"][when][what] / 1e6)
              for k, when, what in (("private_start_mb", "before", "private"),
                                    ("private_end_mb", "after", "private"),
                                    ("peak_resident_mb", "after", "peak_resident"))}
    round_trip = {}
    for pushes, key in (("shared_memory", "shared"), ("object_store", "objects")):
        round_trip[pushes] = {
            "updates_per_s": stat(lambda r: r[key]["updates_per_s"]),
            "server_ms": stat(lambda r: r[key]["breakdown"]["server_apply_ms"]
                              + r[key]["breakdown"]["server_publish_ms"]),
            "server_cpu_ms": stat(lambda r: r[key]["server_cpu_ms"][0]),
            "worker_wait_ms": stat(lambda r: r[key]["breakdown"]["worker_wait_ms"])}
    scaling = []
    for n in plan.workers:
        values = [r["scaling"][n] for r in runs if n in r["scaling"]]
        if values:
            ideal = n / size.gpu_step_s
            scaling.append({"workers": n, "updates_per_s": _stat(values),
                            "ideal_updates_per_s": ideal,
                            "efficiency": statistics.mean(values) / ideal})
    # The model starts from the round trip with pushes as objects: GPU workers on other nodes.
    costs = CallCosts(**{k: v["mean"] for k, v in fixed.items()})
    size_ms = max(round_trip["object_store"]["server_cpu_ms"]["mean"] - costs.call_ms, 0.0)
    split = feed_model(size_ms, costs, size.params, size.gpu_step_s, plan.split_actors,
                       plan.nic_gbit_s * 1e9 / 8)
    return {"name": size.name, "params": size.params, "gpu_step_s": size.gpu_step_s,
            "optimizer": plan.optimizer, "passes": passes, "round_trip": round_trip,
            "scaling": scaling, "server_memory": {**memory, "state_mb": 12 * size.params / 1e6},
            "workers_fed": {p: {"measured": rt["updates_per_s"]["mean"] * size.gpu_step_s,
                                "cpu": 1000 / rt["server_cpu_ms"]["mean"] * size.gpu_step_s}
                            for p, rt in round_trip.items()},
            "split": split}


def feed_model(size_ms: float, costs: CallCosts, params: int, gpu_step_s: float,
               actors: Sequence[int], nic_bytes_per_s: float) -> list[dict]:
    """Updates/s that k server actors on separate nodes sustain, and the GPU workers (one push
    per `gpu_step_s`) that feeds. One actor's update costs `costs.call_ms` plus `size_ms`
    (what grows with the trunk: the passes and the bytes); of k actors, each spends
    size_ms / k, actor 0 `call_ms` plus `decision_ms` per other actor, the others `part_ms`;
    the slowest sets the pace. Each node's network carries 4 * params / k bytes per update
    each way (its part of the push in, of the pulled version out)."""
    rows = []
    for k in actors:
        first_ms = costs.call_ms + (k - 1) * costs.decision_ms
        ms = max(first_ms, costs.part_ms if k > 1 else 0.0) + size_ms / k
        cpu_updates_per_s = 1000 / ms
        network_updates_per_s = nic_bytes_per_s * k / (4 * params)
        updates_per_s = min(cpu_updates_per_s, network_updates_per_s)
        rows.append({"actors": k, "ms_per_update": ms, "cpu_updates_per_s": cpu_updates_per_s,
                     "network_updates_per_s": network_updates_per_s,
                     "updates_per_s": updates_per_s, "workers_fed": updates_per_s * gpu_step_s})
    return rows


def _stat(values: Sequence[float]) -> dict:
    values = [float(v) for v in values]
    return {"mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


# --------------------------------------------------------------------------- the report

def _pm(s: dict, digits: int = 1) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def format_section(section: dict) -> list[str]:
    """The section as Markdown tables (docs/performance.md)."""
    sizes = section["sizes"]
    lines = ["", f"real sizes (optimizer {section['optimizer']}; mean ± std of "
                 f"{section['repeats']} repeats; shared memory / objects: how pushes came):",
             "| trunk | params | passes without Ray, CPU ms: check + apply / copy | server CPU "
             "ms per update | round trip upd/s | server private MB, start -> end | server "
             "peak RSS MB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in sizes:
        p, rt, m = s["passes"], s["round_trip"], s["server_memory"]
        both = lambda key: " / ".join(_pm(rt[k][key]) for k in rt)     # noqa: E731
        lines.append(f"| {s['name']} | {s['params'] / 1e6:.1f}M | {_pm(p['apply_cpu_ms'])} / "
                     f"{_pm(p['copy_cpu_ms'])} | {both('server_cpu_ms')} | "
                     f"{both('updates_per_s')} | {_pm(m['private_start_mb'], 0)} -> "
                     f"{_pm(m['private_end_mb'], 0)} | {_pm(m['peak_resident_mb'], 0)} |")
    lines += ["", "GPU workers one server actor feeds (upd/s x the assumed GPU step): as measured "
                  "here / from the server's CPU time alone",
              "| trunk | GPU step | shared memory | objects |", "|---|---:|---:|---:|"]
    for s in sizes:
        fed = {k: f"{v['measured']:.1f} / {v['cpu']:.1f}" for k, v in s["workers_fed"].items()}
        lines.append(f"| {s['name']} | {s['gpu_step_s']:.2f} s | {fed['shared_memory']} | "
                     f"{fed['object_store']} |")
    lines += _format_scaling(sizes)
    lines += _format_model(section)
    return lines


def _format_scaling(sizes: list[dict]) -> list[str]:
    workers = sorted({r["workers"] for s in sizes for r in s["scaling"]})
    lines = ["", "emulated accelerator scaling (each step a wait of the assumed GPU step; "
                 "upd/s, share of ideal):",
             "| trunk | step | " + " | ".join(f"{n} workers" for n in workers) + " |",
             "|---|---:|" + "---:|" * len(workers)]
    for s in sizes:
        cells = {r["workers"]: f"{_pm(r['updates_per_s'])} ({r['efficiency']:.0%})"
                 for r in s["scaling"]}
        lines.append(f"| {s['name']} | {s['gpu_step_s']:.2f} s | "
                     + " | ".join(cells.get(n, "skipped") for n in workers) + " |")
    return lines


def _format_model(section: dict) -> list[str]:
    fixed = section["fixed"]
    lines = ["", f"model for server actors on separate nodes ({section['nic_gbit_s']:.0f} Gbit/s "
                 "each; a model, not a measurement): a server actor's fixed CPU per update "
                 f"{_pm(fixed['call_ms'], 2)} ms; split, actor 0 adds "
                 f"{_pm(fixed['decision_ms'], 2)} ms per other actor, the others spend "
                 f"{_pm(fixed['part_ms'], 2)} ms",
             "| trunk | server actors | CPU ms per update | upd/s (CPU) | upd/s (network) | GPU "
             "workers fed |", "|---|---:|---:|---:|---:|---:|"]
    for s in section["sizes"]:
        for r in s["split"]:
            lines.append(f"| {s['name']} | {r['actors']} | {r['ms_per_update']:.1f} | "
                         f"{r['cpu_updates_per_s']:.1f} | {r['network_updates_per_s']:.0f} | "
                         f"{r['workers_fed']:.1f} |")
    return lines
