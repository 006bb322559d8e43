"""Self-training: views, pseudo-labels under a threshold, CutMix label routing, the FP stream,
the teacher, and the borrowed segmentation head."""
from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ps_trainer.core.checkpoint import CorruptCheckpoint, save_checkpoint
from ps_trainer.config import ConfigError, ModelConfig
from ps_trainer.model.multitask import MultiTaskModel, shard_of
from ps_trainer.core.params import FlatModel, ShardLayout, plan_pieces
from ps_trainer_workers.tasks import make_task
from ps_trainer_workers.tasks.base import TaskModel
from ps_trainer_workers.tasks.heads import resize_like
from ps_trainer_workers.tasks.views import cutmix_sources, gather_pixels, gaussian_blur

PLAIN = {"jitter_probability": 0.0, "grayscale_probability": 0.0, "blur_probability": 0.0,
         "cutmix_probability": 0.0, "flip_probability": 0.0}


def model_for(context, seed=0):
    torch.manual_seed(seed)
    seg = make_task("segmentation", context, {})
    return MultiTaskModel(ModelConfig(widths=(8, 16), blocks=(1, 1), stem_stride=2),
                          {"segmentation": seg.head(16)})


def test_it_trains_the_segmentation_head():
    task = make_task("self_training", None, {})
    assert task.head_name == "segmentation" and not task.uses_labels
    with pytest.raises(TypeError, match="segmentation"):
        task.head(16)


def test_without_perturbations_the_strong_view_is_the_weak_view(context, images):
    task = make_task("self_training", context, PLAIN)
    inputs, source = task.make_batch(images, np.random.default_rng(0))
    weak, strong = inputs.chunk(2)
    assert torch.equal(weak, images) and torch.equal(strong, images)
    assert torch.equal(source, torch.arange(8).view(8, 1, 1).expand(8, 32, 32))


def test_cutmix_pastes_another_images_pixels_and_says_where_from(context, images):
    task = make_task("self_training", context, {**PLAIN, "cutmix_probability": 1.0})
    inputs, source = task.make_batch(images, np.random.default_rng(3))
    weak, strong = inputs.chunk(2)
    own = torch.arange(8).view(8, 1, 1)
    pasted = source != own
    assert pasted.any(dim=(1, 2)).all()                      # every image got a box
    assert 0.01 < pasted.float().mean() < 0.45
    for i in range(8):
        ys, xs = torch.nonzero(pasted[i], as_tuple=True)
        j = int(source[i, ys[0], xs[0]])
        assert j != i and (source[i][pasted[i]] == j).all()   # one box, one donor
        assert torch.equal(strong[i][:, pasted[i]], weak[j][:, pasted[i]])
        assert torch.equal(strong[i][:, ~pasted[i]], weak[i][:, ~pasted[i]])


def test_blur_keeps_constant_images_and_smooths_edges():
    flat = torch.full((2, 3, 16, 16), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, np.random.default_rng(0), 1.0), flat)
    edge = torch.zeros(1, 3, 16, 16)
    edge[..., 8:] = 1.0
    blurred = gaussian_blur(edge, np.random.default_rng(0), 1.0, sigma_range=(1.5, 1.5))
    assert 0.05 < float(blurred[0, 0, 5, 7]) < 0.5 < float(blurred[0, 0, 5, 8]) < 0.95


def test_gather_pixels_routes_every_pixel():
    values = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    source = torch.tensor([[[0, 1], [1, 0]], [[1, 1], [0, 1]]])
    out = gather_pixels(values, source)
    for b in range(2):
        for y in range(2):
            for x in range(2):
                assert torch.equal(out[b, :, y, x], values[source[b, y, x], :, y, x])
    assert cutmix_sources(1, (4, 4), np.random.default_rng(0), 1.0).eq(0).all()


def test_only_confident_pixels_count_and_labels_follow_the_source():
    """Hand-computed: two 1x2 images, 3 classes, threshold 0.9."""
    task = make_task("self_training", None, {"threshold": 0.9})
    big = 10.0
    teacher = torch.zeros(2, 3, 1, 2)
    teacher[0, 2, 0, 0] = big      # image 0, pixel 0: class 2, confident
    teacher[0, 1, 0, 1] = 0.5      # image 0, pixel 1: class 1, not confident
    teacher[1, 0, 0, :] = big      # image 1: class 0 everywhere, confident
    student = torch.randn(2, 3, 1, 2)
    source = torch.tensor([[[0, 1]], [[1, 1]]])       # image 0 pixel 1 comes from image 1
    loss = task.consistency(teacher, student, source)
    logp = F.log_softmax(student, dim=1)
    expected = -(logp[0, 2, 0, 0] + logp[0, 0, 0, 1] + logp[1, 0, 0, 0] + logp[1, 0, 0, 1]) / 4
    torch.testing.assert_close(loss, expected)
    assert math.exp(big) / (math.exp(big) + 2) > 0.9 > math.exp(0.5) / (math.exp(0.5) + 2)


def test_unconfident_teacher_gives_zero_loss(context, images):
    task = make_task("self_training", context, {"threshold": 0.99})
    model = model_for(context)
    loss = task.training_loss(TaskModel(model, "segmentation"), images, np.random.default_rng(0))
    assert loss.detach().item() == 0.0            # a fresh 6-class head is never 99 % sure


@pytest.mark.parametrize("options", [{"feature_dropout": 0.0}, {"feature_dropout": 0.5},
                                     {"teacher": "ema"}])
def test_loss_reaches_the_trunk_and_the_segmentation_head_only(context, images, options):
    task = make_task("self_training", context, {"threshold": 0.0, **options})
    model = model_for(context)
    loss = task.training_loss(TaskModel(model, "segmentation"), images, np.random.default_rng(0))
    assert loss > 0 and torch.isfinite(loss)
    loss.backward()
    assert model.trunk.stem[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.heads["segmentation"].parameters())


def test_feature_perturbation_changes_the_loss(context, images):
    model = model_for(context)
    view = TaskModel(model, "segmentation")
    plain = make_task("self_training", context, {"threshold": 0.0, "feature_dropout": 0.0})
    fp = make_task("self_training", context, {"threshold": 0.0, "feature_dropout": 0.5})
    a = plain.training_loss(view, images, np.random.default_rng(0))
    b = fp.training_loss(view, images, np.random.default_rng(0))
    assert not torch.isclose(a, b)


def test_ema_teacher_starts_at_the_weights_and_lags_behind(context, images):
    task = make_task("self_training", context, {"teacher": "ema", "ema_decay": 0.9})
    model = model_for(context)
    view = TaskModel(model, "segmentation")
    task.training_loss(view, images, np.random.default_rng(0))
    first = next(task.teacher.ema.parameters()).clone()
    torch.testing.assert_close(first, next(model.parameters()).detach())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    task.training_loss(view, images, np.random.default_rng(0))
    torch.testing.assert_close(next(task.teacher.ema.parameters()), first + 0.1)   # (1 - 0.9) of the move


def test_self_training_alone_sharpens_predictions(context, images):
    """Trained on its own pseudo-labels, the model grows more confident (entropy minimisation
    is what self-training does to unlabelled data)."""
    task = make_task("self_training", context, {"threshold": 0.0, "cutmix_probability": 0.0})
    model = model_for(context)
    view = TaskModel(model, "segmentation")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def confidence():
        with torch.no_grad():
            return float(model("segmentation", images).softmax(1).max(1).values.mean())

    before = confidence()
    for step in range(40):
        loss = task.training_loss(view, images, np.random.default_rng(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert confidence() > before + 0.2


def test_class_quantile_keeps_the_unsure_classes_too():
    """Threshold 0.9 keeps only the sure class 0; class_quantile 0.5 also keeps the more
    confident half of the class-1 pixels."""
    confidence = torch.tensor([[[0.99, 0.98, 0.60, 0.50, 0.40, 0.30]]])
    labels = torch.tensor([[[0, 0, 1, 1, 1, 1]]])
    plain = make_task("self_training", None, {"threshold": 0.9})
    assert plain.selected(confidence, labels, 2).tolist() == [[[True, True, False, False,
                                                                False, False]]]
    balanced = make_task("self_training", None, {"threshold": 0.9, "class_quantile": 0.5})
    assert balanced.selected(confidence, labels, 2).tolist() == [[[True, True, True, True,
                                                                   False, False]]]


def test_rampup_scales_the_first_steps(context, images):
    model = model_for(context)
    view = TaskModel(model, "segmentation")
    plain = {"threshold": 0.0, "feature_dropout": 0.0}         # dropout draws from torch's RNG
    full = make_task("self_training", context, plain)
    ramped = make_task("self_training", context, {**plain, "rampup_steps": 4})
    for step in range(1, 6):
        a = full.training_loss(view, images, np.random.default_rng(step))
        b = ramped.training_loss(view, images, np.random.default_rng(step))
        torch.testing.assert_close(b, a * min(step / 4, 1.0))


def saved_model(path, model, shards=("trunk", "head/segmentation")):
    """`model`'s weights of `shards` as a one-actor checkpoint at `path`."""
    flat = FlatModel(model, ShardLayout.of(model, shard_of))
    plan = [asdict(p) for p in plan_pieces(flat.layout, 1) if p.shard in shards]
    weights = {p["key"]: flat.params[p["shard"]].numpy().copy() for p in plan}
    save_checkpoint(path, {"servers": [{"version": 1, "weights": weights, "norm_stats": {}}],
                           "plan": plan})
    return str(path)


def test_checkpoint_teacher_is_the_saved_model_and_stays_fixed(context, images, tmp_path):
    teacher_model = model_for(context, seed=1)
    path = saved_model(tmp_path / "teacher.pt", teacher_model)
    task = make_task("self_training", context, {**PLAIN, "threshold": 0.0, "feature_dropout": 0.0,
                                                "teacher": "checkpoint",
                                                "teacher_checkpoint": path})
    student = model_for(context, seed=2)
    view = TaskModel(student, "segmentation")
    with torch.no_grad():
        expected = teacher_model.eval()("segmentation", images)
        own = student("segmentation", images)
    assert not torch.allclose(own, expected)                 # the student is another model
    loss = task.training_loss(view, images, np.random.default_rng(0))
    identity = torch.arange(8).view(8, 1, 1).expand(8, 32, 32)
    torch.testing.assert_close(loss, task.consistency(expected, student("segmentation", images),
                                                      identity))
    with torch.no_grad():                                    # the student moves on ...
        for p in student.parameters():
            p.add_(0.5)
    task.training_loss(view, images, np.random.default_rng(1))
    torch.testing.assert_close(task.teacher.logits(view, images), expected)   # ... the teacher does not
    assert not any(p.requires_grad for p in task.teacher.fixed.parameters())


def test_checkpoint_teacher_needs_a_matching_checkpoint_with_the_head(context, images,
                                                                       tmp_path):
    student = TaskModel(model_for(context), "segmentation")

    def teacher_from(path):
        return make_task("self_training", context, {"teacher": "checkpoint",
                                                    "teacher_checkpoint": str(path)})

    with pytest.raises(CorruptCheckpoint, match="no such checkpoint file"):
        teacher_from(tmp_path / "missing.pt").training_loss(student, images,
                                                            np.random.default_rng(0))
    trunk_only = saved_model(tmp_path / "trunk.pt", model_for(context), shards=("trunk",))
    with pytest.raises(ValueError, match=r"holds no \['head/segmentation'\].*segmentation head"):
        teacher_from(trunk_only).training_loss(student, images, np.random.default_rng(0))
    seg = make_task("segmentation", context, {})
    wider = MultiTaskModel(ModelConfig(widths=(8, 24), blocks=(1, 1), stem_stride=2),
                           {"segmentation": seg.head(24)})
    other = saved_model(tmp_path / "wider.pt", wider)
    with pytest.raises(ValueError, match="different model config"):
        teacher_from(other).training_loss(student, images, np.random.default_rng(0))


def test_checkpoint_teacher_and_its_file_go_together():
    with pytest.raises(ConfigError, match="teacher_checkpoint"):
        make_task("self_training", None, {"teacher": "checkpoint"})
    with pytest.raises(ConfigError, match="teacher_checkpoint"):
        make_task("self_training", None, {"teacher_checkpoint": "x.pt"})


def _probs_at(model, images, factor=1.0, mirror=False):
    """The class probabilities of `model` on `images` resized by `factor` (and mirrored),
    brought back to the images' size: the teacher's views, written out."""
    x = images.flip(-1) if mirror else images
    if factor != 1.0:
        x = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    logits = F.interpolate(model("segmentation", x), size=images.shape[-2:], mode="bilinear",
                           align_corners=False)
    probs = logits.softmax(1)
    return probs.flip(-1) if mirror else probs


def test_flip_teacher_averages_the_view_and_its_mirror(context, images, tmp_path):
    teacher_model = model_for(context, seed=1).eval()
    path = saved_model(tmp_path / "teacher.pt", teacher_model)
    view = TaskModel(model_for(context, seed=2), "segmentation")
    flip = make_task("self_training", context, {"teacher": "checkpoint", "teacher_checkpoint": path,
                                                "teacher_flip": True})
    with torch.no_grad():
        probs = (_probs_at(teacher_model, images) + _probs_at(teacher_model, images, mirror=True)) / 2
    torch.testing.assert_close(flip.teacher.logits(view, images).softmax(1), probs)
    plain = make_task("self_training", context, {"teacher": "checkpoint", "teacher_checkpoint": path})
    plain_probs = resize_like(plain.teacher.logits(view, images), tuple(images.shape[-2:])).softmax(1)
    assert not torch.allclose(plain_probs, probs)
    with pytest.raises(ConfigError, match="teacher_flip"):
        make_task("self_training", None, {"teacher_flip": True})


def test_multiscale_teacher_averages_resized_and_mirrored_views(context, images, tmp_path):
    teacher_model = model_for(context, seed=1).eval()
    path = saved_model(tmp_path / "teacher.pt", teacher_model)
    view = TaskModel(model_for(context, seed=2), "segmentation")
    task = make_task("self_training", context, {"teacher": "checkpoint", "teacher_checkpoint": path,
                                                "teacher_scales": [1.0, 1.5],
                                                "teacher_flip": True})
    with torch.no_grad():
        probs = sum(_probs_at(teacher_model, images, f, m)
                    for f in (1.0, 1.5) for m in (False, True)) / 4
        flip_only = (_probs_at(teacher_model, images)
                     + _probs_at(teacher_model, images, mirror=True)) / 2
    got = task.teacher.logits(view, images).softmax(1)
    assert got.shape[-2:] == images.shape[-2:]
    torch.testing.assert_close(got, probs)
    assert not torch.allclose(got, flip_only, atol=1e-4)
    # the pseudo-labels it gives count in the loss: a different teacher, a different loss
    one_scale = make_task("self_training", context, {"teacher": "checkpoint",
                                                     "teacher_checkpoint": path,
                                                     "teacher_flip": True, "threshold": 0.0})
    two_scales = make_task("self_training", context, {"teacher": "checkpoint",
                                                      "teacher_checkpoint": path,
                                                      "teacher_flip": True, "threshold": 0.0,
                                                      "teacher_scales": [1.0, 1.5]})
    losses = [t.training_loss(view, images, np.random.default_rng(3)).item()
              for t in (one_scale, two_scales)]
    assert losses[0] != pytest.approx(losses[1], rel=1e-6)
    with pytest.raises(ConfigError, match="teacher_scales"):
        make_task("self_training", None, {"teacher_scales": [1.0, 1.5]})
    with pytest.raises(ConfigError, match="teacher_scales"):
        make_task("self_training", None, {"teacher": "ema", "teacher_scales": []})
