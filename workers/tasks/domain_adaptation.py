"""Domain-adaptive self-training: labelled source images (synthetic, from a game engine) and
unlabelled target images (real) in every batch, training the segmentation head and the trunk.

The recipe of DACS (Tranheden et al., WACV 2021) and DAFormer (Hoyer et al., CVPR 2022), with
MIC's masked-image consistency (Hoyer et al., CVPR 2023) as an option:

- a teacher (``teacher``, :mod:`~ps_trainer_workers.tasks.teachers`; ``ema`` by default)
  predicts pseudo-labels on the target images;
- cross-domain class mixing: the pixels of half the classes of source image i, with their true
  labels, are pasted onto target image i, whose other pixels carry its pseudo-labels; the mixed
  image is jittered and blurred, and the student learns it;
- a quality weight per target image instead of a hard cut: the share of its pixels whose
  confidence reaches ``threshold`` weighs its pseudo-labelled pixels (source pixels weigh 1);
- rare-class sampling of the source images (``rare_class_temperature``,
  ``ps_trainer/data/class_stats.py``): images holding rare classes are drawn more often;
- cross-entropy on the source images themselves (``source_weight``), so the task also runs
  with no segmentation workers;
- with ``fourier_beta`` > 0, each source image first takes the low-frequency amplitudes of its
  target image (FDA: Yang & Soatto, CVPR 2020): the target's global color and lighting on
  the source's content and labels, in the source term and in the pasted pixels;
- with ``masked_weight`` > 0, the student also predicts the pseudo-labels from the target
  image with a ``mask_ratio`` share of ``mask_block``-pixel squares blanked out (MIC).

Batches come from both splits (``uses_both_splits``): B labelled source images, then B
unlabelled target images, from ``data.labelled_from`` and ``data.unlabelled_from`` (or, on the
synthetic scenes, the source domain and ``data.shifted_domain`` with ``shifted_fraction: 1``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ps_trainer.data.class_stats import class_presence, rare_class_weights
from ps_trainer.data.crops import Crops, RescaleCrops
from ps_trainer.config.options import check
from ps_trainer_workers.tasks.base import Task, TaskModel
from ps_trainer_workers.tasks.heads import resize_like
from ps_trainer_workers.tasks.registry import TASKS
from ps_trainer_workers.tasks.segmentation import IGNORE_INDEX, labelled_cross_entropy
from ps_trainer_workers.tasks.teachers import Teacher, TeacherOptions, pseudo_labels
from ps_trainer_workers.tasks.views import (block_mask, class_mix_masks, color_jitter, fourier_style,
                                            gaussian_blur)


@dataclass(frozen=True)
class DomainAdaptationOptions(TeacherOptions):
    teacher: str = "ema"                 # DACS / DAFormer: a mean teacher
    ema_decay: float = 0.99
    threshold: float = 0.968             # confidence that counts in the quality weight (DAFormer)
    source_weight: float = 1.0           # cross-entropy on the source images of the batch
    mix_share: float = 0.5               # share of a source image's classes pasted (DACS: half)
    flip_probability: float = 0.5
    jitter_probability: float = 0.8      # the mixed image's color jitter and blur (DACS)
    jitter_strength: float = 0.2
    blur_probability: float = 0.5
    rare_class_temperature: float = 0.01  # rare-class sampling of source images; 0 = uniform
    # FDA's low-frequency window (half-width / side); 0 = off. 0.05 gave +0.045 validation
    # mIoU on the synthetic shift, 0.1 as much (configs/experiments/adaptation_tuning.yaml).
    fourier_beta: float = 0.05
    masked_weight: float = 0.0           # MIC's masked-image consistency; 0 = off
    mask_ratio: float = 0.7
    mask_block: int = 8                  # pixels (MIC: 64 on 1024x1024 crops)
    rampup_steps: int = 0                # the target losses ramp in over the first steps
    # Real resolution: a crop_size [H, W] crop of each image rescaled by rescale_range of
    # base_size (null: its own size); null crop_size: a data.image_size square.
    crop_size: Optional[tuple[int, int]] = None
    rescale_range: tuple[float, float] = (1.0, 1.0)
    base_size: Optional[tuple[int, int]] = None

    def __post_init__(self):
        super().__post_init__()
        check(0.0 <= self.threshold < 1.0, "threshold", self.threshold, "must be in [0, 1)")
        check(self.source_weight >= 0, "source_weight", self.source_weight, "must be >= 0")
        check(0.0 < self.mix_share <= 1.0, "mix_share", self.mix_share, "must be in (0, 1]")
        for name in ("flip_probability", "jitter_probability", "blur_probability"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, name, value, "must be in [0, 1]")
        check(0.0 <= self.jitter_strength < 1.0, "jitter_strength", self.jitter_strength,
              "must be in [0, 1)")
        check(self.rare_class_temperature >= 0, "rare_class_temperature",
              self.rare_class_temperature, "must be >= 0 (0: uniform draws)")
        check(0 <= self.fourier_beta <= 0.5, "fourier_beta", self.fourier_beta, "in [0, 0.5]")
        check(self.masked_weight >= 0, "masked_weight", self.masked_weight, "must be >= 0")
        check(0.0 <= self.mask_ratio < 1.0, "mask_ratio", self.mask_ratio, "must be in [0, 1)")
        check(self.mask_block >= 1, "mask_block", self.mask_block, "must be >= 1")
        check(self.rampup_steps >= 0, "rampup_steps", self.rampup_steps, "must be >= 0")
        for name in ("crop_size", "base_size"):
            value = getattr(self, name)
            check(value is None or (len(value) == 2 and min(value) >= 16), name, value,
                  "null or [H, W], each >= 16")
        low, high = self.rescale_range
        check(0 < low <= high, "rescale_range", self.rescale_range, "0 < low <= high")


@TASKS.register("domain_adaptation")
class DomainAdaptation(Task):
    """Source labels, cross-domain class mixing and pseudo-labels on target images.

    Batches: images (2B, 3, H, W), the B labelled source images first, masks (2B, H, W) with
    the target half 255. ``make_batch`` flips each half (a source image with its mask) and
    gives (source and target images, source masks); ``loss`` is the source cross-entropy;
    :meth:`training_loss` adds the mixed and masked target terms, which need the teacher.
    """

    uses_labels = True
    uses_both_splits = True
    head_of = "segmentation"
    Options = DomainAdaptationOptions

    def __init__(self, context, options=None):
        super().__init__(context, options)
        self.teacher = Teacher.of(self.options, self.head_name)
        self._steps = 0

    def crops(self) -> Optional[Crops]:
        o = self.options
        if o.crop_size is None:
            return None
        return RescaleCrops(tuple(o.crop_size), tuple(o.rescale_range),
                            tuple(o.base_size) if o.base_size else None, 1.0)

    def labelled_weights(self, dataset) -> Optional[np.ndarray]:
        t = self.options.rare_class_temperature
        if t == 0:
            return None
        return rare_class_weights(*class_presence(dataset, self.context.num_classes), t)

    def make_batch(self, images: torch.Tensor, rng: np.random.Generator,
                   masks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        if masks is None or images.shape[0] % 2:
            raise ValueError("the domain_adaptation task needs source images with masks and as "
                             "many target images (a paired batch)")
        b = images.shape[0] // 2
        flip = torch.from_numpy(rng.random(2 * b) < self.options.flip_probability)
        flip = flip.to(images.device)
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        source_masks = torch.where(flip[:b].view(-1, 1, 1), masks[:b].flip(-1), masks[:b])
        return images.contiguous(), source_masks

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the source logits, averaged over labelled pixels."""
        return labelled_cross_entropy(output, target)

    def training_loss(self, model: TaskModel, images: torch.Tensor, rng: np.random.Generator,
                      masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One student pass over the source images, the mixed images and (MIC) the masked
        target images; the teacher's pass over the target images comes first."""
        o = self.options
        device = model.device
        views, source_masks = self.make_batch(images.to(device), rng, masks.to(device))
        b = source_masks.shape[0]
        source, target = views[:b], views[b:]
        if o.fourier_beta > 0:
            source = fourier_style(source, target, o.fourier_beta)
        with torch.no_grad():
            logits = (model(target) if self.teacher is None
                      else self.teacher.logits(model, target))
        confidence, labels = pseudo_labels(logits, target.shape[-2:])
        quality = (confidence >= o.threshold).float().mean(dim=(1, 2))       # (B,)

        pasted = class_mix_masks(source_masks, rng, o.mix_share)            # (B, H, W)
        mixed = torch.where(pasted.unsqueeze(1), source, target)
        mixed = gaussian_blur(color_jitter(mixed, rng, o.jitter_probability, o.jitter_strength),
                              rng, o.blur_probability).clamp(0.0, 1.0)
        mixed_labels = torch.where(pasted, source_masks, labels)
        weights = torch.where(pasted, torch.ones_like(confidence), quality.view(b, 1, 1))
        inputs = [source, mixed]
        if o.masked_weight > 0:
            inputs.append(target * block_mask(target.shape, rng, o.mask_ratio, o.mask_block,
                                              device))
        outputs = model(torch.cat(inputs)).split(b)

        ramp = min(1.0, (self._steps + 1) / o.rampup_steps) if o.rampup_steps else 1.0
        self._steps += 1
        loss = o.source_weight * self.loss(outputs[0], source_masks)
        loss = loss + ramp * self._weighted_ce(outputs[1], mixed_labels, weights)
        if o.masked_weight > 0:
            pixel_quality = quality.view(b, 1, 1).expand_as(confidence)
            loss = loss + ramp * o.masked_weight * self._weighted_ce(outputs[2], labels,
                                                                     pixel_quality)
        return loss

    @staticmethod
    def _weighted_ce(output: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
                     ) -> torch.Tensor:
        """Mean over pixels of weight x CE; pixels labelled 255 (padding) count 0."""
        ce = F.cross_entropy(resize_like(output, labels.shape[-2:]), labels,
                             ignore_index=IGNORE_INDEX, reduction="none")
        return (ce * weights).mean()
