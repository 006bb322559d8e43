import numpy as np
import pytest
import torch

from ps_trainer.config.options import ConfigError
from ps_trainer_workers.tasks import TaskContext, make_task

# Target -> (row step, col step) of the second patch, row-major around the centre.
EXPECTED_DIRECTION = {0: (-1, -1), 1: (-1, 0), 2: (-1, 1), 3: (0, -1),
                      4: (0, 1), 5: (1, -1), 6: (1, 0), 7: (1, 1)}


def locate(image: torch.Tensor, patch: torch.Tensor) -> np.ndarray:
    """Top-left corner of the exact copy of `patch` in `image` (both (3, ., .))."""
    s = patch.shape[-1]
    windows = image.unfold(1, s, 1).unfold(2, s, 1)                # (3, H-s+1, W-s+1, s, s)
    match = (windows == patch[:, None, None]).all(-1).all(-1).all(0).nonzero()
    assert len(match) == 1
    return match[0].numpy()


def noise_images(batch: int, size: int) -> torch.Tensor:
    """Random pixels: every patch occurs exactly once, so it can be located."""
    return torch.from_numpy(np.random.default_rng(0).random((batch, 3, size, size))).float()


@pytest.mark.parametrize("size, geometry", [(32, (7, 3, 0)), (64, (15, 7, 1))])
def test_patch_geometry_scales_the_papers_ratios(size, geometry):
    # 96-px patches, 48-px gaps, 7-px jitter: p = floor(size / (3 + 2 * 0.5 + 2 * 7 / 96)).
    task = make_task("relative_position", TaskContext(size, 6, 4), {})
    assert (task.patch_size, task.gap, task.jitter) == geometry


@pytest.mark.parametrize("size", [32, 64])
def test_target_says_where_the_second_patch_was_cut(size):
    task = make_task("relative_position", TaskContext(size, 6, 4), {"color_dropping": False})
    images = noise_images(48, size)
    inputs, targets = task.make_batch(images, np.random.default_rng(2))
    p, step, j = task.patch_size, task.patch_size + task.gap, task.jitter
    assert inputs.shape == (96, 3, p, p) and targets.shape == (48,)
    assert set(targets.tolist()) == set(range(8))
    pairs = inputs.view(48, 2, 3, p, p)
    for b, target in enumerate(targets.tolist()):
        centre = locate(images[b], pairs[b, 0])
        second = locate(images[b], pairs[b, 1])
        expected = np.array(EXPECTED_DIRECTION[target]) * step
        assert (np.abs(second - centre - expected) <= 2 * j).all()


def test_color_dropping_keeps_exactly_one_channel(context):
    images = noise_images(16, 32)
    plain = make_task("relative_position", context, {"color_dropping": False})
    dropped = make_task("relative_position", context, {})
    # Color dropping draws after the geometry, so the same seed cuts the same patches.
    reference, targets = plain.make_batch(images, np.random.default_rng(3))
    inputs, same_targets = dropped.make_batch(images, np.random.default_rng(3))
    assert torch.equal(targets, same_targets)
    kept = (inputs == reference).flatten(2).all(-1)                 # (N, 3)
    assert (kept.sum(1) == 1).all()
    assert len(set(kept.float().argmax(1).tolist())) == 3
    dropped_channels = inputs[~kept]                                # (2N, p, p)
    assert dropped_channels.mean().item() == pytest.approx(0.5, abs=0.01)
    # Noise ~1/100 of the kept channel's std (uniform pixels: std ~0.29).
    assert 0.001 < dropped_channels.std().item() < 0.006


def test_head_groups_pairs(context):
    head = make_task("relative_position", context, {}).head(16)
    assert head(torch.randn(10, 16, 2, 2)).shape == (5, 8)


def test_options_are_validated(context):
    with pytest.raises(ConfigError, match="gap_ratio"):
        make_task("relative_position", context, {"gap_ratio": -1})
