"""The shared convolutional trunk: a small ResNet written out (He et al., CVPR 2016).

    trunk = Trunk(ModelConfig(widths=(16, 32, 64), blocks=(1, 1, 2)))
    units = trunk(x)          # list of every residual unit's output, last = final features

Stages after the first halve the resolution; the stem may already downsample
(``stem_stride``). The list of unit outputs feeds Doersch's lasso.
"""
from __future__ import annotations

import torch
from torch import nn

from ps_trainer.config import ModelConfig
from ps_trainer.model.norms import make_norm


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
    """Stem + stages of BasicBlocks; returns the outputs of every residual unit."""

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
        self.stride = cfg.stem_stride * 2 ** (len(cfg.widths) - 1)
        self.last_stage_units = cfg.blocks[-1]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.stem(x)                       # (B, w0, H/s, W/s)
        outputs = []
        for unit in self.units:
            out = unit(out)
            outputs.append(out)
        return outputs                           # last: (B, C, H/stride, W/stride)

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """What GradNorm measures task gradients on (Chen et al. 2018: the last shared layer).
        The whole last residual unit: its final conv alone has zero gradient at the start,
        because the unit's last norm scale is initialised to zero."""
        return list(self.units[-1].parameters())
