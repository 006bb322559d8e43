"""Synthetic scenes written out in a real data set's layout, at any resolution, so that the
readers, split lists, per-split sources and full-resolution evaluation can be run and
measured without the real data:

    ps-trainer data export --layout gta5 --size 1052x1914 --out data/gta5-like --train 64
    ps-trainer data export --layout cityscapes --size 1024x2048 --out data/cityscapes-like \
        --train 64 --val 16 --domain shifted

The six synthetic classes are stored as six Cityscapes label ids (SYNTHETIC_LABEL_IDS: object
-> car, ground -> terrain), so both layouts read back as Cityscapes' 19 train ids and a
GTA5-layout and a Cityscapes-layout export share one class space, as GTA5 and Cityscapes do.
Labels are stored as the layouts store them: grey label-id PNGs in Cityscapes' ``gtFine``,
palette PNGs (indices = label ids, colored with Cityscapes' palette) in GTA5's ``labels``.
The generator draws square scenes: each is rendered at the longer side and its centre cut
to H x W, so every pixel is rendered at full resolution, none stretched (a 1024x2048 scene
costs about 0.8 s of one core). Scene i of the train (val) split is drawn from
``default_rng([seed, 0 (1), i])``: the same seed, size and domain give the same scenes in
either layout.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ps_trainer.config import SHIFTED_DOMAIN, DomainConfig
from ps_trainer.data.readers.cityscapes import IMAGE_SUFFIX, LABEL_COLORS, MASK_SUFFIX
from ps_trainer.data.scenes.materials import CLASS_NAMES
from ps_trainer.data.scenes.paint import render_scene

log = logging.getLogger(__name__)

LAYOUTS = ("cityscapes", "gta5")
# Synthetic class -> Cityscapes labelId (train id): sky 23 (10), ground -> terrain 22 (9),
# road 7 (0), building 11 (2), vegetation 21 (8), object (cars, people, signs) -> car 26 (13).
SYNTHETIC_LABEL_IDS = {"sky": 23, "ground": 22, "road": 7, "building": 11, "vegetation": 21,
                       "object": 26}
_TO_LABEL_ID = np.array([SYNTHETIC_LABEL_IDS[name] for name in CLASS_NAMES], dtype=np.uint8)
_CITY = {"train": "synthtrain", "val": "synthval"}   # Cityscapes names files <city>_<seq>_<frame>
_PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class ExportPlan:
    """What to write: `train` (and `val`) scenes of `domain` at height x width in `layout`."""
    layout: str
    height: int
    width: int
    out: str
    train: int = 16
    val: int = 0
    domain: str = "source"               # source | shifted (see config.SHIFTED_DOMAIN)
    seed: int = 0

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {self.layout!r}")
        if min(self.height, self.width) < 16:
            raise ValueError(f"size must be at least 16x16; got {self.height}x{self.width}")
        if self.train < 0 or self.val < 0:
            raise ValueError(f"--train and --val must be >= 0; got {self.train} and {self.val}")
        if self.layout == "gta5" and self.val:
            raise ValueError("the gta5 layout has no val split (GTA5 has none); give --val 0 "
                             "and validate on a cityscapes-layout export")
        if self.domain not in ("source", "shifted"):
            raise ValueError(f"domain must be source or shifted; got {self.domain!r}")


def parse_size(text: str) -> tuple[int, int]:
    """(height, width) of "HxW", e.g. "1024x2048"."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--size must be HEIGHTxWIDTH, e.g. 1024x2048; got {text!r}")
    return int(parts[0]), int(parts[1])


def export(plan: ExportPlan) -> dict[str, int]:
    """Write the scenes of `plan`; returns the number of images per split."""
    out = Path(plan.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} is not an empty folder; export into a new one (an old "
                         f"export's extra files would be read as part of this one)")
    domain = SHIFTED_DOMAIN if plan.domain == "shifted" else DomainConfig()
    counts = {"train": plan.train, "val": plan.val}
    total, done, start = sum(counts.values()), 0, time.monotonic()
    last = start
    for split_index, (split, count) in enumerate(counts.items()):
        for i in range(count):
            rng = np.random.default_rng([plan.seed, split_index, i])
            image, mask = render_cropped(rng, plan.height, plan.width, domain)
            _write(plan.layout, out, split, i, image, _TO_LABEL_ID[mask])
            done += 1
            if time.monotonic() - last >= _PROGRESS_EVERY_S:
                last = time.monotonic()
                log.info("export: %d/%d images written (%.0f s)", done, total, last - start)
    return {split: count for split, count in counts.items() if count}


def render_cropped(rng: np.random.Generator, height: int, width: int,
                   domain: DomainConfig) -> tuple[np.ndarray, np.ndarray]:
    """A scene rendered square at max(height, width), its centre cut to (height, width):
    (uint8 (H, W, 3) RGB, uint8 (H, W) synthetic class indices)."""
    image, mask = render_scene(rng, max(height, width), domain)
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return (np.ascontiguousarray(image[top: top + height, left: left + width]),
            np.ascontiguousarray(mask[top: top + height, left: left + width]))


def _write(layout: str, out: Path, split: str, index: int, image: np.ndarray,
           label_ids: np.ndarray) -> None:
    if layout == "cityscapes":
        city = _CITY[split]
        stem = f"{city}_{index:06d}_000019"
        image_path = out / "leftImg8bit" / split / city / f"{stem}{IMAGE_SUFFIX}"
        _imwrite(out / "gtFine" / split / city / f"{stem}{MASK_SUFFIX}", label_ids)
    else:
        name = f"{index + 1:05d}.png"   # GTA5 numbers its frames from 00001
        image_path = out / "images" / name
        _write_palette_png(out / "labels" / name, label_ids)
    _imwrite(image_path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def _imwrite(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"cannot write {path}")


def _write_palette_png(path: Path, label_ids: np.ndarray) -> None:
    """`label_ids` as a palette PNG colored like Cityscapes' labels (as GTA5 stores them)."""
    from PIL import Image  # cv2 writes no palette PNGs

    palette = np.zeros((256, 3), np.uint8)
    palette[: len(LABEL_COLORS)] = LABEL_COLORS
    image = Image.fromarray(label_ids)
    image.putpalette(palette.ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
