"""Drawing a layout: the scene kind, then sky, ground, hills, road, buildings and tree line, then props."""
from __future__ import annotations

import numpy as np

from ps_trainer.data.scenes.layout import Layout, _quad
from ps_trainer.data.scenes.materials import (M_FACADE, M_FOLIAGE, M_GROUND, M_HILL, M_ROAD, M_ROOF,
                                              M_SKY, PLANE_FACADE, PLANE_GROUND)
from ps_trainer.data.scenes.props import _add_props, _add_shadow_bands

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
