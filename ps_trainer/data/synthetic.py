"""Procedural street and landscape scenes with exact masks: the default data source.

A scene is made in two steps from one random stream:

1. **Layout** (the first draws): a horizon with a vanishing point, sky, ground, distant hills,
   a road in perspective, buildings on the horizon and street facades, a distant tree line,
   then trees, bushes, cars, people and signs standing on the ground plane, sized by their
   depth and drawn from far to near so nearer things occlude farther ones. Every part is a
   polygon or ellipse in image-relative coordinates with a *material* (asphalt, foliage,
   glass, ...) that belongs to one class. Rasterising the parts in order gives a segment-id
   map; the mask is the class of each pixel's segment, so occlusion in the mask is exact.
2. **Painting** (the later draws): per-image colors for every segment from wide, overlapping
   per-material distributions (the domain's palette), a texture family with random
   parameters per segment, a lighting gradient, cast shadows, sensor noise and blur.

The layout never looks at the domain, and the painting makes the same draws in every domain
(the domain only changes how draws map to colors and strengths), so one seed gives the same
mask -- and corresponding textures -- in the source and the shifted domain.

    python -m ps_trainer.data.synthetic --out previews/ --count 16 --size 128 --domain shifted
"""
from __future__ import annotations

import argparse
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from ps_trainer.config import SHIFTED_DOMAIN, DomainConfig
from ps_trainer.data.base import SegmentationDataset, Sample
from ps_trainer.plots import colorize

CLASS_NAMES = ("sky", "ground", "road", "building", "vegetation", "object")
SKY, GROUND, ROAD, BUILDING, VEGETATION, OBJECT = range(len(CLASS_NAMES))

# Materials: how a surface is painted. Each belongs to one class.
(M_SKY, M_GROUND, M_HILL, M_ROAD, M_FACADE, M_ROOF, M_FOLIAGE, M_TRUNK,
 M_PAINT, M_GLASS, M_TYRE, M_SKIN) = range(12)
NUM_MATERIALS = 12
MATERIAL_CLASS = np.array([SKY, GROUND, GROUND, ROAD, BUILDING, BUILDING, VEGETATION, VEGETATION,
                           OBJECT, OBJECT, OBJECT, OBJECT], dtype=np.uint8)

# Planes for perspective textures (hint[0] of a segment).
PLANE_NONE, PLANE_GROUND, PLANE_FACADE = 0, 1, 2

SUBPIXEL_BITS = 4                        # cv2 `shift`: coordinates in 1/16 pixel
SUBPIXEL = float(1 << SUBPIXEL_BITS)
MIN_PROP_DEPTH = 0.05                    # farthest props stand this far below the horizon
NEAREST_PROP_BASE = 1.06                 # lowest prop base y; > 1 is below the frame
MAX_SEGMENTS = 255                       # the segment-id map is uint8
NOISE_GRIDS = (4, 8, 16, 32)             # value-noise lattice sizes, coarse to finest
SMOOTH_NOISE_GRIDS = 1                   # the coarsest gets cubic interpolation (no creases)
MIN_CELL_PIXELS = 3.0                    # smallest window or brick cell; finer only aliases
GAUSSIAN_BANK_SIZE = 1 << 21             # pre-drawn standard normals for grain and noise

# --------------------------------------------------------------------------- scene kinds

# Per scene kind: probability, and (probability, low, high) counts of each layout element.
SCENE_KINDS = {
    "urban": dict(p=0.40, road=0.95, skyline=(0.9, 3, 9), facades=0.6, treeline=0.15,
                  hills=0.1, trees=(0, 3), bushes=(0, 2), cars=(1, 6), people=(0, 4),
                  signs=(0, 2)),
    "suburban": dict(p=0.35, road=0.85, skyline=(0.8, 1, 4), facades=0.15, treeline=0.45,
                     hills=0.3, trees=(1, 5), bushes=(0, 3), cars=(0, 4), people=(0, 3),
                     signs=(0, 1)),
    "rural": dict(p=0.25, road=0.6, skyline=(0.3, 1, 2), facades=0.0, treeline=0.7,
                  hills=0.5, trees=(1, 6), bushes=(1, 4), cars=(0, 2), people=(0, 2),
                  signs=(0, 1)),
}
_KIND_NAMES = tuple(SCENE_KINDS)
_KIND_CUM = np.cumsum([SCENE_KINDS[k]["p"] for k in _KIND_NAMES])

# --------------------------------------------------------------------------- layout


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


def _draw_layout(rng: np.random.Generator) -> Layout:
    """All geometry of one scene; uses only `rng` (never the domain)."""
    u = rng.random(8)
    kind = SCENE_KINDS[_KIND_NAMES[int(np.searchsorted(_KIND_CUM, u[0] * _KIND_CUM[-1]))]]
    lay = Layout(horizon=0.28 + 0.32 * u[1], slope=0.16 * (u[2] - 0.5), vx=0.2 + 0.6 * u[3],
                 light=2 * u[4] - 1)
    _add_sky_and_ground(lay)
    if u[5] < kind["hills"]:
        _add_hills(lay, rng)
    if u[6] < kind["road"]:
        _add_road(lay, rng)
    _add_background(lay, rng, kind)
    _add_props(lay, rng, kind)
    _add_shadow_bands(lay, rng)
    return lay


def _add_sky_and_ground(lay: Layout):
    lay.add(M_SKY, [_quad(-0.1, -0.1, 1.1, 1.1)], (0.0, 0.0, 1.0, lay.horizon))
    left, right = lay.horizon_at(-0.1), lay.horizon_at(1.1)
    ground = np.array([[-0.1, left], [1.1, right], [1.1, 1.1], [-0.1, 1.1]])
    lay.add(M_GROUND, [ground], (0.0, lay.horizon, 1.0, 1.0), (PLANE_GROUND, 0.0, 0.0, 1.0))


def _add_hills(lay: Layout, rng):
    """Distant hills (ground class) rising above the horizon, hazy like the sky."""
    u = rng.random(6)
    x = np.linspace(-0.05, 1.05, 24)
    wave = np.sin(x * (3 + 6 * u[0]) + 6.3 * u[1]) + 0.5 * np.sin(x * (9 + 9 * u[2]) + 6.3 * u[3])
    top = lay.horizon_at(x) - (0.02 + 0.1 * u[4]) * (1.2 + wave) / 2.2
    foot = [[1.05, lay.horizon_at(1.05) + 0.01], [-0.05, lay.horizon_at(-0.05) + 0.01]]
    outline = np.concatenate([np.column_stack((x, top)), foot])
    lay.add(M_HILL, [outline])


def _add_road(lay: Layout, rng):
    """A straight road to the vanishing point: a triangle with its apex on the horizon."""
    u = rng.random(2)
    centre, width = 1.6 * (2 * u[0] - 1), 0.8 + 3.2 * u[1]
    lay.road = (centre - width / 2, centre + width / 2)
    depth = 1.3 - lay.vy
    apex = (lay.vx, lay.vy)
    left, right = lay.ground_point(lay.road[0], depth), lay.ground_point(lay.road[1], depth)
    triangle = np.array([apex, right, left])
    lay.add(M_ROAD, [triangle], None, (PLANE_GROUND, lay.road[0], lay.road[1], 1.0))


def _add_background(lay: Layout, rng, kind: dict):
    """Skyline, tree line and street facades, in a random back-to-front order."""
    u = rng.random(5)
    p_skyline, low, high = kind["skyline"]
    skyline = int(low + u[0] * (high - low + 1)) if u[1] < p_skyline else 0
    treeline = u[2] < kind["treeline"]
    if treeline and u[3] < 0.5:
        _add_treeline(lay, rng)
    if skyline:
        _add_skyline(lay, rng, skyline)
    if treeline and u[3] >= 0.5:
        _add_treeline(lay, rng)
    if u[4] < kind["facades"]:
        _add_facades(lay, rng)


def _add_skyline(lay: Layout, rng, count: int):
    """Buildings standing on the horizon; the ones drawn later stand slightly nearer."""
    u = rng.random((count, 7))
    for row in u[np.argsort(u[:, 0])]:
        depth = 0.03 * row[0]
        cx, width = -0.05 + 1.1 * row[1], 0.06 + 0.24 * row[2]
        height = 0.05 + 0.4 * row[3] ** 1.5
        x0, x1 = cx - width / 2, cx + width / 2
        base0, base1 = lay.horizon_at(x0) + depth, lay.horizon_at(x1) + depth
        top = min(base0, base1) - height
        shapes = [np.array([[x0, top], [x1, top], [x1, base1], [x0, base0]])]
        if row[4] < 0.25:  # a narrower tower on top
            tw = width * (0.3 + 0.4 * row[5])
            shapes.append(_quad(cx - tw / 2, top - height * 0.4 * row[6], cx + tw / 2, top + 0.01))
        lay.add(M_FACADE, shapes, (x0, top, x1, max(base0, base1)))
        if 0.25 <= row[4] < 0.5:  # a pitched roof
            roof = np.array([[x0 - 0.01, top + 0.003], [x1 + 0.01, top + 0.003],
                             [cx, top - width * (0.2 + 0.4 * row[5])]])
            lay.add(M_ROOF, [roof])


def _add_treeline(lay: Layout, rng):
    """A distant forest edge: a band of foliage with a bumpy top along the horizon."""
    u = rng.random(36)
    x0 = -0.05 + 0.5 * u[0] if u[1] < 0.5 else -0.05
    x1 = max(x0 + 0.3, 1.05 - 0.5 * u[2] if u[3] < 0.5 else 1.05)
    x = np.linspace(x0, x1, 32)
    height = (0.02 + 0.08 * u[4]) * (0.6 + 0.8 * u[4:36])
    top = lay.horizon_at(x) - np.convolve(height, np.ones(3) / 3, mode="same")
    band = np.concatenate([np.column_stack((x, top)),
                           [[x1, lay.horizon_at(x1) + 0.012], [x0, lay.horizon_at(x0) + 0.012]]])
    lay.add(M_FOLIAGE, [band])


def _add_facades(lay: Layout, rng):
    """Building fronts along the street, as quads converging to the vanishing point."""
    u = rng.random(8)
    road = lay.road or (-0.3, 0.3)
    walls = list(lay.walls)
    for side, (present, offset, height, far) in ((-1, u[0:4]), (1, u[4:8])):
        if present < 0.3:
            continue
        edge = road[0] if side < 0 else road[1]
        lateral = edge + side * (0.3 + 2.0 * offset)
        if lateral * side <= 0.05:
            continue
        height = 0.8 + 3.5 * height
        near_x = -0.05 if side < 0 else 1.05
        near = min((near_x - lay.vx) / lateral, 1.6)
        far = min(0.02 + 0.15 * far, 0.7 * near)
        corners = []
        for depth in (near, far, far, near):
            corners.append(lay.ground_point(lateral, depth))
        corners[2] = (corners[2][0], corners[2][1] - height * far)
        corners[3] = (corners[3][0], corners[3][1] - height * near)
        quad = np.array(corners)
        scale = abs(lateral)
        lay.add(M_FACADE, [quad], None,
                (PLANE_FACADE, -1 / scale, (height - 1) / scale, scale))
        walls[0 if side < 0 else 1] = lateral
    lay.walls = tuple(walls)


# --------------------------------------------------------------------------- props

PROP_KINDS = ("trees", "bushes", "cars", "people", "signs")
# Half-width (camera heights) used to keep a prop in view and off the road or walls.
PROP_HALF_WIDTH = {"trees": 0.8, "bushes": 0.9, "cars": 0.7, "people": 0.2, "signs": 0.3}
PROP_ZONE = {"trees": "off", "bushes": "off", "cars": "road", "people": "any", "signs": "off"}


def _add_props(lay: Layout, rng, kind: dict):
    """Things standing on the ground, placed in depth and drawn from far to near."""
    counts = rng.random(len(PROP_KINDS))
    props = []
    for name, c in zip(PROP_KINDS, counts):
        low, high = kind[name]
        n = int(low + c * (high - low + 1))
        draws = rng.random((n, 3))
        for d_u, u_u, zone_u in draws:
            depth = _prop_depth(lay, d_u)
            zone = PROP_ZONE[name] if zone_u < 0.8 else "any"
            lateral = _lateral_position(lay, depth, PROP_HALF_WIDTH[name], zone, u_u)
            if lateral is not None:
                x, y = lay.ground_point(lateral, depth)
                props.append((y, name, x, depth))
    props.sort(key=lambda p: p[0])
    for group, (y, name, x, depth) in enumerate(props, start=1):
        lay.group = group
        PROP_BUILDERS[name](lay, rng, x, y, depth)
    lay.group = 0


def _prop_depth(lay: Layout, u: float) -> float:
    """Log-uniform image depth: many small far props, some large near ones (bases may lie
    below the image bottom)."""
    far = math.log(MIN_PROP_DEPTH)
    near = math.log(max(NEAREST_PROP_BASE - lay.vy, 2 * MIN_PROP_DEPTH))
    return math.exp(far + u * (near - far))


def _lateral_position(lay: Layout, depth: float, half: float, zone: str, u: float):
    """A lateral offset (camera heights) in `zone` ('road', 'off' or 'any') that keeps the
    prop in view and between the street walls; None when there is no room."""
    low = max((-0.1 - lay.vx) / depth + half, lay.walls[0] + half)
    high = min((1.1 - lay.vx) / depth - half, lay.walls[1] - half)
    if zone == "road" and lay.road:
        intervals = [(max(low, lay.road[0] + half), min(high, lay.road[1] - half))]
    elif zone == "off" and lay.road:
        intervals = [(low, min(high, lay.road[0] - half)), (max(low, lay.road[1] + half), high)]
    else:
        intervals = [(low, high)]
    intervals = [(a, b) for a, b in intervals if b > a]
    total = sum(b - a for a, b in intervals)
    if total <= 0:
        return None
    target = u * total
    for a, b in intervals:
        if target <= b - a:
            return a + target
        target -= b - a
    return intervals[-1][1]


def _contact_shadow(lay: Layout, x: float, y: float, half_width: float):
    lay.contact_shadows.append((x + lay.light * 0.4 * half_width, y,
                                1.3 * half_width, 0.25 * half_width + 0.004))


def _tree(lay: Layout, rng, x: float, y: float, depth: float):
    u = rng.random(6)
    height = (2.5 + 3.5 * u[0]) * depth
    trunk_w = (0.05 + 0.05 * u[1]) * height
    crown_y = y - (0.55 + 0.15 * u[2]) * height
    trunk = np.array([[x - trunk_w / 2, y], [x + trunk_w / 2, y],
                      [x + trunk_w * 0.35, crown_y], [x - trunk_w * 0.35, crown_y]])
    rx = (0.2 + 0.15 * u[3]) * height
    if u[4] < 0.3:  # conifer: a jagged cone, built on the right and mirrored
        tiers = 3 + int(u[5] * 3)
        top_y, base_y = y - height, y - 0.15 * height
        right = [(x, top_y)]
        for i, tier_y in enumerate(np.linspace(top_y, base_y, tiers + 1)[1:], start=1):
            w = rx * i / tiers
            right += [(x + w, tier_y), (x + 0.4 * w, tier_y - 0.03 * height)]
        right = np.array(right[:-1])
        crown = np.concatenate([right, right[:0:-1] * [-1, 1] + [2 * x, 0]])
    else:
        crown = _bumpy_outline(rng, x, crown_y - 0.1 * height, rx, (0.25 + 0.12 * u[5]) * height)
    lay.add(M_TRUNK, [trunk])
    lay.add(M_FOLIAGE, [crown])
    _contact_shadow(lay, x, y, rx * 0.8)


def _bush(lay: Layout, rng, x: float, y: float, depth: float):
    u = rng.random(2)
    rx, ry = (0.4 + 0.8 * u[0]) * depth, (0.3 + 0.6 * u[1]) * depth
    dome = _bumpy_outline(rng, x, y, rx, ry, points=14, bumps=0.25, stop=math.pi)
    lay.add(M_FOLIAGE, [dome])
    _contact_shadow(lay, x, y, rx)


# Car outlines in local coordinates (camera heights; y up; origin at the base centre).
CAR_REAR_BODY = np.array([[-0.6, 0.12], [0.6, 0.12], [0.62, 0.58], [0.45, 0.95],
                          [-0.45, 0.95], [-0.62, 0.58]])
CAR_REAR_WINDOW = np.array([[-0.5, 0.62], [0.5, 0.62], [0.38, 0.88], [-0.38, 0.88]])
CAR_REAR_WHEELS = (_quad(-0.56, 0.0, -0.38, 0.24), _quad(0.38, 0.0, 0.56, 0.24))
CAR_SIDE_BODY = np.array([[-1.5, 0.16], [1.5, 0.16], [1.52, 0.55], [0.9, 0.6], [0.55, 0.95],
                          [-0.75, 0.95], [-1.05, 0.6], [-1.5, 0.55]])
CAR_SIDE_WINDOW = np.array([[0.8, 0.62], [0.5, 0.88], [-0.7, 0.88], [-0.95, 0.62]])
CAR_SIDE_WHEELS = ((-0.95, 0.18), (0.95, 0.18))
PERSON_LEGS = np.array([[-0.13, 0.0], [-0.03, 0.0], [0.0, 0.28], [0.03, 0.0], [0.13, 0.0],
                        [0.12, 0.48], [-0.12, 0.48]])
PERSON_TORSO = np.array([[-0.14, 0.46], [0.14, 0.46], [0.2, 0.8], [0.09, 0.84],
                         [-0.09, 0.84], [-0.2, 0.8]])


def _car(lay: Layout, rng, x: float, y: float, depth: float):
    u = rng.random(4)
    stretch = np.array([0.9 + 0.3 * u[0], 0.85 + 0.45 * u[1]])  # vans, trucks, small cars
    if u[2] < 0.6:  # seen from behind (or the front)
        body = _placed(CAR_REAR_BODY * stretch, x, y, depth)
        lay.add(M_PAINT, [body])
        window = _placed(CAR_REAR_WINDOW * stretch, x, y, depth)
        lay.add(M_GLASS, [window])
        for wheel in CAR_REAR_WHEELS:
            tyre = _placed(wheel * [stretch[0], 1], x, y, depth)
            lay.add(M_TYRE, [tyre])
        half = 0.6 * stretch[0] * depth
    else:  # from the side, facing left or right
        mirror = np.array([1.0 if u[3] < 0.5 else -1.0, 1.0])
        body = _placed(CAR_SIDE_BODY * stretch * mirror, x, y, depth)
        lay.add(M_PAINT, [body])
        window = _placed(CAR_SIDE_WINDOW * stretch * mirror, x, y, depth)
        lay.add(M_GLASS, [window])
        r = 0.18 * depth
        for wx, wy in CAR_SIDE_WHEELS:
            cx, cy = x + wx * stretch[0] * depth, y - wy * depth
            lay.add(M_TYRE, [(cx, cy, r, r, 0.0)], (cx - r, cy - r, cx + r, cy + r))
        half = 1.5 * stretch[0] * depth
    _contact_shadow(lay, x, y, half)


def _person(lay: Layout, rng, x: float, y: float, depth: float):
    u = rng.random(2)
    size = depth * (0.95 + 0.3 * u[0])
    legs = _placed(PERSON_LEGS, x, y, size)
    torso = _placed(PERSON_TORSO * [0.9 + 0.3 * u[1], 1], x, y, size)
    lay.add(M_PAINT, [legs])
    lay.add(M_PAINT, [torso])
    hx, hy, r = x, y - 0.92 * size, 0.08 * size
    lay.add(M_SKIN, [(hx, hy, r, r * 1.15, 0.0)], (hx - r, hy - r, hx + r, hy + r))
    _contact_shadow(lay, x, y, 0.18 * size)


def _sign(lay: Layout, rng, x: float, y: float, depth: float):
    u = rng.random(3)
    height, w = (1.8 + 1.4 * u[0]) * depth, 0.035 * depth
    pole = _quad(x - w, y - height, x + w, y)
    lay.add(M_PAINT, [pole])
    r, cy = (0.2 + 0.15 * u[1]) * depth, y - height
    if u[2] < 0.4:
        plate = (x, cy, r, r, 0.0)
    elif u[2] < 0.75:
        plate = _quad(x - 1.2 * r, cy - r, x + 1.2 * r, cy + 0.7 * r)
    else:
        plate = np.array([[x, cy - 1.1 * r], [x + 1.1 * r, cy + 0.8 * r],
                          [x - 1.1 * r, cy + 0.8 * r]])
    lay.add(M_PAINT, [plate], (x - 1.2 * r, cy - 1.1 * r, x + 1.2 * r, cy + r))
    _contact_shadow(lay, x, y, 0.1 * depth)


PROP_BUILDERS = {"trees": _tree, "bushes": _bush, "cars": _car, "people": _person, "signs": _sign}


def _add_shadow_bands(lay: Layout, rng):
    """Shadows cast across the ground by buildings or trees outside the view."""
    u = rng.random((2, 5))
    for present, d0, d1, skew, lateral in u:
        if present < 0.6:
            continue
        near = MIN_PROP_DEPTH + (1.3 - lay.vy) * d0
        far = near * (0.4 + 0.5 * d1)
        shift = 3 * lay.light * (0.5 + skew)
        left, right = (-30.0, 6 * lateral - 3) if lay.light > 0 else (6 * lateral - 3, 30.0)
        band = np.array([lay.ground_point(left, far), lay.ground_point(right, far),
                         lay.ground_point(right + shift, near),
                         lay.ground_point(left + shift, near)])
        lay.shadow_bands.append(band)


# --------------------------------------------------------------------------- rasterising

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


# --------------------------------------------------------------------------- palettes

# Per material: (weight, hue range in degrees, saturation range, value range) modes. Ranges
# are wide and overlap across classes on purpose: color alone should not give the class.
_ANY = (0, 360)
SOURCE_PALETTE = {
    M_SKY: [(0.35, (190, 230), (0.15, 0.65), (0.55, 0.98)),   # clear blue
            (0.30, _ANY, (0.0, 0.1), (0.4, 0.95)),            # overcast
            (0.15, (20, 60), (0.08, 0.4), (0.55, 0.95)),      # warm haze
            (0.20, (200, 260), (0.25, 0.8), (0.25, 0.7))],    # deep blue
    M_GROUND: [(0.35, (65, 125), (0.25, 0.7), (0.25, 0.7)),   # grass
               (0.25, (18, 42), (0.25, 0.6), (0.2, 0.6)),     # soil
               (0.20, _ANY, (0.0, 0.1), (0.3, 0.8)),          # pavement
               (0.15, (35, 55), (0.2, 0.5), (0.5, 0.9)),      # sand
               (0.05, (190, 230), (0.02, 0.15), (0.75, 0.98))],  # snow
    M_HILL: [(0.5, (90, 220), (0.1, 0.4), (0.35, 0.8)),
             (0.5, _ANY, (0.0, 0.15), (0.4, 0.85))],
    M_ROAD: [(0.55, _ANY, (0.0, 0.1), (0.15, 0.55)),          # asphalt
             (0.25, _ANY, (0.0, 0.08), (0.5, 0.8)),           # concrete
             (0.20, (18, 45), (0.2, 0.5), (0.3, 0.65))],      # dirt
    M_FACADE: [(0.35, _ANY, (0.05, 0.45), (0.3, 0.92)),       # render, paint
               (0.25, (0, 30), (0.3, 0.7), (0.25, 0.7)),      # brick
               (0.25, _ANY, (0.0, 0.08), (0.25, 0.9)),        # concrete
               (0.15, (190, 230), (0.15, 0.5), (0.45, 0.9))],  # glass mirroring the sky
    M_ROOF: [(0.5, (0, 25), (0.4, 0.8), (0.25, 0.6)),
             (0.5, _ANY, (0.0, 0.15), (0.15, 0.5))],
    M_FOLIAGE: [(0.60, (65, 145), (0.3, 0.8), (0.18, 0.65)),  # green
                (0.25, (15, 55), (0.45, 0.9), (0.3, 0.8)),    # autumn
                (0.15, (50, 170), (0.15, 0.6), (0.08, 0.3))],  # dark
    M_TRUNK: [(1.0, (10, 40), (0.15, 0.6), (0.1, 0.45))],
    M_PAINT: [(0.6, _ANY, (0.3, 1.0), (0.2, 0.95)),
              (0.4, _ANY, (0.0, 0.1), (0.05, 0.98))],
    M_GLASS: [(1.0, _ANY, (0.0, 0.3), (0.08, 0.55))],
    M_TYRE: [(1.0, _ANY, (0.0, 0.1), (0.03, 0.2))],
    M_SKIN: [(1.0, (8, 35), (0.2, 0.6), (0.25, 0.95))],
}
# The shifted domain: dusk skies, red earth, teal and olive foliage, pastel towns.
SHIFTED_PALETTE = {
    M_SKY: [(0.40, (345, 400), (0.3, 0.7), (0.55, 0.95)),     # sunset
            (0.30, (255, 305), (0.2, 0.55), (0.3, 0.7)),      # violet dusk
            (0.30, (40, 70), (0.15, 0.45), (0.65, 0.95))],    # yellow haze
    M_GROUND: [(0.40, (0, 25), (0.35, 0.7), (0.25, 0.6)),     # red earth
               (0.35, (45, 75), (0.3, 0.7), (0.35, 0.75)),    # dry grass
               (0.25, _ANY, (0.0, 0.12), (0.65, 0.95))],      # pale stone
    M_HILL: [(1.0, (260, 330), (0.1, 0.35), (0.3, 0.7))],
    M_ROAD: [(0.5, (0, 25), (0.15, 0.4), (0.2, 0.5)),
             (0.5, (195, 245), (0.05, 0.25), (0.12, 0.45))],
    M_FACADE: [(0.5, _ANY, (0.12, 0.35), (0.6, 0.95)),        # pastel
               (0.5, (30, 50), (0.05, 0.2), (0.55, 0.95))],   # whitewash, limestone
    M_ROOF: [(1.0, (165, 230), (0.3, 0.65), (0.25, 0.6))],
    M_FOLIAGE: [(0.5, (140, 185), (0.3, 0.65), (0.18, 0.55)),
                (0.5, (42, 70), (0.4, 0.85), (0.3, 0.7))],
    M_TRUNK: [(1.0, _ANY, (0.0, 0.15), (0.2, 0.5))],
    M_PAINT: [(0.7, _ANY, (0.1, 0.5), (0.35, 0.95)),
              (0.3, _ANY, (0.0, 0.1), (0.05, 0.98))],
    M_GLASS: [(1.0, (15, 60), (0.1, 0.45), (0.2, 0.65))],
    M_TYRE: [(1.0, _ANY, (0.0, 0.1), (0.03, 0.2))],
    M_SKIN: [(1.0, (8, 35), (0.2, 0.6), (0.25, 0.95))],
}
# Global color cast of each palette (RGB gain at full strength).
PALETTE_TINT = {"source": (1.0, 1.0, 1.0), "shifted": (1.1, 0.93, 0.78)}
# The second color of a segment (windows, mortar, clouds, lane paint, shade) relative to the
# first: (hue shift degrees, saturation shift, value shift) ranges.
SECOND_COLOR = {
    M_SKY: ((-10, 10), (-0.35, -0.05), (0.05, 0.3)),
    M_GROUND: ((-15, 15), (-0.15, 0.15), (-0.25, 0.15)),
    M_HILL: ((-10, 10), (-0.1, 0.1), (-0.15, 0.1)),
    M_ROAD: ((-20, 20), (-0.3, 0.0), (0.3, 0.55)),
    M_FACADE: ((-40, 40), (-0.2, 0.2), (-0.55, 0.25)),
    M_ROOF: ((-10, 10), (-0.1, 0.1), (-0.2, 0.1)),
    M_FOLIAGE: ((-15, 15), (-0.1, 0.1), (-0.35, 0.15)),
    M_TRUNK: ((-5, 5), (-0.1, 0.1), (-0.15, 0.05)),
    M_PAINT: ((-10, 10), (-0.1, 0.1), (-0.35, 0.0)),
    M_GLASS: ((-30, 30), (-0.1, 0.1), (0.05, 0.4)),
    M_TYRE: ((0, 0), (0.0, 0.0), (0.0, 0.1)),
    M_SKIN: ((-5, 5), (-0.1, 0.1), (-0.2, 0.0)),
}
# How far each segment's color strays from its material's image-wide color (0: all segments
# of the material share it, 1: independent); buildings and objects differ, foliage agrees.
COLOR_INDEPENDENCE = np.array([0, 0, 0, 0, 0.8, 0.5, 0.15, 0.2, 1.0, 0.6, 0.3, 0.6])


def _compile_palette(palette: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cumulative weights (M, K), lows (M, K, 3), highs (M, K, 3)), padded with zero weight."""
    width = max(len(modes) for modes in palette.values())
    cum = np.ones((NUM_MATERIALS, width))
    low, high = np.zeros((NUM_MATERIALS, width, 3)), np.zeros((NUM_MATERIALS, width, 3))
    for material, modes in palette.items():
        weights = np.array([m[0] for m in modes])
        cum[material, :len(modes)] = np.cumsum(weights) / weights.sum()
        for k, (_, hue, sat, val) in enumerate(modes):
            low[material, k] = hue[0], sat[0], val[0]
            high[material, k] = hue[1], sat[1], val[1]
    return cum, low, high


PALETTES = {"source": _compile_palette(SOURCE_PALETTE),
            "shifted": _compile_palette(SHIFTED_PALETTE)}
SECOND_LOW = np.array([[r[0] for r in SECOND_COLOR[m]] for m in range(NUM_MATERIALS)])
SECOND_HIGH = np.array([[r[1] for r in SECOND_COLOR[m]] for m in range(NUM_MATERIALS)])


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """(..., 3) hue in degrees, saturation and value in [0, 1] -> RGB in [0, 1]."""
    h = (hsv[..., 0] % 360) / 60.0
    s, v = np.clip(hsv[..., 1], 0, 1), np.clip(hsv[..., 2], 0, 1)
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None]) % 6
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def _segment_colors(materials: np.ndarray, rng, palette: str) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) float32 RGB colors per segment, (K, 3) each."""
    count = len(materials)
    draws = rng.random(NUM_MATERIALS * 4 + count * 7)
    shared = draws[:NUM_MATERIALS * 4].reshape(NUM_MATERIALS, 4)[materials]
    own = draws[NUM_MATERIALS * 4:].reshape(count, 7)
    mixed = shared + COLOR_INDEPENDENCE[materials, None] * (own[:, :4] - shared)
    cum, low, high = PALETTES[palette]
    mode = np.minimum((mixed[:, :1] > cum[materials]).sum(1), cum.shape[1] - 1)
    lo, hi = low[materials, mode], high[materials, mode]
    first = lo + mixed[:, 1:] * (hi - lo)
    second = first + SECOND_LOW[materials] + own[:, 4:] * (SECOND_HIGH - SECOND_LOW)[materials]
    rgb = hsv_to_rgb(np.concatenate([first, second])).astype(np.float32)
    return rgb[:count], rgb[count:]


# --------------------------------------------------------------------------- textures

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


# --------------------------------------------------------------------------- lighting

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


# --------------------------------------------------------------------------- painting

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


class SyntheticScenes(SegmentationDataset):
    """`count` procedural scenes; scene i is rendered from default_rng([seed, i])."""

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(self, count: int, image_size: int, seed: int,
                 domain: DomainConfig = DomainConfig(), with_masks: bool = True):
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        self.count, self.image_size, self.seed = count, image_size, seed
        self.domain = domain
        self.has_masks = with_masks

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.count:
            raise IndexError(f"scene {index} out of range [0, {self.count})")
        image, mask = render_scene(np.random.default_rng([self.seed, int(index)]),
                                   self.image_size, self.domain)
        return Sample(image, mask if self.has_masks else None)


# --------------------------------------------------------------------------- previews

def preview_grid(dataset: SegmentationDataset, count: int, columns: int = 4) -> np.ndarray:
    """An RGB grid of (image | colorized mask) pairs with a 2-pixel gutter."""
    tiles = []
    for i in range(count):
        sample = dataset[i]
        mask = sample.mask
        if mask is None:
            mask = np.full(sample.image.shape[:2], 255, dtype=np.uint8)
        tiles.append(np.concatenate([sample.image, colorize(mask)], axis=1))
    h, w = tiles[0].shape[:2]
    rows = -(-count // columns)
    grid = np.full((rows * (h + 2), columns * (w + 2), 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = tile
    return grid


def pixel_frequencies(dataset: SegmentationDataset, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(share of pixels, share of images containing the class) over the first `count` scenes."""
    pixels = np.zeros(dataset.num_classes, dtype=np.int64)
    present = np.zeros(dataset.num_classes, dtype=np.int64)
    for i in range(count):
        counts = np.bincount(dataset[i].mask.ravel(), minlength=dataset.num_classes)
        pixels += counts[:dataset.num_classes]
        present += counts[:dataset.num_classes] > 0
    return pixels / pixels.sum(), present / count


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a preview grid of synthetic scenes.")
    parser.add_argument("--out", required=True, help="directory for the PNG")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--domain", choices=("source", "shifted"), default="source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bench", type=int, default=500, help="scenes to time (0 = skip)")
    args = parser.parse_args(argv)
    domain = SHIFTED_DOMAIN if args.domain == "shifted" else DomainConfig()
    scenes = SyntheticScenes(max(args.count, args.bench), args.size, args.seed, domain)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"synthetic_{args.domain}_{args.size}px_seed{args.seed}.png"
    cv2.imwrite(str(path), cv2.cvtColor(preview_grid(scenes, args.count), cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")
    if args.bench:
        start = time.perf_counter()
        for i in range(args.bench):
            scenes[i]
        elapsed = time.perf_counter() - start
        print(f"{args.bench / elapsed:.0f} images/s at {args.size}x{args.size} ({args.domain})")
        pixels, present = pixel_frequencies(scenes, args.bench)
        for name, share, images in zip(CLASS_NAMES, pixels, present):
            print(f"  {name:<11} {100 * share:5.1f}% of pixels, in {100 * images:5.1f}% of images")


if __name__ == "__main__":
    main()
