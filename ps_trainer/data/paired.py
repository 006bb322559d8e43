"""Batches of two splits side by side: labelled source images, then as many unlabelled target
images (masks 255), for a task that learns across domains (``Task.uses_both_splits``)."""
from __future__ import annotations

from typing import Optional

import torch

from ps_trainer.data.base import IGNORE_INDEX


class PairedSampler:
    """:class:`~ps_trainer.data.sampler.ImageSampler`'s interface over a labelled and an
    unlabelled sampler of the same crop size: ``sample()`` gives images (2B, 3, H, W), the
    labelled B first, and masks (2B, H, W) with the unlabelled half all ignore."""

    def __init__(self, labelled, unlabelled):
        self.labelled = labelled
        self.unlabelled = unlabelled
        self.dataset = labelled.dataset

    @property
    def skipped(self) -> int:
        return self.labelled.skipped + self.unlabelled.skipped

    def sample(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        source, masks = self.labelled.sample()
        target, _ = self.unlabelled.sample()
        if masks is None:
            raise ValueError("the labelled split has no masks")
        unknown = torch.full((target.shape[0], *target.shape[-2:]), IGNORE_INDEX,
                             dtype=masks.dtype, device=masks.device)
        return torch.cat([source, target]), torch.cat([masks, unknown])

    def close(self) -> None:
        self.labelled.close()
        self.unlabelled.close()
