"""The six classes, the materials (how a surface is painted) that belong to them, and planes."""
from __future__ import annotations

import numpy as np

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
