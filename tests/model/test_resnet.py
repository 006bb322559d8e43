"""ResNet trunks: torchvision's parameter layout, strides per output stride, weights in."""
from __future__ import annotations

import pytest
import torch
from torchvision import models

from ps_trainer.config import ConfigError, ModelConfig
from ps_trainer.model import MultiTaskModel
from ps_trainer.model.backbones import IMAGENET_MEAN, IMAGENET_STD, make_trunk, trunk_geometry
from ps_trainer.model.pretrained import load_pretrained, torchvision_state_dict

DEPTHS = ("resnet18", "resnet34", "resnet50", "resnet101")


@pytest.mark.parametrize("depth", DEPTHS)
def test_state_dict_keys_and_shapes_are_torchvisions_less_fc(depth):
    trunk = make_trunk(ModelConfig(backbone=depth, norm="batch"))
    reference = getattr(models, depth)(weights=None).state_dict()
    expected = {k: tuple(v.shape) for k, v in reference.items() if not k.startswith("fc.")}
    assert {k: tuple(v.shape) for k, v in trunk.state_dict().items()} == expected


@pytest.mark.parametrize("output_stride,strides", [(32, (4, 8, 16, 32)), (16, (4, 8, 16, 16)),
                                                   (8, (4, 8, 8, 8))])
def test_stage_outputs_have_the_strides_of_the_output_stride(output_stride, strides):
    cfg = ModelConfig(backbone="resnet18", output_stride=output_stride, norm="batch")
    trunk = make_trunk(cfg).eval()
    geometry = trunk_geometry(cfg)
    assert geometry.stage_strides == strides == trunk.stage_strides
    with torch.no_grad():
        out = trunk(torch.rand(1, 3, 64, 96), last_units=True)
    for stage, (channels, stride) in enumerate(zip(geometry.stage_channels, strides)):
        assert out.stages[stage].shape == (1, channels, 64 // stride, 96 // stride)
    assert len(out.last_units) == 2 and out.last_units[-1] is out.stages[-1]


def test_a_dilated_resnet50_has_its_stated_geometry():
    cfg = ModelConfig(backbone="resnet50", output_stride=8, norm="batch")
    trunk = make_trunk(cfg).eval()
    with torch.no_grad():
        out = trunk(torch.rand(1, 3, 64, 64))
    assert [tuple(s.shape[1:]) for s in out.stages] == [(256, 16, 16), (512, 8, 8),
                                                        (1024, 8, 8), (2048, 8, 8)]
    assert sum(p.numel() for p in trunk.parameters()) == 23_508_032


def test_torchvision_weights_load_and_give_torchvisions_features(tmp_path):
    torch.manual_seed(0)
    reference = models.resnet18(weights=None).eval()
    with torch.no_grad():                 # non-trivial statistics, as trained weights have
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)             # fc.* included, as published
    for norm in ("batch", "frozen_batch"):
        cfg = ModelConfig(backbone="resnet18", norm=norm, pretrained=str(path))
        model = MultiTaskModel(cfg, {"a": torch.nn.Identity()}).eval()
        x = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            ours = model.trunk(model.prepare(x)).stages[-1]
            body = torch.nn.Sequential(*list(reference.children())[:-2])
            mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            theirs = body((x - mean) / std)
        torch.testing.assert_close(ours, theirs)


def test_export_round_trips_through_pretrained(tmp_path):
    cfg = ModelConfig(backbone="resnet18", norm="batch")
    trunk = make_trunk(cfg)
    trunk.train()(torch.rand(4, 3, 32, 32))             # running statistics move
    state = torchvision_state_dict(trunk)
    reference = models.resnet18(weights=None)
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    torch.save(state, tmp_path / "out.pth")
    again = make_trunk(cfg)
    load_pretrained(again, tmp_path / "out.pth")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x).stages[-1], trunk.eval()(x).stages[-1])


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.pop("layer1.0.conv1.weight"), "missing key 'layer1.0.conv1.weight'"),
    (lambda s: s.update({"layer9.weight": torch.zeros(1)}), "unexpected key 'layer9.weight'"),
    (lambda s: s.update({"conv1.weight": torch.zeros(64, 3, 3, 3)}),
     "key 'conv1.weight' has shape (64, 3, 3, 3), the model needs (64, 3, 7, 7)"),
])
def test_a_mismatched_weights_file_is_one_error_naming_the_key_and_file(tmp_path, edit, message):
    state = models.resnet18(weights=None).state_dict()
    edit(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError) as err:
        load_pretrained(make_trunk(ModelConfig(backbone="resnet18", norm="batch")), path)
    text = str(err.value)
    assert message in text and str(path) in text and "model.pretrained" in text
    assert "\n" not in text


def test_a_missing_or_unreadable_weights_file_is_one_error(tmp_path):
    trunk = make_trunk(ModelConfig(backbone="resnet18", norm="batch"))
    with pytest.raises(ConfigError, match="no weights file"):
        load_pretrained(trunk, tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="is not a readable weights file"):
        load_pretrained(trunk, tmp_path / "junk.pth")


def test_a_weights_file_into_another_norm_names_the_first_unexpected_key(tmp_path):
    torch.save(models.resnet18(weights=None).state_dict(), tmp_path / "bn.pth")
    trunk = make_trunk(ModelConfig(backbone="resnet18", norm="group"))
    with pytest.raises(ConfigError, match=r"unexpected key 'bn1.running_mean' and \d+ more"):
        load_pretrained(trunk, tmp_path / "bn.pth")


def test_model_config_checks_backbone_choices():
    with pytest.raises(ConfigError, match="output_stride"):
        ModelConfig(backbone="small", output_stride=8)
    with pytest.raises(ConfigError, match="output_stride"):
        ModelConfig(backbone="resnet50", output_stride=4)
    with pytest.raises(ConfigError, match="frozen_batch"):
        ModelConfig(backbone="resnet50", norm="frozen_batch")
    with pytest.raises(ConfigError, match="backbone"):
        ModelConfig(backbone="resnet152")
