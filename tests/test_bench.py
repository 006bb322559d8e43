"""`ps-trainer bench --quick` as a smoke test: every part runs and the JSON has its keys.
(No timing assertions: speed targets are read from the bench's output, not tested.)"""
from __future__ import annotations

import json

import pytest

from ps_trainer.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_quick_bench_writes_the_documented_json(ray_session, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (trunk,) = report["trunks"]
    for key in ("params", "updates_per_s", "naive_updates_per_s", "speedup_vs_naive",
                "floor_ratio", "bf16_updates_per_s"):
        assert trunk[key] > 0, key
    assert trunk["speedup_vs_naive"] == pytest.approx(
        trunk["updates_per_s"] / trunk["naive_updates_per_s"])
    assert [(r["workers"], r["shards"]) for r in report["scaling"]] == [(1, 1), (2, 1), (2, 2)]
    assert report["memory"]["updates"] == 1000
    assert report["memcpy_gb_per_s"] > 0 and report["end_to_end"] is None
    printed = capsys.readouterr().out
    assert "| trunk params |" in printed and f"written: {out}" in printed
