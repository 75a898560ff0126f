"""The embedded sample scene: a synthetic 1 m, 4-band scene of peri-urban Bengaluru with a perfect truth.

Why synthetic: the demo, the tests and refine's benchmarks need a georeferenced scene whose
ground truth is known exactly, at any size, without shipping data. Why this much detail: the
classes must be learnable from 4 bands plus texture by a small U-Net, but not trivially, so
the scene carries the confusions real imagery has (dense crops against trees, dirt tracks and
red soil against tiled roofs, granite outcrops against concrete, weed-covered water).

How: a vector layout (estates cut into field parcels, roads, lakes, a canal, villages,
housing layouts, industrial sheds, trees) is drawn once from the seed. Pixels are then
rendered strip by strip as a pure function of (rows, layout): every noise field is a hash of
pixel coordinates, never a draw from a stateful generator. So any size renders in bounded
memory and the same seed gives the same bytes.

One concept per module, in dependency order:

- :mod:`~tiles.samples.noise`: stateless hash noise (value noise, fBm);
- :mod:`~tiles.samples.spectra`: bands, class codes, materials and their spectra, sun and sensor;
- :mod:`~tiles.samples.terrain`: estates and their field parcels (per-pixel formulas);
- :mod:`~tiles.samples.objects`: roads, water, settlements and trees as vector objects;
- :mod:`~tiles.samples.layout`: everything drawn once from the seed;
- :mod:`~tiles.samples.render`: one strip of bands and truth from the layout;
- :mod:`~tiles.samples.writer`: the scene as arrays, or streamed to GeoTIFFs and a quick-look.
"""

from __future__ import annotations

# the layout and one strip's rendering, for tests of the renderer's purity
from tiles.samples.layout import _layout as _layout
from tiles.samples.render import HALO
from tiles.samples.render import _render_strip as _render_strip
from tiles.samples.spectra import (
    BAND_NAMES,
    BUILT,
    CLASS_CODES,
    CROP,
    IGNORE,
    NODATA,
    REFLECTANCE_SCALE,
    ROAD,
    SOIL,
    TREE,
    WATER,
    Mat,
)
from tiles.samples.writer import (
    CRS,
    ORIGIN,
    PIXEL_M,
    STRIP,
    SamplePaths,
    generate_scene_arrays,
    make_sample,
    scene_transform,
)

__all__ = [
    "BAND_NAMES",
    "BUILT",
    "CLASS_CODES",
    "CROP",
    "CRS",
    "HALO",
    "IGNORE",
    "Mat",
    "NODATA",
    "ORIGIN",
    "PIXEL_M",
    "REFLECTANCE_SCALE",
    "ROAD",
    "SOIL",
    "STRIP",
    "TREE",
    "WATER",
    "SamplePaths",
    "generate_scene_arrays",
    "make_sample",
    "scene_transform",
]
