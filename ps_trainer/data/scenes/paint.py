"""Painting a rasterised layout into an RGB image, and `render_scene`: one whole scene."""
from __future__ import annotations

import math

import cv2
import numpy as np

from ps_trainer.config import DomainConfig
from ps_trainer.data.scenes.layout import Layout
from ps_trainer.data.scenes.lighting import _lighting
from ps_trainer.data.scenes.palettes import PALETTE_TINT, _segment_colors
from ps_trainer.data.scenes.raster import rasterise, segment_boxes, segment_classes
from ps_trainer.data.scenes.scenery import _draw_layout
from ps_trainer.data.scenes.textures import (NOISE_GRIDS, _Canvas, _noise_fields, _pixel_grid,
                                             _segment_textures, _texture_map)

GAUSSIAN_BANK_SIZE = 1 << 21             # pre-drawn standard normals for grain and noise

GAUSSIAN_BANK = np.random.default_rng(20240531).standard_normal(GAUSSIAN_BANK_SIZE,
                                                                 dtype=np.float32)


def _gaussian(rng, shape: tuple) -> np.ndarray:
    """Standard normal float32 noise: a random window of a fixed bank (drawing fresh
    Gaussians would cost more than all the rest of painting a small image)."""
    count = math.prod(shape)
    if count >= GAUSSIAN_BANK_SIZE:
        return rng.standard_normal(shape, dtype=np.float32)
    start = int(rng.integers(0, GAUSSIAN_BANK_SIZE - count))
    return GAUSSIAN_BANK[start:start + count].reshape(shape)


def _paint(layout: Layout, ids: np.ndarray, classes: np.ndarray, rng,
           domain: DomainConfig) -> np.ndarray:
    """The RGB uint8 image of a rasterised layout. Makes the same draws in every domain."""
    size = ids.shape[0]
    materials = np.array([s.material for s in layout.segments])
    first, second = _segment_colors(materials, rng, domain.palette)
    families, raw = _segment_textures(materials, rng)
    x, y = _pixel_grid(size)
    flat_ids = ids.ravel().astype(np.intp)
    canvas = _Canvas(x.ravel(), y.ravel(), _noise_fields(rng, size).reshape(len(NOISE_GRIDS), -1),
                     None, flat_ids, segment_boxes(layout),
                     np.array([s.hint for s in layout.segments], dtype=np.float32), size, layout)
    amplitude, grain_amplitude = (raw[:, :2] * domain.texture).astype(np.float32).T
    texture = _texture_map(canvas, families, raw) * amplitude[flat_ids]
    tint = 1 + rng.random() * (np.array(PALETTE_TINT[domain.palette], dtype=np.float32) - 1)
    image = np.take(first * tint, flat_ids, axis=0)
    image += np.take((second - first) * tint, flat_ids, axis=0) * texture[:, None]
    grain = _gaussian(rng, (size * size,))
    light = _lighting(layout, classes, rng, size, domain.lighting).ravel()
    image *= (light * (1 + grain * grain_amplitude[flat_ids]))[:, None]
    image = image.reshape(size, size, 3)
    if domain.blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), domain.blur)
    sigma = domain.noise * (0.008 + 0.025 * rng.random())
    image += sigma * _gaussian(rng, image.shape)
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, size: int,
                 domain: DomainConfig = DomainConfig()) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (uint8 (size, size, 3) RGB image, uint8 (size, size) class mask)."""
    if size < 16:
        raise ValueError(f"image size must be >= 16, got {size}")
    layout = _draw_layout(rng)
    ids = rasterise(layout, size)
    mask = segment_classes(layout)[ids]
    return _paint(layout, ids, mask, rng, domain), mask
