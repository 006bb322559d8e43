"""The ``small`` trunk: a small ResNet written out (He et al., CVPR 2016).

    trunk = Trunk(ModelConfig(widths=(16, 32, 64), blocks=(1, 1, 2)))
    out = trunk(x)            # TrunkOutput: every stage's output (last = final features)

Stages after the first halve the resolution; the stem may already downsample
(``stem_stride``). With ``last_units=True`` the outputs of the last stage's residual units
come too: they feed Doersch's lasso.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from ps_trainer.config import ModelConfig
from ps_trainer.model.norms import make_norm


class TrunkOutput(NamedTuple):
    """What every trunk returns: each stage's output, low to high level, and (when asked) the
    outputs of the last stage's residual units, for the lasso."""
    stages: list[torch.Tensor]
    last_units: Optional[list[torch.Tensor]] = None


def stage_strides(cfg: ModelConfig) -> tuple[int, ...]:
    """Input pixels per feature pixel after each stage of the small trunk."""
    return tuple(cfg.stem_stride * 2 ** i for i in range(len(cfg.widths)))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = make_norm(norm, cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = make_norm(norm, cout, groups)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          make_norm(norm, cout, groups))
        # Zero-init the last norm's scale so each unit starts as the identity (Goyal et al. 2017).
        if hasattr(self.norm2, "weight") and self.norm2.weight is not None:
            nn.init.zeros_(self.norm2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Trunk(nn.Module):
    """Stem + stages of BasicBlocks (the ``small`` backbone)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w0 = cfg.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, w0, 3, min(cfg.stem_stride, 2), 1, bias=False),
            make_norm(cfg.norm, w0, cfg.groups),
            nn.ReLU(inplace=True),
        )
        if cfg.stem_stride == 4:
            self.stem.append(nn.MaxPool2d(3, 2, 1))
        units, cin = [], w0
        self.stage_of_unit: list[int] = []
        for stage, (width, count) in enumerate(zip(cfg.widths, cfg.blocks)):
            for i in range(count):
                stride = 2 if (stage > 0 and i == 0) else 1
                units.append(BasicBlock(cin, width, stride, cfg.norm, cfg.groups))
                self.stage_of_unit.append(stage)
                cin = width
        self.units = nn.ModuleList(units)
        self.out_channels = cin
        self.stage_channels = tuple(cfg.widths)
        self.stage_strides = stage_strides(cfg)
        self.stride = self.stage_strides[-1]
        self.last_stage_units = cfg.blocks[-1]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, last_units: bool = False) -> TrunkOutput:
        out = self.stem(x)                       # (B, w0, H/s, W/s)
        stages: list[torch.Tensor] = []
        units: list[torch.Tensor] = []
        last = len(self.stage_channels) - 1
        for unit, stage in zip(self.units, self.stage_of_unit):
            out = unit(out)
            if stage == len(stages) - 1:
                stages[-1] = out
            else:
                stages.append(out)
            if last_units and stage == last:
                units.append(out)
        return TrunkOutput(stages, units if last_units else None)  # last: (B, C, H/stride, W/stride)

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """What GradNorm measures task gradients on (Chen et al. 2018: the last shared layer).
        The whole last residual unit: its final conv alone has zero gradient at the start,
        because the unit's last norm scale is initialised to zero."""
        return list(self.units[-1].parameters())
