"""The fused flat optimizer against torch.optim, and the LR schedules by hand."""
from __future__ import annotations

import math

import pytest
import torch

from ps_trainer.config import OptimizerConfig
from ps_trainer.core.optim import FUSED, FlatOptimizer, learning_rate

REFERENCES = {
    "sgd": lambda p, cfg: torch.optim.SGD([p], lr=cfg.lr, momentum=cfg.momentum,
                                          weight_decay=cfg.weight_decay),
    "adamw": lambda p, cfg: torch.optim.AdamW([p], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                             weight_decay=cfg.weight_decay),
    "rmsprop": lambda p, cfg: torch.optim.RMSprop([p], lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps,
                                                  momentum=cfg.momentum,
                                                  weight_decay=cfg.weight_decay),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("momentum,decay", [(0.9, 1e-2), (0.0, 0.0), (0.0, 1e-2)])
@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.skipif(
    not FUSED, reason="this PyTorch has no CPU fused optimizer kernels"))])
def test_matches_torch_optim(name, momentum, decay, fused):
    torch.manual_seed(0)
    cfg = OptimizerConfig(name=name, lr=0.01, momentum=momentum, weight_decay=decay)
    weights = torch.randn(257)
    param = torch.nn.Parameter(weights.clone())
    reference = REFERENCES[name](param, cfg)
    opt = FlatOptimizer(cfg, fused=fused)
    opt.add_piece("w", weights)
    for _ in range(25):
        grad = torch.randn(257)
        opt.step("w", weights, grad * 0.25, cfg.lr, scale=4.0)   # the scale folds into the grad
        param.grad = grad.clone()
        reference.step()
    torch.testing.assert_close(weights, param.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_low_precision_gradients_accumulate_in_float32(dtype, name):
    cfg = OptimizerConfig(name=name, lr=0.1, momentum=0.9, weight_decay=0.0)
    exact, low = torch.zeros(64), torch.zeros(64)
    a, b = FlatOptimizer(cfg), FlatOptimizer(cfg)
    a.add_piece("w", exact)
    b.add_piece("w", low)
    grad = torch.linspace(-1, 1, 64)
    for _ in range(10):
        a.step("w", exact, grad, 0.1, 1.0)
        b.step("w", low, grad.to(dtype), 0.1, 1.0)
    assert low.dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in b.state["w"].values())
    torch.testing.assert_close(low, exact, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("name", ["sgd", "adamw", "rmsprop"])
def test_incoming_gradient_is_never_written(name):
    """Gradients are read-only views of Ray's object store: the update must only read them."""
    cfg = OptimizerConfig(name=name, lr=0.1, momentum=0.9, weight_decay=1e-2)
    opt, w = FlatOptimizer(cfg), torch.randn(100)
    opt.add_piece("w", w)
    grad = torch.randn(100)
    before = grad.clone()
    for scale in (1.0, 0.3, 0.0):
        opt.step("w", w, grad, 0.1, scale)
    assert torch.equal(grad, before)


def test_zero_scale_applies_only_momentum_and_decay():
    cfg = OptimizerConfig(name="sgd", lr=1.0, momentum=0.5, weight_decay=0.0)
    opt, w = FlatOptimizer(cfg), torch.zeros(3)
    opt.add_piece("w", w)
    opt.step("w", w, torch.ones(3), 1.0, 1.0)        # buf = 1, w = -1
    opt.step("w", w, torch.full((3,), 7.0), 1.0, 0.0)  # buf = 0.5, w = -1.5
    torch.testing.assert_close(w, torch.full((3,), -1.5))


def test_schedules_by_hand():
    cfg = OptimizerConfig(lr=1.0, schedule="cosine", warmup_updates=10, min_lr_ratio=0.1)
    assert learning_rate(cfg, 0, 110) == pytest.approx(0.1)          # warm-up starts at lr/10
    assert learning_rate(cfg, 9, 110) == pytest.approx(1.0)
    assert learning_rate(cfg, 10, 110) == pytest.approx(1.0)
    assert learning_rate(cfg, 60, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert learning_rate(cfg, 110, 110) == pytest.approx(0.1)
    assert learning_rate(cfg, 500, 110) == pytest.approx(0.1)        # stays at the floor
    step = OptimizerConfig(lr=1.0, schedule="step", step_every_updates=100, step_gamma=0.5)
    assert [learning_rate(step, u, 1000) for u in (0, 99, 100, 250)] == [1.0, 1.0, 0.5, 0.25]
    assert learning_rate(OptimizerConfig(lr=0.3, schedule="constant"), 10_000, 10) == 0.3


def test_state_dict_round_trip_and_wrong_optimizer():
    cfg = OptimizerConfig(name="adamw")
    w = torch.randn(10)
    opt = FlatOptimizer(cfg)
    opt.add_piece("w", w)
    opt.step("w", w, torch.randn(10), 0.01, 1.0)
    other = FlatOptimizer(cfg)
    other.add_piece("w", torch.zeros(10))
    other.load_state_dict(opt.state_dict())
    assert other.steps["w"] == 1
    torch.testing.assert_close(other.state["w"]["exp_avg"], opt.state["w"]["exp_avg"])
    sgd = FlatOptimizer(OptimizerConfig(name="sgd"))
    sgd.add_piece("w", w)
    with pytest.raises(ValueError, match="adamw"):
        sgd.load_state_dict(opt.state_dict())
    saved = {**opt.state_dict(), "name": "adam"}     # written before the optimizer was 'adamw'
    older = FlatOptimizer(cfg)
    older.add_piece("w", torch.zeros(10))
    older.load_state_dict(saved)
    torch.testing.assert_close(older.state["w"]["exp_avg_sq"], opt.state["w"]["exp_avg_sq"])
