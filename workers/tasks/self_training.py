"""Self-training on unlabelled images: the segmentation head learns from its own confident
predictions, made on a weak view and imposed on strongly perturbed views.

FixMatch (Sohn et al., NeurIPS 2020) for images, carried to segmentation by UniMatch (Yang et
al., CVPR 2023, "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic
Segmentation"): per-pixel pseudo-labels from the weak view, kept where the confidence is at
least ``threshold`` (UniMatch: 0.95); the student predicts them on a strong view (color
jitter, grayscale, blur, CutMix) and, with ``feature_dropout`` > 0, from the weak view's
features perturbed by channel dropout (UniMatch's "FP" stream, Dropout2d(0.5)). S4L (Zhai et
al., ICCV 2019) trains such a semi-supervised objective beside self-supervised pretext tasks;
here it is one more task, with its own workers, pushing to the shared trunk and to the
*segmentation* head (``head_of``).

Which pixels count: those whose confidence reaches ``threshold``; with ``class_quantile`` = q
> 0 also, for each class, the q most confident share of the pixels predicted as that class
(class-balanced self-training, CBST: Zou et al., ECCV 2018). A fixed threshold mostly keeps
the classes the model is already sure of — here the background — and self-training then
grows them at the others' expense; per-class quantiles keep every class represented.
``rampup_steps`` ramps the loss in over the task's first steps, while the teacher is poor.

Teacher (``teacher``, :mod:`~ps_trainer_workers.tasks.teachers`): ``pulled`` uses the weights
the worker computes with — the current model, as in FixMatch and UniMatch; in the
asynchronous runtime that is the last pulled version, already a step or more behind the
server. ``ema`` keeps an exponential moving average of the weights the task has seen, in the
worker. ``checkpoint`` is a fixed teacher: the trunk and segmentation head of
``teacher_checkpoint`` (a run's checkpoint, e.g. the result of an earlier semi-supervised
fine-tuning), never updated, in eval mode — self-training in rounds, each round's student
starting again from the pretrained trunk and learning from the previous round's model (ST++,
Yang et al., CVPR 2022; Noisy Student, Xie et al., CVPR 2020). The file must be readable where
the task's workers run. With ``teacher_flip`` such a teacher also predicts the mirrored view
and the two are averaged: cheaper pseudo-labels than more rounds. ``teacher_scales`` makes it
predict the view resized by each factor (e.g. ``[1.0, 1.5]``: a 1.5x zoom resolves thin and
small objects the coarse output grid misses); all predictions, brought back to the view's
size, are averaged (multi-scale test-time augmentation, used here for the pseudo-labels only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ps_trainer.config.options import check
from ps_trainer_workers.tasks.base import Task, TaskModel
from ps_trainer_workers.tasks.heads import resize_like
from ps_trainer_workers.tasks.registry import TASKS
from ps_trainer_workers.tasks.teachers import Teacher, TeacherOptions, pseudo_labels
from ps_trainer_workers.tasks.views import (color_jitter, cutmix_sources, flip_and_zoom, gather_pixels,
                                            gaussian_blur, random_grayscale)

@dataclass(frozen=True)
class SelfTrainingOptions(TeacherOptions):
    threshold: float = 0.95              # confidence a pseudo-label needs (UniMatch, VOC)
    feature_dropout: float = 0.5         # FP stream's Dropout2d rate; 0 = no feature perturbation
    fp_weight: float = 0.5               # share of the FP stream in the loss (UniMatch: 0.5)
    flip_probability: float = 0.5        # weak view
    scale_range: tuple[float, float] = (1.0, 1.0)   # weak view zoom-in factors
    jitter_probability: float = 0.8      # strong view: color jitter (UniMatch: p = 0.8, 0.5)
    jitter_strength: float = 0.5
    grayscale_probability: float = 0.2
    blur_probability: float = 0.5
    cutmix_probability: float = 0.5
    class_quantile: float = 0.0          # > 0: also keep each class's most confident share
    rampup_steps: int = 0                # loss ramps linearly from 0 over the task's first steps

    def __post_init__(self):
        super().__post_init__()
        check(0.0 <= self.threshold < 1.0, "threshold", self.threshold, "must be in [0, 1)")
        check(0.0 <= self.feature_dropout < 1.0, "feature_dropout", self.feature_dropout,
              "must be in [0, 1)")
        check(0.0 <= self.fp_weight <= 1.0, "fp_weight", self.fp_weight, "must be in [0, 1]")
        for name in ("flip_probability", "jitter_probability", "grayscale_probability",
                     "blur_probability", "cutmix_probability"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, name, value, "must be in [0, 1]")
        check(0.0 <= self.jitter_strength < 1.0, "jitter_strength", self.jitter_strength,
              "must be in [0, 1)")
        low, high = self.scale_range
        check(1.0 <= low <= high, "scale_range", self.scale_range, "1 <= low <= high (zoom in)")
        check(0.0 <= self.class_quantile <= 1.0, "class_quantile", self.class_quantile,
              "must be in [0, 1]")
        check(self.rampup_steps >= 0, "rampup_steps", self.rampup_steps, "must be >= 0")


@TASKS.register("self_training")
class SelfTraining(Task):
    """Weak-to-strong consistency on unlabelled images, training the segmentation head.

    Batches: ``inputs`` are the weak views followed by the strong views (2B, 3, H, W); the
    strong view of image i is its weak view perturbed, with a CutMix box pasted from another
    image's strong view; ``targets`` (B, H, W) say which image each strong pixel came from,
    so its pseudo-label is taken from that image's weak prediction.
    Loss: cross-entropy to the pseudo-labels, counted where the teacher's confidence reaches
    the threshold, averaged over all pixels (so the loss shrinks while few are confident).
    """

    head_of = "segmentation"
    Options = SelfTrainingOptions

    def __init__(self, context, options=None):
        super().__init__(context, options)
        self.teacher = Teacher.of(self.options, self.head_name)
        self._steps = 0

    def make_batch(self, images: torch.Tensor, rng: np.random.Generator,
                   masks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.options
        weak = flip_and_zoom(images, rng, o.flip_probability, o.scale_range)
        strong = color_jitter(weak, rng, o.jitter_probability, o.jitter_strength)
        strong = random_grayscale(strong, rng, o.grayscale_probability)
        strong = gaussian_blur(strong, rng, o.blur_probability)
        source = cutmix_sources(images.shape[0], tuple(images.shape[-2:]), rng,
                                o.cutmix_probability)
        strong = gather_pixels(strong, source).clamp(0.0, 1.0)
        return torch.cat([weak, strong]).contiguous(), source

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The strong stream alone, with the teacher read from the weak half of `output`."""
        weak, strong = output.chunk(2)
        return self.consistency(weak.detach(), strong, target)

    def consistency(self, teacher: torch.Tensor, student: torch.Tensor, source: torch.Tensor
                    ) -> torch.Tensor:
        """Mean over pixels of CE(student, pseudo-label) where the teacher is confident;
        `source` (B, H, W) maps each student pixel to the image its label comes from."""
        confidence, labels = pseudo_labels(teacher, source.shape[-2:])
        keep = self.selected(confidence, labels, teacher.shape[1])
        keep, labels = gather_pixels(keep, source), gather_pixels(labels, source)
        ce = F.cross_entropy(resize_like(student, source.shape[-2:]), labels, reduction="none")
        return (ce * keep).mean()

    def selected(self, confidence: torch.Tensor, labels: torch.Tensor, classes: int
                 ) -> torch.Tensor:
        """(B, H, W) bool: the pixels whose pseudo-labels count."""
        keep = confidence >= self.options.threshold
        q = self.options.class_quantile
        if q > 0:
            for c in range(classes):
                mine = labels == c
                if mine.any():
                    cut = torch.quantile(confidence[mine], 1.0 - q)
                    keep |= mine & (confidence >= cut)
        return keep

    def training_loss(self, model: TaskModel, images: torch.Tensor, rng: np.random.Generator,
                      masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One trunk pass over weak and strong views; the FP stream decodes the weak
        features again through channel dropout."""
        o = self.options
        inputs, source = self.make_batch(images, rng)
        device = model.device
        inputs, source = inputs.to(device), source.to(device)
        b = source.shape[0]
        features = model.features(inputs)                 # each level (2B, C_i, h_i, w_i)
        if o.feature_dropout > 0 and o.fp_weight > 0:
            # The FP stream: the weak half's features of every level the head reads, dropped.
            features = tuple(torch.cat([f, F.dropout2d(f[:b], o.feature_dropout, training=True)])
                             for f in features)
        outputs = model.decode(features)
        weak, strong, perturbed = outputs[:b], outputs[b: 2 * b], outputs[2 * b:]
        teacher = weak.detach() if self.teacher is None else self.teacher.logits(model, inputs[:b])
        loss = self.consistency(teacher, strong, source)
        if len(perturbed):
            identity = torch.arange(b, device=device).view(b, 1, 1).expand_as(source)
            loss = (1 - o.fp_weight) * loss + o.fp_weight * self.consistency(
                teacher, perturbed, identity)
        self._steps += 1
        if self._steps <= o.rampup_steps:
            loss = loss * (self._steps / o.rampup_steps)
        return loss
