import numpy as np
import pytest
import torch

from ps_trainer.config.options import ConfigError
from ps_trainer_workers.tasks import make_task


def test_all_rotations_layout_and_undo(context, images):
    task = make_task("rotation", context, {})
    inputs, targets = task.make_batch(images, np.random.default_rng(0))
    assert inputs.shape == (4 * len(images), 3, 32, 32)
    assert targets.tolist() == [0, 1, 2, 3] * len(images)
    for i, k in enumerate(targets.tolist()):
        restored = torch.rot90(inputs[i], -k, dims=(-2, -1))
        assert torch.equal(restored, images[i // 4])


def test_one_random_rotation_per_image_can_be_undone(context, make_images):
    images = make_images(32)
    task = make_task("rotation", context, {"all_rotations": False})
    inputs, targets = task.make_batch(images, np.random.default_rng(1))
    assert inputs.shape == images.shape and targets.shape == (32,)
    assert set(targets.tolist()) == {0, 1, 2, 3}
    for i, k in enumerate(targets.tolist()):
        assert torch.equal(torch.rot90(inputs[i], -k, dims=(-2, -1)), images[i])


def test_target_one_is_a_quarter_turn_counter_clockwise(context):
    # A single lit pixel at the top-right corner moves to the top-left corner.
    image = torch.zeros(1, 3, 32, 32)
    image[0, :, 0, 31] = 1.0
    inputs, _ = make_task("rotation", context, {}).make_batch(image, np.random.default_rng(0))
    lit = inputs[1, 0].nonzero().tolist()
    assert lit == [[0, 0]]


def test_head_output_and_loss(context, images):
    task = make_task("rotation", context, {})
    head = task.head(16)
    logits = head(torch.randn(12, 16, 8, 8))
    assert logits.shape == (12, 4)
    uniform = task.loss(torch.zeros(12, 4), torch.arange(4).repeat(3))
    assert uniform.item() == pytest.approx(np.log(4), rel=1e-6)


def test_options_are_validated(context):
    with pytest.raises(ConfigError, match="all_rotations"):
        make_task("rotation", context, {"all_rotations": "yes"})
