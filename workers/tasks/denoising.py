"""Denoising (Vincent, Larochelle, Bengio & Manzagol, ICML 2008, "Extracting and Composing
Robust Features with Denoising Autoencoders"), with the additive Gaussian corruption of
Vincent et al., JMLR 2010 ("Stacked Denoising Autoencoders")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ps_trainer.config.options import Options, check
from ps_trainer_workers.tasks.base import Task
from ps_trainer_workers.tasks.registry import TASKS
from ps_trainer_workers.tasks.heads import DenseDecoder, resize_like


@dataclass(frozen=True)
class DenoisingOptions(Options):
    # Vincent et al. (2010) try Gaussian noise std 0.05 to 0.5 on [0, 1] inputs.
    noise_std: float = 0.1
    decoder_width: int = 64

    def __post_init__(self):
        check(self.noise_std > 0, "noise_std", self.noise_std, "must be > 0")
        check(self.decoder_width >= 16, "decoder_width", self.decoder_width, "must be >= 16")


@TASKS.register("denoising")
class Denoising(Task):
    """Reconstruct the clean image from a noisy one.

    Inputs: images plus i.i.d. Gaussian noise of std `noise_std`, clipped to [0, 1].
    Targets: the clean images (B, 3, H, W).
    Head: :class:`DenseDecoder` to RGB at full resolution (learned upsampling, then a
    sub-pixel convolution); the loss bilinearly resizes (align_corners=False) any output of
    another size to the target's H, W. Loss: mean squared error.
    """

    Options = DenoisingOptions

    def head(self, trunk_channels: int) -> nn.Module:
        return DenseDecoder(trunk_channels, 3, self.context.trunk_stride, 1,
                            self.options.decoder_width)

    def make_batch(self, images: torch.Tensor, rng: np.random.Generator,
                   masks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.from_numpy(rng.standard_normal(tuple(images.shape), dtype=np.float32))
        noisy = (images + self.options.noise_std * noise.to(images.device)).clamp(0.0, 1.0)
        return noisy, images

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(resize_like(output, target.shape[-2:]), target)
