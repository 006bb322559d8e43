"""The Task interface: a head, a batch maker and a loss (see ps_trainer/ARCHITECTURE.md, "A task is one small class").

A task turns a batch of images into (inputs, targets) on the fly, owns the layers that read
the shared trunk's features, and owns its loss. Pretext tasks never see labels; only tasks
with ``uses_labels = True`` (segmentation) are given masks.

Shapes: ``images`` are float32 (B, 3, H, W) RGB in [0, 1]; ``masks`` are int64 (B, H, W) with
255 = ignore. ``inputs`` go through the model (which normalises, and harmonizes if asked);
the trunk turns (N, 3, h, w) inputs into (N, C, h/s, w/s) features that the head receives.

A task trains the trunk and one head: its own (``head/<name>``), or, when it sets
``head_of``, another task's (self-training trains the segmentation head on unlabelled
images). :meth:`Task.training_loss` is one step's loss; the default is make_batch ->
forward -> loss, and a task whose targets come from the model itself overrides it.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import torch
from torch import nn

from ps_trainer.data.crops import Crops
from ps_trainer.config.options import Options


@dataclass(frozen=True)
class NoOptions(Options):
    """A task with no hyperparameters."""


@dataclass(frozen=True)
class TaskContext:
    """What a task may know about the run: the data and the trunk."""
    image_size: int          # side of the square training images
    num_classes: int         # segmentation classes of the data source
    trunk_stride: int        # input pixels per feature pixel of the final features
    # Channels and strides of every trunk stage, low to high (a head reading earlier stages,
    # such as DeepLabV3+'s low-level skip, sizes itself from them).
    stage_channels: tuple[int, ...] = ()
    stage_strides: tuple[int, ...] = ()


class TaskModel:
    """The shared model as one task sees it: the trunk and the head the task trains."""

    def __init__(self, model: nn.Module, head: str):
        self.model = model
        self.head = head

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(self.head, inputs)

    def features(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The trunk outputs this head reads, each (N, C_i, h_i, w_i) (the final features
        alone for most heads)."""
        return self.model.features(self.head, inputs)

    def decode(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The head alone, on features from :meth:`features`."""
        return self.model.heads[self.head](*features)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class Task(abc.ABC):
    name: ClassVar[str]
    uses_labels: ClassVar[bool] = False          # batches come from the labelled split
    # With uses_labels: each batch is B labelled images, then B unlabelled ones (masks 255)
    # from the unlabelled split (data/paired.py): source and target domain side by side.
    uses_both_splits: ClassVar[bool] = False
    head_of: ClassVar[Optional[str]] = None      # train this task's head instead of an own one
    Options: ClassVar[type] = NoOptions

    def __init__(self, context: TaskContext, options: Any = None):
        self.context = context
        self.options = options if options is not None else self.Options()

    @property
    def head_name(self) -> str:
        """The head this task trains (its parameter group is ``head/<head_name>``)."""
        return self.head_of or self.name

    def head(self, trunk_channels: int) -> nn.Module:
        """Task-specific layers on top of the trunk's (N, C, h, w) features."""
        raise TypeError(f"task {self.name!r} has no head of its own: it trains the "
                        f"{self.head_of!r} head")

    def training_loss(self, model: TaskModel, images: torch.Tensor, rng: np.random.Generator,
                      masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One step's loss on a batch of (CPU) images: make_batch -> forward -> loss."""
        inputs, targets = self.make_batch(images, rng, masks)
        device = model.device
        return self.loss(model(inputs.to(device)), targets.to(device))

    def crops(self) -> Optional[Crops]:
        """How the sampler makes this task's training images (None: a random
        data.image_size square, see ps_trainer.data.crops)."""
        return None

    def labelled_weights(self, dataset) -> Optional[np.ndarray]:
        """Per-image draw weights for the labelled split (None: uniform draws)."""
        return None

    @abc.abstractmethod
    def make_batch(self, images: torch.Tensor, rng: np.random.Generator,
                   masks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) for one step, made from `images` (and `masks` if uses_labels)."""

    @abc.abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of the head's output against the targets from make_batch."""
