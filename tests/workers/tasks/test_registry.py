"""Checks every registered task passes, so a new task is tested by registering it."""
import numpy as np
import pytest
import torch

from ps_trainer.config.options import ConfigError
from ps_trainer_workers.tasks import TASKS, Task, TaskContext, make_task

PAPER_TASKS = {"rotation", "jigsaw", "relative_position", "colorization", "inpainting",
               "denoising", "exemplar", "segmentation"}


# Tasks with a head of their own (self-training trains the segmentation head).
OWN_HEAD = [name for name in TASKS.names() if TASKS.get(name).head_of is None]


def batch_for(task: Task, images: torch.Tensor, masks: torch.Tensor, seed: int = 0):
    return task.make_batch(images, np.random.default_rng(seed),
                           masks if task.uses_labels else None)


def test_every_task_of_the_paper_is_registered():
    assert PAPER_TASKS <= set(TASKS.names())
    # Labels reach segmentation, and domain_adaptation's source half; nothing else sees them.
    assert {name for name in TASKS.names() if TASKS.get(name).uses_labels} == {
        "segmentation", "domain_adaptation"}
    assert [name for name in TASKS.names() if TASKS.get(name).uses_both_splits] == [
        "domain_adaptation"]


def test_a_borrowed_head_belongs_to_a_registered_task_with_its_own():
    for name in TASKS.names():
        owner = TASKS.get(name).head_of
        assert owner is None or (owner in OWN_HEAD), name


def test_make_task_reports_the_bad_key(context):
    with pytest.raises(ConfigError, match="unknown key.*all_rotation"):
        make_task("rotation", context, {"all_rotation": True})
    with pytest.raises(KeyError, match="did you mean 'jigsaw'"):
        make_task("jigsaws", context, {})


@pytest.mark.parametrize("name", TASKS.names())
def test_options_default_from_an_empty_mapping(name, context):
    cls = TASKS.get(name)
    task = make_task(name, context, None)
    assert isinstance(task, cls) and task.options == cls.Options()


@pytest.mark.parametrize("name", TASKS.names())
def test_batch_shapes_and_types(name, context, images, make_masks):
    task = make_task(name, context, {})
    inputs, targets = batch_for(task, images, make_masks(images))
    assert inputs.dtype == torch.float32 and inputs.dim() == 4 and inputs.shape[1] == 3
    assert inputs.shape[0] % len(images) == 0
    assert 0.0 <= inputs.min() and inputs.max() <= 1.0
    # A paired batch's targets are its labelled (first) half's.
    labelled = len(images) // 2 if task.uses_both_splits else len(images)
    assert isinstance(targets, torch.Tensor) and targets.shape[0] % labelled == 0


@pytest.mark.parametrize("name", TASKS.names())
def test_same_seed_same_batch_whatever_the_torch_seed(name, context, images, make_masks):
    task = make_task(name, context, {})
    masks = make_masks(images)
    torch.manual_seed(1)
    first = batch_for(task, images, masks, seed=7)
    torch.manual_seed(2)
    second = batch_for(task, images, masks, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("name", OWN_HEAD)
def test_loss_is_finite_and_reaches_the_trunk(name, context, images, make_masks, make_model):
    task = make_task(name, context, {})
    model = make_model(name, task)
    inputs, targets = batch_for(task, images, make_masks(images))
    loss = task.loss(model(name, inputs), targets)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    stem = model.trunk.stem[0].weight.grad
    assert stem is not None and torch.isfinite(stem).all() and stem.abs().sum() > 0
    for param in model.heads[name].parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all()


@pytest.mark.parametrize("name", OWN_HEAD)
def test_head_is_small_and_free_of_batch_norm(name):
    task = make_task(name, TaskContext(image_size=64, num_classes=21, trunk_stride=8), {})
    head = task.head(64)
    assert sum(p.numel() for p in head.parameters()) < 150_000
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in head.modules())


@pytest.mark.parametrize("name", OWN_HEAD)
def test_head_overfits_one_batch(name, context, images, make_masks, train):
    task = make_task(name, context, {})
    losses = train(name, task, images, make_masks(images) if task.uses_labels else None,
                   steps=100)
    # Observed: every task ends below 0.08 of its first loss.
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.25 * losses[0]
