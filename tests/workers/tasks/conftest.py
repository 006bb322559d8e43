"""Shared fixtures for the task tests: synthetic images and masks, a tiny model, a trainer."""
from __future__ import annotations

from typing import Callable, Optional

import cv2
import numpy as np
import pytest
import torch

from ps_trainer.config import ModelConfig
from ps_trainer.model.multitask import MultiTaskModel
from ps_trainer.model.trunk import Trunk
from ps_trainer_workers.tasks import Task, TaskContext

torch.set_num_threads(1)  # the test machine's cores are shared

TINY_MODEL = ModelConfig(widths=(8, 16), blocks=(1, 1), stem_stride=2)
TINY_TRUNK_CHANNELS = 16
IMAGE_SIZE = 32
NUM_CLASSES = 6


def smooth_images(batch: int, size: int = IMAGE_SIZE, seed: int = 0) -> torch.Tensor:
    """(B, 3, size, size) float32 in [0, 1]: smooth random color fields with a sharp box each."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(batch):
        coarse = rng.random((4, 4, 3)).astype(np.float32)
        image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        top, left = rng.integers(0, size // 2, size=2)
        height, width = rng.integers(size // 6, size // 2, size=2)
        image[top:top + height, left:left + width] = rng.random(3)
        images.append(np.clip(image, 0.0, 1.0))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def masks_from_colors(images: torch.Tensor, ignore_fraction: float = 0.1,
                       seed: int = 0) -> torch.Tensor:
    """(B, H, W) int64 labels that a tiny model can learn: the dominant channel (3) times
    brightness above or below 0.5 (2) = 6 classes, with a random `ignore_fraction` set to 255."""
    labels = images.argmax(dim=1) * 2 + (images.mean(dim=1) > 0.5).long()
    ignore = torch.from_numpy(np.random.default_rng(seed).random(labels.shape) < ignore_fraction)
    return torch.where(ignore, torch.full_like(labels, 255), labels)


@pytest.fixture
def context() -> TaskContext:
    """The tiny model's context: 32-px images, 6 classes, trunk stride 4."""
    return TaskContext(image_size=IMAGE_SIZE, num_classes=NUM_CLASSES,
                       trunk_stride=Trunk(TINY_MODEL).stride)


def tiny_model(name: str, task: Task, seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    return MultiTaskModel(TINY_MODEL, {name: task.head(TINY_TRUNK_CHANNELS)})


def train_on_one_batch(name: str, task: Task, images: torch.Tensor,
                       masks: Optional[torch.Tensor] = None, steps: int = 100,
                       lr: float = 3e-3) -> list[float]:
    """Adam on one fixed batch (make_batch called once); returns the loss of every step."""
    model = tiny_model(name, task)
    inputs, targets = task.make_batch(images, np.random.default_rng(0), masks)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = task.loss(model(name, inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# Helpers as fixtures: test modules in a package-less tests/ tree cannot import conftest.

@pytest.fixture
def images() -> torch.Tensor:
    """8 smooth 32-px test images."""
    return smooth_images(8)


@pytest.fixture
def make_images() -> Callable[..., torch.Tensor]:
    return smooth_images


@pytest.fixture
def make_masks() -> Callable[..., torch.Tensor]:
    return masks_from_colors


@pytest.fixture
def make_model() -> Callable[..., MultiTaskModel]:
    return tiny_model


@pytest.fixture
def train() -> Callable[..., list[float]]:
    return train_on_one_batch
