"""The synthetic-scene generator; `paint.render_scene` makes one scene from a random stream.

A scene is made in two steps from one random stream:

1. **Layout** (the first draws; `scenery`, `props`): a horizon with a vanishing point, sky,
   ground, distant hills, a road in perspective, buildings on the horizon and street facades,
   a distant tree line, then trees, bushes, cars, people and signs standing on the ground
   plane, sized by their depth and drawn from far to near so nearer things occlude farther
   ones. Every part is a polygon or ellipse in image-relative coordinates (`layout`) with a
   *material* (asphalt, foliage, glass, ...) that belongs to one class (`materials`).
   Rasterising the parts in order (`raster`) gives a segment-id map; the mask is the class of
   each pixel's segment, so occlusion in the mask is exact.
2. **Painting** (the later draws; `paint`): per-image colors for every segment from wide,
   overlapping per-material distributions (the domain's palette, `palettes`), a texture
   family with random parameters per segment (`textures`), a lighting gradient, cast shadows
   (`lighting`), sensor noise and blur.

The layout never looks at the domain, and the painting makes the same draws in every domain
(the domain only changes how draws map to colors and strengths), so one seed gives the same
mask -- and corresponding textures -- in the source and the shifted domain.
"""
