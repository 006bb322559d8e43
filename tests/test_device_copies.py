"""StagedWeights: a staged version changes nothing until it is committed; then the model
computes with it and its parameters are views of the new buffer (CPU here; the CUDA path is
in tests/test_cuda.py)."""
from __future__ import annotations

import numpy as np
import torch

from ps_trainer.transport.device_copies import HostStaging, StagedWeights
from ps_trainer.model import shard_of
from ps_trainer.core.params import FlatModel, ShardLayout
from ps_trainer_workers.assembly import build_model, build_tasks


def _flat(tiny_config):
    cfg = tiny_config(tasks=("rotation", "segmentation"))
    model = build_model(cfg, build_tasks(cfg), seed=0).eval()
    return FlatModel(model, ShardLayout.of(model, shard_of))


def test_staged_weights_take_effect_at_commit_only(tiny_config):
    flat = _flat(tiny_config)
    staging = StagedWeights(dict(flat.params), flat.bind)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before = flat.model("rotation", x)
    new = flat.params["trunk"].numpy() * 0.5 + 0.01
    staging.stage("trunk", new.astype(np.float32))
    assert staging.pending
    with torch.no_grad():
        torch.testing.assert_close(flat.model("rotation", x), before)    # not yet
    assert staging.commit() and not staging.pending
    np.testing.assert_array_equal(flat.params["trunk"].numpy(), new.astype(np.float32))
    conv = flat.model.trunk.stem[0].weight
    assert conv.data_ptr() == flat.params["trunk"].data_ptr()            # bound to the new one
    with torch.no_grad():
        assert not torch.allclose(flat.model("rotation", x), before)
    assert not staging.commit()                                           # nothing new


def test_parts_of_a_shard_add_up_and_the_rest_keeps_its_values(tiny_config):
    flat = _flat(tiny_config)
    staging = StagedWeights(dict(flat.params), flat.bind)
    old = flat.params["trunk"].numpy().copy()
    n = old.size
    staging.stage("trunk", np.full(n // 4, 1.0, np.float32), start=0)
    staging.stage("trunk", np.full(n // 4, 2.0, np.float32), start=n // 2)
    staging.commit()
    now = flat.params["trunk"].numpy()
    assert (now[: n // 4] == 1).all() and (now[n // 2: n // 2 + n // 4] == 2).all()
    np.testing.assert_array_equal(now[n // 4: n // 2], old[n // 4: n // 2])
    # the next version starts from the front it replaces, not from the buffer of two versions ago
    staging.stage("trunk", np.full(n // 4, 3.0, np.float32), start=0)
    staging.commit()
    assert (flat.params["trunk"].numpy()[n // 2: n // 2 + n // 4] == 2).all()


def test_discarded_stages_never_reach_the_model(tiny_config):
    flat = _flat(tiny_config)
    staging = StagedWeights(dict(flat.params), flat.bind)
    old = flat.params["trunk"].numpy().copy()
    staging.stage("trunk", np.zeros_like(old))
    staging.discard()
    assert not staging.commit()
    np.testing.assert_array_equal(flat.params["trunk"].numpy(), old)


def test_host_staging_copies_into_one_reused_buffer():
    staging = HostStaging()
    first = staging.to_host("g", torch.arange(4.0))
    second = staging.to_host("g", torch.arange(4.0) * 2)
    assert first.data_ptr() == second.data_ptr()
    torch.testing.assert_close(second, torch.arange(4.0) * 2)
