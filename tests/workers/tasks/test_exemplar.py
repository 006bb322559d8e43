import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ps_trainer.config.options import ConfigError
from ps_trainer_workers.tasks import make_task

IDENTITY = {"crop_range": [1.0, 1.0], "rotation_degrees": 0.0, "flip": False,
            "brightness_range": [1.0, 1.0], "contrast_range": [1.0, 1.0],
            "saturation_range": [1.0, 1.0], "hue_shift": 0.0}


@pytest.mark.parametrize("views", [2, 3])
def test_targets_are_the_source_images(context, images, views):
    task = make_task("exemplar", context, {**IDENTITY, "views": views})
    inputs, targets = task.make_batch(images, np.random.default_rng(0))
    assert inputs.shape == (views * 8, 3, 32, 32)
    assert targets.tolist() == list(range(8)) * views
    # With every augmentation off each view is its source image.
    for i, b in enumerate(targets.tolist()):
        assert torch.allclose(inputs[i], images[b], atol=1e-5)


def test_flips_only_give_the_image_or_its_mirror(context, images):
    task = make_task("exemplar", context, {**IDENTITY, "flip": True, "views": 4})
    inputs, targets = task.make_batch(images, np.random.default_rng(0))
    mirrored = [torch.allclose(inputs[i], images[b].flip(-1), atol=1e-5)
                for i, b in enumerate(targets.tolist())]
    same = [torch.allclose(inputs[i], images[b], atol=1e-5) for i, b in enumerate(targets.tolist())]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


def test_default_views_are_different_valid_images(context, images):
    task = make_task("exemplar", context, {})
    inputs, targets = task.make_batch(images, np.random.default_rng(0))
    assert inputs.dtype == torch.float32 and inputs.min() >= 0 and inputs.max() <= 1
    first, second = inputs[:8], inputs[8:]
    assert ((first - second).abs().flatten(1).mean(1) > 0.01).all()
    assert ((first - images).abs().flatten(1).mean(1) > 0.01).all()


def test_perfect_embedding_has_near_zero_loss(context):
    task = make_task("exemplar", context, {"views": 3})
    classes = torch.arange(5).repeat(3)
    embedding = F.one_hot(classes, 8).float()                       # identical per class
    assert task.loss(embedding, classes).item() < 1e-3
    # All views embedded alike: every class is equally likely, loss = log(5).
    assert task.loss(torch.ones(15, 8) / 8 ** 0.5, classes).item() == pytest.approx(np.log(5))


def reference_loss(z: torch.Tensor, classes: torch.Tensor, temperature: float) -> float:
    """Loop version: prototype of class c for view i = mean of c's views other than i."""
    total = 0.0
    for i in range(len(z)):
        logits = []
        for c in range(int(classes.max()) + 1):
            members = [j for j in range(len(z)) if classes[j] == c and j != i]
            prototype = F.normalize(z[members].mean(0), dim=0)
            logits.append(float(z[i] @ prototype) / temperature)
        logits = torch.tensor(logits)
        total += float(torch.logsumexp(logits, 0) - logits[classes[i]])
    return total / len(z)


def test_loss_matches_a_straightforward_reference(context):
    task = make_task("exemplar", context, {"views": 3, "temperature": 0.2})
    classes = torch.arange(4).repeat(3)
    z = F.normalize(torch.randn(12, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    assert task.loss(z, classes).item() == pytest.approx(reference_loss(z, classes, 0.2), rel=1e-5)


def test_head_embeddings_have_unit_length(context):
    head = make_task("exemplar", context, {"embedding_dim": 32}).head(16)
    z = head(torch.randn(6, 16, 8, 8))
    assert z.shape == (6, 32)
    assert torch.allclose(z.norm(dim=1), torch.ones(6), atol=1e-5)


def test_one_view_is_rejected(context):
    with pytest.raises(ConfigError, match="views"):
        make_task("exemplar", context, {"views": 1})
    with pytest.raises(ConfigError, match="crop_range"):
        make_task("exemplar", context, {"crop_range": [0.9, 0.5]})
