"""Class masks to polygons, window by window, equal to vectorizing the whole raster at once.

``rasterio.features.shapes`` holds every polygon of its input in memory, so a large mask is
polygonized in windows. Each window is a pure function of (file, window) and traces its
polygons in *pixel* coordinates of the whole mask, where every vertex is an integer and the
same pixel corner seen from two windows is the same float. Pieces that reach an inner window
edge may continue next door: same-class pieces that share an edge segment (not just a
corner, as ``shapes`` uses 4-connectivity) are unioned. Only then are coordinates mapped to
the mask's CRS, so the result is the same polygons whatever the window size.

Simplification is done on the whole set at once as a polygon *coverage*
(``shapely.coverage_simplify``): neighbouring polygons keep sharing their edges, so no gaps
or slivers open between classes, which per-polygon simplification would cause.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyproj
import rasterio
import shapely
from affine import Affine
from rasterio.features import shapes
from rasterio.windows import Window, subdivide
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tiles.classes import ClassSchema
from tiles.errors import TrustmapError
from tiles.io import atomic_path, check_output_file
from tiles.progress import progress as progress_bar
from tiles.raster import open_class_mask

COLUMNS = ["code", "name", "area", "geometry"]  # the GeoPackage layer's fields


@dataclass(frozen=True)
class Pieces:
    """Polygons traced in one window, in pixel coordinates of the whole mask."""

    geoms: np.ndarray  # shapely Polygons
    codes: np.ndarray  # uint8 class code per polygon
    on_seam: np.ndarray  # bool: reaches an inner window edge, so it may continue next door

    @classmethod
    def concat(cls, parts: list[Pieces]) -> Pieces:
        if not parts:
            return cls(
                np.empty(0, dtype=object), np.empty(0, dtype=np.uint8), np.empty(0, dtype=bool)
            )
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("geoms", "codes", "on_seam"))
        )


def polygonize_window(src: rasterio.DatasetReader, window: Window, schema: ClassSchema) -> Pieces:
    """Trace the class polygons of ``window`` of the open mask ``src``.

    Pixels that are nodata (the dataset mask) or ``ignore`` are left out through the
    ``mask`` argument of ``shapes``, which is True for *valid* pixels. The result depends
    only on the file and the window, so windows can be traced in any order or on other
    workers (each opening the mask itself).
    """
    data = src.read(1, window=window)
    valid = src.read_masks(1, window=window) > 0
    valid &= data != schema.ignore
    schema.check_codes(data[valid], src.name)
    data = np.where(valid, data, schema.ignore).astype(np.uint8)

    col0, row0 = int(window.col_off), int(window.row_off)
    col1, row1 = col0 + int(window.width), row0 + int(window.height)
    traced = list(
        shapes(data, mask=valid, connectivity=4, transform=Affine.translation(col0, row0))
    )
    if not traced:
        return Pieces.concat([])
    geoms_arr = _polygons_from_geojson([geojson for geojson, _ in traced])
    codes = np.array([value for _, value in traced], dtype=np.uint8)
    minx, miny, maxx, maxy = shapely.bounds(geoms_arr).T
    height, width = src.height, src.width
    on_seam = (
        ((minx == col0) & (col0 > 0))
        | ((maxx == col1) & (col1 < width))
        | ((miny == row0) & (row0 > 0))
        | ((maxy == row1) & (row1 < height))
    )
    return Pieces(geoms_arr, codes, on_seam)


def _polygons_from_geojson(polygons: list[dict]) -> np.ndarray:
    """GeoJSON Polygons to shapely, built in one call (3x faster than shape() per polygon)."""
    rings = [np.asarray(ring, dtype=float) for p in polygons for ring in p["coordinates"]]
    ring_offsets = np.cumsum([0] + [len(r) for r in rings])
    polygon_offsets = np.cumsum([0] + [len(p["coordinates"]) for p in polygons])
    return shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, np.concatenate(rings), (ring_offsets, polygon_offsets)
    )


def merge_seams(pieces: Pieces) -> tuple[np.ndarray, np.ndarray]:
    """Union same-class pieces that share an edge across window seams; polygons and codes."""
    inner = ~pieces.on_seam
    seam, codes = pieces.geoms[pieces.on_seam], pieces.codes[pieces.on_seam]
    if not len(seam):
        return pieces.geoms[inner], pieces.codes[inner]
    left, right = shapely.STRtree(seam).query(seam, predicate="touches")
    pair = (left < right) & (codes[left] == codes[right])
    left, right = left[pair], right[pair]
    # Boundaries meeting along a line (dimension 1), not only at a corner point.
    edge = shapely.relate_pattern(seam[left], seam[right], "****1****")
    n = len(seam)
    graph = coo_matrix((np.ones(int(edge.sum())), (left[edge], right[edge])), shape=(n, n))
    count, label = connected_components(graph, directed=False)
    order = np.argsort(label, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(label, minlength=count))[:-1])
    merged = np.array(
        [seam[g[0]] if len(g) == 1 else shapely.union_all(seam[g]) for g in groups], dtype=object
    )
    merged_codes = np.array([codes[g[0]] for g in groups], dtype=np.uint8)
    return np.concatenate([pieces.geoms[inner], merged]), np.concatenate(
        [pieces.codes[inner], merged_codes]
    )


def polygon_parts(geoms: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid, non-empty Polygons only: make_valid, split multi-parts, drop anything else."""
    geoms = np.asarray(geoms, dtype=object)
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid])
    parts, owner = shapely.get_parts(geoms, return_index=True)
    # a repaired geometry may be a collection holding MultiPolygons: flatten twice
    parts, inner = shapely.get_parts(parts, return_index=True)
    owner = owner[inner]
    keep = (shapely.get_type_id(parts) == shapely.GeometryType.POLYGON) & ~shapely.is_empty(parts)
    return parts[keep], codes[owner[keep]]


def _to_map(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Pixel (col, row) coordinates to the mask's CRS, all geometries at once."""
    a, b, c, d, e, f = transform[:6]

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    return shapely.transform(geoms, apply)


def polygon_areas(geoms: np.ndarray, crs: Any) -> np.ndarray:
    """Areas in map units² (m² for metric CRSs); geodesic m² for a geographic CRS."""
    crs = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if not crs.is_geographic:
        return shapely.area(geoms)
    geod = crs.get_geod()
    return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms], dtype=float)


def vectorize_mask(
    mask_path: str | os.PathLike,
    schema: ClassSchema,
    min_area: float = 0.0,
    simplify: float | None = None,
    window_size: int = 2048,
    min_pixels: int = 0,
    progress: bool = True,
) -> gpd.GeoDataFrame:
    """Polygons of every class in a class mask, in the mask's CRS.

    Columns ``code``, ``name``, ``area`` (see :func:`polygon_areas`) and ``geometry``; one
    row per 4-connected region, ordered by code then top-left position. Polygons smaller
    than ``min_area`` (``area`` units) or ``min_pixels`` pixels are dropped. ``simplify``
    is a tolerance in map units for ``shapely.coverage_simplify`` (Visvalingam-Whyatt on the
    shared edges: roughly the square root of the triangle areas it may remove); the coverage
    is first edge-matched with ``shapely.coverage_clean``, which costs a few seconds per
    100k polygons. Needs shapely >= 2.2 (GEOS >= 3.14) for that.
    """
    if window_size < 1:
        raise TrustmapError(f"window_size must be positive, got {window_size}")
    if simplify is not None and simplify < 0:
        raise TrustmapError(f"simplify tolerance must be >= 0, got {simplify}")
    with open_class_mask(mask_path) as src:
        crs, transform = src.crs, src.transform
        windows = subdivide(Window(0, 0, src.width, src.height), window_size, window_size)
        if progress:
            windows = progress_bar(windows, desc="vectorize", total=len(windows), unit="window")
        pieces = Pieces.concat([polygonize_window(src, w, schema) for w in windows])
    geoms, codes = merge_seams(pieces)

    if min_pixels > 0:
        keep = shapely.area(geoms) >= min_pixels  # pixel space: area is the pixel count
        geoms, codes = geoms[keep], codes[keep]
    bounds = shapely.bounds(geoms).reshape(-1, 4)
    order = np.lexsort((bounds[:, 0], bounds[:, 1], codes))  # by code, then top-left corner
    geoms, codes = geoms[order], codes[order]
    if simplify:
        # Edge-match the coverage (node T-junctions) so shared edges simplify as one.
        geoms = shapely.coverage_clean(geoms, snapping_distance=0.0) if len(geoms) else geoms
    geoms = _to_map(geoms, transform)
    if min_area > 0:
        keep = polygon_areas(geoms, crs) >= min_area
        geoms, codes = geoms[keep], codes[keep]
    if simplify and len(geoms):
        geoms = shapely.coverage_simplify(geoms, simplify)
    geoms, codes = polygon_parts(geoms, codes)

    names = {c.code: c.name for c in schema.classes}
    return gpd.GeoDataFrame(
        {
            "code": codes.astype(np.int32),
            "name": [names[int(c)] for c in codes],
            "area": polygon_areas(geoms, crs),
        },
        geometry=gpd.GeoSeries(geoms, crs=crs),
    )


def check_polygons_path(
    out_path: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str] | None] = (),
    option: str = "--output",
) -> Path:
    """Check, before the work, that polygons can be written to ``out_path`` (a new .gpkg)."""
    out = Path(out_path)
    if out.suffix.lower() != ".gpkg":
        raise TrustmapError(
            f"{option}: polygons are written as a GeoPackage; use a .gpkg file name", out
        )
    return check_output_file(out, inputs, option=option)


def write_polygons(
    gdf: gpd.GeoDataFrame, out_path: str | os.PathLike, layer: str = "polygons"
) -> Path:
    """Write ``gdf`` as one Polygon layer of a new GeoPackage, atomically; returns the path."""
    out = check_polygons_path(out_path)
    with atomic_path(out) as tmp:
        gdf.to_file(tmp, layer=layer, driver="GPKG", engine="pyogrio", geometry_type="Polygon")
    return out


# --- region ids ------------------------------------------------------------------------------
def mask_polygon(mask: np.ndarray, window: Window, transform: Affine) -> shapely.MultiPolygon | None:
    """The ``True`` pixels of ``mask`` (a window's bool array) as one MultiPolygon in the
    CRS of ``transform`` (the whole raster's), or None when there are none."""
    if not mask.any():
        return None
    tr = rasterio.windows.transform(window, transform)
    parts = [
        shapely.geometry.shape(g)
        for g, v in shapes(mask.astype(np.uint8), mask=mask, transform=tr)
        if v == 1
    ]
    geom = shapely.union_all(parts) if len(parts) > 1 else parts[0]
    if geom.geom_type == "Polygon":
        geom = shapely.MultiPolygon([geom])
    return geom


def region_polygon(
    ids: np.ndarray, region: int, bbox: Sequence[int], transform: Affine
) -> shapely.MultiPolygon | None:
    """Region ``region`` of a region-id raster ``ids`` (int, -1 outside) as a polygon,
    vectorised inside its pixel ``bbox`` (row0, col0, row1, col1; half-open) only, so a
    region costs its own size, not the scene's."""
    r0, c0, r1, c1 = (int(v) for v in bbox)
    return mask_polygon(ids[r0:r1, c0:c1] == region, Window(c0, r0, c1 - c0, r1 - r0), transform)
