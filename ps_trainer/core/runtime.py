"""Process-level helpers shared by the actors: thread counts, devices, placement."""
from __future__ import annotations

import math
import mmap
import os

import torch

_HUGE_PAGE_BYTES = 2 << 20


def set_threads(num_cpus: float) -> int:
    """Use as many torch threads as CPUs Ray gave this actor (at least one): oversubscribed
    cores make every process on the node slower."""
    threads = max(1, int(math.floor(num_cpus)))
    torch.set_num_threads(threads)
    return threads


def huge_page_zeros(numel: int) -> torch.Tensor:
    """A float32 zero tensor in memory the kernel may back with transparent huge pages (Linux
    with THP in "madvise" or "always" mode; elsewhere, and under 2 MiB, plain ``torch.zeros``).
    The server streams whole tens-of-MB vectors per update (weights, optimizer state): with 4 KiB
    pages those passes miss the TLB on every page; on 2 MiB pages the fused momentum-SGD pass
    over 11M values took 5.1 ms instead of 5.9-6.1 on the development machine."""
    if numel * 4 < _HUGE_PAGE_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.zeros(numel, dtype=torch.float32)
    # Private: shared anonymous memory is shmem, which THP leaves alone by default.
    memory = mmap.mmap(-1, numel * 4, flags=mmap.MAP_PRIVATE)    # anonymous: zero-filled
    try:
        memory.madvise(mmap.MADV_HUGEPAGE)
    except OSError:                              # THP off in this kernel: ordinary pages
        pass
    return torch.frombuffer(memory, dtype=torch.float32, count=numel)


def streamed_zeros_like(like: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like a flat float32 CPU piece, in huge-page memory (see
    :func:`huge_page_zeros`); on other devices or dtypes, ``torch.zeros_like``."""
    if like.device.type != "cpu" or like.dtype != torch.float32 or like.dim() != 1:
        return torch.zeros_like(like)
    return huge_page_zeros(like.numel())


def usable_cores() -> int:
    """CPU cores this process may run on: a container's or cgroup's share where the platform
    says (Linux), else every core of the machine (macOS has no affinity call)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


def actor_device(gpu_ids) -> torch.device:
    """The device of a Ray actor given `gpu_ids` (``ray.get_gpu_ids()``): CUDA when Ray gave it
    GPUs, else the CPU, whatever else the machine has."""
    return torch.device("cuda" if gpu_ids else "cpu")


def prefetches(setting, device: torch.device) -> bool:
    """A task's `prefetch` setting on `device`: auto prefetches on a GPU, whose step the pull
    then overlaps, and not on a CPU, where workers share the cores the pull would use."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def prepare_compute(run, model: torch.nn.Module, device: torch.device) -> None:
    """The run's compute settings for a model about to train or predict on `device` (`run` is
    the config's RunConfig): cuDNN's kernel search and channels-last activations on CUDA."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = run.cudnn_benchmark
    if run.channels_last is True or (run.channels_last == "auto" and device.type == "cuda"):
        model.memory_format = torch.channels_last


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is 'cuda' but no CUDA device is available")
    return torch.device(name)
