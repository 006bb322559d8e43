"""Same-node pushes through shared memory: gradients are written where the server reads them.

Through Ray, a push is copied into the object store (a new object per push) and read there
by the server. When the worker and the server actor share a node, the copy is avoidable: the
worker's gradient buffers can themselves be shared memory that the server maps once. Then a
push carries a few numbers (:class:`BufferRef`) instead of the gradient, and a CPU worker's
backward pass writes its gradients straight into the memory the server reads (a GPU
worker's device-to-host copy lands there too, one copy instead of two).

- Worker side, :class:`PushBuffers`: one anonymous shared-memory file (``memfd``) with
  ``regions`` gradient buffers. The client rotates through them: a region is written again only
  once the push that sent it has been answered (``regions = inflight + 1``; see ``client.py``).
- Server side, :class:`AttachedBuffers`: maps a worker's file through
  ``/proc/<pid>/fd/<fd>`` (same node, same user). Nothing is named in a file system, so
  nothing is left behind: the kernel frees the memory once the worker and the server both
  let go of it, SIGKILL included. Mappings of processes that are gone are let go whenever a
  new buffer is attached, so restarted workers do not pile up mappings.

Linux only; elsewhere, on another node, or where the server cannot open the file (a
hardened kernel, another user), pushes go through the object store as before.
"""
from __future__ import annotations

import mmap
import os
import sys
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch

SUPPORTED = sys.platform.startswith("linux") and hasattr(os, "memfd_create")
_FLOAT_BYTES = 4


@dataclass(frozen=True)
class BufferRef:
    """What a push carries for one piece in place of its gradient: `count` float32 values at
    `offset` (in values) of region `region` of attached buffer `buffer`."""
    buffer: int
    region: int
    offset: int
    count: int


class PushBuffers:
    """A worker's gradient regions in one shared-memory file: `regions` copies of the layout
    `sizes` (shard -> float32 values), each region the shards one after the other."""

    def __init__(self, sizes: Mapping[str, int], regions: int):
        if not SUPPORTED:
            raise OSError("shared-memory pushes need Linux (memfd_create)")
        self.offsets: dict[str, int] = {}
        offset = 0
        for shard, size in sizes.items():
            self.offsets[shard] = offset
            offset += int(size)
        self.region_values = offset
        self.regions = regions
        self.nbytes = max(1, offset * regions * _FLOAT_BYTES)
        self.fd = os.memfd_create("ps_trainer-push", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.nbytes)
            self._map = mmap.mmap(self.fd, self.nbytes)
        except OSError:
            os.close(self.fd)
            raise
        self.whole = torch.frombuffer(self._map, dtype=torch.uint8)   # the file, e.g. to pin
        self.views = [{shard: torch.frombuffer(self._map, dtype=torch.float32, count=int(size),
                                               offset=(i * offset + self.offsets[shard])
                                               * _FLOAT_BYTES) if size else torch.zeros(0)
                       for shard, size in sizes.items()} for i in range(regions)]

    def ref(self, buffer: int, region: int, shard: str, start: int, stop: int) -> BufferRef:
        return BufferRef(buffer, region, self.offsets[shard] + start, stop - start)

    def close(self) -> None:
        """Close the file; the memory goes with the last mapping or view of it."""
        os.close(self.fd)

    def describe(self) -> dict:
        """What the server needs to attach this file."""
        return {"pid": os.getpid(), "fd": self.fd, "nbytes": self.nbytes,
                "region_values": self.region_values}


def _start_time(pid: int) -> Optional[str]:
    """When process `pid` started (field 22 of /proc/<pid>/stat), None if it is gone: a pid
    with another start time is another process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


@dataclass
class _Attached:
    pid: int
    started: Optional[str]
    fd: int
    region_values: int
    map: mmap.mmap
    values: np.ndarray           # the whole file as float32


class AttachedBuffers:
    """The server's mappings of its same-node workers' push buffers."""

    def __init__(self):
        self._buffers: dict[int, _Attached] = {}
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._buffers)

    def attach(self, pid: int, fd: int, nbytes: int, region_values: int) -> int:
        """Map a worker's buffer file; returns the id its pushes name. Raises OSError where
        the file cannot be opened or is not the size announced."""
        self.release_gone()
        for buffer_id, b in self._buffers.items():
            if b.pid == pid and b.fd == fd and b.map.size() == nbytes:
                return buffer_id                 # the same worker reconnecting
        with open(f"/proc/{pid}/fd/{fd}", "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size != nbytes:
                raise OSError(f"shared push buffer of process {pid} is {size} bytes, "
                              f"{nbytes} announced")
            mapped = mmap.mmap(f.fileno(), nbytes, access=mmap.ACCESS_READ)   # only read here
        buffer_id = self._next_id
        self._next_id += 1
        self._buffers[buffer_id] = _Attached(pid, _start_time(pid), fd, region_values, mapped,
                                             np.frombuffer(mapped, dtype=np.float32))
        return buffer_id

    def view(self, ref: BufferRef) -> np.ndarray:
        """The piece a push names, as a read-only view of the worker's memory (valid during the
        push: the worker writes the region again once the push is answered)."""
        b = self._buffers.get(ref.buffer)
        if b is None:
            raise KeyError(f"push names shared buffer {ref.buffer}, which this server has not "
                           f"attached")
        start = ref.region * b.region_values + ref.offset
        if ref.region < 0 or ref.offset < 0 or ref.offset + ref.count > b.region_values:
            raise ValueError(f"push names values {ref.offset}..{ref.offset + ref.count} of region "
                             f"{ref.region} of a buffer with {b.region_values} values per region")
        return b.values[start: start + ref.count]

    def resolve(self, grads: Mapping) -> dict:
        """A push's pieces with every BufferRef replaced by the view it names."""
        return {k: self.view(g) if isinstance(g, BufferRef) else g for k, g in grads.items()}

    def release_gone(self) -> None:
        """Let go of the buffers of processes that no longer exist."""
        gone = [i for i, b in self._buffers.items() if _start_time(b.pid) != b.started]
        for buffer_id in gone:
            b = self._buffers.pop(buffer_id)
            del b.values             # the only export of the map, unless a view is still held
            try:
                b.map.close()
            except BufferError:      # a view outlives it: the map closes when that view goes
                pass
