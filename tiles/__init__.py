"""trustmap.tiles: the geospatial layer shared by refine and calibration.

Reading scenes, tile grids, label alignment, bounded-memory stitching, vectorizing and
QGIS export. No machine learning lives here, so every function is a pure function of
(window, inputs) and can be mapped over workers.
"""

from tiles.classes import ClassDef, ClassSchema, load_schema
from tiles.errors import TrustmapError
from tiles.grid import Tile, TileGrid

__all__ = ["ClassDef", "ClassSchema", "Tile", "TileGrid", "TrustmapError", "load_schema"]
