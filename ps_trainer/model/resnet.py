"""ResNet trunks from torchvision (He et al., CVPR 2016), in torchvision's parameter layout.

    trunk = ResNetTrunk(ModelConfig(backbone="resnet50", output_stride=8))
    out = trunk(x)       # TrunkOutput: layer1..layer4 outputs, strides 4, 8, 8, 8

The modules are torchvision's own (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer1.0.downsample.0``), held under the same names without ``avgpool`` and ``fc``, so
this trunk's state_dict is a torchvision ResNet's less ``fc.*``: ImageNet weights load into it
(:mod:`ps_trainer.model.pretrained`) and a trunk trained here exports as one. An output stride
of 16 or 8 replaces the stride of the last one or two stages by dilation, as DeepLab does
(Chen et al., 2017; torchvision's ``replace_stride_with_dilation``).
"""
from __future__ import annotations

import torch
from torch import nn

from ps_trainer.config import ModelConfig
from ps_trainer.model.norms import make_norm
from ps_trainer.model.trunk import TrunkOutput

DEPTHS = {"resnet18": (64, 128, 256, 512), "resnet34": (64, 128, 256, 512),
          "resnet50": (256, 512, 1024, 2048), "resnet101": (256, 512, 1024, 2048)}
_DILATE = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}
STAGES = ("layer1", "layer2", "layer3", "layer4")


def stage_strides(output_stride: int) -> tuple[int, ...]:
    """Input pixels per feature pixel after layer1..layer4 at the given output stride."""
    return tuple(min(s, output_stride) for s in (4, 8, 16, 32))


def _dilate_basic_blocks(net: nn.Module, dilate: list[bool]) -> None:
    """torchvision's replace_stride_with_dilation for BasicBlock ResNets (18, 34), which
    torchvision builds only for bottlenecks: the stage's stride becomes dilation, with the same
    rule (the first block's first 3x3 keeps the previous dilation). Shapes and names stay."""
    dilation = 1
    for name, on in zip(STAGES[1:], dilate):
        if not on:
            continue
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(getattr(net, name)):
            for conv, d in ((block.conv1, previous if i == 0 else dilation),
                            (block.conv2, dilation)):
                conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
            block.stride = 1


class ResNetTrunk(nn.Module):
    """torchvision's ResNet without its classifier; returns every stage's output."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from torchvision import models    # torchvision only where a ResNet is built

        output_stride = cfg.output_stride or 32
        norm = lambda channels: make_norm(cfg.norm, channels, cfg.groups)  # noqa: E731
        # zero_init_residual: each block starts as the identity (Goyal et al. 2017), as the
        # small trunk does; pretrained weights overwrite it.
        dilate = _DILATE[output_stride]
        bottleneck = cfg.backbone in ("resnet50", "resnet101")
        net = getattr(models, cfg.backbone)(
            weights=None, norm_layer=norm, zero_init_residual=True,
            replace_stride_with_dilation=dilate if bottleneck else None)
        if not bottleneck:
            _dilate_basic_blocks(net, dilate)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (getattr(net, s) for s in STAGES)
        self.stage_channels = DEPTHS[cfg.backbone]
        self.stage_strides = stage_strides(output_stride)
        self.out_channels = self.stage_channels[-1]
        self.stride = self.stage_strides[-1]
        self.last_stage_units = len(self.layer4)

    def forward(self, x: torch.Tensor, last_units: bool = False) -> TrunkOutput:
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))      # (B, 64, H/4, W/4)
        stages = []
        for name in STAGES[:-1]:
            out = getattr(self, name)(out)
            stages.append(out)
        units = []
        for block in self.layer4:         # block by block: the lasso may read each unit
            out = block(out)
            if last_units:
                units.append(out)
        stages.append(out)                # (B, C, H/output_stride, W/output_stride)
        return TrunkOutput(stages, units if last_units else None)

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """What GradNorm measures task gradients on: the last residual unit."""
        return list(self.layer4[-1].parameters())
