"""Trunk shapes, the multi-task model's wiring, lasso and harmonization."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ps_trainer.core.color import lab_to_rgb, lightness_as_rgb, rgb_to_lab
from ps_trainer.config import ModelConfig
from ps_trainer.model import Lasso, MultiTaskModel, Trunk, shard_of


@pytest.mark.parametrize("stem,expected", [(1, 8), (2, 4), (4, 2)])
def test_trunk_returns_every_stage_and_the_last_units_and_has_the_stated_stride(stem, expected):
    cfg = ModelConfig(widths=(4, 8, 16), blocks=(1, 2, 3), stem_stride=stem)
    trunk = Trunk(cfg)
    out = trunk(torch.rand(2, 3, 32, 32), last_units=True)
    assert len(out.stages) == 3 and len(out.last_units) == 3 and trunk.last_stage_units == 3
    assert out.stages[-1].shape == (2, 16, expected, expected)
    assert out.last_units[-1] is out.stages[-1]
    for stage, (width, stride) in enumerate(zip((4, 8, 16), trunk.stage_strides)):
        assert out.stages[stage].shape == (2, width, 32 // stride, 32 // stride)
    assert trunk.stride == 32 // expected and trunk.out_channels == 16
    assert trunk(torch.rand(1, 3, 32, 32)).last_units is None


def test_units_start_as_identity_residuals():
    """Zero-initialised last norm scale: a unit without projection passes its input through relu."""
    trunk = Trunk(ModelConfig(widths=(4, 4), blocks=(2, 1)))
    x = torch.relu(torch.randn(2, 4, 8, 8))
    torch.testing.assert_close(trunk.units[1](x), x)


def test_model_routes_tasks_to_their_heads_and_shards():
    cfg = ModelConfig(widths=(4, 8), blocks=(1, 1), lasso=True)
    model = MultiTaskModel(cfg, {"a": nn.Conv2d(8, 2, 1), "b": nn.Conv2d(8, 5, 1)})
    assert model("a", torch.rand(1, 3, 16, 16)).shape[1] == 2
    assert model("b", torch.rand(1, 3, 16, 16)).shape[1] == 5
    shards = {shard_of(n) for n, _ in model.named_parameters()}
    assert shards == {"trunk", "head/a", "head/b"}
    assert shard_of("lasso.b.alpha") == "head/b"
    with pytest.raises(ValueError):
        shard_of("other.weight")


def test_lasso_starts_on_the_last_unit_and_mixes_linearly():
    lasso = Lasso(3)
    units = [torch.full((1, 2, 2, 2), float(v)) for v in (1, 2, 3)]
    torch.testing.assert_close(lasso(units), units[-1])
    with torch.no_grad():
        lasso.alpha.copy_(torch.tensor([0.5, -1.0, 2.0]))
    torch.testing.assert_close(lasso(units), torch.full((1, 2, 2, 2), 0.5 - 2 + 6.0))
    assert float(lasso.penalty().detach()) == pytest.approx(3.5)


def test_lasso_penalty_is_the_task_regularizer():
    cfg = ModelConfig(widths=(4, 8), blocks=(1, 2), lasso=True, lasso_l1=0.1)
    model = MultiTaskModel(cfg, {"a": nn.Conv2d(8, 2, 1)})
    assert float(model.regularization("a").detach()) == pytest.approx(0.1)     # |one-hot| = 1
    plain = MultiTaskModel(ModelConfig(widths=(4, 8), blocks=(1, 2)), {"a": nn.Conv2d(8, 2, 1)})
    assert plain.regularization("a") == 0.0


def test_harmonized_model_sees_only_lightness():
    cfg = ModelConfig(widths=(4, 8), blocks=(1, 1), harmonize=True)
    model = MultiTaskModel(cfg, {"a": nn.Conv2d(8, 2, 1)})
    image = torch.rand(2, 3, 8, 8)
    prepared = model.prepare(image)
    torch.testing.assert_close(prepared[:, 0], prepared[:, 1])
    torch.testing.assert_close(prepared, model.prepare(lightness_as_rgb(image)), atol=1e-4, rtol=0)


def test_lab_round_trip_and_known_values():
    rgb = torch.rand(2, 3, 5, 5)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=2e-4, rtol=0)
    white = rgb_to_lab(torch.ones(1, 3, 1, 1)).flatten()
    torch.testing.assert_close(white, torch.tensor([100.0, 0.0, 0.0]), atol=1e-2, rtol=0)
    red = rgb_to_lab(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)).flatten()
    # sRGB red in CIE Lab (D65): L 53.24, a 80.09, b 67.20
    torch.testing.assert_close(red, torch.tensor([53.24, 80.09, 67.20]), atol=0.1, rtol=0)
