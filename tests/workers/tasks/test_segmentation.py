import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ps_trainer_workers.tasks import make_task
from ps_trainer_workers.tasks.heads import DenseDecoder


def test_flips_keep_images_and_masks_aligned(context, make_images, make_masks):
    images = make_images(16)
    masks = make_masks(images, ignore_fraction=0.0)
    task = make_task("segmentation", context, {})
    inputs, targets = task.make_batch(images, np.random.default_rng(0), masks)
    assert inputs.shape == images.shape and targets.dtype == torch.int64
    flipped = [torch.equal(inputs[b], images[b].flip(-1)) for b in range(16)]
    kept = [torch.equal(inputs[b], images[b]) for b in range(16)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    # The labels are a function of the pixel colors, so aligned masks are recomputable.
    assert torch.equal(targets, make_masks(inputs, ignore_fraction=0.0))


def test_scale_jitter_keeps_alignment_and_ignores_padding(context, make_images, make_masks):
    images = make_images(16)
    masks = make_masks(images, ignore_fraction=0.0)
    task = make_task("segmentation", context, {"scale_range": [0.6, 1.6]})
    inputs, targets = task.make_batch(images, np.random.default_rng(0), masks)
    labelled = targets != 255
    assert 0 < (~labelled).float().mean() < 0.5                      # zoomed-out padding
    assert not torch.equal(inputs, images) and not torch.equal(inputs, images.flip(-1))
    # Bilinear images vs nearest masks disagree only along label boundaries.
    recomputed = make_masks(inputs, ignore_fraction=0.0)
    agreement = (recomputed == targets)[labelled].float().mean()
    assert agreement > 0.9


def test_ignored_pixels_do_not_count(context, make_images, make_masks):
    images = make_images(4)
    masks = make_masks(images, ignore_fraction=0.3)
    task = make_task("segmentation", context, {})
    logits = torch.randn(4, 6, 32, 32)
    loss = task.loss(logits, masks)
    scrambled = torch.where((masks == 255).unsqueeze(1), torch.randn_like(logits) * 9, logits)
    assert task.loss(scrambled, masks).item() == pytest.approx(loss.item(), rel=1e-6)
    # Reference: mean negative log-likelihood over the labelled pixels.
    valid = masks != 255
    log_probs = F.log_softmax(logits, dim=1).permute(0, 2, 3, 1)[valid]   # (P, 6)
    reference = -log_probs[torch.arange(len(log_probs)), masks[valid]].mean()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def test_all_ignored_batch_gives_zero_not_nan(context):
    task = make_task("segmentation", context, {})
    loss = task.loss(torch.randn(2, 6, 8, 8, requires_grad=True), torch.full((2, 32, 32), 255))
    assert loss.item() == 0.0


def test_low_resolution_logits_are_upsampled_bilinearly(context):
    task = make_task("segmentation", context, {})
    coarse = torch.randn(2, 6, 8, 8)
    target = torch.randint(0, 6, (2, 32, 32))
    upsampled = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    assert task.loss(coarse, target).item() == pytest.approx(
        F.cross_entropy(upsampled, target).item(), rel=1e-6)


def test_masks_are_required(context, images):
    with pytest.raises(ValueError, match="masks"):
        make_task("segmentation", context, {}).make_batch(images, np.random.default_rng(0))


@pytest.mark.parametrize("trunk_stride, output_stride, expected_side",
                         [(4, 4, 8), (8, 4, 8), (8, 1, 32), (4, 1, 32), (2, 4, 16), (16, 4, 8)])
def test_dense_decoder_resolution(trunk_stride, output_stride, expected_side):
    decoder = DenseDecoder(16, 5, trunk_stride, output_stride)
    features = torch.randn(2, 16, 32 // trunk_stride, 32 // trunk_stride)
    assert decoder(features).shape == (2, 5, expected_side, expected_side)
