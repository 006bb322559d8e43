"""Flat shard buffers: views, gradients landing in place, and the split over server actors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ps_trainer.config import ModelConfig
from ps_trainer.model import MultiTaskModel, shard_of
from ps_trainer.core.params import (FlatModel, ShardLayout, encode_grad, load_norm_stats, load_pieces,
                                    plan_pieces, readonly_tensor)


def tiny_model(norm="group"):
    cfg = ModelConfig(widths=(4, 8), blocks=(1, 1), norm=norm)
    heads = {"a": nn.Conv2d(8, 3, 1),
             "b": nn.Conv2d(8, 2, 1)}
    return MultiTaskModel(cfg, heads)


def test_layout_groups_by_shard_and_covers_every_parameter():
    model = tiny_model()
    layout = ShardLayout.of(model, shard_of)
    assert set(layout.shards) == {"trunk", "head/a", "head/b"}
    total = sum(layout.size(s) for s in layout.shards)
    assert total == sum(p.numel() for p in model.parameters())
    assert layout.size("head/b") == 8 * 2 + 2


def test_params_are_views_and_grads_land_in_the_flat_buffer():
    torch.manual_seed(0)
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flat = FlatModel(model, ShardLayout.of(model, shard_of))
    for n, p in model.named_parameters():          # binding keeps the values
        torch.testing.assert_close(p.detach(), before[n])
    flat.params["head/b"].zero_()                  # writing the buffer writes the module
    assert float(model.heads["b"].weight.detach().abs().sum()) == 0.0
    x = torch.rand(2, 3, 16, 16)
    model("a", x).sum().backward()
    assert float(flat.grads["head/a"].abs().sum()) > 0
    assert float(flat.grads["head/b"].abs().sum()) == 0.0   # b was not used
    shard, place = flat.layout.placement("heads.a.weight")
    view = flat.grads[shard][place.offset: place.offset + place.numel].view(place.shape)
    torch.testing.assert_close(view, model.heads["a"].weight.grad)
    flat.zero_grad()
    assert float(flat.grads["trunk"].abs().sum()) == 0.0


def test_bound_gradients_are_written_by_backward_and_the_old_ones_are_not():
    torch.manual_seed(0)
    model = tiny_model()
    flat = FlatModel(model, ShardLayout.of(model, shard_of))
    old = {s: g for s, g in flat.grads.items()}
    buffers = [{s: torch.zeros_like(g) for s, g in old.items()} for _ in range(2)]
    bindings = [flat.grad_binding(buffer) for buffer in buffers]
    x = torch.rand(2, 3, 16, 16)
    for binding, buffer in zip(bindings, buffers):
        flat.bind_grads(binding)
        assert flat.grads["trunk"] is buffer["trunk"]
        flat.zero_grad()
        model("a", x).sum().backward()
    torch.testing.assert_close(buffers[0]["trunk"], buffers[1]["trunk"])   # same step, same grads
    assert float(buffers[1]["head/a"].abs().sum()) > 0
    assert all(float(g.abs().sum()) == 0.0 for g in old.values())      # never written
    shard, place = flat.layout.placement("heads.a.weight")
    assert model.heads["a"].weight.grad.data_ptr() == buffers[1][shard][place.offset:].data_ptr()


def test_load_copies_a_read_only_array_at_an_offset():
    model = tiny_model()
    flat = FlatModel(model, ShardLayout.of(model, shard_of))
    n = flat.layout.size("trunk")
    src = np.arange(n // 2, dtype=np.float32)
    src.setflags(write=False)                      # as Ray hands it out
    flat.load("trunk", src, start=n - n // 2)
    np.testing.assert_array_equal(flat.params["trunk"][n - n // 2:].numpy(), src)


def test_norm_statistics_are_bound_too():
    model = tiny_model(norm="batch")
    flat = FlatModel(model, ShardLayout.of(model, shard_of))
    before = flat.stats["trunk"].clone()
    model.train()
    model("a", torch.rand(4, 3, 16, 16) * 5)
    assert not torch.equal(flat.stats["trunk"], before)      # BN updated the flat buffer
    shard, slots = "trunk", flat.layout.stats["trunk"]
    first = slots[0]
    owner = dict(model.named_buffers())[first.name]
    torch.testing.assert_close(flat.stats[shard][first.offset: first.offset + first.numel], owner.view(-1))


def test_plan_pieces_covers_each_shard_exactly_once():
    layout = ShardLayout.of(tiny_model(), shard_of)
    for servers in (1, 2, 3):
        plan = plan_pieces(layout, servers)
        for shard in layout.shards:
            ranges = sorted((p.start, p.stop) for p in plan if p.shard == shard)
            assert ranges[0][0] == 0 and ranges[-1][1] == layout.size(shard)
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert {p.server for p in plan} == set(range(servers))
        assert len({p.key for p in plan}) == len(plan)


@pytest.mark.parametrize("dtype,tol", [("float32", 0), ("float16", 1e-3), ("bfloat16", 1e-2)])
def test_gradient_transport_round_trip(dtype, tol):
    grad = torch.randn(1000)
    wire = encode_grad(grad, dtype)
    assert wire.nbytes == grad.numel() * (4 if dtype == "float32" else 2)
    back = readonly_tensor(wire).float()
    torch.testing.assert_close(back, grad, atol=tol * 4, rtol=tol)


def test_adopt_makes_parameters_views_of_the_pulled_array():
    model = tiny_model()
    flat = FlatModel(model, ShardLayout.of(model, shard_of))
    n = flat.layout.size("head/a")
    pulled = np.arange(n, dtype=np.float32)
    pulled.setflags(write=False)
    assert flat.can_adopt("head/a", pulled) and not flat.can_adopt("head/a", pulled[:-1])
    assert not flat.can_adopt("head/a", pulled, start=1)
    flat.adopt("head/a", pulled)
    weight = model.heads["a"].weight
    assert weight.data_ptr() == pulled.ctypes.data                 # no copy
    np.testing.assert_array_equal(weight.detach().numpy().ravel(), pulled[: weight.numel()])
    model("a", torch.rand(1, 3, 16, 16)).sum().backward()           # gradients still land
    assert float(flat.grads["head/a"].abs().sum()) > 0


def test_wire_norm_sees_float16_overflow():
    from ps_trainer.transport.client import wire_norm

    assert wire_norm([np.array([3.0, 4.0], np.float32)]) == pytest.approx(5.0)
    big = encode_grad(torch.tensor([1e6]), "float16")              # overflows float16
    assert wire_norm([big]) == float("inf")


def test_saved_pieces_and_norm_statistics_load_into_another_model():
    """A batch-norm model's weights and its task's running statistics, saved as one actor's
    state, change what a fresh model predicts to exactly the saved model's prediction."""
    saved = tiny_model(norm="batch")
    flat = FlatModel(saved, ShardLayout.of(saved, shard_of))
    saved.train()
    saved("a", torch.rand(4, 3, 16, 16) * 5)                   # running stats move off 0/1
    plan = plan_pieces(flat.layout, 1)
    states = [{"weights": {p.key: flat.params[p.shard].numpy().copy() for p in plan},
               "norm_stats": {"a": {"trunk": flat.stats["trunk"].numpy().copy()}}}]
    fresh = tiny_model(norm="batch")
    target = FlatModel(fresh, ShardLayout.of(fresh, shard_of))
    images = torch.rand(2, 3, 16, 16)
    assert not torch.allclose(fresh.eval()("a", images), saved.eval()("a", images))
    assert load_pieces(target, states, plan, {"trunk", "head/a"}) == {"trunk", "head/a"}
    assert not torch.allclose(fresh.eval()("a", images), saved.eval()("a", images))   # stats
    load_norm_stats(target, states, "a")
    torch.testing.assert_close(fresh.eval()("a", images), saved.eval()("a", images))
