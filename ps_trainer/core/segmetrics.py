"""Segmentation scores: one confusion matrix accumulated over a whole split, then mIoU.

    conf = np.zeros((C, C), np.int64)
    for pred, mask in batches:
        conf += confusion_matrix(pred, mask, C)
    miou, per_class = mean_iou(conf)

(:func:`confusion_counts` is the same count as a tensor on the inputs' device.)
"""
from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = 255


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """int64 (C, C) counts; rows = truth, columns = prediction; `ignore_index` pixels skipped."""
    return confusion_counts(pred, target, num_classes, ignore_index).cpu().numpy()


def confusion_counts(pred, target, num_classes: int, ignore_index: int = IGNORE_INDEX
                     ) -> torch.Tensor:
    """:func:`confusion_matrix` as an int64 (C, C) tensor on the device of `pred` and `target`
    (an evaluator on a GPU accumulates it there)."""
    pred = torch.as_tensor(pred).reshape(-1).long()
    target = torch.as_tensor(target).reshape(-1).long()
    if pred.shape != target.shape:
        raise ValueError(f"prediction has {pred.numel()} pixels, target {target.numel()}")
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (int(target.max()) >= num_classes or int(target.min()) < 0):
        raise ValueError(f"target holds class ids outside [0, {num_classes}) other than {ignore_index}")
    if pred.numel() and (int(pred.max()) >= num_classes or int(pred.min()) < 0):
        raise ValueError(f"prediction holds class ids outside [0, {num_classes})")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def mean_iou(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    """(mIoU, per-class IoU). IoU = TP / (TP + FP + FN); classes absent from both truth and
    prediction get NaN and are left out of the mean."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    present = union > 0
    miou = float(iou[present].mean()) if present.any() else float("nan")
    return miou, iou


def pixel_accuracy(confusion: np.ndarray) -> float:
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")
