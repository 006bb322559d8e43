"""Experiment configuration: YAML -> validated, frozen dataclasses.

Every section is a frozen dataclass that checks itself in ``__post_init__``; the loader
converts plain YAML data into them field by field, so a mistake fails at start with the
key path, the bad value and what is allowed::

    cfg = load_config("configs/quickstart.yaml", overrides=["optimizer.lr=0.01"])

Component hyperparameters that belong to a pluggable class (a task, a balancing method)
live in that section's ``options`` mapping and are validated by the class itself.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ps_trainer.config.options import (ConfigError, FrozenDict, Options, build_dataclass, check,
                                       check_choice)

log = logging.getLogger(__name__)

__all__ = ["Config", "ConfigError", "FrozenDict", "Options", "load_config", "config_from_dict",
           "config_to_dict", "apply_overrides", "dump_config"]


# --------------------------------------------------------------------------- sections

DATA_SOURCES = ("synthetic", "folder", "cityscapes", "gta5", "voc")
# The splits each data set on disk has (its reader checks the same names) and the classes of
# those that know theirs (folder: data.num_classes; synthetic: six, see data/synthetic.py).
SOURCE_SPLITS = {"folder": ("train", "val"), "cityscapes": ("train", "val", "test"),
                 "gta5": ("train",), "voc": ("train", "val", "train_aug")}
SOURCE_CLASSES = {"synthetic": 6, "cityscapes": 19, "gta5": 19, "voc": 21}
SPLIT_ROLES = ("labelled", "unlabelled", "val")
_DEFAULT_SPLIT = {"labelled": "train", "unlabelled": "train", "val": "val"}
OPTIMIZERS = ("sgd", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "cosine")
STALENESS_POLICIES = ("scale", "unscaled")
GRAD_DTYPES = ("float32", "float16", "bfloat16")
PUSH_TRANSPORTS = ("shared_memory", "object_store")
DOMAIN_NAMES = ("source", "shifted")                 # the two domains a run draws from
PALETTES = ("source", "shifted", "overcast")         # the generator's color distributions
BACKBONES = ("small", "resnet18", "resnet34", "resnet50", "resnet101")
PRECISIONS = ("fp32", "bf16", "fp16")
EVAL_MODES = ("whole", "slide")


def _check_resources(resources: Mapping) -> None:
    for name, amount in resources.items():
        ok = isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount >= 0
        check(ok, f"resources.{name}", amount, "a number >= 0")


@dataclass(frozen=True)
class RunConfig:
    """Naming, seeding and the stop conditions (whichever comes first)."""
    name: str = "run"
    out_dir: str = "runs/run"
    # This run's identity, given at its start (null: a new one) and kept by a resume; each
    # checkpoint carries it in its config, so that a run never restores another's.
    id: Optional[str] = None
    seed: int = 0
    max_updates: int = 1000
    max_minutes: float = 10.0
    target_miou: Optional[float] = None  # also stop once an evaluation reaches this mIoU
    progress_every_s: float = 5.0
    device: str = "auto"  # local mode and evaluation: auto | cpu | cuda
    # Workers on one node that compute at a time: a number, "cores" (the node's CPU cores) or
    # 0 (no limit). Where workers outnumber the cores they share, taking turns makes each step
    # finish sooner, so pushes are less stale (see ps_trainer/core/compute_slots.py); where
    # they do not, every worker has a slot and none waits.
    compute_slots_per_node: Any = "cores"
    # A worker's forward and backward: fp32, or autocast to bf16 or fp16 (fp16 with a dynamic
    # loss scale per worker). Weights, pushed gradients and the server stay float32.
    precision: str = "fp32"
    # Activations in channels-last (NHWC) layout on CUDA, where tensor-core convolutions want
    # them: auto (on CUDA, not on CPU), true, false. Weights keep their flat layout.
    channels_last: Any = "auto"
    cudnn_benchmark: bool = True         # CUDA: let cuDNN pick the fastest kernels per shape

    def __post_init__(self):
        check(self.max_updates > 0, "max_updates", self.max_updates, "must be > 0")
        check(self.max_minutes > 0, "max_minutes", self.max_minutes, "must be > 0")
        check(self.target_miou is None or 0 < self.target_miou <= 1, "target_miou",
              self.target_miou, "null or in (0, 1]")
        check(self.progress_every_s > 0, "progress_every_s", self.progress_every_s, "must be > 0")
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        check_choice("precision", self.precision, PRECISIONS)
        check(self.channels_last in ("auto", True, False), "channels_last", self.channels_last,
              "auto, true or false")
        slots = self.compute_slots_per_node
        check(slots == "cores" or (isinstance(slots, int) and not isinstance(slots, bool)
                                   and slots >= 0),
              "compute_slots_per_node", slots, "a whole number >= 0 (0: no limit) or 'cores'")


@dataclass(frozen=True)
class DomainConfig:
    """Knobs of the synthetic-scene generator that define a visual domain."""
    palette: str = "source"        # which color distribution: source | shifted | overcast
    texture: float = 1.0           # texture contrast multiplier
    lighting: float = 1.0          # strength of lighting gradients and shadows
    noise: float = 1.0             # sensor-noise multiplier
    blur: float = 0.0              # Gaussian blur sigma in pixels

    def __post_init__(self):
        check_choice("palette", self.palette, PALETTES)
        for name in ("texture", "lighting", "noise", "blur"):
            value = getattr(self, name)
            check(value >= 0, name, value, "must be >= 0")


SHIFTED_DOMAIN = DomainConfig(palette="shifted", texture=1.6, lighting=1.8, noise=2.0, blur=0.6)


@dataclass(frozen=True)
class SplitSource:
    """Where one split's images come from, when not from data.source / data.root: e.g.
    ``data.labelled_from: {source: gta5, root: /data/gta5}`` trains segmentation on GTA5 while
    the unlabelled and validation images stay Cityscapes'. Each field left out (null) is the
    data set's own: data.source, data.root (when the source is the same), the split's usual
    split name (train; val for the validation images) and no list."""
    source: Optional[str] = None
    root: Optional[str] = None
    split: Optional[str] = None
    list: Optional[str] = None           # a split list: only the images it names

    def __post_init__(self):
        if self.source is not None:
            check_choice("source", self.source, DATA_SOURCES)
        check(self.root is None or bool(self.root), "root", self.root, "null or a directory")
        check(self.list is None or bool(self.list), "list", self.list, "null or a file")


@dataclass(frozen=True)
class ResolvedSplit:
    """One split's data set, every default filled in (DataConfig.split_source)."""
    source: str
    root: Optional[str]
    split: str
    list: Optional[str]


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how the splits are drawn."""
    source: str = "synthetic"
    root: Optional[str] = None           # folder | cityscapes | gta5 | voc
    num_classes: Optional[int] = None    # folder only; the others know theirs
    image_size: int = 64
    labelled: int = 16                   # labelled training images (segmentation)
    unlabelled: int = 4096               # pool size for pretext tasks (0 = all on disk)
    # Validation images: null = every image of the split on disk (synthetic scenes, which have
    # no end: 256); N = the first N. Published numbers use every image.
    val: Optional[int] = None
    source_domain: DomainConfig = DomainConfig()
    shifted_domain: DomainConfig = SHIFTED_DOMAIN
    shifted_fraction: float = 0.0        # share of unlabelled images from the shifted domain
    val_domain: str = "source"           # source | shifted
    labelled_domain: str = "source"      # source | shifted (shifted: a target-label oracle)
    # Synthetic scenes: score on the validation images (used to choose settings) or on the
    # test images, a stream of their own that nothing is chosen on (experiment tables).
    val_split: str = "val"               # val | test
    # Per-split data sets on disk (null: data.source and data.root), e.g. GTA5 labelled,
    # Cityscapes unlabelled and val; all must share one class space.
    labelled_from: Optional[SplitSource] = None
    unlabelled_from: Optional[SplitSource] = None
    val_from: Optional[SplitSource] = None
    # A split list of the labelled images (ids, image paths or "image label" lines, as
    # semi-supervised papers publish them); data.labelled of them are used.
    labelled_list: Optional[str] = None
    # Leave the labelled images out of the unlabelled pool (acts only where both splits come
    # from one data set; the split lists semi-supervised papers publish are disjoint too).
    unlabelled_excludes_labelled: bool = True
    # Processes per worker that decode and crop its batches while it steps
    # (ps_trainer/data/loader.py). 0: in the step's own thread, as the quickstart's CPU
    # workers want (they share their cores already). auto: 0 on a CPU worker, and on a GPU
    # worker its CPUs minus one (tasks.<name>.num_cpus - 1, at least 1): the step's host
    # thread needs one. A GPU worker at Cityscapes resolution needs several
    # (docs/performance.md, data): give it num_cpus to match, Ray does not count these processes.
    loader_workers: Any = "auto"
    prefetch_batches: int = 2            # batches each loader process prepares ahead
    # Prepared images (decoded, resized: what `crops.prepare` returns) kept in memory, in MiB,
    # per process that decodes: the worker itself, or each of its loader processes; filled until
    # full, never evicted (draws are uniform, so every policy hits as often; eviction only adds
    # churn). 8 workers x 256 MiB = 2 GiB on a node without loaders, 8 x 7 loaders x 256 MiB
    # = 14 GiB with 8-CPU GPU workers. The quickstart's 4,096 + 16 images at 64 px take 64 MiB.
    cache_mb: int = 256

    def __post_init__(self):
        check_choice("source", self.source, DATA_SOURCES)
        if self.source != "synthetic":
            check(bool(self.root), "root", self.root,
                  f"a directory is required when data.source is {self.source!r}")
        if self.source == "folder":
            check(self.num_classes is not None and self.num_classes >= 2, "num_classes",
                  self.num_classes, "an integer >= 2 is required for data.source 'folder'")
        check(self.image_size >= 16, "image_size", self.image_size, "must be >= 16")
        check(self.labelled >= 0, "labelled", self.labelled, "must be >= 0")
        check(self.unlabelled >= 0, "unlabelled", self.unlabelled, "must be >= 0")
        check(self.val is None or self.val >= 1, "val", self.val,
              "null (every image; synthetic: 256) or >= 1")
        check(0.0 <= self.shifted_fraction <= 1.0, "shifted_fraction", self.shifted_fraction,
              "must be in [0, 1]")
        check_choice("val_domain", self.val_domain, DOMAIN_NAMES)
        check_choice("labelled_domain", self.labelled_domain, DOMAIN_NAMES)
        check_choice("val_split", self.val_split, ("val", "test"))
        check(self.val_split == "val" or not self.on_disk, "val_split", self.val_split,
              "test only with the synthetic scenes (a data set on disk: data.val_from.split)")
        workers = self.loader_workers
        check(workers == "auto" or (isinstance(workers, int) and not isinstance(workers, bool)
                                    and workers >= 0),
              "loader_workers", workers, "'auto' or a whole number >= 0 (0: in the step's thread)")
        check(self.prefetch_batches >= 1, "prefetch_batches", self.prefetch_batches, "must be >= 1")
        check(self.cache_mb >= 0, "cache_mb", self.cache_mb, "must be >= 0 (0: no cache)")
        self._check_split_sources()

    @property
    def on_disk(self) -> bool:
        """True when the images are read from disk (not the synthetic generator)."""
        return self.source != "synthetic"

    def split_source(self, role: str) -> ResolvedSplit:
        """The data set of split `role` (labelled | unlabelled | val), defaults filled in."""
        given = getattr(self, f"{role}_from") or SplitSource()
        source = given.source or self.source
        root = given.root or (self.root if source == self.source else None)
        listed = given.list or (self.labelled_list if role == "labelled" else None)
        return ResolvedSplit(source, root, given.split or _DEFAULT_SPLIT[role], listed)

    def _check_split_sources(self) -> None:
        """Per-split sources and lists: each names a data set on disk, a split it has, and
        one class space for all three."""
        given = [role for role in SPLIT_ROLES if getattr(self, f"{role}_from") is not None]
        if not self.on_disk and not given:
            check(self.labelled_list is None, "labelled_list", self.labelled_list,
                  "split lists name files of a data set on disk (data.source is 'synthetic')")
            return
        check(self.labelled_list is None or self.labelled_from is None
              or self.labelled_from.list is None, "labelled_list", self.labelled_list,
              "give the list once: data.labelled_list or data.labelled_from.list")
        classes = {role: self._check_split_source(role) for role in SPLIT_ROLES}
        first = classes["labelled"]
        for role in ("unlabelled", "val"):
            if classes[role] != first:
                raise ConfigError(f"{role}_from", _class_mismatch(self, first, role, classes[role]))

    def _check_split_source(self, role: str) -> int:
        """The number of classes of split `role`'s data set, once its settings are checked."""
        key, split = f"{role}_from", self.split_source(role)
        if split.source == "synthetic":
            raise ConfigError(f"{key}.source", "'synthetic' is not allowed: per-split sources "
                                               "and lists name data sets on disk (write the "
                                               "scenes out with `ps-trainer data export`)")
        check(bool(split.root), f"{key}.root", split.root,
              f"a directory is required: its source {split.source!r} is not data.source")
        allowed = SOURCE_SPLITS[split.source]
        if split.split not in allowed:
            raise ConfigError(f"{key}.split", f"{split.split!r} is not allowed: "
                                              f"{split.source} has the splits "
                                              f"{', '.join(allowed)}"
                                              f"{_VAL_HINT if role == 'val' else ''}")
        if split.source == "folder":
            check(self.num_classes is not None and self.num_classes >= 2, "num_classes",
                  self.num_classes, f"an integer >= 2 is required: data.{key} reads a folder")
            return int(self.num_classes)
        return SOURCE_CLASSES[split.source]


_VAL_HINT = " (validate on another data set: data.val_from, e.g. Cityscapes' val)"


def _class_mismatch(cfg: DataConfig, classes: int, role: str, other: int) -> str:
    labelled, this = cfg.split_source("labelled"), cfg.split_source(role)
    what = "validation" if role == "val" else role
    return (f"the {what} images ({this.source}, {other} classes) and the labelled images "
            f"({labelled.source}, {classes} classes) must share one class space")


@dataclass(frozen=True)
class ModelConfig:
    """The shared trunk and how tasks read it.

    ``small`` is a small ResNet written out (``widths``, ``blocks``, ``stem_stride`` shape
    it); ``resnet18`` ... ``resnet101`` are torchvision's ResNets, in torchvision's parameter
    layout, so that ImageNet weights load (``pretrained``) and trained trunks export.
    """
    backbone: str = "small"              # small | resnet18 | resnet34 | resnet50 | resnet101
    # ResNets: input pixels per feature pixel; 8 or 16 dilate the last stages instead of
    # striding (DeepLab). null: the backbone's own (ResNets 32; small: its stem and stages).
    output_stride: Optional[int] = None
    # A torchvision-layout ResNet state_dict (e.g. ImageNet weights); fc.* is ignored. It must
    # be readable wherever the model is built (the driver, every worker, the evaluator).
    pretrained: Optional[str] = None
    # Per-channel input normalisation of RGB in [0, 1]; null: the backbone's own (ResNets:
    # ImageNet's mean and std, which pretrained weights expect; small: 0.45 and 0.25).
    input_mean: Optional[tuple[float, float, float]] = None
    input_std: Optional[tuple[float, float, float]] = None
    widths: tuple[int, ...] = (16, 32, 64)   # small only
    blocks: tuple[int, ...] = (1, 1, 2)      # small only
    stem_stride: int = 2                     # small only
    # batch | frozen_batch | group | instance | layer | switchable. frozen_batch keeps the
    # pretrained weights' statistics and affine fixed (small per-GPU batches).
    norm: str = "group"
    groups: int = 8                      # GroupNorm groups (capped by channels)
    lasso: bool = False                  # Doersch et al. 2017, sec. 3.3
    lasso_l1: float = 1e-3
    harmonize: bool = False              # Doersch et al. 2017, sec. 3.2: every task sees L only

    def __post_init__(self):
        check_choice("backbone", self.backbone, BACKBONES)
        if self.backbone == "small":
            check(self.output_stride is None, "output_stride", self.output_stride,
                  "null with backbone 'small' (its stride comes from stem_stride and widths)")
        else:
            check(self.output_stride in (None, 8, 16, 32), "output_stride", self.output_stride,
                  "null, 8, 16 or 32")
        check(self.norm != "frozen_batch" or self.pretrained, "norm", self.norm,
              "frozen_batch keeps pretrained statistics: set model.pretrained too")
        for name in ("input_mean", "input_std"):
            value = getattr(self, name)
            check(value is None or len(value) == 3, name, value, "null or three numbers (R, G, B)")
        check(self.input_std is None or all(v > 0 for v in self.input_std), "input_std",
              self.input_std, "all > 0")
        check(len(self.widths) >= 1, "widths", self.widths, "at least one stage")
        check(len(self.blocks) == len(self.widths), "blocks", self.blocks,
              f"one entry per stage ({len(self.widths)} stages in model.widths)")
        check(all(w >= 1 for w in self.widths), "widths", self.widths, "all >= 1")
        check(all(b >= 1 for b in self.blocks), "blocks", self.blocks, "all >= 1")
        check(self.stem_stride in (1, 2, 4), "stem_stride", self.stem_stride, "1, 2 or 4")
        check(self.groups >= 1, "groups", self.groups, "must be >= 1")
        check(self.lasso_l1 >= 0, "lasso_l1", self.lasso_l1, "must be >= 0")


@dataclass(frozen=True)
class OptimizerConfig:
    """The server's optimizer, applied to every accepted push, and its LR schedule."""
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9                # sgd; rmsprop momentum
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)   # adamw
    alpha: float = 0.99                  # rmsprop smoothing
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_updates: int = 0
    step_every_updates: int = 1000       # step schedule
    step_gamma: float = 0.1
    min_lr_ratio: float = 0.0            # cosine floor, as a fraction of lr
    clip_grad_norm: float = 0.0          # on the norm of the whole push; 0 = off

    def __post_init__(self):
        check_choice("name", self.name, OPTIMIZERS)
        check(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "must be > 0")
        check(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
              self.betas, "two values in [0, 1)")
        check(0 <= self.alpha < 1, "alpha", self.alpha, "must be in [0, 1)")
        check(self.eps > 0, "eps", self.eps, "must be > 0")
        check_choice("schedule", self.schedule, SCHEDULES)
        check(self.warmup_updates >= 0, "warmup_updates", self.warmup_updates, "must be >= 0")
        check(self.step_every_updates >= 1, "step_every_updates", self.step_every_updates,
              "must be >= 1")
        check(0 < self.step_gamma <= 1, "step_gamma", self.step_gamma, "must be in (0, 1]")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        check(self.clip_grad_norm >= 0, "clip_grad_norm", self.clip_grad_norm, "must be >= 0")


@dataclass(frozen=True)
class ServerConfig:
    """The parameter server: staleness handling, publishing, transport, sharding."""
    # unscaled: the full step; scale: step * 1/(1+s). Measured: a push one or two versions
    # stale gains nothing from a smaller step, which costs updates to the target (docs/results.md).
    staleness_policy: str = "unscaled"
    max_staleness_updates: int = 64      # pushes staler than this are dropped (both policies)
    actors: int = 1                      # server actors, each owning part of the parameters
    publish_every_updates: int = 1       # publish a new weight version at most every k updates
    grad_dtype: str = "float32"          # gradient transport; accumulation stays float32
    # shared_memory: a worker on the server's node writes its float32 gradients where the server
    # reads them (no copy, no object per push; push_buffers.py); object_store: every push is
    # an object. Other nodes, other grad_dtypes and non-Linux hosts use the object store.
    same_node_pushes: str = "shared_memory"
    # true: the server reads every push once to reject NaN/Inf; false: it trusts the norm the
    # worker computed from the bytes it sent (that pass moves from the server to the workers).
    verify_gradients: bool = True
    # A consistent copy of the server state is kept in the object store (owned by the
    # coordinator, outside the server processes) this often; a dead server is restored from
    # it, losing seconds of updates rather than a checkpoint interval. 0: checkpoints only.
    snapshot_every_s: float = 5.0
    num_cpus: float = 1.0
    resources: FrozenDict = FrozenDict()  # custom Ray resources, e.g. {ps_server: 1} to pin nodes

    def __post_init__(self):
        _check_resources(self.resources)
        check_choice("staleness_policy", self.staleness_policy, STALENESS_POLICIES)
        check(self.max_staleness_updates >= 0, "max_staleness_updates",
              self.max_staleness_updates, "must be >= 0")
        check(self.actors >= 1, "actors", self.actors, "must be >= 1")
        check(self.publish_every_updates >= 1, "publish_every_updates",
              self.publish_every_updates, "must be >= 1")
        # Workers compute on the last published version, so the push that completes a publish
        # interval is publish_every_updates - 1 versions stale; above max_staleness_updates
        # every push is dropped before the first publish and training never starts.
        if self.publish_every_updates > self.max_staleness_updates + 1:
            raise ConfigError("publish_every_updates",
                              f"{self.publish_every_updates} is not allowed: "
                              f"server.publish_every_updates must be <= "
                              f"server.max_staleness_updates + 1 "
                              f"({self.max_staleness_updates + 1}), or every push is dropped "
                              f"as stale")
        check_choice("grad_dtype", self.grad_dtype, GRAD_DTYPES)
        check_choice("same_node_pushes", self.same_node_pushes, PUSH_TRANSPORTS)
        check(self.snapshot_every_s >= 0, "snapshot_every_s", self.snapshot_every_s, "must be >= 0")
        check(self.num_cpus > 0, "num_cpus", self.num_cpus, "must be > 0")


@dataclass(frozen=True)
class BalancingConfig:
    """Task-loss balancing at the server; `options` belong to the chosen method."""
    method: str = "equal"
    options: FrozenDict = FrozenDict()

    def __post_init__(self):
        check(bool(self.method), "method", self.method, "name a balancing method")


@dataclass(frozen=True)
class TaskConfig:
    """One task's workers and batches; `options` belong to the task class."""
    workers: int = 1
    batch_size: int = 32
    sync: int = 1                        # pushes averaged into one update (Doersch: sync within a task)
    inflight: int = 2                    # pushes outstanding per worker
    # true: the next pull overlaps the step (weights one step older); false: pull and wait
    # before each step (fresher weights; better where workers share cores); auto: true on a
    # GPU worker, whose pull then overlaps its step, false on a CPU worker.
    prefetch: Any = "auto"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: FrozenDict = FrozenDict()  # custom Ray resources for this task's workers
    options: FrozenDict = FrozenDict()

    def __post_init__(self):
        _check_resources(self.resources)
        check(self.workers >= 0, "workers", self.workers, "must be >= 0")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        check(self.sync >= 1, "sync", self.sync, "must be >= 1")
        check(self.inflight >= 1, "inflight", self.inflight, "must be >= 1")
        check(self.prefetch in ("auto", True, False), "prefetch", self.prefetch,
              "auto, true or false")
        check(self.num_cpus >= 0, "num_cpus", self.num_cpus, "must be >= 0")
        check(self.num_gpus >= 0, "num_gpus", self.num_gpus, "must be >= 0")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation, checkpointing and previews.

    Every validation image is scored whole, at its labels' resolution (ps_trainer/model/inference.py):
    ``mode: whole`` runs the model on the image (resized to ``scale`` if set); ``slide`` on
    ``crop_size`` windows every ``stride`` pixels, averaging the logits where windows overlap
    (mmsegmentation's test modes; e.g. Cityscapes: crop [512, 1024], stride [341, 682]).
    """
    every_s: float = 30.0
    every_updates: int = 0               # also evaluate every N server versions (0 = off)
    keep_last: int = 3
    mode: str = "whole"                  # whole | slide
    crop_size: Optional[tuple[int, int]] = None   # slide: window [h, w] in test-scale pixels
    stride: Optional[tuple[int, int]] = None      # slide: [h, w] between windows, <= crop_size
    # Test scale: null = each image's own resolution; [H, W] = resized, keeping its aspect
    # ratio, until the long side fits max(H, W) and the short side min(H, W) (mmsegmentation's
    # Resize(scale, keep_ratio=True)). Predictions are scored at the labels' resolution.
    scale: Optional[tuple[int, int]] = None
    flip: bool = False                   # also predict the mirrored image; probabilities averaged
    scales: tuple[float, ...] = (1.0,)   # factors of the test scale; probabilities averaged
    # Images (whole) or windows (slide) per forward pass; whole mode batches consecutive images
    # of one size. Lower it for large images (a 1024x2048 image is 25 MB of float32 input).
    batch_size: int = 64
    # Validation images kept in memory as read (uint8), so that later evaluations need not
    # decode or render them again; beyond this the split is streamed, one batch at a time.
    cache_bytes: int = 64 * 2 ** 20
    previews: int = 4
    num_cpus: float = 1.0
    num_gpus: float = 0.0                # > 0: the evaluator actor asks Ray for a GPU, runs on CUDA
    # The final evaluation may take this long, or 3x the last evaluation if that is longer;
    # the final state is checkpointed before it is scored, so a late score loses no training.
    final_timeout_s: float = 300.0

    def __post_init__(self):
        check(self.every_s > 0, "every_s", self.every_s, "must be > 0")
        check(self.final_timeout_s > 0, "final_timeout_s", self.final_timeout_s, "must be > 0")
        check(self.every_updates >= 0, "every_updates", self.every_updates, "must be >= 0")
        check(self.keep_last >= 1, "keep_last", self.keep_last, "must be >= 1")
        check_choice("mode", self.mode, EVAL_MODES)
        self._check_windows()
        check(self.scale is None or all(v >= 1 for v in self.scale), "scale", self.scale,
              "null or [H, W], both >= 1")
        check(len(self.scales) >= 1 and all(0.25 <= f <= 4.0 for f in self.scales), "scales",
              self.scales, "one or more factors in [0.25, 4]")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        check(self.cache_bytes >= 0, "cache_bytes", self.cache_bytes, "must be >= 0")
        check(self.previews >= 0, "previews", self.previews, "must be >= 0")
        check(self.num_cpus > 0, "num_cpus", self.num_cpus, "must be > 0")
        check(self.num_gpus >= 0, "num_gpus", self.num_gpus, "must be >= 0")

    def _check_windows(self) -> None:
        if self.mode != "slide":
            for name in ("crop_size", "stride"):
                check(getattr(self, name) is None, name, getattr(self, name),
                      "null unless eval.mode is 'slide'")
            return
        crop, stride = self.crop_size, self.stride
        check(crop is not None and all(v >= 1 for v in crop), "crop_size", crop,
              "[h, w], both >= 1, with eval.mode 'slide'")
        check(stride is not None and all(v >= 1 for v in stride), "stride", stride,
              "[h, w], both >= 1, with eval.mode 'slide'")
        check(all(s <= c for s, c in zip(stride, crop)), "stride", stride,
              f"at most eval.crop_size {list(crop)} in each dimension (windows must cover "
              f"every pixel)")


@dataclass(frozen=True)
class FinetuneConfig:
    """The few-label transfer protocol: train a segmentation head (and, by default, the
    trunk) on N labelled images from a pretrained or a random trunk, optionally beside tasks
    that learn from the unlabelled pool (e.g. self_training: semi-supervised fine-tuning)."""
    steps: int = 600                     # segmentation steps; each unlabelled task gets as many
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 0.002
    weight_decay: float = 1e-4
    warmup_updates: int = 30
    train_trunk: bool = True             # false: the pretrained trunk stays frozen
    unlabelled_tasks: tuple[str, ...] = ()  # trained beside segmentation, on the unlabelled pool

    def __post_init__(self):
        check(self.steps >= 1, "steps", self.steps, "must be >= 1")
        check("segmentation" not in self.unlabelled_tasks, "unlabelled_tasks",
              self.unlabelled_tasks, "tasks besides segmentation (which fine-tuning trains)")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check(self.lr > 0, "lr", self.lr, "must be > 0")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        check(self.warmup_updates >= 0, "warmup_updates", self.warmup_updates, "must be >= 0")


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint (one for the whole run)."""
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9464                     # 0 = any free port (logged at start)
    report_every_s: float = 2.0

    def __post_init__(self):
        check(0 <= self.port <= 65535, "port", self.port, "must be in [0, 65535]")
        check(self.report_every_s > 0, "report_every_s", self.report_every_s, "must be > 0")


@dataclass(frozen=True)
class RayConfig:
    """How to reach Ray: start a local one (address null) or join `auto` / `ray://...`."""
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    num_gpus: Optional[int] = None
    namespace: str = "ps_trainer"
    include_dashboard: bool = False
    # Object store size for a local Ray (null: Ray's default, 30% of RAM). Smaller is faster
    # for large models: a store much larger than what is in flight keeps handing out pages that
    # every process must fault in again (see docs/performance.md).
    object_store_memory_bytes: Optional[int] = None

    def __post_init__(self):
        check(self.object_store_memory_bytes is None or self.object_store_memory_bytes >= 2 ** 26,
              "object_store_memory_bytes", self.object_store_memory_bytes, "null or >= 64 MiB")
        check(self.num_cpus is None or self.num_cpus >= 1, "num_cpus", self.num_cpus, "must be >= 1")
        check(self.num_gpus is None or self.num_gpus >= 0, "num_gpus", self.num_gpus, "must be >= 0")


@dataclass(frozen=True)
class Config:
    """A whole experiment."""
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    server: ServerConfig = ServerConfig()
    balancing: BalancingConfig = BalancingConfig()
    tasks: FrozenDict = field(default=FrozenDict(), metadata={"values": TaskConfig})  # name -> TaskConfig
    eval: EvalConfig = EvalConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    metrics: MetricsConfig = MetricsConfig()
    ray: RayConfig = RayConfig()

    def __post_init__(self):
        check(len(self.tasks) > 0, "tasks", dict(self.tasks), "at least one task")
        if "segmentation" in self.tasks and self.tasks["segmentation"].workers > 0:
            check(self.data.labelled > 0, "data.labelled", self.data.labelled,
                  "the segmentation task needs labelled images (data.labelled > 0)")
        if self.balancing.method == "static":
            unknown = sorted(set(self.balancing.options.get("weights", {})) - set(self.tasks))
            check(not unknown, "balancing.options.weights", unknown,
                  f"weights for configured tasks only ({', '.join(self.tasks)})")

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(self.tasks)

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)


# Spellings of earlier versions, still read (from YAML, --set overrides and the configs saved
# in checkpoints) with a warning: (section, old key) -> new key; (section, key) -> {old: new}.
RENAMED_KEYS = {("server", "shards"): "actors",
                ("server", "max_staleness"): "max_staleness_updates",
                ("server", "publish_every"): "publish_every_updates"}
RENAMED_VALUES = {("server", "staleness_policy"): {"drop": "unscaled"},
                  ("optimizer", "name"): {"adam": "adamw"},
                  ("finetune", "optimizer"): {"adam": "adamw"},
                  ("data", "val"): {0: None}}     # 0 meant every image on disk


def upgrade_spellings(data: Mapping) -> dict:
    """`data` with the old spellings of RENAMED_KEYS and RENAMED_VALUES replaced, each
    reported once as a deprecation warning; an old and a new key together are an error."""
    data = _deepcopy(dict(data or {}))
    for (section, old), new in RENAMED_KEYS.items():
        part = data.get(section)
        if isinstance(part, dict) and old in part:
            if new in part:
                raise ConfigError(f"{section}.{old}", f"is the old name of {section}.{new}; "
                                                      f"give only {section}.{new}")
            log.warning("config: %s.%s is deprecated; it is now %s.%s", section, old, section, new)
            part[new] = part.pop(old)
    for (section, key), values in RENAMED_VALUES.items():
        part = data.get(section)
        if isinstance(part, dict) and _spelling(part.get(key)) in values:
            log.warning("config: %s.%s: %r is deprecated; it is now %r", section, key, part[key],
                        values[part[key]])
            part[key] = values[part[key]]
    return data


def _spelling(value: Any) -> Any:
    """`value` as a key of RENAMED_VALUES: strings and whole numbers (not booleans, which
    equal 0 and 1), else None, which no old spelling is."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return None


def config_from_dict(data: Mapping) -> Config:
    """Build and validate a Config from plain (YAML) data."""
    return build_dataclass(Config, upgrade_spellings(data))


def config_to_dict(cfg: Any) -> Any:
    """Plain YAML-able data for a Config (or any section), the inverse of config_from_dict."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, tuple):
        return [config_to_dict(v) for v in cfg]
    return cfg


# --------------------------------------------------------------------------- overrides

def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``a.b.c=value`` overrides to plain data; values are parsed as YAML scalars."""
    data = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key.path=value")
        path, raw = item.split("=", 1)
        parts = path.strip().split(".")
        if not all(parts):
            raise ConfigError(path, "empty component in the key path")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(path, f"cannot parse value {raw!r}: {err}") from None
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: i + 1]), f"is a value ({child!r}), not a section")
            node = child
        node[parts[-1]] = value
    return data


def _deepcopy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict:
    """The mapping a YAML file holds (empty file: {}); a missing file, bad YAML or a
    non-mapping raises ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"{what} file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError("", f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (or start from defaults when `path` is None) and apply overrides."""
    data = read_yaml_mapping(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
