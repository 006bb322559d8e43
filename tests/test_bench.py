"""`ps-trainer bench --quick` as a smoke test: every part runs and the JSON has its keys.
(No timing assertions: speed targets are read from the bench's output, not tested.)"""
from __future__ import annotations

import json

import pytest

from ps_trainer.tools.cli import main
from ps_trainer.transport.push_buffers import SUPPORTED as SHARED_PUSHES

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
    from ps_trainer.tools.bench import format_time_to_target
    from ps_trainer.tools.efficiency import summarise_time_to_target

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

    from ps_trainer.tools.throughput import server_passes

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        passes = server_passes(1 << 16, repeats=3)
        assert passes["apply_ms"] > 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_real_sizes_section_measures_each_size_and_models_the_split(ray_session, tmp_path,
                                                                      capsys):
    from ps_trainer.tools.real_sizes import CallCosts, feed_model

    out = tmp_path / "real.json"
    assert main(["bench", "--quick", "--sections", "real_sizes", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["trunks"] is None and report["hardware"] is None
    section = report["real_sizes"]
    assert section["optimizer"] == "adamw" and section["repeats"] == 1
    (size,) = section["sizes"]
    assert (size["name"], size["params"], size["optimizer"]) == ("tiny", 200_000, "adamw")
    passes = size["passes"]          # timed on the real store with AdamW
    assert passes["apply_ms"]["mean"] > passes["norm_ms"]["mean"] > 0
    assert passes["apply_cpu_ms"]["mean"] > 0 and passes["copy_cpu_ms"]["mean"] > 0
    for clock in ("", "_cpu"):
        assert passes[f"total{clock}_ms"]["mean"] == pytest.approx(
            passes[f"apply{clock}_ms"]["mean"] + passes[f"copy{clock}_ms"]["mean"])
    for pushes in ("shared_memory", "object_store"):
        rt = size["round_trip"][pushes]
        (rate,) = rt["updates_per_s"]["values"]            # one repeat: its own mean, no spread
        assert rate > 0 and rt["updates_per_s"]["mean"] == rate
        assert rt["updates_per_s"]["std"] == 0 and rt["server_ms"]["mean"] > 0
        assert rt["server_cpu_ms"]["mean"] > 0               # read from the actor's process
        assert size["workers_fed"][pushes] == pytest.approx(
            {"measured": rate * 0.02, "cpu": 1000 / rt["server_cpu_ms"]["mean"] * 0.02})
    assert [r["workers"] for r in size["scaling"]] == [1, 2]
    for r in size["scaling"]:        # each step waits 20 ms: at most 50 updates/s a worker
        assert r["ideal_updates_per_s"] == pytest.approx(50 * r["workers"])
        assert 0 < r["updates_per_s"]["mean"] <= r["ideal_updates_per_s"] * 1.05
        assert r["efficiency"] == pytest.approx(r["updates_per_s"]["mean"]
                                                / r["ideal_updates_per_s"])
    memory = size["server_memory"]   # the server holds at least its weights and AdamW's state
    assert memory["private_end_mb"]["mean"] > memory["state_mb"] == pytest.approx(2.4)
    assert memory["peak_resident_mb"]["mean"] >= memory["private_end_mb"]["mean"]

    fixed = section["fixed"]         # the model is fed the figures measured above
    assert fixed["call_ms"]["mean"] > 0 and fixed["part_ms"]["mean"] > 0
    assert fixed["decision_ms"]["mean"] >= 0
    cpu_ms = size["round_trip"]["object_store"]["server_cpu_ms"]["mean"]
    costs = CallCosts(*(fixed[k]["mean"] for k in ("call_ms", "decision_ms", "part_ms")))
    expected = feed_model(max(cpu_ms - costs.call_ms, 0.0), costs, 200_000, 0.02, (1, 2),
                          section["nic_gbit_s"] * 1e9 / 8)
    assert size["split"] == pytest.approx(expected)
    one = size["split"][0]          # one actor: the CPU time per update that was measured
    assert one["ms_per_update"] == pytest.approx(max(cpu_ms, costs.call_ms))

    printed = capsys.readouterr().out
    assert "real sizes (optimizer adamw; mean ± std of 1 repeats;" in printed
    assert "| tiny | 0.2M |" in printed and "GPU workers fed" in printed


def test_feed_model_divides_the_passes_and_the_bytes_over_the_actors():
    from ps_trainer.tools.real_sizes import CallCosts, feed_model

    # 20 ms that grow with the trunk; fixed: 2 ms alone, actor 0 +1 ms per other actor, the
    # others 2.5 ms; 25M params.
    costs = CallCosts(call_ms=2.0, decision_ms=1.0, part_ms=2.5)
    rows = feed_model(20.0, costs, 25_000_000, 0.15, (1, 2, 4), nic_bytes_per_s=1e9)
    # 1: 2 + 20; 2: max(2 + 1, 2.5) + 10; 4: max(2 + 3, 2.5) + 5
    assert [r["ms_per_update"] for r in rows] == pytest.approx([22.0, 13.0, 10.0])
    assert [r["network_updates_per_s"] for r in rows] == pytest.approx([10.0, 20.0, 40.0])
    # 1 GB/s carries 10 pushes of 100 MB per second: one actor is network-bound
    assert [r["updates_per_s"] for r in rows] == pytest.approx([10.0, 20.0, 40.0])
    assert rows[2]["workers_fed"] == pytest.approx(40.0 * 0.15)
    fast = feed_model(20.0, CallCosts(2.0, 0.0, 4.0), 25_000_000, 0.15, (1, 4),
                      nic_bytes_per_s=1e12)           # the other actors' fixed cost sets the pace
    assert [r["updates_per_s"] for r in fast] == pytest.approx([1000 / 22, 1000 / 9])
    assert fast[1]["cpu_updates_per_s"] == fast[1]["updates_per_s"]


def test_real_sizes_summary_is_mean_and_spread_over_the_repeats():
    from ps_trainer.tools.real_sizes import RealSizesPlan, TrunkSize, _summarise

    def run(rate, passes_ms, scaled):
        timed = {"updates_per_s": rate, "server_memory": {
                     "before": {"private": 400e6}, "after": {"private": 410e6,
                                                            "peak_resident": 600e6}},
                 "breakdown": {"server_apply_ms": 10.0, "server_publish_ms": 2.0,
                               "worker_wait_ms": 5.0}, "server_cpu_ms": [1000 / rate]}
        return {"passes": {"apply_ms": passes_ms, "norm_ms": 1.0, "copy_ms": 2.0,
                           "total_ms": passes_ms + 2.0, "apply_cpu_ms": passes_ms - 1.0,
                           "copy_cpu_ms": 1.5, "total_cpu_ms": passes_ms + 0.5},
                "shared": timed, "objects": {**timed, "updates_per_s": rate / 2,
                                             "server_cpu_ms": [2000 / rate]},
                "scaling": scaled}

    size = TrunkSize("r50", 1_000_000, 0.1, 10)
    plan = RealSizesPlan(sizes=(size,), workers=(1, 8), split_actors=(1,), nic_gbit_s=1e6)
    fixed = {"call_ms": {"mean": 5.0}, "decision_ms": {"mean": 1.0}, "part_ms": {"mean": 4.0}}
    row = _summarise(size, [run(20.0, 8.0, {1: 9.0}), run(40.0, 10.0, {1: 7.0})], fixed, plan)
    rt = row["round_trip"]["shared_memory"]["updates_per_s"]
    assert (rt["mean"], rt["values"]) == (30.0, [20.0, 40.0])
    assert rt["std"] == pytest.approx(14.142, abs=1e-3)          # sample std of 20 and 40
    assert row["passes"]["apply_ms"]["mean"] == 9.0
    assert row["passes"]["total_cpu_ms"]["mean"] == 9.5
    assert row["round_trip"]["object_store"]["server_ms"]["mean"] == 12.0
    assert row["server_memory"]["private_end_mb"]["mean"] == pytest.approx(410)
    assert row["server_memory"]["state_mb"] == pytest.approx(12.0)
    # 8 workers were skipped in every repeat: no row; 1 worker: mean of 9 and 7 of ideal 10
    assert [(r["workers"], r["efficiency"]) for r in row["scaling"]] == [(1, pytest.approx(0.8))]
    assert row["workers_fed"]["object_store"] == pytest.approx({"measured": 15.0 * 0.1,
                                                                "cpu": 1000 / 75.0 * 0.1})
    # one actor: the CPU time per update measured with pushes as objects (100, 50 ms)
    assert row["round_trip"]["object_store"]["server_cpu_ms"]["mean"] == pytest.approx(75.0)
    assert row["split"][0]["ms_per_update"] == pytest.approx(75.0)


def test_resnet_trunk_sizes_are_the_real_trunks():
    from ps_trainer.config import ModelConfig
    from ps_trainer.model.backbones import make_trunk
    from ps_trainer.tools.real_sizes import RESNET50_TRUNK_PARAMS, RESNET101_TRUNK_PARAMS

    for backbone, params in (("resnet50", RESNET50_TRUNK_PARAMS),
                             ("resnet101", RESNET101_TRUNK_PARAMS)):
        trunk = make_trunk(ModelConfig(backbone=backbone))
        assert sum(p.numel() for p in trunk.parameters()) == params, backbone
