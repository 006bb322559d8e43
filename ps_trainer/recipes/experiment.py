"""Experiment grids (``ps-trainer experiment configs/experiments/<name>.yaml``).

A grid is named runs x seeds x label counts. A run picks pretext tasks from the base
config (none = the supervised-only baseline from a random trunk), a balancing method and
any overrides; each (run, seed) pretrains once, then fine-tunes on every label count
(see :mod:`ps_trainer.recipes.finetune`; ``finetune_set: ["finetune.unlabelled_tasks=[self_training]"]``
makes that semi-supervised). ``{seed}``, ``{labels}`` and ``{out}`` in ``finetune_set`` are
filled in per cell, so that a row can use an earlier row's fine-tuned model of the same seed
and N, e.g. as the fixed teacher of self-training in rounds (``semi.yaml``); so are they in
``trunk_from``, a checkpoint whose trunk the row fine-tunes from instead of its pretraining's
(a warm start from the previous round's model). A ``joint`` run
has no separate stages: its tasks train together with segmentation on the N labelled images
from the start, and its final mIoU is the row's. Results are appended to ``results.csv`` as
they come, so an interrupted grid resumes where it stopped; ``results.md`` (mean ± std over
seeds) and ``results.png`` summarise them. With ``test: true`` each row's final model is also
scored on the synthetic test images (``data.val_split: test``, a stream nothing is chosen on),
and ``results.md`` gives that table beside the validation one: choose settings on validation,
report test.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ps_trainer.core.checkpoint import CheckpointManager, load_checkpoint, saved_version
from ps_trainer.config import Config, ConfigError, FrozenDict, TaskConfig, read_yaml_mapping
from ps_trainer.recipes.finetune import finetune
from ps_trainer.run.config_gate import check_run_config, load_run_config
from ps_trainer.config.options import Options, build_dataclass, check, check_choice

log = logging.getLogger(__name__)
FIELDS = ("run", "tasks", "balancing", "seed", "labels", "miou", "test_miou", "pretrain_updates",
          "pretrain_s", "finetune_s")


@dataclass(frozen=True)
class RunSpec(Options):
    """One row of the grid."""
    name: str = ""
    tasks: tuple[str, ...] = ()              # pretext tasks from the base config; () = no pretraining
    balancing: str = "equal"
    balancing_options: FrozenDict = FrozenDict()
    set: tuple[str, ...] = ()                # overrides for pretraining and fine-tuning
    finetune_set: tuple[str, ...] = ()       # overrides for fine-tuning only; {seed}, {labels}
                                             # and {out} (the grid's out_dir) are filled in
    labels: tuple[int, ...] = ()             # replaces the grid's label counts for this run
    joint: bool = False                      # train tasks + segmentation together on N labels
    pretrain_from: str = ""                  # share this earlier run's pretraining (same tasks)
    trunk_from: str = ""                     # fine-tune from this checkpoint's trunk instead
                                             # (placeholders as in finetune_set): a warm start

    def __post_init__(self):
        check(bool(self.name) and "/" not in self.name, "name", self.name,
              "a non-empty name without '/'")
        check("segmentation" not in self.tasks, "tasks", self.tasks,
              "pretext tasks only (segmentation is what fine-tuning trains)")
        check(not (self.joint and self.trunk_from), "trunk_from", self.trunk_from,
              "not with joint: a joint row has no fine-tuning stage")


@dataclass(frozen=True)
class ExperimentConfig(Options):
    name: str = "experiment"
    base: str = ""                           # pretraining config, relative to this file
    out_dir: str = "runs/experiments"
    mode: str = "local"                      # pretraining: local | distributed
    seeds: tuple[int, ...] = (0,)
    labels: tuple[int, ...] = (16,)
    set: tuple[str, ...] = ()                # overrides for every run
    baseline: str = ""                       # run whose mIoU the table reports gains against
    ceiling: str = ""                        # run (e.g. all labels) that bounds the gain: the table
                                             # reports the share of the baseline-ceiling gap closed
    test: bool = False                       # also score each final model on the test images
    runs: tuple[RunSpec, ...] = field(default_factory=tuple)

    def __post_init__(self):
        check(bool(self.base), "base", self.base, "the path of the pretraining config")
        check_choice("mode", self.mode, ("local", "distributed"))
        check(len(self.seeds) > 0, "seeds", self.seeds, "at least one seed")
        check(all(n >= 1 for n in self.labels), "labels", self.labels, "counts >= 1")
        check(len(self.runs) > 0, "runs", self.runs, "at least one run")
        names = [r.name for r in self.runs]
        check(len(set(names)) == len(names), "runs", names, "unique run names")
        for i, run in enumerate(self.runs):
            if run.pretrain_from:
                donor = next((r for r in self.runs[:i] if r.name == run.pretrain_from), None)
                check(donor is not None and not run.joint and not donor.joint
                      and (donor.tasks, donor.balancing, donor.balancing_options, donor.set)
                      == (run.tasks, run.balancing, run.balancing_options, run.set),
                      f"runs[{i}].pretrain_from", run.pretrain_from,
                      "an earlier run with the same tasks, balancing and set (not joint)")
        check(not self.baseline or self.baseline in names, "baseline", self.baseline,
              f"one of the run names ({', '.join(names)})")
        check(not self.ceiling or (self.ceiling in names and self.baseline), "ceiling",
              self.ceiling, f"one of the run names ({', '.join(names)}), with a baseline")


def load_experiment(path: str | Path) -> tuple[ExperimentConfig, Path]:
    path = Path(path)
    return build_dataclass(ExperimentConfig, read_yaml_mapping(path, "experiment")), path.parent


class Experiment:
    """Runs a grid, appending to results.csv; :meth:`summarise` writes the table and plot."""

    def __init__(self, exp: ExperimentConfig, base_dir: Path, extra: tuple[str, ...] = ()):
        self.exp = exp
        self.base_path = (base_dir / exp.base).resolve()
        self.extra = tuple(extra)
        self.out = Path(exp.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results = self.out / "results.csv"
        self._check_runs()

    def _check_runs(self) -> None:
        """Fail before any training on a bad run: build every run's configs once."""
        for run in self.exp.runs:
            unknown = [t for t in run.tasks if t not in self._base(run.set).tasks]
            if unknown:
                raise ConfigError(f"runs.{run.name}.tasks", f"{unknown} are not in the base "
                                                            f"config {self.base_path}")
            if run.joint:
                check_run_config(self.joint_config(run, self.exp.seeds[0], self.exp.labels[0]))
            else:
                check_run_config(self.pretrain_config(run, self.exp.seeds[0]))
            self._base(self.finetune_overrides(run, self.exp.seeds[0], self.exp.labels[0]))
            self.trunk_path(run, self.exp.seeds[0], self.exp.labels[0])

    def _base(self, overrides=()) -> Config:
        return load_run_config(str(self.base_path), (*self.exp.set, *self.extra, *overrides))

    def finetune_overrides(self, run: RunSpec, seed: int, labels: int) -> tuple[str, ...]:
        """The run's overrides for fine-tuning on `labels` images with `seed`, e.g. an earlier
        row's fine-tuned checkpoint of the same cell as a fixed self-training teacher."""
        return (*run.set, *(self._fill(run, "finetune_set", o, seed, labels)
                            for o in run.finetune_set))

    def trunk_path(self, run: RunSpec, seed: int, labels: int) -> str:
        """The checkpoint whose trunk the cell fine-tunes from, when the row names one."""
        return self._fill(run, "trunk_from", run.trunk_from, seed, labels)

    def _fill(self, run: RunSpec, key: str, text: str, seed: int, labels: int) -> str:
        fill = {"seed": seed, "labels": labels, "out": str(self.out)}
        try:
            return text.format(**fill)
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"runs.{run.name}.{key}",
                              f"{err}: only {{seed}}, {{labels}} and {{out}} are filled in") from None

    def pretrain_config(self, run: RunSpec, seed: int) -> Config:
        tasks = run.tasks or tuple(t for t in self._base(run.set).tasks if t != "segmentation")[:1]
        owner = run.pretrain_from or run.name
        return self._config(run, seed, tasks, self.out / owner / f"seed-{seed}" / "pretrain",
                            owner)

    def joint_config(self, run: RunSpec, seed: int, labels: int) -> Config:
        """The run's tasks (none: a supervised baseline under the joint rows' schedule) and
        segmentation, trained together on `labels` labelled images."""
        cfg = self._config(run, seed, (*run.tasks, "segmentation"),
                           self.out / run.name / f"seed-{seed}" / f"joint-N{labels}", run.name)
        return cfg.replace(data=dataclasses.replace(cfg.data, labelled=labels))

    def _config(self, run: RunSpec, seed: int, tasks: tuple[str, ...], out: Path,
                owner: str) -> Config:
        base = self._base(run.set)
        kept = FrozenDict({t: base.tasks.get(t, TaskConfig()) for t in tasks
                           if t in base.tasks or t == "segmentation"})
        balancing = dataclasses.replace(base.balancing, method=run.balancing,
                                        options=run.balancing_options)
        return base.replace(
            tasks=kept, balancing=balancing,
            run=dataclasses.replace(base.run, seed=seed, out_dir=str(out),
                                    name=f"{self.exp.name}-{owner}-{seed}"))

    def run(self, only: Optional[tuple[str, ...]] = None,
            seeds: Optional[tuple[int, ...]] = None) -> Path:
        """Train the missing rows (of the runs named in `only` and the `seeds` given, or all),
        then summarise."""
        names = [r.name for r in self.exp.runs]
        unknown = sorted(set(only or ()) - set(names))
        if unknown:
            raise ConfigError("runs", f"{unknown} are not runs of this grid ({', '.join(names)})")
        if seeds is not None and not set(seeds) <= set(self.exp.seeds):
            raise ConfigError("seeds", f"{sorted(set(seeds) - set(self.exp.seeds))} are not seeds "
                                       f"of this grid {list(self.exp.seeds)}")
        done = self._done()
        for run in self.exp.runs:
            if only is not None and run.name not in only:
                continue
            for seed in (s for s in self.exp.seeds if seeds is None or s in seeds):
                labels = run.labels or self.exp.labels
                if all((run.name, seed, n) in done for n in labels):
                    continue
                if run.joint:
                    for n in labels:
                        if (run.name, seed, n) not in done:
                            self._joint(run, seed, n)
                    continue
                todo = [n for n in labels if (run.name, seed, n) not in done]
                # Earlier rows have finished, so a trunk_from file missing now is missing for
                # good: say so before pretraining, not after it.
                trunks = {n: self._trunk(run, seed, n) for n in todo} if run.trunk_from else {}
                checkpoint, pre_updates, pre_s = self._pretrain(run, seed)
                for n in todo:
                    self._finetune(run, seed, n, trunks.get(n, checkpoint), pre_updates, pre_s)
        return self.summarise()

    def _pretrain(self, run: RunSpec, seed: int):
        if not run.tasks:
            return None, 0, 0.0
        cfg = self.pretrain_config(run, seed)
        manager = CheckpointManager(Path(cfg.run.out_dir) / "checkpoints", cfg.eval.keep_last)
        latest = manager.latest()
        if latest and saved_version(latest[1]) >= cfg.run.max_updates:
            log.info("%s seed %d: reusing pretraining at %s", run.name, seed, latest[0])
            return latest[1], saved_version(latest[1]), float(latest[1].get("time_s", 0))
        start = time.monotonic()
        log.info("%s seed %d: pretraining %s (%s)", run.name, seed, ", ".join(run.tasks),
                 run.balancing)
        from ps_trainer.run.launch import run_distributed, run_local   # the launcher only to train

        # An unfinished pretraining of this cell is started again.
        summary = (run_local if self.exp.mode == "local" else run_distributed)(cfg,
                                                                               overwrite=True)
        if summary.error:             # an actor could not set itself up: its cause, not ours
            raise RuntimeError(f"{run.name} seed {seed}: pretraining failed: {summary.error}")
        latest = manager.latest()
        if latest is None:
            raise RuntimeError(f"{run.name} seed {seed}: pretraining left no valid checkpoint "
                               f"in {manager.directory}")
        return latest[1], saved_version(latest[1]), time.monotonic() - start

    def _trunk(self, run: RunSpec, seed: int, labels: int) -> dict:
        """The trunk_from checkpoint of a cell, loaded (a missing or corrupt file is named)."""
        path = self.trunk_path(run, seed, labels)
        log.info("%s seed %d, %d labels: fine-tuning from the trunk of %s", run.name, seed,
                 labels, path)
        return load_checkpoint(path)

    def _finetune(self, run: RunSpec, seed: int, labels: int, checkpoint, pre_updates, pre_s):
        base = self._base(self.finetune_overrides(run, seed, labels))
        out = self.out / run.name / f"seed-{seed}" / f"finetune-N{labels}"
        start = time.monotonic()
        summary = finetune(base, checkpoint, labels, str(out), seed, overwrite=True)
        self._record(run, seed, labels, summary.miou, pre_updates, pre_s,
                     time.monotonic() - start, self._test_miou(out))

    def _joint(self, run: RunSpec, seed: int, labels: int) -> None:
        cfg = self.joint_config(run, seed, labels)
        log.info("%s seed %d, %d labels: training %s jointly", run.name, seed, labels,
                 ", ".join(cfg.task_names))
        start = time.monotonic()
        from ps_trainer.run.launch import run_local

        summary = run_local(cfg, overwrite=True)      # an unfinished cell starts again
        if summary.error:
            raise RuntimeError(f"{run.name} seed {seed}: training failed: {summary.error}")
        self._record(run, seed, labels, summary.miou, summary.updates,
                     time.monotonic() - start, 0.0, self._test_miou(Path(cfg.run.out_dir)))

    def _test_miou(self, out: Path) -> Optional[float]:
        """The mIoU of the run's last checkpoint in `out` on the test images (with ``test``)."""
        if not self.exp.test:
            return None
        from ps_trainer.run.launch import evaluate_checkpoint

        steps = CheckpointManager(out / "checkpoints", 1).steps()
        if not steps:
            raise RuntimeError(f"no checkpoint in {out / 'checkpoints'} to score on the test "
                               f"images")
        return evaluate_checkpoint(str(steps[-1]), overrides=("data.val_split=test",)).miou

    def _record(self, run: RunSpec, seed: int, labels: int, miou: float, pre_updates: int,
                pre_s: float, finetune_s: float, test_miou: Optional[float] = None) -> None:
        tasks = "+".join(run.tasks) or "-"
        row = {"run": run.name, "tasks": f"{tasks} (joint)" if run.joint else tasks,
               "balancing": run.balancing, "seed": seed, "labels": labels,
               "miou": f"{miou:.4f}",
               "test_miou": "" if test_miou is None else f"{test_miou:.4f}",
               "pretrain_updates": pre_updates,
               "pretrain_s": f"{pre_s:.0f}", "finetune_s": f"{finetune_s:.0f}"}
        self._append(row)
        log.info("%s seed %d, %d labels: mIoU %.4f%s", run.name, seed, labels, miou,
                 "" if test_miou is None else f", test mIoU {test_miou:.4f}")

    def _append(self, row: dict) -> None:
        new = not self.results.exists()
        with open(self.results, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _done(self) -> set:
        return {(r["run"], int(r["seed"]), int(r["labels"])) for r in read_results(self.results)}

    def summarise(self) -> Path:
        rows = read_results(self.results)
        order = [r.name for r in self.exp.runs]
        table = summary_table(rows, order, self.exp.baseline, self.exp.ceiling)
        header = (f"# {self.exp.name}\n\nmIoU on the validation split, mean ± std over seeds "
                  f"{list(self.exp.seeds)}; base config `{self.exp.base}`.\n\n")
        tested = [r for r in rows if r.get("test_miou")]
        if tested:
            table += ("\n\nThe same models on the test images (nothing was chosen on them):"
                      "\n\n" + summary_table(tested, order, self.exp.baseline, self.exp.ceiling,
                                             key="test_miou"))
        (self.out / "results.md").write_text(header + table + "\n")
        plot_results(self.out / "results.png", rows, [r.name for r in self.exp.runs],
                     self.exp.name)
        return self.out


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def aggregate(rows: list[dict], key: str = "miou"
              ) -> dict[tuple[str, int], tuple[float, float, int]]:
    """(run, labels) -> (mean, sample std, count) of mIoU (the `key` column; rows without a
    value are left out)."""
    groups: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        if r.get(key):
            groups.setdefault((r["run"], int(r["labels"])), []).append(float(r[key]))
    out = {}
    for key, values in groups.items():
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) \
            if len(values) > 1 else 0.0
        out[key] = (mean, std, len(values))
    return out


def ceiling_miou(stats: dict, ceiling: str) -> float | None:
    """The ceiling run's mean mIoU (at its largest label count), or None."""
    counts = [n for run, n in stats if run == ceiling]
    return stats[(ceiling, max(counts))][0] if counts else None


def summary_table(rows: list[dict], order: list[str], baseline: str = "", ceiling: str = "",
                  key: str = "miou") -> str:
    """A Markdown table of the `key` column: one row per run, one column per label count (mean ±
    std over seeds, or "(1 run)"), plus gains over the baseline and, with a ceiling run, the
    share of the baseline-to-ceiling gap each gain closes."""
    stats = aggregate(rows, key)
    labels = sorted({n for _, n in stats})
    gains = [n for n in labels if (baseline, n) in stats] if baseline else []
    top = ceiling_miou(stats, ceiling) if ceiling else None
    shares = [n for n in gains if top is not None and top > stats[(baseline, n)][0]]
    head = (["run", "tasks", "balancing"] + [f"N={n}" for n in labels]
            + [f"Δ N={n}" for n in gains] + [f"gap closed N={n}" for n in shares])
    meta = {r["run"]: (r["tasks"], r["balancing"]) for r in rows}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in order:
        if run not in meta:
            continue
        cells = [run, *meta[run]]
        for n in labels:
            m = stats.get((run, n))
            cells.append(_mean_cell(m))
        for n in gains:
            m, b = stats.get((run, n)), stats[(baseline, n)]
            cells.append(f"{m[0] - b[0]:+.3f}" if m and run != baseline else "")
        for n in shares:
            m, b = stats.get((run, n)), stats[(baseline, n)][0]
            cells.append(f"{(m[0] - b) / (top - b):.0%}" if m and run not in (baseline, ceiling)
                         else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_cell(stat: tuple[float, float, int] | None) -> str:
    """'mean ± std'; a single run has no spread to show, so it says it is one run."""
    if stat is None:
        return ""
    mean, std, count = stat
    return f"{mean:.3f} ± {std:.3f}" if count > 1 else f"{mean:.3f} (1 run)"


def plot_results(path: Path, rows: list[dict], order: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = aggregate(rows)
    labels = sorted({n for _, n in stats})
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(order) + 3), 4))
    width = 0.8 / max(len(labels), 1)
    runs = [r for r in order if any((r, n) in stats for n in labels)]
    for j, n in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(runs))]
        means = [stats.get((r, n), (math.nan, 0, 0))[0] for r in runs]
        stds = [stats.get((r, n), (0, 0, 0))[1] for r in runs]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=f"N={n}")
    ax.set_xticks(range(len(runs)), runs, rotation=30, ha="right")
    ax.set(ylabel="validation mIoU", title=title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
