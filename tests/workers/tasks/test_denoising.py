import numpy as np
import pytest
import torch

from ps_trainer.config.options import ConfigError
from ps_trainer_workers.tasks import make_task


@pytest.mark.parametrize("std", [0.05, 0.1])
def test_noise_has_the_configured_statistics(context, make_images, std):
    images = make_images(16)
    task = make_task("denoising", context, {"noise_std": std})
    inputs, targets = task.make_batch(images, np.random.default_rng(0))
    assert torch.equal(targets, images)
    assert inputs.min() >= 0 and inputs.max() <= 1
    # Pixels 4 std from both ends are (almost) never clipped: there the noise is plain N(0, std).
    away_from_ends = (images > 4 * std) & (images < 1 - 4 * std)
    assert away_from_ends.sum() > 2000
    residual = (inputs - targets)[away_from_ends]
    assert abs(residual.mean().item()) < 0.05 * std
    assert residual.std().item() == pytest.approx(std, rel=0.05)


def test_noisy_inputs_are_clipped(context):
    images = torch.cat([torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32)])
    inputs, _ = make_task("denoising", context, {}).make_batch(images, np.random.default_rng(0))
    # About half the pixels of a black (white) image would go below 0 (above 1) unclipped.
    assert 0.4 < (inputs[0] == 0).float().mean() < 0.6
    assert 0.4 < (inputs[1] == 1).float().mean() < 0.6


def test_head_is_full_resolution_and_loss_is_mse(context, images):
    task = make_task("denoising", context, {})
    head = task.head(16)
    assert head(torch.randn(2, 16, 8, 8)).shape == (2, 3, 32, 32)
    assert task.loss(images + 0.1, images).item() == pytest.approx(0.01, rel=1e-4)
    # A half-resolution output is upsampled bilinearly before the comparison.
    flat = torch.full((2, 3, 16, 16), 0.5)
    assert task.loss(flat, torch.full((2, 3, 32, 32), 0.25)).item() == pytest.approx(0.0625)


def test_noise_std_must_be_positive(context):
    with pytest.raises(ConfigError, match="noise_std"):
        make_task("denoising", context, {"noise_std": 0})
