"""PNG pictures of a run: loss and mIoU curves, and image | truth | prediction previews."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

# The one palette (RGB) for class ids, in training previews and the synthetic-scenes preview:
# the first six are the synthetic scenes' classes (sky, ground, road, building, vegetation,
# object); 255 (ignore) is drawn black.
CLASS_PALETTE = np.array([
    [70, 130, 180], [152, 251, 152], [128, 64, 128], [70, 70, 70], [107, 142, 35],
    [220, 20, 60], [250, 170, 30], [0, 0, 142], [190, 153, 153], [255, 255, 0],
    [0, 255, 255], [255, 0, 255], [119, 11, 32], [0, 80, 100], [220, 120, 60],
    [34, 139, 34], [153, 153, 153], [0, 0, 230], [244, 35, 232], [102, 102, 156], [0, 60, 100],
], dtype=np.uint8)
_PREVIEW_ROW_PX = 192   # previews of small images are enlarged to about this height per row


def colorize(mask: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) RGB; ids beyond the palette wrap, 255 is black."""
    out = CLASS_PALETTE[mask.astype(np.int64) % len(CLASS_PALETTE)]
    out[mask == 255] = 0
    return out


def write_previews(path: str | Path, images: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                   predictions: Sequence[np.ndarray], scale: Optional[int] = None) -> None:
    """One row per example: image | truth | prediction; images (H, W, 3) uint8 RGB, of any
    sizes (narrower rows are padded white). `scale` (None: rows about 192 pixels tall)
    enlarges small images with nearest neighbours."""
    rows = []
    for image, truth, pred in zip(images, truths, predictions):
        row = np.concatenate([image, colorize(truth), colorize(pred)], axis=1)
        rows.append(np.pad(row, ((1, 1), (0, 0), (0, 0)), constant_values=255))
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255)
            for row in rows]
    grid = np.concatenate(rows, axis=0)
    if scale is None:
        scale = max(1, _PREVIEW_ROW_PX // max(image.shape[0] for image in images))
    grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    _write_rgb(path, grid)


def _write_rgb(path: str | Path, rgb: np.ndarray) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
    tmp.replace(path)


def plot_curves(path: str | Path, records: Sequence[dict], title: str = "") -> None:
    """Per-task loss and validation mIoU against server updates, from metrics.jsonl records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(11, 4))
    tasks = sorted({t for r in records for t in r.get("losses", {})})
    for task in tasks:
        pts = [(r["step"], r["losses"][task]) for r in records if task in r.get("losses", {})]
        if pts:
            ax_loss.plot(*zip(*pts), label=task, marker=".")
    ax_loss.set(xlabel="server updates", ylabel="loss (EMA)", yscale="log", title="task losses")
    if tasks:
        ax_loss.legend(fontsize=8)
    miou = [(s, r["miou"]) for s, r in zip(steps, records) if r.get("miou") is not None]
    if miou:
        ax_miou.plot(*zip(*miou), marker="o", color="tab:green")
    ax_miou.set(xlabel="server updates", ylabel="mIoU", title="validation mIoU", ylim=(0, 1))
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
