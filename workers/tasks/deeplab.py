"""DeepLabV3+ decoder (Chen et al., ECCV 2018, "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation").

    head = DeepLabV3PlusHead(low_channels=256, high_channels=2048, num_classes=19,
                             output_stride=8)
    logits = head(layer1, layer4)     # (B, 256, H/4, W/4), (B, 2048, H/8, W/8) -> (B, K, H/4, W/4)

ASPP on the final features (torchvision's: a 1x1 branch, three atrous 3x3 branches and image
pooling, projected to 256 channels with dropout 0.5), with the paper's rates (6, 12, 18) at
output stride 16, doubled at 8; the low-level features of the first stage reduced to 48
channels by a 1x1 convolution; the ASPP output upsampled bilinearly to their resolution,
concatenated, refined by two 3x3 convolutions of 256 channels, and classified by a 1x1
convolution. Logits come at the low-level stride (4); the loss and the evaluator upsample them.

Heads here use GroupNorm instead of the paper's batch norm: workers are asynchronous, each
with its own small batch, and a head has no single set of batch statistics to keep.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ps_trainer_workers.tasks.heads import group_norm

_PAPER_RATES = (6, 12, 18)      # at output stride 16


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    """The paper's atrous rates scaled to the trunk's output stride (16 -> 6, 12, 18)."""
    return tuple(max(1, r * 16 // output_stride) for r in _PAPER_RATES)


def _with_group_norm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm2d replaced by GroupNorm of the same width."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, group_norm(child.num_features))
        else:
            _with_group_norm(child)
    return module


def _conv_norm_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         group_norm(cout), nn.ReLU(inplace=True))


class DeepLabV3PlusHead(nn.Module):
    """Reads the first and the last trunk stage (``feature_levels``)."""

    feature_levels = (0, -1)

    def __init__(self, low_channels: int, high_channels: int, num_classes: int,
                 output_stride: int, aspp_channels: int = 256, skip_channels: int = 48):
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import ASPP   # torchvision where used

        self.aspp = _with_group_norm(ASPP(high_channels, aspp_rates(output_stride), aspp_channels))
        self.skip = _conv_norm_relu(low_channels, skip_channels, 1)
        self.fuse = nn.Sequential(_conv_norm_relu(aspp_channels + skip_channels, aspp_channels, 3),
                                  _conv_norm_relu(aspp_channels, aspp_channels, 3))
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        context = self.aspp(high)                                     # (B, 256, h, w)
        skip = self.skip(low)                                         # (B, 48, H/4, W/4)
        context = F.interpolate(context, size=skip.shape[-2:], mode="bilinear",
                                align_corners=False)
        return self.classifier(self.fuse(torch.cat([context, skip], dim=1)))
