"""Teachers for the tasks that learn from pseudo-labels (``self_training``,
``domain_adaptation``): which model predicts them, and how.

``pulled``: the weights the worker computes with, the student's own pass (FixMatch, UniMatch);
in the asynchronous runtime the last pulled version. ``ema``: an exponential moving average of
the weights the task has seen (Mean Teacher, Tarvainen & Valpola, NeurIPS 2017; DACS and
DAFormer's teacher), held in the worker and updated once per step: it costs one model copy in
the worker's memory and one forward pass, and no traffic (a copy at the server would cost a
pull of the whole model per step). ``checkpoint``: a fixed teacher read from a run's
checkpoint, in eval mode (self-training in rounds: ST++, Noisy Student). ``teacher_flip`` and
``teacher_scales`` average an ``ema`` or ``checkpoint`` teacher's class probabilities over the
mirrored and resized views.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ps_trainer.core.checkpoint import load_checkpoint, saved_plan
from ps_trainer.model import shard_of
from ps_trainer.config.options import Options, check, check_choice
from ps_trainer.core.params import FlatModel, ShardLayout, load_norm_stats, load_pieces
from ps_trainer.core.shards import TRUNK_SHARD, head_shard
from ps_trainer_workers.tasks.base import TaskModel
from ps_trainer_workers.tasks.heads import resize_like

TEACHERS = ("pulled", "ema", "checkpoint")


@dataclass(frozen=True)
class TeacherOptions(Options):
    """The teacher's settings, shared by the options of every pseudo-labelling task."""
    teacher: str = "pulled"              # pulled | ema | checkpoint
    ema_decay: float = 0.99
    teacher_checkpoint: str = ""         # teacher: checkpoint: the fixed teacher's file
    teacher_flip: bool = False           # ema | checkpoint: average with the mirrored view
    teacher_scales: tuple[float, ...] = (1.0,)   # ema | checkpoint: average over input resizes

    path_keys = ("teacher_checkpoint",)  # made absolute by the config gate

    def __post_init__(self):
        check_choice("teacher", self.teacher, TEACHERS)
        check(0.0 < self.ema_decay < 1.0, "ema_decay", self.ema_decay, "must be in (0, 1)")
        check(bool(self.teacher_checkpoint) == (self.teacher == "checkpoint"),
              "teacher_checkpoint", self.teacher_checkpoint,
              "a checkpoint file with teacher: checkpoint, and only then")
        check(not self.teacher_flip or self.teacher != "pulled", "teacher_flip", self.teacher_flip,
              "with teacher: ema or checkpoint (the pulled teacher is the student's own pass)")
        check(len(self.teacher_scales) > 0 and all(0.25 <= f <= 4.0 for f in self.teacher_scales),
              "teacher_scales", self.teacher_scales, "one or more factors in [0.25, 4]")
        check(tuple(self.teacher_scales) == (1.0,) or self.teacher != "pulled", "teacher_scales",
              self.teacher_scales,
              "with teacher: ema or checkpoint (the pulled teacher is the student's own pass)")


def pseudo_labels(logits: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, label), each (B, H, W), from (B, K, h, w) logits upsampled to `size`."""
    with torch.no_grad():
        probs = resize_like(logits.float(), tuple(size)).softmax(dim=1)
        return probs.max(dim=1)


class Teacher:
    """An ``ema`` or ``checkpoint`` teacher of one head (the ``pulled`` teacher is the
    student's own output and needs no object)."""

    def __init__(self, options: TeacherOptions, head_name: str):
        if options.teacher == "pulled":
            raise ValueError("the pulled teacher is the student's own pass")
        self.options = options
        self.head_name = head_name
        self.ema: Optional[nn.Module] = None
        self.fixed: Optional[nn.Module] = None

    @classmethod
    def of(cls, options: TeacherOptions, head_name: str) -> Optional["Teacher"]:
        """The task's teacher; None for ``pulled`` (the student's own output)."""
        return None if options.teacher == "pulled" else cls(options, head_name)

    def logits(self, model: TaskModel, weak: torch.Tensor) -> torch.Tensor:
        """Weak-view logits; with ``teacher_flip`` or ``teacher_scales``, the class
        probabilities averaged over the mirrored and resized views, at the view's size, as
        log-probabilities (the pseudo-labels' softmax gives back the average)."""
        o = self.options
        if o.teacher == "checkpoint":
            if self.fixed is None:
                self.fixed = self._load_fixed(model)
            teacher = self.fixed
        else:
            teacher = self._ema_step(model)
        with torch.no_grad():
            if not o.teacher_flip and tuple(o.teacher_scales) == (1.0,):
                return teacher(model.head, weak)
            size = tuple(weak.shape[-2:])
            views = [(f, False) for f in o.teacher_scales]
            views += [(f, True) for f in o.teacher_scales] if o.teacher_flip else []
            total = None
            for factor, mirror in views:
                x = weak.flip(-1) if mirror else weak
                if factor != 1.0:
                    x = F.interpolate(x, scale_factor=factor, mode="bilinear",
                                      align_corners=False)
                log_p = resize_like(teacher(model.head, x), size).log_softmax(1)
                log_p = log_p.flip(-1) if mirror else log_p
                total = log_p if total is None else torch.logaddexp(total, log_p)
            return total - math.log(len(views))

    def _load_fixed(self, model: TaskModel) -> nn.Module:
        """A copy of the model holding `teacher_checkpoint`'s trunk and head (and that head's
        norm statistics), frozen, in eval mode."""
        path = self.options.teacher_checkpoint
        payload = load_checkpoint(path)
        teacher = copy.deepcopy(model.model)
        flat = FlatModel(teacher, ShardLayout.of(teacher, shard_of))  # before freezing: the
        teacher.requires_grad_(False)                                 # layout takes trainables
        wanted = {TRUNK_SHARD, head_shard(self.head_name)}
        try:
            loaded = load_pieces(flat, payload["servers"], saved_plan(payload),
                                 wanted)
        except ValueError as err:
            raise ValueError(f"teacher checkpoint {path}: {err}") from None
        if loaded != wanted:
            raise ValueError(f"teacher checkpoint {path} holds no {sorted(wanted - loaded)} "
                             f"weights: it must hold a trained {self.head_name} head")
        load_norm_stats(flat, payload["servers"], self.head_name, wanted)
        return teacher.eval()

    def _ema_step(self, model: TaskModel) -> nn.Module:
        """The moving average of the weights this task has trained with, updated by one step."""
        with torch.no_grad():
            if self.ema is None:
                self.ema = copy.deepcopy(model.model).requires_grad_(False)
            else:
                for avg, now in zip(self.ema.parameters(), model.model.parameters()):
                    avg.lerp_(now, 1.0 - self.options.ema_decay)
        return self.ema.train(model.model.training)
