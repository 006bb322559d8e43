"""Normalization layers by config name, including Switchable Normalization.

``make_norm(name, channels, groups)`` builds one; ``NORMS`` lists the names.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ps_trainer.config.registry import Registry

NormFactory = Callable[[int, int], nn.Module]  # (channels, groups) -> module
NORMS: Registry[NormFactory] = Registry("norm")


@NORMS.register("batch")
def _batch(channels: int, groups: int) -> nn.Module:
    return nn.BatchNorm2d(channels)


@NORMS.register("frozen_batch")
def _frozen_batch(channels: int, groups: int) -> nn.Module:
    """Batch norm whose statistics and affine are fixed buffers (torchvision's; the usual
    choice when fine-tuning ImageNet weights with small per-GPU batches). Its keys are batch
    norm's, so pretrained weights load into it and it exports as batch norm."""
    from torchvision.ops import FrozenBatchNorm2d    # torchvision only where it is used

    return FrozenBatchNorm2d(channels)


@NORMS.register("group")
def _group(channels: int, groups: int) -> nn.Module:
    # The largest group count <= `groups` that divides the channels.
    g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
    return nn.GroupNorm(g, channels)


@NORMS.register("instance")
def _instance(channels: int, groups: int) -> nn.Module:
    return nn.GroupNorm(channels, channels)


@NORMS.register("layer")
def _layer(channels: int, groups: int) -> nn.Module:
    # Over (C, H, W) per sample, with a per-channel affine.
    return nn.GroupNorm(1, channels)


@NORMS.register("switchable")
def _switchable(channels: int, groups: int) -> nn.Module:
    return SwitchableNorm2d(channels)


def make_norm(name: str, channels: int, groups: int = 8) -> nn.Module:
    return NORMS.get(name)(channels, groups)


class SwitchableNorm2d(nn.Module):
    """Switchable Normalization (Luo et al., ICLR 2019, "Differentiable Learning-to-Normalize
    via Switchable Normalization").

    Mean and variance are softmax-weighted mixes of instance, layer and batch statistics
    (separate importance weights for the mean and the variance). The batch part keeps
    running statistics like BatchNorm and uses them in eval mode. Defaults follow the paper:
    importance logits start equal, momentum 0.1 (PyTorch convention: new = 0.9 old + 0.1 batch).
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.mean_logits = nn.Parameter(torch.ones(3))  # (IN, LN, BN)
        self.var_logits = nn.Parameter(torch.ones(3))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        flat = x.reshape(n, c, h * w)
        mean_in = flat.mean(-1, keepdim=True)                    # (N, C, 1)
        var_in = flat.var(-1, keepdim=True, unbiased=False)
        second_in = var_in + mean_in ** 2                        # E[x^2] per (N, C)
        mean_ln = mean_in.mean(1, keepdim=True)                  # (N, 1, 1)
        var_ln = second_in.mean(1, keepdim=True) - mean_ln ** 2
        if self.training:
            mean_bn = mean_in.mean(0, keepdim=True)              # (1, C, 1)
            var_bn = second_in.mean(0, keepdim=True) - mean_bn ** 2
            with torch.no_grad():
                m = self.momentum
                count = n * h * w
                unbiased = var_bn.flatten() * (count / max(count - 1, 1))
                self.running_mean.mul_(1 - m).add_(m * mean_bn.flatten())
                self.running_var.mul_(1 - m).add_(m * unbiased)
        else:
            mean_bn = self.running_mean.view(1, c, 1)
            var_bn = self.running_var.view(1, c, 1)
        mw = torch.softmax(self.mean_logits, 0)
        vw = torch.softmax(self.var_logits, 0)
        mean = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn
        var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn
        out = (flat - mean) / torch.sqrt(var.clamp(min=0) + self.eps)
        return out.view(n, c, h, w) * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
