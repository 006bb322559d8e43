"""``ps-trainer bench``: how fast the parameter server is, measured side by side in one run.

    ps-trainer bench --quick --out bench.json     # under 2 minutes: a smoke test
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

Ratios hold across machines; absolute figures only on the same machine. The stub workers and
servers the sections time are in ``throughput.py``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import ray
import torch

from ps_trainer.tools import data_bench, efficiency, real_sizes
from ps_trainer.tools.throughput import (OBJECT_STORE_BYTES, bench_config, kill_actors, measure_naive,
                                         measure_ours, memcpy_bandwidth, server_passes, start_stubs)

log = logging.getLogger(__name__)
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
    cfg = bench_config()
    servers, stubs = start_stubs(cfg, plan.memory_params, 1)
    try:
        every = max(plan.memory_updates // 20, 1)
        warm = min(plan.memory_updates // 10, 2000)
        ray.get(stubs[0].run.remote(warm))
        server_before = ray.get(servers[0].private_bytes.remote())
        result = ray.get(stubs[0].run.remote(plan.memory_updates, every))
        server_after = ray.get(servers[0].private_bytes.remote())
    finally:
        kill_actors(stubs, servers)
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
