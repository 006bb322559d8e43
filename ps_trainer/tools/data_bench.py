"""``ps-trainer bench --sections data``: how fast the data path makes real-resolution crops.

It writes 2048 x 1024 PNG pairs in Cityscapes' layout to a temporary folder (smooth random
images, labels with Cityscapes labelIds), reads them with the Cityscapes reader and makes
512 x 1024 training crops as segmentation at real resolution does (``RescaleCrops``: a random
rescale of 1024 x 2048 by 0.5-2, a crop with cat_max_ratio), with 0, 1 and 2 loader
processes. For each it measures, ``repeats`` times:

- images/s of the data path alone (batches drawn back to back), uncached (``cache_mb: 0``:
  every draw decodes, as with a data set much larger than the cache, Cityscapes' 2,975
  images against 32 cached at 256 MiB);
- the mean time ``sample()`` blocks per batch when each batch is followed by an emulated
  accelerator step of ``step_s`` (a wait: the host CPU is free meanwhile, as under a GPU
  step);
- resident memory (RSS and PSS) of the process that draws and of each loader.

Then the memory of one loader after enough batches to fill its cache, for several
``cache_mb``: it grows by the cache and no more; and where one image's time goes on one core
(decode, rescale and crop, conversion to float), from which the loader cores a GPU worker
needs follow (its loaders ship uint8; the conversion runs on the GPU). The bench process
stands for a worker with one CPU (torch on one thread). Absolute figures hold for this
machine only.
"""
from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from ps_trainer.data.crops import RescaleCrops
from ps_trainer.data.loader import make_sampler
from ps_trainer.data.readers.cityscapes import CityscapesDataset, TRAIN_CLASSES

log = logging.getLogger(__name__)
IMAGE_HW = (1024, 2048)
CROP_HW = (512, 1024)
_LABEL_IDS = np.array([label for label, _ in TRAIN_CLASSES] + [0, 1, 4])   # + a few ignored
_ENTROPY = [0, 0, 0, 0]


@dataclass(frozen=True)
class DataBenchPlan:
    images: int = 24                          # PNG pairs written
    batch_size: int = 8
    batches: int = 6                          # timed per measurement (a multiple of loaders)
    loader_workers: tuple[int, ...] = (0, 1, 2)
    repeats: int = 3
    step_s: float = 0.15                      # emulated accelerator step (ResNet-50, GPU)
    memory_batches: int = 10                  # enough draws for a loader to fill its cache
    cache_mb: tuple[int, ...] = (0, 64, 256)
    target_batch: int = 16                    # the loader-cores answer: batches of 16 ...
    target_step_s: float = 0.15               # ... each 0.15 s

    @classmethod
    def quick(cls) -> "DataBenchPlan":
        return cls(images=3, batch_size=2, batches=2, repeats=1, memory_batches=2,
                   cache_mb=(0, 16))


def write_cityscapes_like(root: Path, count: int, seed: int = 0) -> float:
    """`count` image / labelIds PNG pairs of 2048 x 1024 under `root` in Cityscapes' train
    layout; returns the mean image file size in MB."""
    rng = np.random.default_rng(seed)
    images = root / "leftImg8bit" / "train" / "bench"
    labels = root / "gtFine" / "train" / "bench"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    h, w = IMAGE_HW
    sizes = []
    for i in range(count):
        low = rng.integers(0, 256, (h // 32, w // 32, 3), dtype=np.uint8)
        image = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)   # smooth colour fields
        regions = rng.choice(_LABEL_IDS, size=(h // 64, w // 64)).astype(np.uint8)
        label = cv2.resize(regions, (w, h), interpolation=cv2.INTER_NEAREST)
        stem = f"bench_000000_{i:06d}"
        cv2.imwrite(str(images / f"{stem}_leftImg8bit.png"), image)
        cv2.imwrite(str(labels / f"{stem}_gtFine_labelIds.png"), label)
        sizes.append((images / f"{stem}_leftImg8bit.png").stat().st_size)
    return float(np.mean(sizes)) / 1e6


def process_memory_mb(pid: int) -> dict:
    """Resident (RSS) and proportional (PSS: shared pages split among their users) memory."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, *rest = line.split()
            if key in ("Rss:", "Pss:"):
                out[key[:-1].lower() + "_mb"] = int(rest[0]) / 1024
    return out


def _sampler(dataset, plan: DataBenchPlan, loaders: int, cache_mb: int):
    crops = RescaleCrops(crop_size=CROP_HW, ratio_range=(0.5, 2.0), base_size=IMAGE_HW)
    return make_sampler(dataset, plan.batch_size, CROP_HW[0], np.random.default_rng(_ENTROPY),
                        _ENTROPY, loaders, cache_bytes=cache_mb << 20, crops=crops)


def _memory(sampler) -> dict:
    return {"main": process_memory_mb(os.getpid()),
            "loaders": [process_memory_mb(p) for p in getattr(sampler, "loader_pids", list)()]}


def measure(dataset, plan: DataBenchPlan, loaders: int) -> dict:
    """One measurement: images/s back to back, then the wait per batch behind emulated steps."""
    sampler = _sampler(dataset, plan, loaders, cache_mb=0)
    try:
        for _ in range(max(loaders, 1)):     # every loader started and one batch into its round
            sampler.sample()
        start = time.perf_counter()
        for _ in range(plan.batches):
            sampler.sample()
        images_per_s = plan.batches * plan.batch_size / (time.perf_counter() - start)
        waited = 0.0
        for _ in range(plan.batches):
            start = time.perf_counter()
            sampler.sample()
            waited += time.perf_counter() - start
            time.sleep(plan.step_s)
        memory = _memory(sampler)
    finally:
        sampler.close()
    return {"images_per_s": images_per_s, "wait_s": waited / plan.batches, "memory": memory}


def cache_memory(dataset, plan: DataBenchPlan, cache_mb: int) -> dict:
    """Memory of one loader after `memory_batches` batches with `cache_mb` of cache."""
    sampler = _sampler(dataset, plan, 1, cache_mb)
    try:
        for _ in range(plan.memory_batches):
            sampler.sample()
        memory = _memory(sampler)["loaders"][0]
    finally:
        sampler.close()
    per_image_mb = IMAGE_HW[0] * IMAGE_HW[1] * 4 / 2 ** 20       # RGB + labels, uint8
    return {"cache_mb": cache_mb, **memory,
            "data_set_mb": len(dataset) * per_image_mb}


def per_image_ms(dataset, plan: DataBenchPlan) -> dict:
    """Milliseconds per image on one core: decode (image and labels), rescale and crop, and
    the conversion to float32 (B, 3, H, W) and int64 masks; medians over the data set."""
    from ps_trainer.data.sampler import to_tensors

    crops = RescaleCrops(crop_size=CROP_HW, ratio_range=(0.5, 2.0), base_size=IMAGE_HW)
    rng = np.random.default_rng(0)
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    times = {"decode": [], "crop": [], "convert": []}
    try:
        for index in range(len(dataset)):
            start = time.perf_counter()
            sample = crops.prepare(dataset[index])
            decoded = time.perf_counter()
            cropped = crops.crop(sample, rng)
            done = time.perf_counter()
            to_tensors(cropped.image[None], cropped.mask[None])
            times["decode"].append(decoded - start)
            times["crop"].append(done - decoded)
            times["convert"].append(time.perf_counter() - done)
    finally:
        cv2.setNumThreads(cv_threads)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "runs": values}


def data_path(plan: DataBenchPlan, folder: Optional[str] = None) -> dict:
    """The whole section: rows per loader count, memory per cache size, loader cores needed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            png_mb = write_cityscapes_like(Path(tmp), plan.images)
            dataset = CityscapesDataset(tmp, "train")
            runs = {k: [measure(dataset, plan, k) for _ in range(plan.repeats)]
                    for k in plan.loader_workers}
            memory = [cache_memory(dataset, plan, mb) for mb in plan.cache_mb]
            parts = per_image_ms(dataset, plan)
    finally:
        torch.set_num_threads(threads)
    rows = [{"loader_workers": k,
             "images_per_s": _spread([r["images_per_s"] for r in rs]),
             "wait_s": _spread([r["wait_s"] for r in rs]),
             "memory": rs[-1]["memory"]} for k, rs in runs.items()]
    for row in rows:
        log.info("data: %d loaders: %.1f ± %.1f images/s, waits %.3f s per batch",
                 row["loader_workers"], row["images_per_s"]["mean"], row["images_per_s"]["std"],
                 row["wait_s"]["mean"])
    # A GPU worker's loaders decode, rescale and crop; the float conversion runs on the GPU.
    seconds_per_image = (parts["decode"] + parts["crop"]) / 1000
    return {"image_hw": IMAGE_HW, "crop_hw": CROP_HW, "images": plan.images,
            "png_mb": png_mb, "batch_size": plan.batch_size, "step_s": plan.step_s,
            "repeats": plan.repeats, "rows": rows, "cache_memory": memory,
            "per_image_ms": parts,
            "loader_cores": {"batch_size": plan.target_batch, "step_s": plan.target_step_s,
                             "seconds_per_image": seconds_per_image,
                             "cores": plan.target_batch * seconds_per_image / plan.target_step_s}}


def format_data(d: dict) -> list[str]:
    """The section as Markdown tables (docs/performance.md)."""
    h, w = d["image_hw"]
    ch, cw = d["crop_hw"]
    lines = ["", f"data path: {w}x{h} PNGs ({d['png_mb']:.1f} MB) -> {cw}x{ch} crops, batches "
                 f"of {d['batch_size']}, uncached; mean ± std of {d['repeats']} runs; wait: "
                 f"per batch behind an emulated {1000 * d['step_s']:.0f} ms step",
             "| loader workers | images/s | wait per batch (s) | RSS / PSS MB: drawing "
             "process | each loader |", "|---:|---:|---:|---:|---:|"]
    for r in d["rows"]:
        m = r["memory"]
        loaders = ", ".join(f"{x['rss_mb']:.0f} / {x['pss_mb']:.0f}" for x in m["loaders"]) or "-"
        lines.append(f"| {r['loader_workers']} | {r['images_per_s']['mean']:.1f} ± "
                     f"{r['images_per_s']['std']:.1f} | {r['wait_s']['mean']:.2f} ± "
                     f"{r['wait_s']['std']:.2f} | {m['main']['rss_mb']:.0f} / "
                     f"{m['main']['pss_mb']:.0f} | {loaders} |")
    lines += ["", "| cache_mb | one loader's RSS MB | PSS MB | data set MB |", "|---:|---:|---:|---:|"]
    lines += [f"| {m['cache_mb']} | {m['rss_mb']:.0f} | {m['pss_mb']:.0f} | "
              f"{m['data_set_mb']:.0f} |" for m in d["cache_memory"]]
    p, c = d["per_image_ms"], d["loader_cores"]
    lines += ["", f"one image on one core: decode {p['decode']:.0f} ms, rescale + crop "
                  f"{p['crop']:.0f} ms, to float {p['convert']:.0f} ms (median)",
              f"loader cores a GPU worker needs for batches of {c['batch_size']} every "
              f"{c['step_s']} s: {c['cores']:.1f} (decode + crop, {1000 * c['seconds_per_image']:.0f}"
              f" ms per image per core)"]
    return lines
