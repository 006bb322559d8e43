"""Test-time inference: sliding windows against whole images, flips, scales, the test scale."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ps_trainer.config import EvalConfig
from ps_trainer.model.inference import predict_logits, size_at_scale, window_starts

CLASSES = 5


def pixelwise_net() -> nn.Module:
    """A network whose output at a pixel depends only on that pixel (1x1 convolutions)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, CLASSES, 1)).eval()


def mirror_symmetric_net() -> nn.Module:
    """A network that sees context (3x3 and 5x5 kernels) and commutes with horizontal flips:
    every kernel equals its own mirror image."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, CLASSES, 5, padding=2))
    with torch.no_grad():
        for conv in (net[0], net[2]):
            conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
    return net.eval()


def contextual_net() -> nn.Module:
    """A network that sees context and has no symmetry; its logits are at a quarter of the
    input's resolution, as the segmentation head's."""
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, CLASSES, 3, stride=2, padding=1)).eval()


def images(b=2, h=37, w=53, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def slide(crop, stride, **kw):
    return EvalConfig(mode="slide", crop_size=crop, stride=stride, **kw)


def test_window_starts_cover_the_side_and_end_at_its_edge():
    assert window_starts(37, 16, 10) == [0, 10, 20, 21]
    assert window_starts(30, 10, 10) == [0, 10, 20]
    assert window_starts(8, 16, 10) == [0]                 # shorter than a window: one, whole
    for length, crop, stride in ((37, 16, 10), (1024, 512, 341), (2048, 1024, 682), (53, 24, 24)):
        starts = window_starts(length, crop, stride)
        covered = torch.zeros(length)
        for s in starts:
            covered[s: s + crop] += 1
        assert covered.min() >= 1 and starts[-1] + crop == length
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_slide_equals_whole_for_a_pixelwise_model(batch_size):
    """Overlapping windows (stride < crop) on an image not divisible by the stride; windows
    batched 1, 3 or all at a time."""
    net, x = pixelwise_net(), images()
    whole = predict_logits(net, x, EvalConfig())
    windows = predict_logits(net, x, slide((16, 24), (10, 14), batch_size=batch_size))
    assert windows.shape == (2, CLASSES, 37, 53)
    torch.testing.assert_close(windows, whole, rtol=1e-5, atol=1e-6)
    assert torch.equal(windows.argmax(1), whole.argmax(1))


def test_slide_averages_the_windows_covering_each_pixel():
    """A model that answers each window with its mean: a pixel gets the mean over the windows
    that cover it of those windows' means."""
    def window_mean(x):                                      # (B, 3, h, w) -> (B, 1, h, w)
        return x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *x.shape[-2:])

    x = images(b=1, h=4, w=6)
    out = predict_logits(window_mean, x, slide((4, 4), (4, 2)))   # windows at columns 0 and 2
    left, right = x[..., 0:4].mean(), x[..., 2:6].mean()
    expected = torch.tensor([left, left, (left + right) / 2, (left + right) / 2, right, right])
    torch.testing.assert_close(out[0, 0], expected.expand(4, 6))


def test_an_image_smaller_than_the_window_is_predicted_whole():
    net, x = contextual_net(), images(h=20, w=30)
    torch.testing.assert_close(predict_logits(net, x, slide((32, 64), (16, 32))),
                               predict_logits(net, x, EvalConfig()))
    seen = []
    predict_logits(lambda t: seen.append(tuple(t.shape)) or net(t), x, slide((16, 64), (8, 32)))
    assert seen == [(4, 3, 16, 30)]                        # 2 windows x 2 images, no padding


def test_whole_mode_resizes_logits_to_the_image():
    net, x = contextual_net(), images()
    expected = F.interpolate(net(x), size=(37, 53), mode="bilinear", align_corners=False)
    torch.testing.assert_close(predict_logits(net, x, EvalConfig()), expected)


def test_flip_of_a_flip_equivariant_model_changes_nothing():
    net, x = mirror_symmetric_net(), images()
    plain = predict_logits(net, x, EvalConfig())
    flipped = predict_logits(net, x, EvalConfig(flip=True))
    # two equal views: the averaged probabilities are the plain ones
    torch.testing.assert_close(flipped, plain.log_softmax(1), rtol=1e-5, atol=1e-5)
    assert torch.equal(flipped.argmax(1), plain.argmax(1))


def test_flip_and_scales_average_probabilities_of_every_view():
    net, x = contextual_net(), images()
    size = (37, 53)

    def view(factor, mirror):
        inp = x.flip(-1) if mirror else x
        scaled = (int(37 * factor + 0.5), int(53 * factor + 0.5))
        inp = F.interpolate(inp, size=scaled, mode="bilinear", align_corners=False)
        p = F.interpolate(net(inp), size=size, mode="bilinear", align_corners=False).softmax(1)
        return p.flip(-1) if mirror else p

    expected = sum(view(f, m) for f in (0.5, 1.5) for m in (False, True)) / 4
    out = predict_logits(net, x, EvalConfig(flip=True, scales=(0.5, 1.5)))
    torch.testing.assert_close(out.softmax(1), expected, rtol=1e-5, atol=1e-6)


def test_one_scale_of_one_is_single_scale_inference():
    net, x = contextual_net(), images()
    single = predict_logits(net, x, EvalConfig())
    assert torch.equal(predict_logits(net, x, EvalConfig(scales=(1.0,))), single)
    twice = predict_logits(net, x, EvalConfig(scales=(1.0, 1.0)))
    torch.testing.assert_close(twice, single.log_softmax(1), rtol=1e-5, atol=1e-5)


def test_the_test_scale_keeps_the_aspect_ratio_like_mmsegmentation():
    assert size_at_scale((1024, 2048), (512, 1024)) == (512, 1024)
    assert size_at_scale((1024, 2048), (1024, 512)) == (512, 1024)   # edges, not orientation
    assert size_at_scale((1024, 2048), None) == (1024, 2048)
    assert size_at_scale((375, 500), (512, 2048)) == (512, 683)      # the short side binds
    assert size_at_scale((500, 375), (512, 2048)) == (683, 512)


def test_windows_are_taken_at_the_test_scale_and_scored_at_the_image_size():
    net, x = pixelwise_net(), images(b=1, h=40, w=80)
    seen = []

    def recording(t):
        seen.append(tuple(t.shape))
        return net(t)

    out = predict_logits(recording, x, slide((10, 20), (10, 20), scale=(20, 40)))
    assert out.shape == (1, CLASSES, 40, 80)
    assert seen == [(4, 3, 10, 20)]                         # a 20 x 40 image: four windows
    half = F.interpolate(x, size=(20, 40), mode="bilinear", align_corners=False)
    expected = F.interpolate(net(half), size=(40, 80), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
