"""Things standing on the ground plane (trees, bushes, cars, people, signs) and the shadows they cast."""
from __future__ import annotations

import math

import numpy as np

from ps_trainer.data.scenes.layout import Layout, _bumpy_outline, _placed, _quad
from ps_trainer.data.scenes.materials import M_FOLIAGE, M_GLASS, M_PAINT, M_SKIN, M_TRUNK, M_TYRE

MIN_PROP_DEPTH = 0.05                    # farthest props stand this far below the horizon
NEAREST_PROP_BASE = 1.06                 # lowest prop base y; > 1 is below the frame

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
