"""Where asynchrony pays: the two curves whose product is the time to a target mIoU.

- **Hardware efficiency** (:func:`hardware_efficiency`): updates/s that N workers deliver when
  their compute does not compete for the server's cores, the normal case with GPU workers.
  It is an *emulation*: each stub worker's step is a wait of ``step_s`` seconds (what a GPU
  step looks like to the host: the CPU is free meanwhile), and it pushes real gradients of a
  real model size through the real client and server. Compared with the ideal N / step_s.
- **Statistical efficiency** (:func:`statistical_efficiency`): validation mIoU against
  updates for the single-process synchronous loop and for the asynchronous runtime with
  1, 2, 4 workers per task (the same seed and update budget; staleness measured: it grows
  with the workers where they are time-sliced on shared cores, not where they take turns on
  compute slots), and the updates each needs to reach a target are reported as a ratio to the
  loop.
- **Time to a target** (:func:`time_to_target`): their product as a user meets it, the
  seconds the distributed run and the local loop take to reach a target mIoU on the same
  cores, on several seeds (the updates a seed needs vary by more than a factor of two).

All three are sections of ``ps-trainer bench`` (JSON) and write PNG plots beside the JSON.
"""
from __future__ import annotations

import logging
import shutil
import statistics
from pathlib import Path
from typing import Optional, Sequence

from ps_trainer.run.run_folder import RunFolder

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- hardware

def hardware_efficiency(params: Sequence[int], workers: Sequence[int], actors: Sequence[int],
                        step_s: float, updates: int, store_bytes: int) -> list[dict]:
    """Updates/s for each (params, server actors, workers) with accelerator-bound stub workers."""
    from ps_trainer.tools.throughput import measure_ours

    rows = []
    for size in params:
        for n_actors in actors:
            for n in workers:
                if not fits_object_store(size, n, n_actors, store_bytes):
                    log.info("hardware: %.0fM x %d workers skipped: exceeds the object store",
                             size / 1e6, n)
                    continue
                r = measure_ours(size, updates, workers=n, actors=n_actors, step_s=step_s,
                                 inflight=1, warmup=3)
                ideal = n / step_s
                rows.append({"params": size, "server_actors": n_actors, "workers": n, "step_s": step_s,
                             "updates_per_s": r["updates_per_s"], "ideal_updates_per_s": ideal,
                             "efficiency": r["updates_per_s"] / ideal,
                             "optimizer": r["optimizer"]})
                log.info("hardware: %.0fM, %d server actors, %d workers (step %.0f ms): "
                         "%.1f upd/s of %.1f ideal", size / 1e6, n_actors, n, 1000 * step_s,
                         r["updates_per_s"], ideal)
    return rows


def object_store_need_bytes(params: int, workers: int, actors: int,
                            versions_per_worker: int = 1) -> int:
    """The object store a run of `workers` stub workers needs, a fifth more for room, or Ray
    spills to disk: the server's published version (one per actor), and per worker
    `versions_per_worker` trunk-sized objects: a push in flight (`inflight` 1 here) or the
    version it adopted; 2 where a saturated server also keeps a newer prefetched version
    pinned for every worker (seen with 8 workers at 42.5M parameters)."""
    return int((workers * versions_per_worker + actors + 1) * 4 * params / 0.8)


def fits_object_store(params: int, workers: int, actors: int, store_bytes: int,
                      versions_per_worker: int = 1) -> bool:
    return object_store_need_bytes(params, workers, actors, versions_per_worker) <= store_bytes


def plot_hardware(path: Path, rows: list[dict]) -> None:
    plt = _pyplot()
    sizes = sorted({r["params"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.6), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        mine = [r for r in rows if r["params"] == size]
        workers = sorted({r["workers"] for r in mine})
        ax.plot(workers, [w / mine[0]["step_s"] for w in workers], "k--", label="ideal")
        for n_actors in sorted({r["server_actors"] for r in mine}):
            pts = sorted((r["workers"], r["updates_per_s"]) for r in mine if r["server_actors"] == n_actors)
            ax.plot(*zip(*pts), marker="o", label=f"{n_actors} server actor(s)")
        ax.set(xlabel="workers", ylabel="updates/s", xscale="log", yscale="log",
               title=f"{size / 1e6:.0f}M parameters")
        ax.set_xticks(workers, [str(w) for w in workers])
        ax.tick_params(axis="x", which="minor", labelbottom=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"hardware efficiency (emulated accelerator step of "
                 f"{1000 * rows[0]['step_s']:.0f} ms)")
    _save(fig, path)


# --------------------------------------------------------------------------- statistical

def statistical_efficiency(config: str, workers: Sequence[int], updates: int, evals: int,
                           out_dir: str, target: Optional[float], extra: Sequence[str] = ()
                           ) -> dict:
    """mIoU against updates: the local loop, then the runtime with `workers` per task."""
    from ps_trainer.run.launch import run_distributed, run_local
    from ps_trainer.run.config_gate import load_run_config

    shutil.rmtree(out_dir, ignore_errors=True)     # records append: start each bench afresh
    every = max(updates // evals, 1)
    base = [f"run.max_updates={updates}", "run.max_minutes=120", f"eval.every_updates={every}",
            "eval.every_s=1e9", "metrics.enabled=false", "run.progress_every_s=30", *extra]
    runs = []
    cfg = load_run_config(config, base + [f"run.out_dir={out_dir}/local"])
    run_local(cfg, overwrite=True)
    runs.append(_curve("local", 0, cfg.run.out_dir))
    probe = load_run_config(config, base)        # the tasks and their CPUs, once
    for n in workers:
        per_task = [f"tasks.{t}.workers={n}" for t in probe.task_names] + \
            [f"tasks.{t}.num_cpus={probe.tasks[t].num_cpus / n:.4g}" for t in probe.task_names]
        cfg = load_run_config(config, base + per_task + [f"run.out_dir={out_dir}/async-{n}",
                                                         f"run.name=bench-async-{n}"])
        run_distributed(cfg, overwrite=True)
        runs.append(_curve("async", n, cfg.run.out_dir))
    return {"config": config, "updates": updates, "target_miou": target,
            "runs": [_to_target(r, target, runs[0]) for r in runs]}


def _curve(mode: str, workers: int, run_dir: str) -> dict:
    records = [r for r in RunFolder(run_dir).records() if r.get("miou") is not None]
    staleness = [r["staleness"] for r in records if r.get("staleness") is not None]
    return {"mode": mode, "workers_per_task": workers,
            "curve": [[int(r["step"]), float(r["miou"])] for r in records],
            "mean_staleness": sum(staleness) / len(staleness) if staleness else 0.0,
            "final_miou": records[-1]["miou"] if records else None}


def _updates_to(curve: list, target: Optional[float]) -> Optional[int]:
    if target is None:
        return None
    return next((step for step, miou in curve if miou >= target), None)


def _to_target(run: dict, target: Optional[float], local: dict) -> dict:
    mine, ref = _updates_to(run["curve"], target), _updates_to(local["curve"], target)
    return {**run, "updates_to_target": mine,
            "updates_ratio_vs_local": (mine / ref) if mine and ref else None}


# --------------------------------------------------------------------------- time to target

def time_to_target(config: str, target: float, seeds: Sequence[int], out_dir: str,
                   extra: Sequence[str] = ()) -> dict:
    """Seconds and updates for `config` to reach `target` mIoU, distributed and ``--mode
    local``, per seed; evaluations every 5 s, so a time is known to within about 5 s."""
    from ps_trainer.run.launch import run_distributed, run_local
    from ps_trainer.run.config_gate import load_run_config

    shutil.rmtree(out_dir, ignore_errors=True)     # records append: start each bench afresh
    base = [f"run.target_miou={target}", "eval.every_s=5", "run.max_minutes=8",
            "metrics.enabled=false", "run.progress_every_s=30", *extra]
    runs = []
    for seed in seeds:
        for mode, runner in (("distributed", run_distributed), ("local", run_local)):
            cfg = load_run_config(config, base + [f"run.seed={seed}",
                                                  f"run.out_dir={out_dir}/{mode}-{seed}"])
            summary = runner(cfg)
            curve = _curve(mode, 0, cfg.run.out_dir)   # only its curve and staleness are kept
            runs.append({"mode": mode, "seed": seed,
                         "seconds_to_target": summary.reached_target_s,
                         "updates_to_target": _updates_to(curve["curve"], target),
                         "mean_staleness": curve["mean_staleness"],
                         "updates_per_s": summary.updates / max(summary.elapsed_s, 1e-9)})
            log.info("time to mIoU %.2f, %s, seed %d: %s s", target, mode, seed,
                     summary.reached_target_s)
    return summarise_time_to_target(config, target, runs)


def summarise_time_to_target(config: str, target: float, runs: list[dict]) -> dict:
    """Per seed, the distributed run's seconds and updates to the target as a ratio to the
    local loop's; their mean and standard deviation over the seeds where both reached it."""
    by = {(r["mode"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    out = {"config": config, "target_miou": target, "runs": runs, "per_seed": []}
    for seed in seeds:
        dist, local = by.get(("distributed", seed)), by.get(("local", seed))
        row = {"seed": seed}
        for what in ("seconds_to_target", "updates_to_target"):
            a, b = (dist or {}).get(what), (local or {}).get(what)
            row[what.split("_")[0] + "_ratio"] = a / b if a and b else None
        out["per_seed"].append(row)
    for what in ("seconds_ratio", "updates_ratio"):
        values = [row[what] for row in out["per_seed"] if row[what] is not None]
        out[what] = {"mean": statistics.mean(values) if values else None,
                     "std": statistics.stdev(values) if len(values) > 1 else None,
                     "seeds_reached": len(values), "seeds": len(seeds)}
    return out


def plot_statistical(path: Path, result: dict) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for run in result["runs"]:
        label = "local (synchronous)" if run["mode"] == "local" else \
            f"async, {run['workers_per_task']} worker(s)/task (staleness {run['mean_staleness']:.1f})"
        if run["curve"]:
            ax.plot(*zip(*run["curve"]), marker=".", label=label)
    if result.get("target_miou") is not None:
        ax.axhline(result["target_miou"], color="k", ls=":", lw=1, label="target")
    ax.set(xlabel="updates", ylabel="validation mIoU", title="statistical efficiency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


# --------------------------------------------------------------------------- plotting

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
