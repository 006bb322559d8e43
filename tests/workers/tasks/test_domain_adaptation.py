"""Domain-adaptive self-training: class mixing across domains, the quality weight, MIC's
masked images, paired batches from both splits, and the borrowed segmentation head."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ps_trainer.config import ConfigError
from ps_trainer_workers.tasks import make_task
from ps_trainer_workers.tasks.base import TaskModel
from ps_trainer_workers.tasks.views import block_mask, class_mix_masks

PLAIN = {"jitter_probability": 0.0, "blur_probability": 0.0, "flip_probability": 0.0,
         "rare_class_temperature": 0.0, "fourier_beta": 0.0}


def test_it_trains_the_segmentation_head_from_paired_batches():
    task = make_task("domain_adaptation", None, {})
    assert task.head_name == "segmentation"
    assert task.uses_labels and task.uses_both_splits
    with pytest.raises(ValueError, match="paired batch"):
        task.make_batch(torch.zeros(3, 3, 8, 8), np.random.default_rng(0),
                        torch.zeros(3, 8, 8, dtype=torch.long))


def test_class_mix_pastes_whole_classes_about_half_of_them():
    masks = torch.randint(0, 6, (4, 16, 16))
    masks[0, :4] = 255                                     # padding is never pasted
    chosen = class_mix_masks(masks, np.random.default_rng(0), 0.5)
    for i in range(4):
        present = set(torch.unique(masks[i]).tolist()) - {255}
        picked = set(torch.unique(masks[i][chosen[i]]).tolist())
        assert picked <= present and len(picked) == round(len(present) / 2)
        for c in present:                                  # a class goes in whole, or not at all
            assert chosen[i][masks[i] == c].all() or not chosen[i][masks[i] == c].any()
    assert torch.equal(class_mix_masks(torch.full((1, 4, 4), 255), np.random.default_rng(0)),
                       torch.zeros(1, 4, 4, dtype=torch.bool))


def test_block_mask_blanks_whole_blocks_at_the_ratio():
    mask = block_mask((64, 3, 32, 32), np.random.default_rng(0), 0.7, 8, torch.device("cpu"))
    assert mask.shape == (64, 1, 32, 32)
    blocks = mask.view(64, 4, 8, 4, 8)
    assert (blocks.amin(dim=(2, 4)) == blocks.amax(dim=(2, 4))).all()   # constant per block
    assert abs(float(1 - mask.mean()) - 0.7) < 0.05


def pair(make_images, make_masks, b=4):
    source, target = make_images(b, seed=1), make_images(b, seed=2)
    masks = torch.cat([make_masks(source), torch.full((b, 32, 32), 255)])
    return torch.cat([source, target]), masks


def test_the_quality_weight_counts_target_pixels_by_the_teachers_confidence(
        context, make_images, make_masks, make_model):
    """source_weight 0: with a teacher never confident enough (threshold near 1) only the
    pasted source pixels count; at threshold 0 every target pixel counts too."""
    images, masks = pair(make_images, make_masks)
    seg = make_task("segmentation", context, {})
    view = TaskModel(make_model("segmentation", seg), "segmentation")
    losses = {}
    for threshold in (0.0, 0.999):
        task = make_task("domain_adaptation", context,
                         {**PLAIN, "source_weight": 0.0, "threshold": threshold})
        losses[threshold] = float(task.training_loss(view, images, np.random.default_rng(0), masks).detach())
    assert 0 < losses[0.999] < losses[0.0]
    # ... and the pasted source pixels alone give what the student's CE on them is.
    task = make_task("domain_adaptation", context, {**PLAIN, "source_weight": 0.0,
                                                    "threshold": 0.999, "jitter_probability": 0})
    views, source_masks = task.make_batch(images, np.random.default_rng(0), masks)
    rng = np.random.default_rng(0)
    rng.random(8)                                          # the flips make_batch drew
    pasted = class_mix_masks(source_masks, rng, 0.5)
    mixed = torch.where(pasted.unsqueeze(1), views[:4], views[4:])
    with torch.no_grad():
        logits = view(torch.cat([views[:4], mixed])).split(4)[1]
    ce = torch.nn.functional.cross_entropy(
        torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear",
                                        align_corners=False),
        torch.where(pasted, source_masks, 0), reduction="none")
    np.testing.assert_allclose(losses[0.999], float((ce * pasted).mean()), rtol=1e-4)


def test_masked_consistency_adds_a_term_and_source_labels_train_alone(
        context, make_images, make_masks, make_model):
    images, masks = pair(make_images, make_masks)
    seg = make_task("segmentation", context, {})
    view = TaskModel(make_model("segmentation", seg), "segmentation")

    def loss(**options):
        task = make_task("domain_adaptation", context, {**PLAIN, "threshold": 0.0, **options})
        return float(task.training_loss(view, images, np.random.default_rng(0), masks).detach())

    assert loss(masked_weight=1.0) > loss()
    plain_ce = seg.loss(view(images[:4]), masks[:4])
    assert loss(source_weight=1.0) - loss(source_weight=0.0) == pytest.approx(
        float(plain_ce.detach()), rel=1e-4)


def test_an_ema_teacher_is_the_default_and_follows_the_student(context, make_images, make_masks,
                                                               make_model):
    images, masks = pair(make_images, make_masks)
    task = make_task("domain_adaptation", context, {**PLAIN, "ema_decay": 0.9})
    model = make_model("segmentation", make_task("segmentation", context, {}))
    view = TaskModel(model, "segmentation")
    task.training_loss(view, images, np.random.default_rng(0), masks)
    first = next(task.teacher.ema.parameters()).clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    task.training_loss(view, images, np.random.default_rng(0), masks)
    torch.testing.assert_close(next(task.teacher.ema.parameters()), first + 0.1)


@pytest.mark.parametrize("bad", [{"mix_share": 0}, {"mask_ratio": 1.0}, {"threshold": 1.0},
                                 {"teacher": "pulled", "teacher_flip": True},
                                 {"rare_class_temperature": -1}])
def test_bad_options_are_named(bad):
    with pytest.raises(ConfigError, match=next(iter(bad)) if "teacher" not in bad else "flip"):
        make_task("domain_adaptation", None, bad)


def test_fourier_style_takes_the_styles_low_frequencies_and_keeps_the_content():
    from ps_trainer_workers.tasks.views import fourier_style

    torch.manual_seed(0)
    content = 0.4 + 0.2 * torch.rand(2, 3, 32, 32)
    style = 0.3 + 0.2 * torch.rand(2, 3, 32, 32) + torch.tensor([0.2, 0.0, -0.1]).view(1, 3, 1, 1)
    out = fourier_style(content, style, 0.1)
    torch.testing.assert_close(out.mean(dim=(2, 3)), style.mean(dim=(2, 3)), atol=2e-3, rtol=0)
    change = torch.fft.fft2(out - content).abs()
    change[..., :4, :4] = change[..., :4, -3:] = change[..., -3:, :4] = change[..., -3:, -3:] = 0
    assert float(change.max()) < 1e-3                       # nothing above the window moved
    torch.testing.assert_close(fourier_style(content, content, 0.1), content)
    assert torch.equal(fourier_style(content, style, 0.0), content)
