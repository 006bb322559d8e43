"""Checkpoints: atomic and checksummed; corrupt ones are detected and the previous one is used."""
from __future__ import annotations

import logging
import os
import stat

import numpy as np
import pytest
import torch

from ps_trainer.core.checkpoint import CheckpointManager, CorruptCheckpoint, load_checkpoint, save_checkpoint


def payload(value: float) -> dict:
    return {"servers": [{"version": int(value), "weights": {"trunk": np.full(5, value, np.float32)},
                         "balancer": {"log_var": [0.5]}}], "config": {"run": {"seed": 1}}}


def test_round_trip_and_plain_torch_weights_only_load(tmp_path):
    path = tmp_path / "c.pt"
    size = save_checkpoint(path, payload(3.0))
    assert size == path.stat().st_size
    back = load_checkpoint(path)
    np.testing.assert_array_equal(back["servers"][0]["weights"]["trunk"], np.full(5, 3.0, np.float32))
    assert back["servers"][0]["balancer"] == {"log_var": [0.5]}
    raw = torch.load(path, weights_only=True)           # readable without our code
    assert torch.equal(raw["servers"][0]["weights"]["trunk"], torch.full((5,), 3.0))
    assert not list(tmp_path.glob(".*.tmp"))             # no temporary left behind


def test_corruption_is_detected(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, payload(1.0))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        load_checkpoint(path)


def test_missing_checksum_loads_a_valid_file_with_a_warning(tmp_path, caplog):
    """A .pt copied without its .sha256 is usable when torch can read it as a checkpoint."""
    path = tmp_path / "c.pt"
    save_checkpoint(path, payload(1.0))
    (tmp_path / "c.pt.sha256").unlink()
    with caplog.at_level(logging.WARNING, logger="ps_trainer.core.checkpoint"):
        back = load_checkpoint(path)
    assert back["servers"][0]["version"] == 1
    assert "no checksum file c.pt.sha256" in caplog.text


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a checkpoint"),
    (lambda p: p.write_text("hello"), "not a checkpoint"),
    (lambda p: torch.save({"weights": torch.zeros(2)}, p), "not a ps_trainer checkpoint"),
    (lambda p: torch.save(torch.zeros(2), p), "not a ps_trainer checkpoint"),
])
def test_missing_checksum_refuses_what_is_not_a_checkpoint(tmp_path, damage, message):
    path = tmp_path / "c.pt"
    save_checkpoint(path, payload(1.0))
    (tmp_path / "c.pt.sha256").unlink()
    damage(path)
    with pytest.raises(CorruptCheckpoint, match=message) as info:
        load_checkpoint(path)
    assert "no checksum file c.pt.sha256" in str(info.value) and "\n" not in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CorruptCheckpoint, match="nope.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_rewriting_best_verifies_at_every_rename_and_syncs_the_folder(tmp_path, monkeypatch):
    """Between any two steps of a rewrite of best.pt, a reader gets the old or the new
    checkpoint, never a checksum mismatch; every rename is followed by an fsync of the folder."""
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save(payload(1), 1, 0.1)
    seen, events = [], []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):
        real_replace(src, dst)
        events.append("rename")
        seen.append(load_checkpoint(manager.best_path)["step"])   # raises on a bad pair

    def fsync(fd):
        real_fsync(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append("sync-dir")

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    for step in (2, 3, 4):
        manager.save(payload(step), step, 0.1 * step)             # each one is a new best
    assert set(seen) == {1, 2, 3, 4} and seen == sorted(seen)
    assert events == ["rename", "sync-dir"] * (len(events) // 2) and events


def test_manager_keeps_last_k_and_best_and_falls_back_past_corrupt(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step, score in [(10, 0.2), (20, 0.5), (30, 0.4)]:
        manager.save(payload(step), step, score)
    assert [p.name for p in manager.steps()] == ["step-000000020.pt", "step-000000030.pt"]
    assert load_checkpoint(manager.best_path)["step"] == 20
    assert CheckpointManager(tmp_path, keep_last=2).best_score == pytest.approx(0.5)
    newest = manager.steps()[-1]
    newest.write_bytes(b"truncated")                     # a crash mid-write of the newest
    path, loaded = manager.latest()
    assert path.name == "step-000000020.pt" and loaded["step"] == 20


def test_latest_is_none_when_nothing_verifies(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    assert manager.latest() is None
    manager.save(payload(1), 1)
    manager.steps()[0].write_bytes(b"")
    assert manager.latest() is None


WRITER = """
import sys
import numpy as np
from ps_trainer.core.checkpoint import CheckpointManager
manager = CheckpointManager(sys.argv[1], 2)
weights = np.random.default_rng(0).random(16 << 20).astype(np.float32)   # 64 MiB
step = 0
while True:
    step += 1
    manager.save({"servers": [{"weights": {"w": weights}}]}, step)
"""


def _killed_mid_write(directory):
    """Run a writer of 64 MiB checkpoints and SIGKILL it while a temporary file exists."""
    import signal
    import subprocess
    import sys
    import time

    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)])
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if list(directory.glob(".*.tmp")):
                    os.kill(child.pid, signal.SIGKILL)
                    break
                time.sleep(0.0005)
        finally:
            child.kill()
            child.wait()
        leftovers = list(directory.glob(".*.tmp"))
        if leftovers:
            return leftovers
    raise AssertionError("never caught the writer between its write and its rename")


def test_a_write_killed_before_its_rename_is_cleaned_up_by_the_next_writer(tmp_path,
                                                                           tiny_config):
    from ps_trainer.run.recorder import RunRecorder
    from ps_trainer.run.run_folder import RunFolder

    cfg = tiny_config()
    run = RunFolder(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    leftovers = _killed_mid_write(run.checkpoints)
    assert any(p.stat().st_size > 0 for p in leftovers)
    kept = CheckpointManager(run.checkpoints, 2).steps()
    RunRecorder(cfg, run)                              # the evaluator's replacement starts
    assert not list(run.checkpoints.glob(".*.tmp"))
    assert CheckpointManager(run.checkpoints, 2).steps() == kept      # finished ones stay
