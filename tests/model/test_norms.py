"""Normalization layers, Switchable Normalization against hand computations."""
from __future__ import annotations

import pytest
import torch

from ps_trainer.model.norms import NORMS, SwitchableNorm2d, make_norm


@pytest.mark.parametrize("name", [n for n in NORMS.names() if n != "frozen_batch"])
def test_every_norm_normalises_and_trains(name):
    norm = make_norm(name, 8, groups=4)
    x = torch.randn(6, 8, 5, 5) * 3 + 2
    out = norm.train()(x)
    stats = out.detach()
    assert out.shape == x.shape
    assert abs(float(stats.mean())) < 0.2 and abs(float(stats.std()) - 1) < 0.2
    out.square().sum().backward()
    assert all(p.grad is not None for p in norm.parameters())


def test_frozen_batch_norm_applies_its_fixed_statistics_in_training_too():
    norm = make_norm("frozen_batch", 4)
    assert list(norm.parameters()) == []                      # nothing for the server to train
    stats = {"weight": torch.tensor([1.0, 2.0, 0.5, 1.0]), "bias": torch.tensor([0.0, 1.0, 0.0, -1.0]),
             "running_mean": torch.tensor([0.5, -1.0, 2.0, 0.0]),
             "running_var": torch.tensor([4.0, 1.0, 0.25, 9.0])}
    norm.load_state_dict(stats)
    x = torch.randn(3, 4, 5, 5)
    out = norm.train()(x)
    view = {k: v.view(1, 4, 1, 1) for k, v in stats.items()}
    expected = (x - view["running_mean"]) / torch.sqrt(view["running_var"] + norm.eps) \
        * view["weight"] + view["bias"]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(norm.running_mean, stats["running_mean"])   # unchanged by training


def test_group_norm_picks_a_divisor_and_layer_instance_shapes():
    assert make_norm("group", 12, groups=8).num_groups == 6
    assert make_norm("layer", 10).num_groups == 1
    assert make_norm("instance", 10).num_groups == 10


def _reference_stats(x):
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    return ((flat.mean(-1), flat.var(-1, unbiased=False)),                    # IN: (N, C)
            (flat.reshape(n, -1).mean(-1), flat.reshape(n, -1).var(-1, unbiased=False)),  # LN: (N,)
            (flat.transpose(0, 1).reshape(c, -1).mean(-1),                     # BN: (C,)
             flat.transpose(0, 1).reshape(c, -1).var(-1, unbiased=False)))


@pytest.mark.parametrize("pick", [0, 1, 2])
def test_switchable_norm_with_one_hot_importance_equals_in_ln_bn(pick):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6) * 2 + 1
    sn = SwitchableNorm2d(3, eps=0.0)
    with torch.no_grad():
        logits = torch.full((3,), -1e4)
        logits[pick] = 0
        sn.mean_logits.copy_(logits)
        sn.var_logits.copy_(logits)
    (m_in, v_in), (m_ln, v_ln), (m_bn, v_bn) = _reference_stats(x)
    mean, var = [(m_in[..., None, None], v_in[..., None, None]),
                 (m_ln.view(-1, 1, 1, 1), v_ln.view(-1, 1, 1, 1)),
                 (m_bn.view(1, -1, 1, 1), v_bn.view(1, -1, 1, 1))][pick]
    torch.testing.assert_close(sn.train()(x), (x - mean) / var.sqrt(), atol=1e-4, rtol=1e-4)


def test_switchable_norm_running_stats_are_used_in_eval():
    torch.manual_seed(0)
    sn = SwitchableNorm2d(2, momentum=1.0)
    x = torch.randn(8, 2, 4, 4) * 3 + 5
    sn.train()(x)
    flat = x.transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(sn.running_mean, flat.mean(-1))
    torch.testing.assert_close(sn.running_var, flat.var(-1, unbiased=True))
    # eval mode: one example's output must not depend on the rest of its batch
    sn.eval()
    a = sn(torch.cat([x[:1], x[1:2]]))[0]
    b = sn(torch.cat([x[:1], x[2:3] * 10]))[0]
    torch.testing.assert_close(a, b)


def test_importance_weights_learn():
    sn = SwitchableNorm2d(4)
    sn.train()(torch.randn(4, 4, 3, 3)).pow(3).sum().backward()
    assert sn.mean_logits.grad.abs().sum() > 0 and sn.var_logits.grad.abs().sum() > 0
