"""Test-time inference: class scores for whole images, at the resolution of their labels.

The two test modes of mmsegmentation (``EncoderDecoder.whole_inference`` and
``slide_inference``), with its test-time augmentation (flips and multi-scale), in one place for
every caller: the evaluator, and a self-training teacher that wants published-style predictions::

    scores = predict_logits(lambda x: model("segmentation", x), images, cfg.eval)
    pred = scores.argmax(1)                       # (B, H, W) class ids

- ``whole``: the model sees the image (resized to the test scale, if one is set).
- ``slide``: it sees ``crop_size`` windows every ``stride`` pixels; where windows overlap, their
  logits are summed and divided by the number of windows covering the pixel. The last window
  of a row or column ends at the image's edge (it overlaps its neighbour more). Along a side
  shorter than the window the window is the whole side: the image is not padded (as in
  mmsegmentation), so no invented pixels enter the model's context or normalisation.
- Test scale (``scale``): null keeps each image's resolution; [H, W] resizes it keeping its
  aspect ratio until the long side fits max(H, W) and the short side min(H, W) (mmsegmentation's
  ``Resize(scale, keep_ratio=True)``). ``scales`` are factors of that size.
- Views (each factor in ``scales``, each mirrored too with ``flip``) are combined by averaging
  their class *probabilities* (mmsegmentation's ``aug_test``; the self-training teacher does the
  same). With one view the model's logits are returned as they are; with several, the log of
  the averaged probabilities, so that softmax gives the average back and argmax its mode.

Logits are resized bilinearly (align_corners=False, as in the training loss): a window's to
the window, before the sums; every view's to the input's size, so that the result is scored
against the labels pixel for pixel (in whole mode straight from the model's output stride).
"""
from __future__ import annotations

from typing import Callable, Optional, Protocol

import torch
import torch.nn.functional as F

# (B, 3, h, w) RGB in [0, 1] -> (B, K, h', w') logits at any resolution
ModelFn = Callable[[torch.Tensor], torch.Tensor]


class InferenceSettings(Protocol):
    """What inference reads of its config (``EvalConfig`` has every field)."""
    mode: str                                   # whole | slide
    crop_size: Optional[tuple[int, int]]        # slide: window (h, w)
    stride: Optional[tuple[int, int]]           # slide: step (h, w)
    scale: Optional[tuple[int, int]]            # test scale; None: the image's own
    flip: bool
    scales: tuple[float, ...]                   # factors of the test scale
    batch_size: int                             # slide: windows per forward (at least one image's)


@torch.no_grad()
def predict_logits(model_fn: ModelFn, images: torch.Tensor, cfg: InferenceSettings
                   ) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1], images of one size -> (B, K, H, W) class scores."""
    size = tuple(images.shape[-2:])
    base = size_at_scale(size, cfg.scale)
    views = [(factor, mirror) for factor in cfg.scales
             for mirror in ((False, True) if cfg.flip else (False,))]
    if len(views) == 1:
        return _view(model_fn, images, cfg, _scaled(base, views[0][0]), views[0][1])
    total = None
    for factor, mirror in views:
        probs = _view(model_fn, images, cfg, _scaled(base, factor), mirror).softmax(1)
        total = probs if total is None else total.add_(probs)
    # log of the mean probability; floored so that a probability of 0 stays finite
    return total.div_(len(views)).clamp_min_(torch.finfo(total.dtype).tiny).log_()


def size_at_scale(size: tuple[int, int], scale: Optional[tuple[int, int]]) -> tuple[int, int]:
    """(h, w) of an image of `size` at the test scale: None keeps it; (H, W) fits its long side
    into max(H, W) and its short side into min(H, W), keeping the aspect ratio."""
    if scale is None:
        return size
    h, w = size
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return _scaled(size, factor)


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Where windows of `crop` pixels start along a side of `length` (every `stride`, the last
    one ending at the edge); [0] when the side is no longer than a window."""
    last = max(length - crop, 0)
    return [*range(0, last, stride), last]


def _scaled(size: tuple[int, int], factor: float) -> tuple[int, int]:
    return tuple(max(1, int(v * factor + 0.5)) for v in size)


def _view(model_fn: ModelFn, images: torch.Tensor, cfg: InferenceSettings,
          size: tuple[int, int], mirror: bool) -> torch.Tensor:
    """Logits of one view (resized to `size`, mirrored if asked) at the images' own size."""
    x = images.flip(-1) if mirror else images
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if cfg.mode == "slide":
        logits = _slide(model_fn, x, cfg.crop_size, cfg.stride, cfg.batch_size)   # at `size`
    else:
        logits = model_fn(x)                 # at the model's output stride: resized once, below
    logits = _resized(logits, tuple(images.shape[-2:]))
    return logits.flip(-1) if mirror else logits


def _slide(model_fn: ModelFn, x: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int],
           windows_per_forward: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, K, H, W): window logits summed, divided by the windows per pixel."""
    b, _, h, w = x.shape
    boxes = [(top, left) for top in window_starts(h, crop[0], stride[0])
             for left in window_starts(w, crop[1], stride[1])]
    ch, cw = min(crop[0], h), min(crop[1], w)            # every window has this size
    per_forward = max(1, windows_per_forward // b)       # windows of all B images per pass
    total = None
    count = x.new_zeros((1, 1, h, w))
    for start in range(0, len(boxes), per_forward):
        group = boxes[start: start + per_forward]
        crops = torch.cat([x[:, :, t: t + ch, l: l + cw] for t, l in group])  # (G*B, 3, ch, cw)
        logits = _resized(model_fn(crops), (ch, cw))
        if total is None:
            total = logits.new_zeros((b, logits.shape[1], h, w))
        for i, (t, l) in enumerate(group):
            total[:, :, t: t + ch, l: l + cw] += logits[i * b: (i + 1) * b]
            count[:, :, t: t + ch, l: l + cw] += 1
    return total.div_(count)


def _resized(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
