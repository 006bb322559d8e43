"""Per-material color distributions of each domain, and the colors of a scene's segments."""
from __future__ import annotations

import numpy as np

from ps_trainer.data.scenes.materials import (M_FACADE, M_FOLIAGE, M_GLASS, M_GROUND, M_HILL, M_PAINT,
                                              M_ROAD, M_ROOF, M_SKIN, M_SKY, M_TRUNK, M_TYRE,
                                              NUM_MATERIALS)

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
# A second shifted domain, for checking that settings chosen on "shifted" carry over: a wet,
# overcast town — grey-blue skies, dark wet roads, muted greens, ochre and slate buildings.
OVERCAST_PALETTE = {
    M_SKY: [(0.6, _ANY, (0.0, 0.08), (0.45, 0.8)),            # grey cloud
            (0.4, (185, 215), (0.05, 0.25), (0.35, 0.65))],   # blue-grey
    M_GROUND: [(0.5, (80, 150), (0.15, 0.45), (0.12, 0.4)),   # wet grass
               (0.5, (20, 40), (0.15, 0.4), (0.1, 0.35))],    # mud
    M_HILL: [(1.0, (120, 200), (0.05, 0.25), (0.2, 0.5))],
    M_ROAD: [(0.7, _ANY, (0.0, 0.08), (0.05, 0.3)),           # wet asphalt
             (0.3, (190, 230), (0.05, 0.2), (0.2, 0.45))],    # puddles mirroring the sky
    M_FACADE: [(0.5, (35, 55), (0.3, 0.6), (0.35, 0.75)),     # ochre
               (0.5, (200, 240), (0.05, 0.2), (0.2, 0.55))],  # slate
    M_ROOF: [(1.0, _ANY, (0.0, 0.12), (0.08, 0.35))],
    M_FOLIAGE: [(1.0, (85, 135), (0.2, 0.5), (0.1, 0.4))],
    M_TRUNK: [(1.0, (10, 40), (0.1, 0.4), (0.05, 0.3))],
    M_PAINT: [(0.6, _ANY, (0.4, 0.9), (0.25, 0.7)),
              (0.4, _ANY, (0.0, 0.1), (0.05, 0.8))],
    M_GLASS: [(1.0, (180, 230), (0.05, 0.3), (0.1, 0.5))],
    M_TYRE: [(1.0, _ANY, (0.0, 0.1), (0.02, 0.15))],
    M_SKIN: [(1.0, (8, 35), (0.15, 0.5), (0.2, 0.8))],
}
# Global color cast of each palette (RGB gain at full strength).
PALETTE_TINT = {"source": (1.0, 1.0, 1.0), "shifted": (1.1, 0.93, 0.78),
                "overcast": (0.85, 0.95, 1.1)}
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
            "shifted": _compile_palette(SHIFTED_PALETTE),
            "overcast": _compile_palette(OVERCAST_PALETTE)}
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
