"""ps-trainer export: a trained ResNet-18 trunk out as torchvision's state_dict, and back in."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models

from ps_trainer.core.checkpoint import load_checkpoint
from ps_trainer.tools.cli import main
from ps_trainer.run.evaluator import make_evaluation_loop
from ps_trainer.tools.export import HEAD_PREFIX, export_trunk
from ps_trainer.run.launch import build_eval_model, load_run_config, run_local
from ps_trainer.model.backbones import IMAGENET_MEAN, IMAGENET_STD
from ps_trainer.core.params import Piece, load_norm_stats
from ps_trainer.run.config_gate import saved_run_config
from support import untrained_checkpoint

RESNET18 = ["model.backbone=resnet18", "eval.every_s=1000"]   # one evaluation: the final one
FC = {"fc.weight", "fc.bias"}


def _trained_checkpoint(folder: Path, tiny, extra=()) -> Path:
    """A checkpoint of a few local updates of rotation + segmentation on a ResNet-18."""
    cfg = load_run_config(None, tiny(folder, ("rotation", "segmentation"),
                                     extra=[*RESNET18, "run.max_updates=6", *extra]))
    run_local(cfg)
    return folder / "run" / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def batch_checkpoint(tmp_path_factory, tiny) -> Path:
    return _trained_checkpoint(tmp_path_factory.mktemp("batch"), tiny, ["model.norm=batch"])


@pytest.fixture(scope="module")
def frozen_checkpoint(tmp_path_factory, tiny) -> tuple[Path, dict]:
    """A frozen-batch-norm run from a torchvision ResNet-18 with non-trivial statistics."""
    folder = tmp_path_factory.mktemp("frozen")
    torch.manual_seed(1)
    reference = models.resnet18(weights=None)
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    weights = reference.state_dict()
    torch.save(weights, folder / "imagenet.pth")
    path = _trained_checkpoint(folder, tiny, ["model.norm=frozen_batch",
                                              f"model.pretrained={folder / 'imagenet.pth'}"])
    return path, weights


def _evaluator_model(checkpoint: Path, stats_of: str = "segmentation") -> nn.Module:
    """The checkpoint's model as the evaluator builds and loads it (then with `stats_of`'s
    norm statistics), in eval mode."""
    payload = load_checkpoint(checkpoint)
    cfg = saved_run_config(payload["config"])
    loop = make_evaluation_loop(cfg, functools.partial(build_eval_model, cfg), torch.device("cpu"))
    loop.load_pieces(payload["servers"], [Piece(**p) for p in payload["plan"]])
    load_norm_stats(loop.flat, payload["servers"], stats_of)
    return loop.model.eval()


def _torchvision_body(state: dict) -> nn.Module:
    """torchvision's ResNet-18 holding `state`, up to layer4, in eval mode; checks the keys."""
    net = models.resnet18(weights=None)
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert set(missing) == FC and unexpected == []
    return nn.Sequential(*list(net.children())[:-2]).eval()


def _imagenet(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def _trunk_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.trunk(model.prepare(x)).stages[-1]        # (B, 512, H/32, W/32)


def _images() -> torch.Tensor:
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_the_trunk_loads_into_torchvision_and_gives_the_checkpoints_features(batch_checkpoint,
                                                                            tmp_path):
    out = tmp_path / "trunk.pth"
    assert main(["export", "--checkpoint", str(batch_checkpoint), "--out", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    expected = {k: tuple(v.shape) for k, v in models.resnet18().state_dict().items()
                if k not in FC}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    ours = _evaluator_model(batch_checkpoint)
    x = _images()
    with torch.no_grad():
        theirs = _torchvision_body(state)(_imagenet(x))
    torch.testing.assert_close(theirs, _trunk_features(ours, x))
    # The statistics are the trained ones, not the initial zeros and ones.
    assert not torch.equal(state["bn1.running_mean"], torch.zeros(64))


def test_the_file_loads_back_as_model_pretrained(batch_checkpoint, tmp_path, tiny):
    out = export_trunk(batch_checkpoint, tmp_path / "trunk.pth").path
    cfg = load_run_config(None, tiny(tmp_path, ("segmentation",), extra=[
        *RESNET18, "model.norm=batch", f"model.pretrained={out}"]))
    again = build_eval_model(cfg).eval()
    x = _images()
    torch.testing.assert_close(_trunk_features(again, x),
                               _trunk_features(_evaluator_model(batch_checkpoint), x))


def test_stats_of_chooses_whose_batch_norm_statistics_are_written(batch_checkpoint, tmp_path):
    default = export_trunk(batch_checkpoint, tmp_path / "default.pth")
    rotation = export_trunk(batch_checkpoint, tmp_path / "rotation.pth", stats_of="rotation")
    assert (default.stats_of, rotation.stats_of) == ("segmentation", "rotation")
    written = torch.load(rotation.path, weights_only=True)
    expected = _evaluator_model(batch_checkpoint, stats_of="rotation").trunk.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(written[key], value, rtol=0, atol=0)
    # The two tasks' statistics differ (they normalise different batches): the choice matters.
    segmentation = torch.load(default.path, weights_only=True)
    assert not torch.equal(written["layer4.1.bn2.running_var"],
                           segmentation["layer4.1.bn2.running_var"])


def test_with_head_adds_the_segmentation_head_in_its_own_namespace(batch_checkpoint, tmp_path):
    out = tmp_path / "model.pth"
    assert main(["export", "--checkpoint", str(batch_checkpoint), "--out", str(out),
                 "--with-head"]) == 0
    state = torch.load(out, weights_only=True)
    model = _evaluator_model(batch_checkpoint)
    head = model.heads["segmentation"].state_dict()
    trunk = {k for k in state if not k.startswith(HEAD_PREFIX)}
    assert trunk == set(models.resnet18().state_dict()) - FC
    assert set(state) - trunk == {HEAD_PREFIX + k for k in head}
    for key, value in head.items():
        torch.testing.assert_close(state[HEAD_PREFIX + key], value, rtol=0, atol=0)
    net = models.resnet18(weights=None)
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert set(missing) == FC and set(unexpected) == {HEAD_PREFIX + k for k in head}


def test_a_frozen_batch_norm_trunk_exports_as_batch_norm(frozen_checkpoint, tmp_path):
    checkpoint, pretrained = frozen_checkpoint
    out = export_trunk(checkpoint, tmp_path / "trunk.pth").path
    state = torch.load(out, weights_only=True)
    assert set(state) == set(pretrained) - FC          # num_batches_tracked counters included
    x = _images()
    with torch.no_grad():
        theirs = _torchvision_body(state)(_imagenet(x))
    ours = _trunk_features(_evaluator_model(checkpoint), x)
    # Frozen batch norm folds its affine into one scale and shift (x * w / sqrt(var + eps) +
    # ...) where batch norm normalises first: the same values up to float32 rounding.
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5 * float(ours.abs().max()))
    # Frozen: the affine and statistics are the pretrained file's; the convolutions trained.
    for key in ("bn1.weight", "bn1.running_var", "layer4.1.bn2.bias",
                "layer3.0.downsample.1.running_mean"):
        torch.testing.assert_close(state[key], pretrained[key], rtol=0, atol=0)
    assert not torch.equal(state["layer4.1.conv2.weight"], pretrained["layer4.1.conv2.weight"])


def _refused(capsys, argv) -> str:
    """The one stderr line of a CLI call that must fail."""
    capsys.readouterr()
    assert main(argv) != 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize("extra,message", [
    ([], "its trunk is model.backbone 'small', not a ResNet"),
    (["model.backbone=resnet18", "model.norm=group"],
     "uses model.norm 'group'; torchvision's ResNet has batch norm"),
    (["model.backbone=resnet18", "model.norm=switchable"], "uses model.norm 'switchable'"),
])
def test_a_trunk_torchvision_cannot_hold_is_refused(tiny_config, tmp_path, capsys, extra, message):
    checkpoint = untrained_checkpoint(tiny_config(extra=extra))
    out = tmp_path / "trunk.pth"
    line = _refused(capsys, ["export", "--checkpoint", checkpoint, "--out", str(out)])
    assert message in line and checkpoint in line
    assert not out.exists()


def test_a_checkpoint_without_statistics_is_refused(tiny_config, tmp_path, capsys):
    checkpoint = untrained_checkpoint(tiny_config(extra=["model.backbone=resnet18",
                                                         "model.norm=batch"]))
    argv = ["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "trunk.pth")]
    assert "holds no batch-norm statistics of the trunk" in _refused(capsys, argv)
    line = _refused(capsys, [*argv, "--stats-of", "rotation"])
    assert "holds no norm statistics of task 'rotation' (tasks with statistics: none)" in line


def test_bad_stats_of_and_with_head_are_refused(batch_checkpoint, tmp_path, tiny_config, capsys):
    argv = ["export", "--checkpoint", str(batch_checkpoint), "--out", str(tmp_path / "t.pth")]
    line = _refused(capsys, [*argv, "--stats-of", "jigsaw"])
    assert "no task 'jigsaw' in its run (its tasks: rotation, segmentation)" in line
    rotation_only = untrained_checkpoint(tiny_config(
        tasks=("rotation",), extra=["model.backbone=resnet18", "model.norm=batch"]))
    line = _refused(capsys, ["export", "--checkpoint", rotation_only, "--out",
                             str(tmp_path / "t.pth"), "--with-head"])
    assert "its run has no segmentation task, so no segmentation head" in line
    assert not (tmp_path / "t.pth").exists()


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores modes: then a kernel one)."""
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    probe = folder / "probe"
    try:
        probe.touch()
    except PermissionError:
        return folder
    probe.unlink()
    try:
        (Path("/sys") / "ps-trainer-probe").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("no folder here refuses this process a new file")


def test_an_out_path_that_cannot_be_written_is_refused(batch_checkpoint, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    cases = [(tmp_path / "no-such-folder" / "t.pth", "folder", "does not exist"),
             (tmp_path / "a-file" / "t.pth", "a-file", "is not a folder"),
             (tmp_path, str(tmp_path), "it is a folder"),
             (_unwritable_folder(tmp_path) / "t.pth", "t.pth", "")]
    for out, named, why in cases:
        line = _refused(capsys, ["export", "--checkpoint", str(batch_checkpoint), "--out", str(out)])
        assert line.startswith(f"ps-trainer: cannot write {out}") and named in line and why in line
    assert not list((tmp_path).glob(".*tmp")) and sorted(p.name for p in tmp_path.iterdir()) \
        == ["a-file", "read-only"]
