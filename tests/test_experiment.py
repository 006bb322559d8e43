"""The experiment runner on a tiny grid: rows, resumption, the table and the plot."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from ps_trainer.core.checkpoint import CheckpointManager, CorruptCheckpoint, load_checkpoint
from ps_trainer.recipes.finetune import trunk_of

from ps_trainer.config import ConfigError, dump_config
from ps_trainer.recipes.experiment import Experiment, aggregate, load_experiment, read_results, summary_table
from ps_trainer.run.launch import load_run_config
from ps_trainer.core.schedule import FAILED, MAX_UPDATES, RunSummary


@pytest.fixture
def grid(tmp_path, tiny):
    base = load_run_config(None, tiny(tmp_path, ("rotation", "denoising"), extra=[
        "run.max_updates=8", "finetune.steps=6", "finetune.batch_size=4",
        "finetune.warmup_updates=0"]))
    (tmp_path / "base.yaml").write_text(dump_config(base))

    def write(runs, **top):
        spec = {"name": "tiny", "base": "base.yaml", "out_dir": str(tmp_path / "out"),
                "seeds": [0, 1], "labels": [2, 4], "baseline": "supervised", "runs": runs, **top}
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


def test_tiny_grid_writes_rows_table_and_plot_and_resumes(grid, tmp_path):
    path = grid([{"name": "supervised"},
                 {"name": "rot", "tasks": ["rotation"], "balancing": "uncertainty"}])
    exp, base_dir = load_experiment(path)
    out = Experiment(exp, base_dir).run()
    rows = read_results(out / "results.csv")
    assert len(rows) == 8                                       # 2 runs x 2 seeds x 2 label counts
    assert {(r["run"], r["seed"], r["labels"]) for r in rows} == {
        (run, str(s), str(n)) for run in ("supervised", "rot") for s in (0, 1) for n in (2, 4)}
    assert all(r["pretrain_updates"] == ("0" if r["run"] == "supervised" else "8") for r in rows)
    table = (out / "results.md").read_text()
    assert "| rot | rotation | uncertainty |" in table and "Δ N=2" in table
    assert (out / "results.png").stat().st_size > 0
    Experiment(exp, base_dir).run()                             # resumes: nothing left to do
    assert len(read_results(out / "results.csv")) == 8


def test_bad_runs_fail_before_any_training(grid, tmp_path):
    exp, base_dir = load_experiment(grid([{"name": "x", "tasks": ["jigsaw"]}], baseline=""))
    with pytest.raises(ConfigError, match="runs.x.tasks"):
        Experiment(exp, base_dir)
    with pytest.raises(ConfigError, match="runs\\[0\\].name"):
        load_experiment(grid([{"name": ""}], baseline=""))
    with pytest.raises(ConfigError, match="baseline"):
        load_experiment(grid([{"name": "a"}], baseline="b"))
    assert not (tmp_path / "out" / "results.csv").exists()


def test_joint_row_trains_tasks_and_segmentation_together_per_label_count(grid):
    exp, base_dir = load_experiment(grid([{"name": "joint", "tasks": ["rotation"], "joint": True,
                                           "set": ["run.max_updates=10"]}], baseline="",
                                         seeds=[0]))
    out = Experiment(exp, base_dir).run()
    rows = read_results(out / "results.csv")
    assert [(r["labels"], r["tasks"], r["pretrain_updates"]) for r in rows] == [
        ("2", "rotation (joint)", "10"), ("4", "rotation (joint)", "10")]
    steps = [(out / "joint" / "seed-0" / f"joint-N{n}" / "config.yaml").exists() for n in (2, 4)]
    assert all(steps)
    assert not (out / "joint" / "seed-0" / "pretrain").exists()


def test_only_the_named_rows_train(grid, tmp_path):
    exp, base_dir = load_experiment(grid([{"name": "supervised"}, {"name": "rot", "tasks": ["rotation"]}],
                                         seeds=[0, 1], labels=[2]))
    out = Experiment(exp, base_dir).run(only=("supervised",), seeds=(1,))
    assert [(r["run"], r["seed"]) for r in read_results(out / "results.csv")] == [("supervised", "1")]
    with pytest.raises(ConfigError, match="'nope'"):
        Experiment(exp, base_dir).run(only=("nope",))
    Experiment(exp, base_dir).run(only=("rot",), seeds=(0,))
    assert [(r["run"], r["seed"]) for r in read_results(out / "results.csv")] == [
        ("supervised", "1"), ("rot", "0")]
    with pytest.raises(ConfigError, match="seeds"):
        Experiment(exp, base_dir).run(seeds=(5,))


def test_pretrain_from_shares_an_earlier_runs_pretraining(grid):
    exp, base_dir = load_experiment(grid([
        {"name": "rot", "tasks": ["rotation"]},
        {"name": "rot-semi", "tasks": ["rotation"], "pretrain_from": "rot",
         "finetune_set": ["finetune.unlabelled_tasks=[self_training]"]}], baseline=""))
    e = Experiment(exp, base_dir)
    assert e.pretrain_config(exp.runs[1], 0).run.out_dir == e.pretrain_config(exp.runs[0], 0).run.out_dir
    with pytest.raises(ConfigError, match="pretrain_from"):
        load_experiment(grid([{"name": "rot", "tasks": ["rotation"]},
                              {"name": "jig", "tasks": ["jigsaw"], "pretrain_from": "rot"}],
                             baseline=""))


def test_aggregate_and_table_by_hand():
    rows = [{"run": "a", "tasks": "-", "balancing": "equal", "labels": "8", "miou": m}
            for m in ("0.30", "0.34")] + \
           [{"run": "b", "tasks": "rotation", "balancing": "equal", "labels": "8", "miou": "0.40"}]
    stats = aggregate(rows)
    assert stats[("a", 8)][0] == pytest.approx(0.32)
    assert stats[("a", 8)][1] == pytest.approx(0.028284, rel=1e-4)   # sample std of 0.30, 0.34
    assert stats[("b", 8)] == (pytest.approx(0.40), 0.0, 1)
    table = summary_table(rows, ["a", "b"], baseline="a")
    assert "| a | - | equal | 0.320 ± 0.028 |  |" in table
    assert "| b | rotation | equal | 0.400 (1 run) | +0.080 |" in table   # no spread to show
    # a label count the baseline lacks gets no gain column
    rows.append({"run": "b", "tasks": "rotation", "balancing": "equal", "labels": "64", "miou": "0.5"})
    assert "Δ N=64" not in summary_table(rows, ["a", "b"], baseline="a")


def test_gap_closed_is_the_gain_over_the_baseline_to_ceiling_gap():
    rows = [{"run": r, "tasks": "-", "balancing": "equal", "labels": n, "miou": m}
            for r, n, m in (("sup", "16", "0.30"), ("sup", "16", "0.34"), ("semi", "16", "0.47"),
                            ("top", "1024", "0.62"))]
    table = summary_table(rows, ["sup", "semi", "top"], baseline="sup", ceiling="top")
    assert "gap closed N=16" in table and "gap closed N=1024" not in table
    # (0.47 - 0.32) / (0.62 - 0.32) = 50 %
    assert "| semi | - | equal | 0.470 (1 run) |  | +0.150 | 50% |" in table
    assert "| top | - | equal |  | 0.620 (1 run) |  |  |" in table



def _trains_nothing(error=None):
    """A launcher that returns at once, as a run that trained nothing (or failed) does."""
    return lambda cfg, **_: RunSummary(updates=0, elapsed_s=0.0, miou=None, reached_target_s=None,
                                  stopped_by=FAILED if error else MAX_UPDATES, applied={},
                                  final=None, error=error)


def test_pretraining_that_leaves_no_checkpoint_fails_by_name(grid, monkeypatch):
    exp, base_dir = load_experiment(grid([{"name": "rot", "tasks": ["rotation"]}], baseline=""))
    monkeypatch.setattr("ps_trainer.run.launch.run_local", _trains_nothing())
    with pytest.raises(RuntimeError, match="rot seed 0: pretraining left no valid checkpoint"):
        Experiment(exp, base_dir).run()


def test_a_failed_pretraining_is_reported_with_its_cause(grid, monkeypatch):
    exp, base_dir = load_experiment(grid([{"name": "rot", "tasks": ["rotation"]}], baseline=""))
    cause = "worker rotation/0 could not start: FileNotFoundError: dataset root not found: /x"
    monkeypatch.setattr("ps_trainer.run.launch.run_local", _trains_nothing(cause))
    with pytest.raises(RuntimeError) as raised:
        Experiment(exp, base_dir).run()
    assert str(raised.value) == f"rot seed 0: pretraining failed: {cause}"


def test_a_row_can_learn_from_an_earlier_rows_model_of_the_same_cell(grid, tmp_path, tiny):
    """{out}, {seed} and {labels} in finetune_set name the earlier row's checkpoint of the same
    (seed, N): self-training in rounds."""
    base = load_run_config(None, tiny(tmp_path, ("rotation", "segmentation"), extra=[
        "finetune.steps=6", "finetune.batch_size=4", "finetune.warmup_updates=0"]))
    (tmp_path / "base.yaml").write_text(dump_config(base))
    st = ["finetune.unlabelled_tasks=[self_training]", "tasks.self_training.options.threshold=0.2"]
    teacher = ("tasks.self_training.options.teacher_checkpoint="
               "{out}/st/seed-{seed}/finetune-N{labels}/checkpoints/best.pt")
    exp, base_dir = load_experiment(grid([
        {"name": "st", "finetune_set": st},
        {"name": "st-r2", "finetune_set": [*st, "tasks.self_training.options.teacher=checkpoint",
                                           teacher]}], baseline="", seeds=[1], labels=[4]))
    experiment = Experiment(exp, base_dir)
    cfg = experiment._base(experiment.finetune_overrides(exp.runs[1], 1, 4))
    assert cfg.tasks["self_training"].options["teacher_checkpoint"] == str(
        tmp_path / "out" / "st" / "seed-1" / "finetune-N4" / "checkpoints" / "best.pt")
    out = experiment.run()
    assert {r["run"] for r in read_results(out / "results.csv")} == {"st", "st-r2"}


def test_a_row_can_start_from_an_earlier_rows_trunk_of_the_same_cell(grid, tmp_path):
    """trunk_from: the cell fine-tunes from the named checkpoint's trunk (here frozen, so the
    row's model keeps exactly that trunk), not from its own pretraining."""
    frozen = ["finetune.train_trunk=false"]
    exp, base_dir = load_experiment(grid([
        {"name": "rot", "tasks": ["rotation"]},
        {"name": "rot-warm", "tasks": ["rotation"], "pretrain_from": "rot", "finetune_set": frozen,
         "trunk_from": "{out}/rot/seed-{seed}/finetune-N{labels}/checkpoints/best.pt"}],
        baseline="", seeds=[1], labels=[4]))
    out = Experiment(exp, base_dir).run()
    cell = "seed-1/finetune-N4/checkpoints/best.pt"
    first, warm = (load_checkpoint(str(out / run / cell)) for run in ("rot", "rot-warm"))
    pretrained = CheckpointManager(out / "rot" / "seed-1" / "pretrain" / "checkpoints", 1).latest()[1]
    assert np.array_equal(trunk_of(warm), trunk_of(first))
    assert not np.array_equal(trunk_of(warm), trunk_of(pretrained))   # rot fine-tuned its trunk
    with pytest.raises(ConfigError, match="trunk_from"):
        load_experiment(grid([{"name": "j", "tasks": ["rotation"], "joint": True,
                               "trunk_from": "x.pt"}], baseline=""))
    exp, base_dir = load_experiment(grid([{"name": "x", "trunk_from": "{round}.pt"}], baseline=""))
    with pytest.raises(ConfigError, match=r"runs.x.trunk_from.*\{seed\}"):
        Experiment(exp, base_dir)
    exp, base_dir = load_experiment(grid([{"name": "x", "trunk_from": str(tmp_path / "no.pt")}],
                                         baseline="", seeds=[0], labels=[2]))
    with pytest.raises(CorruptCheckpoint, match="no such checkpoint file"):
        Experiment(exp, base_dir).run()
    # a row with pretraining learns of the missing file before it pretrains
    exp, base_dir = load_experiment(grid([{"name": "y", "tasks": ["rotation"],
                                           "trunk_from": str(tmp_path / "no.pt")}],
                                         baseline="", seeds=[0], labels=[2]))
    with pytest.raises(CorruptCheckpoint, match="no such checkpoint file"):
        Experiment(exp, base_dir).run()
    assert not (tmp_path / "out" / "y").exists()


def test_unknown_placeholders_in_finetune_set_are_named(grid):
    exp, base_dir = load_experiment(grid([{"name": "x", "finetune_set": ["run.name={run}"]}],
                                         baseline=""))
    with pytest.raises(ConfigError, match=r"runs.x.finetune_set.*\{seed\}"):
        Experiment(exp, base_dir)


GRIDS = [p for p in sorted(Path("configs/experiments").glob("*.yaml")) if p.name != "base.yaml"]


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.stem)
def test_shipped_grids_check_every_row(path, tmp_path):
    """Each shipped grid builds every row's configs, placeholders filled."""
    exp, base_dir = load_experiment(path)
    experiment = Experiment(dataclasses.replace(exp, out_dir=str(tmp_path)), base_dir)
    for run in exp.runs:
        experiment.finetune_overrides(run, exp.seeds[0], (run.labels or exp.labels)[0])


def test_a_joint_row_with_no_task_trains_segmentation_alone_and_test_images_score_apart(grid):
    """test: true scores each row's last checkpoint on the test images too; the table shows
    both, and the test mIoU is the checkpoint's own score on data.val_split: test."""
    from ps_trainer.run.launch import evaluate_checkpoint

    exp, base_dir = load_experiment(grid([{"name": "supervised", "joint": True,
                                           "set": ["run.max_updates=6"]}], baseline="",
                                         seeds=[0], labels=[2], test=True))
    out = Experiment(exp, base_dir).run()
    [row] = read_results(out / "results.csv")
    cell = out / "supervised" / "seed-0" / "joint-N2"
    assert yaml.safe_load((cell / "config.yaml").read_text())["tasks"].keys() == {"segmentation"}
    [last] = CheckpointManager(cell / "checkpoints", 1).steps()[-1:]
    on_test = evaluate_checkpoint(str(last), overrides=("data.val_split=test",)).miou
    on_val = evaluate_checkpoint(str(last)).miou
    assert float(row["test_miou"]) == pytest.approx(on_test, abs=1e-4)
    assert float(row["miou"]) == pytest.approx(on_val, abs=1e-4)
    assert on_test != on_val                       # other images: another score
    assert "on the test images" in (out / "results.md").read_text()
