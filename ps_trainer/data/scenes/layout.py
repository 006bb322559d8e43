"""A scene's geometry: segments of one material made of polygons and ellipses, and shape helpers."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ps_trainer.data.scenes.materials import PLANE_NONE

MAX_SEGMENTS = 255                       # the segment-id map is uint8


class Segment(NamedTuple):
    material: int
    shapes: list          # (N, 2) float polygons and (cx, cy, ax, ay, angle) ellipses
    box: tuple | None     # (x0, y0, x1, y1), image-relative; None: its polygons' bounds
    hint: tuple           # (plane, b0, b1, zscale) for perspective textures
    group: int            # 0: scenery; k > 0: part of the k-th prop drawn


@dataclass
class Layout:
    """A scene's geometry in image-relative coordinates (x right, y down, both in [0, 1])."""
    horizon: float                       # horizon y at x = 0.5
    slope: float                         # horizon tilt, dy per unit x
    vx: float                            # vanishing point x (on the horizon)
    light: float                         # sun side: < 0 from the left, > 0 from the right
    segments: list = field(default_factory=list)
    contact_shadows: list = field(default_factory=list)   # ellipses under props
    shadow_bands: list = field(default_factory=list)      # polygons cast from out of view
    road: tuple | None = None            # (u_left, u_right) lateral edges, camera heights
    walls: tuple = (-math.inf, math.inf)  # lateral limits set by street facades
    group: int = 0                        # group of the segments being added

    @property
    def vy(self) -> float:
        return self.horizon_at(self.vx)

    def horizon_at(self, x):
        return self.horizon + self.slope * (x - 0.5)

    def ground_point(self, u: float, depth: float) -> tuple[float, float]:
        """Image point of the ground at lateral offset u (camera heights) and image depth
        `depth` (how far below the horizon, image heights; proportional to 1/distance)."""
        x = self.vx + u * depth
        return x, self.horizon_at(x) + depth

    @functools.cached_property
    def polygons(self) -> "_Polygons":
        """All polygons stacked (computed once, when the layout is complete)."""
        return _stack_polygons(self)

    def add(self, material: int, shapes: list, box: tuple | None = None,
            hint: tuple = (PLANE_NONE, 0, 0, 1)):
        if len(self.segments) < MAX_SEGMENTS:
            self.segments.append(Segment(material, shapes, box, hint, self.group))


def _quad(x0, y0, x1, y1) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _placed(local: np.ndarray, x: float, y: float, scale: float) -> np.ndarray:
    """Local prop coordinates (camera heights, y up, origin at the base) -> image points."""
    return local * (scale, -scale) + (x, y)


@functools.lru_cache(maxsize=16)
def _angles(start: float, stop: float, points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    theta = np.linspace(start, stop, points)
    return theta, np.cos(theta), -np.sin(theta)


def _bumpy_outline(rng, cx, cy, rx, ry, points=20, bumps=0.18, start=0.0, stop=2 * math.pi):
    """A blob outline: an ellipse whose radius wobbles (tree crowns, bushes, hedges)."""
    u = rng.random(points + 3)
    theta, cos, minus_sin = _angles(start, stop, points)
    lobes = 3 + int(u[-1] * 5)
    radius = 1 + bumps * (np.sin(lobes * theta + 6.3 * u[-2]) * u[-3] + (u[:points] - 0.5))
    outline = np.empty((points, 2))
    outline[:, 0] = cx + rx * radius * cos
    outline[:, 1] = cy + ry * radius * minus_sin
    return outline


class _Polygons(NamedTuple):
    """All polygons of a layout in drawing order, stacked for one-call numpy work."""
    points: np.ndarray       # (P, 2) every vertex
    starts: np.ndarray       # (Q,) first vertex of each polygon
    owner: np.ndarray        # (Q,) segment index of each polygon


def _stack_polygons(layout: Layout) -> _Polygons:
    polygons, owner = [], []
    for index, segment in enumerate(layout.segments):
        for shape in segment.shapes:
            if isinstance(shape, np.ndarray):
                polygons.append(shape)
                owner.append(index)
    starts = np.cumsum([0] + [len(p) for p in polygons[:-1]])
    return _Polygons(np.concatenate(polygons), starts, np.array(owner))
