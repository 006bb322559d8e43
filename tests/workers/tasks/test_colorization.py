import numpy as np
import pytest
import torch

from ps_trainer.core.color import lab_to_rgb, rgb_to_lab
from ps_trainer.config.options import ConfigError
from ps_trainer_workers.tasks import make_task


def test_grid_bins_by_hand(context):
    quantizer = make_task("colorization", context, {}).quantizer
    assert quantizer.bins_per_axis == 23 and quantizer.num_bins == 529   # centres -110..110
    ab = torch.tensor([[0.0, 0.0], [-110.0, -110.0], [104.0, -3.0], [-200.0, 5.1]])
    bins = quantizer.encode(ab.T.reshape(1, 2, 4, 1)).flatten()
    # a index = round(a / 10) + 11, bin = a index * 23 + b index.
    assert bins.tolist() == [11 * 23 + 11, 0, 21 * 23 + 11, 0 * 23 + 12]
    centres = quantizer.decode(bins.view(1, 4, 1)).reshape(2, 4).T
    assert centres.tolist() == [[0, 0], [-110, -110], [100, 0], [-110, 10]]


@pytest.mark.parametrize("grid_size", [10.0, 20.0])
def test_decoded_targets_reproduce_the_image(context, make_images, grid_size):
    images = make_images(16)
    task = make_task("colorization", context, {"target_stride": 1, "grid_size": grid_size})
    inputs, targets = task.make_batch(images, np.random.default_rng(0))
    assert targets.shape == (16, 32, 32) and targets.dtype == torch.int64
    lab = rgb_to_lab(images)
    decoded_ab = task.quantizer.decode(targets)
    assert (decoded_ab - lab[:, 1:]).abs().max() <= grid_size / 2 + 1e-3
    rgb = lab_to_rgb(torch.cat([lab[:, :1], decoded_ab], dim=1))
    error = (rgb - images).abs().mean().item()
    grey_error = (lab_to_rgb(torch.cat([lab[:, :1], 0 * decoded_ab], 1)) - images).abs().mean()
    # Measured: 0.019 (grid 10) and 0.036 (grid 20); the grey image is far worse.
    assert error < 0.0025 * grid_size
    assert error < grey_error.item() / 3


def test_inputs_are_the_lightness_as_grey(context, images):
    task = make_task("colorization", context, {})
    inputs, _ = task.make_batch(images, np.random.default_rng(0))
    assert inputs.shape == images.shape
    assert torch.allclose(inputs[:, 0], inputs[:, 1], atol=1e-5)
    assert torch.allclose(inputs[:, 1], inputs[:, 2], atol=1e-5)
    assert torch.allclose(rgb_to_lab(inputs)[:, 0], rgb_to_lab(images)[:, 0], atol=1e-2)


def test_strided_targets_quantise_block_means(context, images):
    task = make_task("colorization", context, {})                   # target_stride 4
    _, targets = task.make_batch(images, np.random.default_rng(0))
    assert targets.shape == (8, 8, 8)
    ab = rgb_to_lab(images)[:, 1:].reshape(8, 2, 8, 4, 8, 4).mean(dim=(3, 5)).numpy()
    index = np.clip(np.round(ab / 10), -11, 11).astype(int) + 11     # (B, 2, 8, 8)
    assert np.array_equal(targets.numpy(), index[:, 0] * 23 + index[:, 1])


def test_rebalancing_is_uniform_before_any_batch(context):
    task = make_task("colorization", context, {})
    assert torch.equal(task.class_weights(), torch.ones(529))


def test_rebalancing_weights_match_the_formula(context, make_images):
    task = make_task("colorization", context, {"prior_sigma": 0.0, "target_stride": 1})
    _, first = task.make_batch(make_images(4, seed=1), np.random.default_rng(0))
    _, second = task.make_batch(make_images(4, seed=2), np.random.default_rng(0))
    counts = np.bincount(torch.cat([first, second]).flatten().numpy(), minlength=529)
    prior = counts / counts.sum()
    reference = 1.0 / (0.5 * prior + 0.5 / 529)
    reference /= (prior * reference).sum()
    weights = task.class_weights().numpy()
    assert np.allclose(weights, reference, rtol=1e-5)
    common, rare = np.argmax(counts), np.argmin(np.where(counts > 0, counts, counts.max() + 1))
    assert weights[rare] > weights[common]


def test_single_color_prior_by_hand(context):
    # Every pixel grey: p = one-hot, so w_grey = 1 and every other w = (1/2 + 1/2Q) / (1/2Q)
    # = Q + 1.
    task = make_task("colorization", context, {"prior_sigma": 0.0})
    grey = torch.full((2, 3, 32, 32), 0.5)
    _, targets = task.make_batch(grey, np.random.default_rng(0))
    grey_bin = 11 * 23 + 11
    assert (targets == grey_bin).all()
    weights = task.class_weights()
    assert weights[grey_bin].item() == pytest.approx(1.0)
    others = torch.cat([weights[:grey_bin], weights[grey_bin + 1:]])
    assert torch.allclose(others, torch.full_like(others, 530.0))
    # With a weight of 1 on the only target bin the loss is plain cross-entropy.
    logits = torch.randn(2, 529, 8, 8)
    plain = torch.nn.functional.cross_entropy(logits, targets)
    assert task.loss(logits, targets).item() == pytest.approx(plain.item(), rel=1e-6)


def test_smoothed_prior_still_up_weights_rare_colors(context):
    task = make_task("colorization", context, {"target_stride": 1})   # prior_sigma 5
    images = torch.full((4, 3, 32, 32), 0.5)
    images[:, :, :4, :4] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)  # a little red
    _, targets = task.make_batch(images, np.random.default_rng(0))
    grey_bin, red_bin = targets[0, 10, 10].item(), targets[0, 0, 0].item()
    weights = task.class_weights()
    assert weights[red_bin] > 5 * weights[grey_bin]
    logits = torch.zeros(4, 529, 32, 32)                            # equal CE at every pixel
    expected = np.log(529) * weights[targets].mean().item()
    assert task.loss(logits, targets).item() == pytest.approx(expected, rel=1e-5)


def test_options_are_validated(context):
    with pytest.raises(ConfigError, match="target_stride"):
        make_task("colorization", context, {"target_stride": 3})
    with pytest.raises(ConfigError, match="ab_range"):
        make_task("colorization", context, {"ab_range": 5.0})
