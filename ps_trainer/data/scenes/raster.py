"""Rasterising a layout into a segment-id map, and each segment's class and bounding box."""
from __future__ import annotations

import cv2
import numpy as np

from ps_trainer.data.scenes.layout import Layout
from ps_trainer.data.scenes.materials import MATERIAL_CLASS

SUBPIXEL_BITS = 4                        # cv2 `shift`: coordinates in 1/16 pixel
SUBPIXEL = float(1 << SUBPIXEL_BITS)


def _fixed_point(points: np.ndarray, size: int) -> np.ndarray:
    # Pixel i covers [i, i + 1) in image units * size; cv2 puts pixel centres on integers.
    return np.round((points * size - 0.5) * SUBPIXEL).astype(np.int32)


def _fill(canvas: np.ndarray, shape, value, size: int):
    """Draw one filled shape without anti-aliasing (so every pixel gets exactly `value`)."""
    if isinstance(shape, np.ndarray):
        cv2.fillPoly(canvas, [_fixed_point(shape, size)], value, cv2.LINE_8, SUBPIXEL_BITS)
    else:
        cx, cy, ax, ay, angle = shape
        centre = (round((cx * size - 0.5) * SUBPIXEL), round((cy * size - 0.5) * SUBPIXEL))
        axes = (max(round(ax * size * SUBPIXEL), 1), max(round(ay * size * SUBPIXEL), 1))
        cv2.ellipse(canvas, centre, axes, angle, 0, 360, value, -1, cv2.LINE_8, SUBPIXEL_BITS)


def rasterise(layout: Layout, size: int) -> np.ndarray:
    """The uint8 segment-id map: each pixel holds the index of the last segment covering it."""
    ids = np.zeros((size, size), dtype=np.uint8)
    table = layout.polygons
    # One fixed-point conversion for all polygons: per-polygon numpy calls dominate otherwise.
    fixed = iter(np.split(_fixed_point(table.points, size), table.starts[1:]))
    for index, segment in enumerate(layout.segments):
        for shape in segment.shapes:
            if isinstance(shape, np.ndarray):
                cv2.fillPoly(ids, [next(fixed)], index, cv2.LINE_8, SUBPIXEL_BITS)
            else:
                _fill(ids, shape, index, size)
    return ids


def segment_classes(layout: Layout) -> np.ndarray:
    return MATERIAL_CLASS[[s.material for s in layout.segments]]


def segment_boxes(layout: Layout) -> np.ndarray:
    """(K, 4) float32 (x0, y0, x1, y1) of every segment: given, or its polygons' bounds."""
    table = layout.polygons
    low = np.minimum.reduceat(table.points, table.starts)
    high = np.maximum.reduceat(table.points, table.starts)
    # Polygons come in segment order: reduce again over each segment's run of polygons.
    first = np.flatnonzero(np.diff(table.owner, prepend=-1))
    boxes = np.zeros((len(layout.segments), 4), dtype=np.float32)
    boxes[table.owner[first], :2] = np.minimum.reduceat(low, first)
    boxes[table.owner[first], 2:] = np.maximum.reduceat(high, first)
    for index, segment in enumerate(layout.segments):
        if segment.box is not None:
            boxes[index] = segment.box
    return boxes
