"""Checkpoints: atomic and checksummed; corrupt ones are detected and the previous one is used."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ps_trainer.checkpoint import CheckpointManager, CorruptCheckpoint, load_checkpoint, save_checkpoint


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


def test_missing_checksum_counts_as_incomplete(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, payload(1.0))
    (tmp_path / "c.pt.sha256").unlink()
    with pytest.raises(CorruptCheckpoint, match="checksum"):
        load_checkpoint(path)


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
