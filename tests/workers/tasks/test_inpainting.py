import numpy as np
import pytest
import torch

from ps_trainer.config.options import ConfigError
from ps_trainer_workers.tasks import make_task


def test_hole_is_a_square_filled_with_the_visible_mean(context, make_images):
    images = make_images(8)
    task = make_task("inpainting", context, {})
    inputs, targets = task.make_batch(images, np.random.default_rng(0))
    assert targets.shape == (8, 4, 32, 32)
    assert torch.equal(targets[:, :3], images)
    hole = targets[:, 3]
    corners = set()
    for b in range(8):
        rows, cols = hole[b].nonzero().T
        top, left = rows.min().item(), cols.min().item()
        corners.add((top, left))
        expected = torch.zeros(32, 32)
        expected[top:top + 16, left:left + 16] = 1.0                # side 0.5 * 32
        assert torch.equal(hole[b], expected)
        inside = expected.bool()
        assert torch.equal(inputs[b][:, ~inside], images[b][:, ~inside])
        visible_mean = images[b][:, ~inside].mean(dim=1)             # (3,)
        filled = inputs[b][:, inside]                                # (3, 256)
        assert torch.allclose(filled, visible_mean[:, None].expand_as(filled), atol=1e-6)
    assert len(corners) > 4                                          # positions are random


def test_centre_hole(context, images):
    task = make_task("inpainting", context, {"hole_position": "centre", "hole_fraction": 0.25})
    _, targets = task.make_batch(images, np.random.default_rng(0))
    expected = torch.zeros(32, 32)
    expected[12:20, 12:20] = 1.0
    assert torch.equal(targets[:, 3], expected.expand(len(images), 32, 32))


def test_loss_counts_the_hole_only(context, images):
    task = make_task("inpainting", context, {})
    inputs, targets = task.make_batch(images, np.random.default_rng(0))
    hole = targets[:, 3:].bool()
    garbage = torch.rand_like(images) * 5
    perfect_in_hole = torch.where(hole, images, garbage)
    assert task.loss(perfect_in_hole, targets).item() == 0.0
    off_by_tenth = torch.where(hole, images + 0.1, garbage)
    assert task.loss(off_by_tenth, targets).item() == pytest.approx(0.01, rel=1e-4)


def test_head_is_full_resolution(context):
    head = make_task("inpainting", context, {}).head(16)
    assert head(torch.randn(2, 16, 8, 8)).shape == (2, 3, 32, 32)


def test_options_are_validated(context):
    with pytest.raises(ConfigError, match="hole_position"):
        make_task("inpainting", context, {"hole_position": "center-ish"})
    with pytest.raises(ConfigError, match="hole_fraction"):
        make_task("inpainting", context, {"hole_fraction": 1.0})
