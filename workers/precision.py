"""A worker step's numerics: autocast to bf16 or fp16, and fp16's dynamic loss scale.

    compute = StepPrecision.of(cfg.run, device)
    with compute.autocast():
        loss = ...
    (loss * compute.loss_scale_factor).backward()
    if not compute.unscale(grads):       # fp16 overflow: nothing to push this step
        ...

Weights and gradients stay float32 (they are views of the flat shard buffers the server
reads); autocast runs the convolutions and matrix products in the lower precision. fp16's
narrow range needs the loss scaled up before backward and the gradients scaled back after,
with the scale halved on an overflow (that step's push is skipped) and doubled after a run of
steps without one (Micikevicius et al., ICLR 2018, "Mixed Precision Training"; the constants
are PyTorch GradScaler's defaults). Each worker keeps its own scale: the server only ever sees
unscaled float32 gradients.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable

import torch

from ps_trainer.config import RunConfig

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LossScale:
    """fp16's dynamic loss scale (GradScaler's defaults)."""
    scale: float = 2.0 ** 16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval_steps: int = 2000
    good_steps: int = 0
    overflows: int = 0

    def unscale(self, grads: Iterable[torch.Tensor]) -> bool:
        """Divide the gradients by the scale in place; True if all are finite. Updates the
        scale: halved on an overflow, grown after `growth_interval_steps` good steps."""
        grads = list(grads)
        for grad in grads:
            grad.mul_(1.0 / self.scale)
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())  # one sync
        if finite:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval_steps:
                self.scale *= self.growth_factor
                self.good_steps = 0
        else:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            self.overflows += 1
        return finite


class StepPrecision:
    """The autocast dtype of a worker's step and, for fp16, its loss scale."""

    def __init__(self, precision: str, device: torch.device):
        self.dtype = _DTYPES.get(precision)
        self.device_type = device.type
        self.loss_scale = LossScale() if precision == "fp16" else None

    @classmethod
    def of(cls, run: RunConfig, device: torch.device) -> "StepPrecision":
        return cls(run.precision, device)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def loss_scale_factor(self) -> float:
        return self.loss_scale.scale if self.loss_scale else 1.0

    def unscale(self, grads: Iterable[torch.Tensor]) -> bool:
        """fp16: unscale in place and say whether the step is usable; otherwise True."""
        return self.loss_scale.unscale(grads) if self.loss_scale else True
