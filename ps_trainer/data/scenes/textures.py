"""Texture families and their per-material options: the pattern that mixes a segment's two colors."""
from __future__ import annotations

import functools
from typing import NamedTuple

import cv2
import numpy as np

from ps_trainer.data.scenes.layout import Layout
from ps_trainer.data.scenes.materials import (M_FACADE, M_FOLIAGE, M_GLASS, M_GROUND, M_HILL, M_PAINT,
                                              M_ROAD, M_ROOF, M_SKIN, M_SKY, M_TRUNK, M_TYRE,
                                              NUM_MATERIALS, PLANE_FACADE)

NOISE_GRIDS = (4, 8, 16, 32)             # value-noise lattice sizes, coarse to finest
SMOOTH_NOISE_GRIDS = 1                   # the coarsest gets cubic interpolation (no creases)
MIN_CELL_PIXELS = 3.0                    # smallest window or brick cell; finer only aliases

NOISE, STRIPES, GRID, GRADIENT, PERSPECTIVE, SKYLIGHT = range(6)
FAMILY_PARAMS = {
    NOISE: ("coarse", "medium", "fine", "finest", "gain", "centre"),
    STRIPES: ("angle", "cycles", "phase", "sharpness"),
    GRID: ("columns", "aspect", "fill_x", "fill_y", "brick", "invert"),
    GRADIENT: ("angle", "strength"),
    PERSPECTIVE: ("depth_freq", "depth_duty", "cells", "cell_duty", "depth_phase"),
    SKYLIGHT: ("haze", "clouds", "cloud_level", "cloud_scale"),
}
# Per material: (weight, family, amplitude range, grain range, parameter ranges). The
# amplitude is how far the texture goes from the first color to the second (times
# domain.texture); grain is multiplicative per-pixel noise.
TEXTURES = {
    M_SKY: [(1.0, SKYLIGHT, (0.5, 1.0), (0.0, 0.02),
             dict(haze=(0.2, 1.0), clouds=(0.0, 1.0), cloud_level=(0.35, 0.7),
                  cloud_scale=(0, 1)))],
    M_GROUND: [(0.6, NOISE, (0.5, 1.0), (0.04, 0.15),
                dict(coarse=(0, 1), medium=(0, 1), fine=(0, 1), finest=(0, 1), gain=(1, 4),
                     centre=(0.4, 0.6))),
               (0.25, PERSPECTIVE, (0.3, 0.8), (0.04, 0.12),      # furrows, rows of crops
                dict(cells=(1.5, 5), cell_duty=(0.3, 0.6))),
               (0.15, STRIPES, (0.2, 0.6), (0.04, 0.12),
                dict(angle=(-20, 20), cycles=(2, 8), phase=(0, 1), sharpness=(1, 3)))],
    M_HILL: [(1.0, NOISE, (0.3, 0.8), (0.0, 0.05),
              dict(coarse=(0, 1), medium=(0, 1), fine=(0, 0.5), gain=(1, 3),
                   centre=(0.4, 0.6)))],
    M_ROAD: [(0.6, PERSPECTIVE, (0.8, 1.0), (0.02, 0.08),         # lanes, dashed or solid
              dict(depth_freq=(0.1, 0.5), depth_duty=(0.35, 1.0), cells=(1, 4),
                   cell_duty=(0.04, 0.1), depth_phase=(0, 1))),
             (0.4, NOISE, (0.1, 0.4), (0.02, 0.1),
              dict(coarse=(0, 1), medium=(0, 1), fine=(0, 1), gain=(1, 3), centre=(0.4, 0.6)))],
    M_FACADE: [(0.45, GRID, (0.6, 1.0), (0.0, 0.06),              # windows
                dict(columns=(2, 9), aspect=(0.6, 1.6), fill_x=(0.35, 0.75),
                     fill_y=(0.35, 0.7), brick=(0, 0.7), invert=(0, 0.6))),
               (0.2, GRID, (0.3, 0.7), (0.0, 0.06),               # bricks
                dict(columns=(6, 16), aspect=(0.3, 0.5), fill_x=(0.8, 0.92),
                     fill_y=(0.7, 0.85), brick=(0.5, 1), invert=(0.5, 1))),
               (0.15, STRIPES, (0.3, 0.8), (0.0, 0.05),           # panels
                dict(angle=(0, 0), cycles=(3, 10), phase=(0, 1), sharpness=(1, 6))),
               (0.2, PERSPECTIVE, (0.6, 1.0), (0.0, 0.06),        # windows on street fronts
                dict(depth_freq=(0.5, 2), depth_duty=(0.3, 0.7), cells=(2, 8),
                     cell_duty=(0.3, 0.7), depth_phase=(0, 1)))],
    M_ROOF: [(0.6, STRIPES, (0.2, 0.6), (0.0, 0.05),
              dict(angle=(90, 90), cycles=(3, 8), phase=(0, 1), sharpness=(1, 4))),
             (0.4, GRADIENT, (0.3, 0.8), (0.0, 0.05), dict(angle=(0, 360), strength=(0.3, 1)))],
    M_FOLIAGE: [(0.8, NOISE, (0.6, 1.0), (0.05, 0.15),            # clumps of leaves
                 dict(medium=(0, 0.5), fine=(0.2, 1), finest=(0.3, 1), gain=(2, 6),
                      centre=(0.4, 0.6))),
                (0.2, GRADIENT, (0.3, 0.8), (0.08, 0.2), dict(angle=(0, 360), strength=(0.3, 1)))],
    M_TRUNK: [(0.6, STRIPES, (0.3, 0.8), (0.02, 0.08),            # bark
               dict(angle=(0, 0), cycles=(2, 5), phase=(0, 1), sharpness=(1, 3))),
              (0.4, NOISE, (0.3, 0.8), (0.02, 0.08),
               dict(fine=(0, 1), finest=(0, 1), gain=(1, 3)))],
    M_PAINT: [(0.6, GRADIENT, (0.3, 1.0), (0.0, 0.04), dict(angle=(60, 120), strength=(0.3, 1))),
              (0.25, NOISE, (0.1, 0.4), (0.0, 0.04),
               dict(coarse=(0, 1), medium=(0, 1), gain=(1, 2))),
              (0.15, STRIPES, (0.4, 0.9), (0.0, 0.04),
               dict(angle=(-90, 90), cycles=(2, 6), phase=(0, 1), sharpness=(2, 8)))],
    M_GLASS: [(1.0, GRADIENT, (0.5, 1.0), (0.0, 0.03), dict(angle=(30, 150), strength=(0.4, 1)))],
    M_TYRE: [(1.0, NOISE, (0.0, 0.3), (0.0, 0.03), dict(fine=(0, 1), gain=(1, 2)))],
    M_SKIN: [(1.0, GRADIENT, (0.2, 0.6), (0.0, 0.03), dict(angle=(0, 360), strength=(0.3, 1)))],
}
PARAM_COLUMNS = 8   # amplitude, grain, then up to 6 family parameters
# Ranges of parameters a texture option leaves out (any other is 0).
PARAM_DEFAULTS = {"gain": (1, 1), "centre": (0.45, 0.55), "sharpness": (1, 1),
                  "depth_duty": (1, 1), "cell_duty": (1, 1)}


def _compile_textures() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(cumulative option weights (M, O), families (M, O), lows (M, O, 8), highs (M, O, 8))."""
    width = max(len(options) for options in TEXTURES.values())
    cum = np.ones((NUM_MATERIALS, width))
    family = np.zeros((NUM_MATERIALS, width), dtype=np.int64)
    low = np.zeros((NUM_MATERIALS, width, PARAM_COLUMNS))
    high = np.zeros((NUM_MATERIALS, width, PARAM_COLUMNS))
    for material, options in TEXTURES.items():
        weights = np.array([o[0] for o in options])
        cum[material, :len(options)] = np.cumsum(weights) / weights.sum()
        for k, (_, fam, amp, grain, params) in enumerate(options):
            unknown = set(params) - set(FAMILY_PARAMS[fam])
            assert not unknown, f"texture parameters {unknown} do not belong to family {fam}"
            family[material, k] = fam
            ranges = [amp, grain] + [params.get(name, PARAM_DEFAULTS.get(name, (0, 0)))
                                      for name in FAMILY_PARAMS[fam]]
            for column, (lo, hi) in enumerate(ranges):
                low[material, k, column], high[material, k, column] = lo, hi
    return cum, family, low, high


TEXTURE_TABLES = _compile_textures()


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) in image units, float32 (size, size) each."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(centres, centres)


def _noise_fields(rng, size: int) -> np.ndarray:
    """(4, size, size) smooth value noise in [0, 1] at the scales of NOISE_GRIDS."""
    fields = np.empty((len(NOISE_GRIDS), size, size), dtype=np.float32)
    lattices = rng.random(sum(n * n for n in NOISE_GRIDS), dtype=np.float32)
    start = 0
    for k, cells in enumerate(NOISE_GRIDS):
        lattice = lattices[start:start + cells * cells].reshape(cells, cells)
        start += cells * cells
        smooth = cv2.INTER_CUBIC if k < SMOOTH_NOISE_GRIDS else cv2.INTER_LINEAR
        cv2.resize(lattice, (size, size), dst=fields[k], interpolation=smooth)
    return fields


def _segment_textures(materials: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """(family (K,), raw parameters (K, 8)) per segment, drawn from the material's options."""
    cum, families, low, high = TEXTURE_TABLES
    draws = rng.random((len(materials), PARAM_COLUMNS + 1))
    option = np.minimum((draws[:, :1] > cum[materials]).sum(1), cum.shape[1] - 1)
    lo, hi = low[materials, option], high[materials, option]
    return families[materials, option], lo + draws[:, 1:] * (hi - lo)


class _Canvas(NamedTuple):
    """What a texture family reads: the pixels it paints (flat) and per-segment data."""
    x: np.ndarray           # (N,) pixel-centre coordinates, image units
    y: np.ndarray
    noise: np.ndarray       # (4, H * W) value noise at the NOISE_GRIDS scales, whole image
    where: np.ndarray       # (N,) flat indices of the pixels (into noise)
    ids: np.ndarray         # (N,) segment id of each pixel
    boxes: np.ndarray       # (K, 4) segment boxes
    hints: np.ndarray       # (K, 4) segment hints
    size: int
    layout: Layout


# Texture families: f(canvas, p) -> (N,) pattern in [0, 1] for the canvas pixels, where
# p[k] (K,) is the k-th FAMILY_PARAMS entry of every segment.

def _linear_ramp(c: _Canvas, kx, ky, offset) -> np.ndarray:
    """offset + kx * x + ky * y, with per-segment coefficients (K,) gathered per pixel."""
    return offset[c.ids] + kx[c.ids] * c.x + ky[c.ids] * c.y


def _texture_noise(c: _Canvas, p: np.ndarray) -> np.ndarray:
    weights = p[:4].T + 1e-3
    weights = (weights / weights.sum(1, keepdims=True)).astype(np.float32)
    mixed = np.einsum("nk,kn->n", np.take(weights, c.ids, axis=0), c.noise[:, c.where])
    gain, centre = p[4][c.ids], p[5][c.ids]
    return np.clip((mixed - centre) * gain + 0.5, 0, 1)


def _texture_stripes(c: _Canvas, p: np.ndarray) -> np.ndarray:
    angle = np.radians(p[0])
    width, height = c.boxes[:, 2] - c.boxes[:, 0], c.boxes[:, 3] - c.boxes[:, 1]
    extent = np.abs(np.cos(angle)) * width + np.abs(np.sin(angle)) * height + 1e-3
    kx, ky = np.cos(angle) * p[1] / extent, np.sin(angle) * p[1] / extent
    offset = p[2] - kx * c.boxes[:, 0] - ky * c.boxes[:, 1]
    wave = np.sin(2 * np.pi * _linear_ramp(c, kx, ky, offset))
    return np.clip(0.5 + 0.5 * p[3][c.ids] * wave, 0, 1)


def _texture_grid(c: _Canvas, p: np.ndarray) -> np.ndarray:
    """Windows (a grid of cells) or bricks (offset rows, thin mortar)."""
    cell_w = np.maximum((c.boxes[:, 2] - c.boxes[:, 0]) / np.maximum(np.round(p[0]), 1),
                        MIN_CELL_PIXELS / c.size)
    cell_h = np.maximum(cell_w * p[1], 1e-3)  # rows of other families: any value
    row = (c.y - c.boxes[:, 1][c.ids]) / cell_h[c.ids]
    brick = 0.5 * (p[4] > 0.5)
    col = (c.x - c.boxes[:, 0][c.ids]) / cell_w[c.ids] + brick[c.ids] * np.floor(row)
    inside = ((np.abs(col % 1 - 0.5) < p[2][c.ids] / 2)
              & (np.abs(row % 1 - 0.5) < p[3][c.ids] / 2))
    return (inside != (p[5] > 0.5)[c.ids]).astype(np.float32)


def _texture_gradient(c: _Canvas, p: np.ndarray) -> np.ndarray:
    angle = np.radians(p[0])
    half = np.maximum(c.boxes[:, 2] - c.boxes[:, 0], c.boxes[:, 3] - c.boxes[:, 1]) / 2 + 1e-3
    kx, ky = p[1] * np.cos(angle) / half, p[1] * np.sin(angle) / half
    cx, cy = (c.boxes[:, 0] + c.boxes[:, 2]) / 2, (c.boxes[:, 1] + c.boxes[:, 3]) / 2
    return np.clip(_linear_ramp(c, kx, ky, 0.5 - kx * cx - ky * cy), 0, 1)


def _texture_perspective(c: _Canvas, p: np.ndarray) -> np.ndarray:
    """Lanes, furrows and facade windows: a grid in ground or facade-plane coordinates, so it
    converges to the vanishing point. Along depth: 1/distance bands; across: cells."""
    lay = c.layout
    below = np.maximum(c.y - lay.horizon_at(c.x), 1e-3)            # ground: image depth
    aside = np.maximum(np.abs(c.x - lay.vx), 1e-3)                  # facade: lateral distance
    plane, b0, b1, zscale = (c.hints[:, k][c.ids] for k in range(4))
    on_facade = plane == PLANE_FACADE
    distance = np.where(on_facade, zscale / aside, 1 / below)
    across = np.where(on_facade, (lay.horizon_at(c.x) - c.y) / aside, (c.x - lay.vx) / below)
    span = c.hints[:, 2] - c.hints[:, 1]
    period = np.where(span > 0, span / np.maximum(np.round(p[2]), 1),
                      1 / np.maximum(p[2], 1e-3))
    along = (distance * p[0][c.ids] + p[4][c.ids]) % 1 < p[1][c.ids]
    duty = p[3][c.ids]
    cells = ((across - b0) / period[c.ids] + duty / 2) % 1 < duty
    fade = np.clip((np.where(on_facade, aside, below) - 0.02) / 0.1, 0, 1)  # no aliasing far off
    return (along & cells) * fade


def _texture_skylight(c: _Canvas, p: np.ndarray) -> np.ndarray:
    """Haze brightening towards the horizon plus clouds from coarse noise."""
    lay = c.layout
    height = np.clip((lay.horizon_at(c.x) - c.y) / max(lay.horizon, 0.1), 0, 1)
    scale = p[3][c.ids]
    clouds = scale * c.noise[0, c.where] + (1 - scale) * c.noise[1, c.where]
    cloud = np.clip((clouds - p[2][c.ids]) * 4, 0, 1) * p[1][c.ids]
    return np.clip(p[0][c.ids] * (1 - height) ** 2 + cloud, 0, 1)


TEXTURE_FAMILIES = {NOISE: _texture_noise, STRIPES: _texture_stripes, GRID: _texture_grid,
                    GRADIENT: _texture_gradient, PERSPECTIVE: _texture_perspective,
                    SKYLIGHT: _texture_skylight}


def _texture_map(canvas: _Canvas, families: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """(N,) texture position in [0, 1] (0: first color, 1: second) of every pixel; each
    family is evaluated only on the pixels of its segments."""
    pixel_family = families[canvas.ids]
    texture = np.empty(len(canvas.ids), dtype=np.float32)
    params = np.ascontiguousarray(raw[:, 2:].T, dtype=np.float32)  # (6, K): rows are cheap
    for family in np.unique(families):
        where = np.flatnonzero(pixel_family == family)
        part = canvas._replace(x=canvas.x[where], y=canvas.y[where], ids=canvas.ids[where],
                               where=where)
        texture[where] = TEXTURE_FAMILIES[int(family)](part, params)
    return texture
