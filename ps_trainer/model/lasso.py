"""Doersch & Zisserman's lasso (ICCV 2017, sec. 3.3).

Each task reads a learned linear combination of the outputs of the trunk's last-stage
residual units instead of only the final one; an L1 penalty on the mixing weights makes
each task pick few units, which shows which depth each task relies on. The weights start
one-hot on the final unit, so with lasso on the model starts identical to lasso off.
"""
from __future__ import annotations

import torch
from torch import nn


class Lasso(nn.Module):
    """Per-task mixing of `num_units` same-shaped unit outputs, with an L1 penalty."""

    def __init__(self, num_units: int):
        super().__init__()
        init = torch.zeros(num_units)
        init[-1] = 1.0
        self.alpha = nn.Parameter(init)

    def forward(self, units: list[torch.Tensor]) -> torch.Tensor:
        # units: num_units x (B, C, h, w) -> (B, C, h, w)
        stacked = torch.stack(units, dim=0)
        return torch.tensordot(self.alpha, stacked, dims=1)

    def penalty(self) -> torch.Tensor:
        return self.alpha.abs().sum()
