"""Process-level helpers shared by the actors: thread counts, devices, placement."""
from __future__ import annotations

import math
import os

import torch


def set_threads(num_cpus: float) -> int:
    """Use as many torch threads as CPUs Ray gave this actor (at least one): oversubscribed
    cores make every process on the node slower."""
    threads = max(1, int(math.floor(num_cpus)))
    torch.set_num_threads(threads)
    return threads


def usable_cores() -> int:
    """CPU cores this process may run on: a container's or cgroup's share where the platform
    says (Linux), else every core of the machine (macOS has no affinity call)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def on_this_node():
    """A Ray scheduling strategy that pins an actor to the node of the caller (the driver):
    the metrics endpoint binds there and the run folder is written there."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
