"""Host <-> GPU copies of flat shard buffers that do not stall the step.

A copy between the GPU and pageable host memory is synchronous and goes through a staging
buffer of the driver's; from page-locked ("pinned") memory it is one DMA that the CPU does not
wait for. Two users:

- Pushes: a GPU worker's gradients go device -> host once per push, into the push region (its
  shared-memory file, registered as pinned with :func:`pin_host_memory`) or into a pinned
  buffer of :class:`HostStaging` when the push travels through the object store.
- Pulls: :class:`StagedWeights` copies a new weight version into pinned memory and from there,
  on a copy stream, into a second device buffer while the current step still computes on the
  first; :meth:`StagedWeights.commit` makes the next step wait (on the GPU, not the CPU) for
  that copy and binds the parameters to the new buffer.

On a CPU model the same classes work without pinning or streams (the tests use them there).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np
import torch

from ps_trainer.core.params import readonly_tensor

log = logging.getLogger(__name__)


def pin_host_memory(tensor: torch.Tensor) -> bool:
    """Register a CPU tensor's memory (e.g. a shared-memory mapping) as page-locked for CUDA
    copies; False where that is not possible (no CUDA, or the driver refuses)."""
    if not torch.cuda.is_available() or tensor.numel() == 0:
        return False
    error = torch.cuda.cudart().cudaHostRegister(tensor.data_ptr(),
                                                 tensor.numel() * tensor.element_size(), 0)
    if int(error) != 0:
        log.info("could not pin %d bytes of push buffer (cudaHostRegister error %s): device "
                 "copies into it stay synchronous", tensor.numel() * tensor.element_size(), error)
        return False
    return True


def unpin_host_memory(tensor: torch.Tensor) -> None:
    torch.cuda.cudart().cudaHostUnregister(tensor.data_ptr())


def _empty_host(numel: int, dtype: torch.dtype, pinned: bool) -> torch.Tensor:
    return torch.empty(numel, dtype=dtype, pin_memory=pinned)


class HostStaging:
    """Pinned host copies of device tensors, one buffer per name, made on first use."""

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def to_host(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Start the copy of `tensor` into this name's host buffer; call :meth:`wait` before
        reading any buffer."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = _empty_host(tensor.numel(), tensor.dtype, tensor.is_cuda).view(tensor.shape)
            self._buffers[name] = buffer
        buffer.copy_(tensor, non_blocking=tensor.is_cuda)
        return buffer

    @staticmethod
    def wait(device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()


class StagedWeights:
    """Double-buffered device weights: versions are staged into a back buffer while the front
    one is in use, and committed before the next step.

    `shards` maps a shard name to its current (front) flat device tensor; `bind(shard, flat)`
    makes the model's parameters views of `flat` (``FlatModel.bind``).
    """

    def __init__(self, shards: dict[str, torch.Tensor],
                 bind: Callable[[str, torch.Tensor], None]):
        self._front = dict(shards)
        self._back = {s: torch.empty_like(t) for s, t in shards.items()}
        self._bind = bind
        device = next(iter(shards.values())).device
        self._cuda = device.type == "cuda"
        self._host = {s: _empty_host(t.numel(), torch.float32, self._cuda)
                      for s, t in shards.items()}
        self._stream = torch.cuda.Stream(device) if self._cuda else None
        # Per shard: its last copy into the back buffer is done; the steps that read it as the
        # front buffer are done (it may be written again).
        self._copied: dict[str, Optional[torch.cuda.Event]] = {s: None for s in shards}
        self._released: dict[str, Optional[torch.cuda.Event]] = {s: None for s in shards}
        self._staged: set[str] = set()

    @property
    def pending(self) -> bool:
        return bool(self._staged)

    def stage(self, shard: str, array: np.ndarray, start: int = 0) -> None:
        """Copy (part of) a shard's new weights towards the back buffer, without waiting for
        the device. Parts of one shard staged before a commit add up; the rest of the shard
        keeps the front buffer's values."""
        stop = start + array.shape[0]
        if shard not in self._staged:
            self._begin(shard, whole=start == 0 and stop == self._back[shard].numel())
        host = self._host[shard][start: stop]
        host.copy_(readonly_tensor(array))                      # CPU: object store -> pinned
        self._on_copy_stream(lambda: self._back[shard][start: stop].copy_(
            host, non_blocking=self._cuda))                     # DMA, overlapping the step
        if self._cuda:
            self._copied[shard] = self._stream.record_event()

    def _begin(self, shard: str, whole: bool) -> None:
        """Before the first part of a shard's new version: wait (on the copy stream) for the
        steps still reading the back buffer, and (on the CPU) for the last copy out of the
        host buffer."""
        if self._cuda:
            if self._released[shard] is not None:
                self._stream.wait_event(self._released[shard])
            if self._copied[shard] is not None:
                self._copied[shard].synchronize()
        if not whole:
            self._on_copy_stream(lambda: self._back[shard].copy_(self._front[shard],
                                                                 non_blocking=self._cuda))
        self._staged.add(shard)

    def _on_copy_stream(self, copy: Callable[[], object]) -> None:
        if self._cuda:
            with torch.cuda.stream(self._stream):
                copy()
        else:
            copy()

    def discard(self) -> None:
        """Forget what was staged since the last commit (its server is gone)."""
        self._staged.clear()

    def commit(self) -> bool:
        """Make the staged versions the weights the next step computes with; True if any."""
        if not self._staged:
            return False
        for shard in self._staged:
            if self._cuda:
                torch.cuda.current_stream().wait_event(self._copied[shard])
            self._front[shard], self._back[shard] = self._back[shard], self._front[shard]
            self._bind(shard, self._front[shard])
            if self._cuda:       # the old front is free once the steps queued so far are done
                self._released[shard] = torch.cuda.current_stream().record_event()
        self._staged.clear()
        return True
