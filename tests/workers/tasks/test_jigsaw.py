import itertools

import numpy as np
import pytest
import torch

from ps_trainer_workers.tasks import TaskContext, make_task
from ps_trainer_workers.tasks.heads import crop_patches
from ps_trainer_workers.tasks.jigsaw import max_min_hamming_permutations


def pairwise_hamming(perms: np.ndarray) -> np.ndarray:
    return (perms[:, None, :] != perms[None, :, :]).sum(-1)


def test_permutation_set_is_distinct_and_far_apart():
    perms = max_min_hamming_permutations(64, seed=0)
    assert perms.shape == (64, 9)
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    distances = pairwise_hamming(perms)
    off_diagonal = distances[~np.eye(64, dtype=bool)]
    # 7 is what the greedy reaches for 64 of the 9! permutations (checked by brute force).
    assert off_diagonal.min() >= 7
    assert off_diagonal.mean() > 8.0


def test_permutation_set_depends_only_on_its_seed():
    assert np.array_equal(max_min_hamming_permutations(16, seed=3),
                          max_min_hamming_permutations(16, seed=3))
    assert not np.array_equal(max_min_hamming_permutations(16, seed=3),
                              max_min_hamming_permutations(16, seed=4))


def test_greedy_step_maximises_the_minimum_distance():
    # Brute-force reference on permutations of 5: every added permutation has the largest
    # minimum distance to those before it, among all 5! candidates.
    perms = max_min_hamming_permutations(10, n=5, seed=0)
    candidates = np.array(list(itertools.permutations(range(5))))
    for k in range(1, len(perms)):
        to_chosen = (candidates[:, None, :] != perms[None, :k, :]).sum(-1).min(1)
        chosen_min = (perms[k][None, :] != perms[:k]).sum(-1).min()
        assert chosen_min == to_chosen.max()


def test_crop_patches_matches_slicing(make_images):
    images = make_images(2)
    top = torch.tensor([[0, 5], [3, 20]])
    left = torch.tensor([[1, 7], [25, 0]])
    patches = crop_patches(images, top, left, 6)
    assert patches.shape == (2, 2, 3, 6, 6)
    for b in range(2):
        for k in range(2):
            y, x = top[b, k].item(), left[b, k].item()
            assert torch.equal(patches[b, k], images[b, :, y:y + 6, x:x + 6])


def test_inverse_permutation_restores_the_tiles(context, make_images):
    images = make_images(16)
    task = make_task("jigsaw", context, {})
    inputs, targets = task.make_batch(images, np.random.default_rng(5))
    t = task.tile_size
    assert inputs.shape == (16 * 9, 3, t, t)
    # make_batch cuts the tiles first, so the same seed gives the same unshuffled tiles.
    tiles = task.cut_tiles(images, np.random.default_rng(5))           # (B, 9, 3, t, t)
    shuffled = inputs.view(16, 9, 3, t, t)
    assert len(set(targets.tolist())) > 8
    for b, target in enumerate(targets.tolist()):
        perm = task.permutations[target]
        assert torch.equal(shuffled[b][torch.argsort(perm)], tiles[b])
        assert not torch.equal(shuffled[b], tiles[b]) or perm.tolist() == list(range(9))


def locate(image: torch.Tensor, patch: torch.Tensor) -> tuple[int, int]:
    """Top-left corner of the exact copy of `patch` in `image` (both (3, ., .))."""
    s = patch.shape[-1]
    windows = image.unfold(1, s, 1).unfold(2, s, 1)                # (3, H-s+1, W-s+1, s, s)
    match = (windows == patch[:, None, None]).all(-1).all(-1).all(0).nonzero()
    assert len(match) == 1
    return tuple(match[0].tolist())


@pytest.mark.parametrize("size", [32, 64])
def test_tiles_come_from_their_cells_with_gaps(size):
    task = make_task("jigsaw", TaskContext(size, 6, 4), {})
    cell, t = size // 3, task.tile_size
    assert (cell, t) == {32: (10, 7), 64: (21, 15)}[size]
    images = torch.from_numpy(np.random.default_rng(0).random((4, 3, size, size))).float()
    tiles = task.cut_tiles(images, np.random.default_rng(1))
    for b in range(4):
        corners = np.array([locate(images[b], tiles[b, j]) for j in range(9)]).reshape(3, 3, 2)
        slack, m = size - 3 * cell, task.margin                       # grid offset range
        for r, c in itertools.product(range(3), range(3)):
            y, x = corners[r, c]
            assert r * cell + m <= y <= r * cell + cell - t - m + slack
            assert c * cell + m <= x <= c * cell + cell - t - m + slack
        # Neighbouring tiles never touch: a gap of at least 2 margins separates them.
        assert (np.diff(corners[..., 1], axis=1) - t >= 2 * task.margin).all()
        assert (np.diff(corners[..., 0], axis=0) - t >= 2 * task.margin).all()
        assert task.margin >= 1


def test_head_groups_nine_tiles(context):
    task = make_task("jigsaw", context, {"num_permutations": 10})
    logits = task.head(16)(torch.randn(3 * 9, 16, 2, 2))
    assert logits.shape == (3, 10)


def test_head_sees_the_tile_order(context):
    # Swapping two tiles of an example changes its logits (the head is not order-invariant).
    head = make_task("jigsaw", context, {}).head(16)
    features = torch.randn(9, 16, 2, 2)
    swapped = features[[1, 0, 2, 3, 4, 5, 6, 7, 8]]
    assert not torch.allclose(head(features), head(swapped))


def test_too_small_images_are_rejected():
    with pytest.raises(ValueError, match="tile"):
        make_task("jigsaw", TaskContext(6, 6, 4), {"gap_fraction": 0.9})
