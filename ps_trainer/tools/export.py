"""A checkpoint's trunk as a torchvision ResNet state_dict (``ps-trainer export``).

    ps-trainer export --checkpoint runs/pretrain/checkpoints/best.pt --out trunk.pth
    ps-trainer export --checkpoint CKPT --out model.pth --with-head --stats-of segmentation

The file is a plain ``state_dict`` (``torch.load(path, weights_only=True)`` reads it) whose
keys are those of ``torchvision.models.resnet18()`` ... ``resnet101()`` less ``fc.*``, batch-norm
running statistics included (frozen batch norm written as batch norm, with its counter). So
``model.load_state_dict(state, strict=False)`` on a torchvision ResNet of the same depth misses
only ``fc.*``, and the file is a ``model.pretrained`` here, a torchvision / mmsegmentation /
DeepLab backbone's weights elsewhere. A trunk trained at output stride 16 or 8 has the same
weights; build the ResNet with the matching ``replace_stride_with_dilation`` to get the same
features. ``--with-head`` adds the segmentation head under ``segmentation_head.`` + the head's
own parameter names (a torchvision ResNet loading the file with ``strict=False`` reports them
as unexpected).

Norm statistics: the server keeps one set of batch-norm running statistics per task (each
task's workers push their own). The export takes the segmentation task's, as the evaluator
does, when the run trained segmentation, else those of the first configured task that has
any; ``stats_of`` chooses. Only ResNet trunks with batch or frozen batch norm export: the
other norms have no place in torchvision's layout.
"""
from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ps_trainer.core.checkpoint import atomic_write, load_checkpoint
from ps_trainer.config import Config
from ps_trainer.run.evaluator import SEGMENTATION
from ps_trainer.run.launch import checkpoint_config, checkpoint_model
from ps_trainer.model import shard_of
from ps_trainer.model.backbones import (IMAGENET_MEAN, IMAGENET_STD, input_normalisation, is_resnet)
from ps_trainer.model.pretrained import torchvision_state_dict
from ps_trainer.core.params import ShardLayout, norm_stats_tasks
from ps_trainer.core.shards import TRUNK_SHARD, head_shard

log = logging.getLogger(__name__)
HEAD_PREFIX = "segmentation_head."
EXPORTABLE_NORMS = ("batch", "frozen_batch")


@dataclass(frozen=True)
class Exported:
    """What was written: the file, the trunk, whose statistics, how many tensors."""
    path: Path
    backbone: str
    output_stride: int
    stats_of: str
    tensors: int
    with_head: bool


def export_trunk(checkpoint: str | Path, out: str | Path, with_head: bool = False,
                 stats_of: Optional[str] = None) -> Exported:
    """Write `checkpoint`'s trunk (and, with `with_head`, its segmentation head) to `out` as a
    torchvision-layout state_dict. Bad input is a one-line ValueError naming the problem."""
    out = _writable(Path(out))
    payload = load_checkpoint(checkpoint)
    cfg = checkpoint_config(payload)
    _check_exportable(cfg, checkpoint, with_head)
    task = _stats_task(cfg, payload["servers"], checkpoint, stats_of)
    heads = (SEGMENTATION,) if with_head else ()
    model = checkpoint_model(cfg, payload, heads, task).eval()
    state = torchvision_state_dict(model.trunk)
    if with_head:
        _check_head_stats(model, payload["servers"], task)
        head = model.heads[SEGMENTATION].state_dict()
        state.update({HEAD_PREFIX + k: v.detach().to("cpu", copy=True).contiguous()
                      for k, v in head.items()})
    _warn_about_inputs(cfg)
    _save(state, out)
    return Exported(out, cfg.model.backbone, cfg.model.output_stride or 32, task, len(state),
                    with_head)


def _writable(out: Path) -> Path:
    """`out`, if a file can be written there; else a ValueError saying why."""
    folder = out.parent
    if out.is_dir():
        raise ValueError(f"cannot write {out}: it is a folder; name the file to write")
    if not folder.exists():
        raise ValueError(f"cannot write {out}: folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"cannot write {out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {out}: folder {folder} cannot be written")
    return out


def _check_exportable(cfg: Config, checkpoint: str | Path, with_head: bool) -> None:
    """Refuse, in one line, a trunk torchvision's ResNet cannot hold."""
    model = cfg.model
    if not is_resnet(model):
        raise ValueError(f"{checkpoint}: its trunk is model.backbone {model.backbone!r}, not a "
                         f"ResNet: only resnet18/34/50/101 trunks have torchvision's layout")
    if model.norm not in EXPORTABLE_NORMS:
        raise ValueError(f"{checkpoint}: its {model.backbone} trunk uses model.norm "
                         f"{model.norm!r}; torchvision's ResNet has batch norm, so only "
                         f"{' or '.join(EXPORTABLE_NORMS)} trunks export")
    if with_head and SEGMENTATION not in cfg.tasks:
        raise ValueError(f"{checkpoint}: its run has no {SEGMENTATION} task, so no "
                         f"{SEGMENTATION} head to add (export without --with-head)")
    if with_head and model.lasso:
        raise ValueError(f"{checkpoint}: its {SEGMENTATION} head reads a lasso mix of layer4's "
                         f"blocks (model.lasso), which a torchvision ResNet does not compute: "
                         f"export without --with-head")


def _stats_task(cfg: Config, states, checkpoint: str | Path, requested: Optional[str]) -> str:
    """The task whose trunk statistics to export: `requested`, else segmentation's, else the
    first configured task's that has any."""
    have = norm_stats_tasks(states, TRUNK_SHARD)
    listed = ", ".join(t for t in cfg.task_names if t in have) or "none"
    if requested is not None:
        if requested not in cfg.tasks:
            raise ValueError(f"{checkpoint}: no task {requested!r} in its run (its tasks: "
                             f"{', '.join(cfg.task_names)})")
        if requested not in have:
            raise ValueError(f"{checkpoint}: holds no norm statistics of task {requested!r} "
                             f"(tasks with statistics: {listed})")
        return requested
    preferred = (SEGMENTATION, *cfg.task_names)
    found = next((t for t in preferred if t in cfg.tasks and t in have), None)
    if found is None:
        raise ValueError(f"{checkpoint}: holds no batch-norm statistics of the trunk (no task "
                         f"had pushed any when it was written)")
    return found


def _check_head_stats(model, states, task: str) -> None:
    """The head's norm statistics, if it has any, come with the trunk's from `task`."""
    shard = head_shard(SEGMENTATION)
    has_stats = shard in ShardLayout.of(model, shard_of).stats
    if has_stats and task not in norm_stats_tasks(states, shard):
        raise ValueError(f"the {SEGMENTATION} head has norm statistics and task {task!r} never "
                         f"pushed them: export it with --stats-of {SEGMENTATION}")


def _warn_about_inputs(cfg: Config) -> None:
    """A user of the file feeds it torchvision's input unless told otherwise."""
    if cfg.model.harmonize:
        log.warning("this trunk was trained on Lab lightness as RGB (model.harmonize): feed it "
                    "images converted the same way")
    mean, std = input_normalisation(cfg.model)
    if (mean, std) != (IMAGENET_MEAN, IMAGENET_STD):
        log.warning("this trunk was trained on inputs normalised with mean %s, std %s, not "
                    "ImageNet's", mean, std)


def _save(state: dict[str, torch.Tensor], out: Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        atomic_write(out, buffer.getvalue())
    except OSError as err:
        raise ValueError(f"cannot write {out}: {err.strerror or err}") from None
