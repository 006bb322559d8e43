"""Building blocks the task heads share: a dense decoder for per-pixel tasks, and the
patch helpers for tasks that classify groups of patches (jigsaw, relative position)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups: heads never use BatchNorm (workers are asynchronous)."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """3x3 convolution, GroupNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), group_norm(cout),
                         nn.ReLU(inplace=True))


class DenseDecoder(nn.Module):
    """Trunk features (N, C, h, w) at `trunk_stride` -> (N, out_channels, H/s, W/s) at
    s = `output_stride` (or the nearest stride the decoder reaches, when coarser).

    Learned upsampling (bilinear x2 then a conv block, halving the width each time) runs down
    to stride 4 at most; the remaining factor comes from a sub-pixel convolution (PixelShuffle,
    Shi et al., CVPR 2016), which reaches full resolution without convolving at it.
    """

    def __init__(self, in_channels: int, out_channels: int, trunk_stride: int,
                 output_stride: int, width: int = 64):
        super().__init__()
        conv_stride = min(trunk_stride, max(output_stride, 4))
        steps = int(round(math.log2(trunk_stride // conv_stride)))
        self.shuffle = max(1, conv_stride // output_stride)
        layers: list[nn.Module] = [conv_block(in_channels, width)]
        for _ in range(steps):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       conv_block(width, max(width // 2, 16))]
            width = max(width // 2, 16)
        layers.append(nn.Conv2d(width, out_channels * self.shuffle ** 2, 1))
        if self.shuffle > 1:
            layers.append(nn.PixelShuffle(self.shuffle))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def resize_like(output: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a dense (N, K, h, w) output to (N, K, *size) (align_corners=False)."""
    if tuple(output.shape[-2:]) == tuple(size):
        return output
    return F.interpolate(output, size=size, mode="bilinear", align_corners=False)



def crop_patches(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                 size: int) -> torch.Tensor:
    """Square crops of side `size` at per-image corners: (B, 3, H, W), (B, k), (B, k) ->
    (B, k, 3, size, size), by one gather (no Python loop over patches)."""
    offsets = torch.arange(size, device=images.device)
    rows = (top.unsqueeze(-1) + offsets).unsqueeze(-1)             # (B, k, s, 1)
    cols = (left.unsqueeze(-1) + offsets).unsqueeze(-2)            # (B, k, 1, s)
    batch = torch.arange(images.shape[0], device=images.device).view(-1, 1, 1, 1)
    patches = images.permute(0, 2, 3, 1)[batch, rows, cols]        # (B, k, s, s, 3)
    return patches.permute(0, 1, 4, 2, 3).contiguous()


class PatchGroupClassifier(nn.Module):
    """Classifies groups of `patches` consecutive inputs that belong to one example.

    (B*k, C, h, w) features -> average-pooled (B*k, C) -> (B, k*C), concatenated in input
    order so the classifier sees which patch came where -> MLP -> (B, num_classes).
    """

    def __init__(self, channels: int, patches: int, num_classes: int, hidden: int = 128):
        super().__init__()
        self.patches = patches
        self.classifier = nn.Sequential(nn.Linear(patches * channels, hidden),
                                        nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.mean(dim=(-2, -1))                       # (B*k, C)
        grouped = pooled.reshape(-1, self.patches * pooled.shape[1])  # (B, k*C)
        return self.classifier(grouped)


