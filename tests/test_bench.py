"""`ps-trainer bench --quick` as a smoke test: every part runs and the JSON has its keys.
(No timing assertions: speed targets are read from the bench's output, not tested.)"""
from __future__ import annotations

import json

import pytest

from ps_trainer.cli import main
from ps_trainer.push_buffers import SUPPORTED as SHARED_PUSHES

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_quick_bench_writes_the_documented_json(ray_session, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (trunk,) = report["trunks"]
    for key in ("params", "updates_per_s", "naive_updates_per_s", "speedup_vs_naive",
                "floor_ratio", "bf16_updates_per_s", "object_store_updates_per_s",
                "object_store_floor_ratio"):
        assert trunk[key] > 0, key
    assert trunk["shared_memory_pushes"] == SHARED_PUSHES    # the stub pushed as workers do
    passes = trunk["server_passes"]          # timed on the real store: each part takes time
    assert passes["apply_ms"] > passes["norm_ms"] > 0 and passes["copy_ms"] > 0
    assert trunk["server_passes_floor_ratio"] == pytest.approx(
        passes["total_ms"] / 1000 / trunk["server_passes_floor_s"])
    assert trunk["speedup_vs_naive"] == pytest.approx(
        trunk["updates_per_s"] / trunk["naive_updates_per_s"])
    assert [(r["workers"], r["server_actors"]) for r in report["scaling"]] == [(1, 1), (2, 1), (2, 2)]
    assert report["memory"]["updates"] == 1000
    assert report["memcpy_gb_per_s"] > 0 and report["end_to_end"] is None

    hardware = report["hardware"]
    assert [(r["server_actors"], r["workers"]) for r in hardware] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for r in hardware:               # a step that waits 50 ms caps a worker at 20 updates/s
        assert 0 < r["updates_per_s"] <= r["ideal_updates_per_s"] * 1.05
        assert r["ideal_updates_per_s"] == pytest.approx(r["workers"] / 0.05)
    statistical = report["statistical"]
    assert [(r["mode"], r["workers_per_task"]) for r in statistical["runs"]] == \
        [("local", 0), ("async", 1)]
    for r in statistical["runs"]:    # evaluations recorded along the way, at rising updates
        steps = [step for step, _ in r["curve"]]
        assert len(steps) >= 2 and steps == sorted(steps)
        assert all(0.0 <= miou <= 1.0 for _, miou in r["curve"])
    assert statistical["runs"][1]["mean_staleness"] > 0     # measured from the server
    for name in ("hardware", "statistical"):
        assert (tmp_path / f"bench-{name}.png").stat().st_size > 0

    printed = capsys.readouterr().out
    assert "| trunk params |" in printed and f"written: {out}" in printed
    assert "hardware efficiency" in printed and "statistical efficiency" in printed


def test_bench_sections_pick_a_subset_and_name_a_wrong_one(ray_session, tmp_path, capsys):
    out = tmp_path / "memory.json"
    assert main(["bench", "--quick", "--sections", "memory", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["memory"] and report["trunks"] is None and report["hardware"] is None
    assert main(["bench", "--quick", "--sections", "memory,speed"]) == 1
    assert "unknown speed" in capsys.readouterr().err


def test_data_section_measures_the_loader_rows_and_memory_per_cache(tmp_path, capsys):
    out = tmp_path / "data.json"
    assert main(["bench", "--quick", "--sections", "data", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["trunks"] is None and report["statistical"] is None
    d = report["data"]
    assert [r["loader_workers"] for r in d["rows"]] == [0, 1, 2]
    for r in d["rows"]:
        assert r["images_per_s"]["mean"] > 0 and r["wait_s"]["mean"] >= 0
        assert len(r["memory"]["loaders"]) == r["loader_workers"]     # one entry per process
        assert all(m["rss_mb"] >= m["pss_mb"] > 0 for m in [r["memory"]["main"],
                                                              *r["memory"]["loaders"]])
    assert [m["cache_mb"] for m in d["cache_memory"]] == [0, 16]
    parts, cores = d["per_image_ms"], d["loader_cores"]
    assert parts["decode"] > 0 and parts["crop"] > 0
    assert cores["cores"] == pytest.approx(
        16 * (parts["decode"] + parts["crop"]) / 1000 / 0.15)
    printed = capsys.readouterr().out
    assert "| loader workers | images/s |" in printed and "loader cores a GPU worker" in printed


def test_time_to_target_ratios_per_seed_and_over_seeds():
    from ps_trainer.bench import format_time_to_target
    from ps_trainer.efficiency import summarise_time_to_target

    def run(mode, seed, seconds, updates):
        return {"mode": mode, "seed": seed, "seconds_to_target": seconds,
                "updates_to_target": updates, "mean_staleness": 3.0 if mode != "local" else 0.0,
                "updates_per_s": 15.0}

    runs = [run("distributed", 0, 30.0, 480), run("local", 0, 40.0, 400),
            run("distributed", 1, 90.0, 1500), run("local", 1, 60.0, 1000),
            run("distributed", 2, None, None), run("local", 2, 50.0, 600)]
    e = summarise_time_to_target("q.yaml", 0.37, runs)
    assert [r["seconds_ratio"] for r in e["per_seed"]] == [0.75, 1.5, None]
    assert [r["updates_ratio"] for r in e["per_seed"]] == [1.2, 1.5, None]
    assert e["seconds_ratio"]["mean"] == pytest.approx(1.125)
    assert e["seconds_ratio"]["std"] == pytest.approx(0.5303, abs=1e-4)
    assert (e["seconds_ratio"]["seeds_reached"], e["seconds_ratio"]["seeds"]) == (2, 3)
    text = "\n".join(format_time_to_target(e))
    assert "| 2 | distributed | not reached |" in text
    assert "distributed / local time: 1.12 ± 0.53 (2 of 3 seeds reached it in both)" in text


def test_timing_the_servers_passes_leaves_the_process_threads_as_they_were():
    # Later sections time the local loop in the same process: on one thread they would be slow.
    import torch

    from ps_trainer.bench import server_passes

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        passes = server_passes(1 << 16, repeats=3)
        assert passes["apply_ms"] > 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
