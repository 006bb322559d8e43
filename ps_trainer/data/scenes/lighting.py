"""Lighting of a scene: exposure, a directional gradient, and cast shadows."""
from __future__ import annotations

import math

import cv2
import numpy as np

from ps_trainer.data.scenes.layout import Layout
from ps_trainer.data.scenes.materials import GROUND, ROAD
from ps_trainer.data.scenes.raster import SUBPIXEL, SUBPIXEL_BITS, _fill
from ps_trainer.data.scenes.textures import _pixel_grid


def _shadow_map(layout: Layout, classes: np.ndarray, strengths: np.ndarray,
                size: int) -> np.ndarray:
    """(H, W) darkening in [0, 1): contact shadows on ground and road under the props, and
    bands cast from out of view over everything they cover. Shadows of one sun do not
    compound, so a band simply replaces a contact shadow where both fall."""
    shade = np.zeros((size, size), dtype=np.float32)
    if layout.contact_shadows:
        ellipses = np.array(layout.contact_shadows) * size * SUBPIXEL
        ellipses[:, :2] -= 0.5 * SUBPIXEL
        ellipses[:, 2:] = np.maximum(ellipses[:, 2:], 1)
        for cx, cy, ax, ay in np.round(ellipses).astype(int).tolist():
            cv2.ellipse(shade, (cx, cy), (ax, ay), 0, 0, 360, float(strengths[1]), -1,
                        cv2.LINE_8, SUBPIXEL_BITS)
        shade *= GROUND_OR_ROAD[classes]
    for band in layout.shadow_bands:
        _fill(shade, band, float(strengths[0]), size)
    kernel = 2 * max(1, size // 48) + 1  # soft penumbra
    return cv2.blur(shade, (kernel, kernel))


GROUND_OR_ROAD = np.isin(np.arange(256), (GROUND, ROAD)).astype(np.float32)


def _lighting(layout: Layout, classes, rng, size: int, strength: float) -> np.ndarray:
    """(H, W) multiplier: exposure, a directional gradient and cast shadows."""
    u = rng.random(5)
    x, y = _pixel_grid(size)
    angle = 2 * np.pi * u[0]
    gradient = 1 + strength * 0.6 * u[1] * ((x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle))
    exposure = math.exp(strength * (0.55 * u[2] - 0.35))
    shadows = np.clip(strength * (0.2 + 0.35 * u[3:5]), 0, 0.85)
    shade = _shadow_map(layout, classes, shadows, size)
    return (exposure * gradient * (1 - shade)).astype(np.float32, copy=False)
