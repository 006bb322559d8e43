"""Semantic segmentation on the labelled split.

Two heads (``head``): ``fcn``, the light FCN-style :class:`DenseDecoder` (Long, Shelhamer &
Darrell, CVPR 2015, "Fully Convolutional Networks for Semantic Segmentation"): a few
convolutions with learned upsampling steps; and ``deeplabv3plus``, DeepLabV3+'s ASPP with a
low-level skip from the first trunk stage (:mod:`ps_trainer_workers.tasks.deeplab`), the
usual choice with a ResNet trunk at output stride 8 or 16. Either way the logits are
interpolated bilinearly to the label resolution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ps_trainer.data.crops import Crops, RescaleCrops
from ps_trainer.config.options import Options, check, check_choice
from ps_trainer_workers.tasks.base import Task
from ps_trainer_workers.tasks.deeplab import DeepLabV3PlusHead
from ps_trainer_workers.tasks.heads import DenseDecoder, resize_like
from ps_trainer_workers.tasks.registry import TASKS
from ps_trainer_workers.tasks.views import color_jitter, zoom_grid

IGNORE_INDEX = 255
HEADS = ("fcn", "deeplabv3plus")


@dataclass(frozen=True)
class SegmentationOptions(Options):
    flip_probability: float = 0.5                 # horizontal flip of image and mask together
    scale_range: tuple[float, float] = (1.0, 1.0)  # zoom factors; (1, 1) = no scale jitter
    # Real-resolution training (mmsegmentation / DeepLab): a crop_size [H, W] crop of the
    # original rescaled by a factor in rescale_range of base_size [H, W] (null: the image's
    # own), retried until no class covers more than cat_max_ratio of it; null crop_size: a
    # data.image_size square of the image resized to it (the small synthetic default).
    crop_size: Optional[tuple[int, int]] = None
    rescale_range: tuple[float, float] = (0.5, 2.0)
    base_size: Optional[tuple[int, int]] = None
    cat_max_ratio: float = 0.75
    jitter_probability: float = 0.0               # photometric jitter (brightness, contrast, saturation)
    jitter_strength: float = 0.25
    head: str = "fcn"                             # fcn | deeplabv3plus
    output_stride: int = 4                        # fcn: decoder resolution before upsampling
    decoder_width: int = 64                       # fcn
    aspp_channels: int = 256                      # deeplabv3plus (the paper's)
    skip_channels: int = 48                       # deeplabv3plus: reduced low-level features

    def __post_init__(self):
        check(0.0 <= self.flip_probability <= 1.0, "flip_probability", self.flip_probability,
              "must be in [0, 1]")
        low, high = self.scale_range
        check(0 < low <= high, "scale_range", self.scale_range, "0 < low <= high")
        check(self.output_stride >= 1 and self.output_stride & (self.output_stride - 1) == 0,
              "output_stride", self.output_stride, "a power of two")
        check(self.decoder_width >= 16, "decoder_width", self.decoder_width, "must be >= 16")
        check_choice("head", self.head, HEADS)
        for name in ("crop_size", "base_size"):
            value = getattr(self, name)
            check(value is None or (len(value) == 2 and min(value) >= 16), name, value,
                  "null or [H, W], each >= 16")
        low, high = self.rescale_range
        check(0 < low <= high, "rescale_range", self.rescale_range, "0 < low <= high")
        check(0 < self.cat_max_ratio <= 1, "cat_max_ratio", self.cat_max_ratio, "in (0, 1]")
        check(0 <= self.jitter_probability <= 1, "jitter_probability", self.jitter_probability,
              "in [0, 1]")
        check(0 <= self.jitter_strength < 1, "jitter_strength", self.jitter_strength, "in [0, 1)")
        for name in ("aspp_channels", "skip_channels"):
            value = getattr(self, name)
            check(value >= 8 and value % 8 == 0, name, value, "a multiple of 8 (GroupNorm)")


@TASKS.register("segmentation")
class Segmentation(Task):
    """Per-pixel classification of the labelled images into `context.num_classes` classes.

    Batches: a random horizontal flip applied identically to image and mask, and optional
    scale jitter (zoom in: random crop; zoom out: padding labelled 255 = ignore).
    Head: :class:`DenseDecoder` or DeepLabV3+, logits (B, num_classes, H/4, W/4) by default;
    the loss (and the evaluator) upsample them bilinearly (align_corners=False) to the mask's
    H, W.
    Loss: cross-entropy averaged over the pixels that are not 255.
    """

    uses_labels = True
    Options = SegmentationOptions

    def head(self, trunk_channels: int) -> nn.Module:
        o, c = self.options, self.context
        if o.head == "deeplabv3plus":
            if not c.stage_channels:
                raise ValueError("the deeplabv3plus head needs the trunk's stage channels "
                                 "(TaskContext.stage_channels)")
            return DeepLabV3PlusHead(c.stage_channels[0], trunk_channels, c.num_classes,
                                     c.trunk_stride, o.aspp_channels, o.skip_channels)
        return DenseDecoder(trunk_channels, c.num_classes, c.trunk_stride, o.output_stride,
                            o.decoder_width)

    def crops(self) -> Optional[Crops]:
        o = self.options
        if o.crop_size is None:
            return None
        return RescaleCrops(tuple(o.crop_size), tuple(o.rescale_range),
                            tuple(o.base_size) if o.base_size else None, o.cat_max_ratio)

    def make_batch(self, images: torch.Tensor, rng: np.random.Generator,
                   masks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        if masks is None:
            raise ValueError("the segmentation task needs masks (it trains on labelled images)")
        b = images.shape[0]
        flip = torch.from_numpy(rng.random(b) < self.options.flip_probability).to(images.device)
        images = torch.where(flip.view(b, 1, 1, 1), images.flip(-1), images)
        masks = torch.where(flip.view(b, 1, 1), masks.flip(-1), masks)
        low, high = self.options.scale_range
        if (low, high) != (1.0, 1.0):
            images, masks = self._scale_jitter(images, masks, rng)
        if self.options.jitter_probability > 0:
            images = color_jitter(images, rng, self.options.jitter_probability,
                                  self.options.jitter_strength).clamp(0.0, 1.0)
        return images.contiguous(), masks.contiguous()

    def _scale_jitter(self, images: torch.Tensor, masks: torch.Tensor,
                      rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Zoom each image by a random factor around a random centre that keeps it covered."""
        grid = zoom_grid(images.shape, self.options.scale_range, rng, images.device)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                               align_corners=False)
        # Nearest sampling keeps labels exact; shifting by 255 makes the padding 255 (ignore).
        shifted = (masks.float() - IGNORE_INDEX).unsqueeze(1)
        masks = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros",
                              align_corners=False).squeeze(1).round().long() + IGNORE_INDEX
        return images.clamp(0.0, 1.0), masks

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return labelled_cross_entropy(output, target)


def labelled_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, K, h, w) logits, upsampled to the (B, H, W) labels, averaged over
    the labelled pixels (an all-ignore batch gives 0 rather than NaN)."""
    logits = resize_like(output, target.shape[-2:])
    total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (target != IGNORE_INDEX).sum().clamp(min=1)
