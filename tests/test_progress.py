"""The progress line: rates from counts, per-task losses, weights and mIoU."""
from __future__ import annotations

import pytest

from ps_trainer.observe.progress import Progress


def test_line_turns_counts_into_rates_and_shows_what_matters():
    p = Progress(("rotation", "segmentation"))
    p._last_time = 100.0
    for loss in (2.0, 1.0):
        p.observe("rotation", loss)
    assert p.losses()["rotation"] == pytest.approx(0.9 * 2.0 + 0.1 * 1.0)
    line = p.line(50, p.losses(), {"rotation": 0.5, "segmentation": 1.0}, 0.4321,
                  per_task={"rotation": 20, "segmentation": 30}, extra="staleness 1.5", now=110.0)
    assert line == ("updates 50 | 5.0 upd/s | rotation 1.900 2.0/s w0.50 | segmentation - 3.0/s"
                    " | mIoU 0.432 | staleness 1.5")
    later = p.line(70, {}, {}, None, per_task={"rotation": 30, "segmentation": 40}, now=120.0)
    assert later.startswith("updates 70 | 2.0 upd/s | rotation - 1.0/s") and "mIoU -" in later


def test_a_version_that_goes_back_starts_a_new_baseline():
    """After a server is restored from a checkpoint the counts go back: no negative rates."""
    p = Progress(("rotation",))
    p._last_time = 0.0
    p.line(500, {}, {}, None, per_task={"rotation": 500}, now=10.0)
    restored = p.line(300, {}, {}, None, per_task={"rotation": 300}, now=20.0)
    assert restored.startswith("updates 300 | - upd/s | rotation - -/s")
    later = p.line(340, {}, {}, None, per_task={"rotation": 340}, now=30.0)
    assert later.startswith("updates 340 | 4.0 upd/s | rotation - 4.0/s")
