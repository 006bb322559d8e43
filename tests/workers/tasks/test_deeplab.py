"""DeepLabV3+: shapes and strides, the stages it reads, its norms, and self-training through it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ps_trainer.config import ModelConfig
from ps_trainer.model import MultiTaskModel
from ps_trainer.model.backbones import trunk_geometry
from ps_trainer_workers.tasks import TaskContext, make_task
from ps_trainer_workers.tasks.base import TaskModel
from ps_trainer_workers.tasks.deeplab import DeepLabV3PlusHead, aspp_rates

CFG = ModelConfig(backbone="resnet18", output_stride=8, norm="batch")


def _model(options=None, cfg=CFG, classes=5):
    geometry = trunk_geometry(cfg)
    context = TaskContext(64, classes, geometry.stride, geometry.stage_channels,
                          geometry.stage_strides)
    seg = make_task("segmentation", context, {"head": "deeplabv3plus", **(options or {})})
    return MultiTaskModel(cfg, {"segmentation": seg.head(geometry.channels)}), seg, context


def test_rates_follow_the_paper_at_each_output_stride():
    assert aspp_rates(16) == (6, 12, 18) and aspp_rates(8) == (12, 24, 36)


def test_reads_the_first_and_last_stage_and_predicts_at_stride_four():
    model, _, _ = _model()
    calls = {}
    head = model.heads["segmentation"]
    head.register_forward_pre_hook(lambda m, args: calls.update(shapes=[tuple(a.shape)
                                                                        for a in args]))
    logits = model("segmentation", torch.rand(2, 3, 64, 96))
    assert calls["shapes"] == [(2, 64, 16, 24), (2, 512, 8, 12)]      # layer1, layer4 at OS 8
    assert logits.shape == (2, 5, 16, 24)


def test_head_has_no_batch_norm_and_trains_at_batch_size_one():
    model, _, _ = _model()
    head = model.heads["segmentation"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in head.modules())
    model.train()
    loss = model("segmentation", torch.rand(1, 3, 32, 32)).square().mean()
    loss.backward()                         # the image-pooling branch at 1x1, batch 1
    for name in ("skip.0.weight", "aspp.convs.4.1.weight", "classifier.weight"):
        grad = dict(head.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.trunk.conv1.weight.grad.abs().sum() > 0


def test_segmentation_loss_through_deeplab_reaches_the_trunk(make_masks):
    model, seg, _ = _model(classes=6)
    images = torch.rand(2, 3, 32, 32)
    loss = seg.training_loss(TaskModel(model, "segmentation"), images,
                             np.random.default_rng(0), make_masks(images))
    loss.backward()
    assert torch.isfinite(loss) and model.trunk.conv1.weight.grad.abs().sum() > 0


def test_self_training_trains_the_same_deeplab_head_with_both_feature_levels():
    model, _, context = _model()
    st = make_task("self_training", context, {"threshold": 0.0})
    assert st.head_name == "segmentation"
    view = TaskModel(model, "segmentation")
    features = view.features(torch.rand(2, 3, 32, 32))
    assert [f.shape[1] for f in features] == [64, 512]
    loss = st.training_loss(view, torch.rand(2, 3, 32, 32), np.random.default_rng(0))
    loss.backward()
    head = model.heads["segmentation"]
    assert head.skip[0].weight.grad.abs().sum() > 0
    assert model.trunk.layer4[-1].bn2.weight.grad.abs().sum() > 0   # conv2 sits behind bn2 = 0


def test_a_head_options_mistake_names_the_key():
    from ps_trainer.config import ConfigError
    with pytest.raises(ConfigError, match="head"):
        make_task("segmentation", TaskContext(64, 5, 8), {"head": "pspnet"})
    with pytest.raises(ConfigError, match="aspp_channels"):
        make_task("segmentation", TaskContext(64, 5, 8), {"aspp_channels": 100})
