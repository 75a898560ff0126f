"""Put cheap labels onto the scene's pixel grid.

Labels arrive as a raster in any CRS, resolution and extent, or as a vector file whose
features carry a class (code or name). Either way the model needs one uint8 code per scene
pixel, with the schema's ``ignore`` code wherever nothing says what the pixel is.

A :class:`LabelSource` is opened once: that is where everything that can be wrong with the
input is found and reported (CRS, overlap, class codes, geometry validity). After that,
:meth:`LabelSource.read` is a pure function of a scene window, so a scene can be aligned
window by window, in any order, on any worker.

Why vector coverage and overlaps are measured on the grid, not on the geometries: a union of
all features (for the covered share) and a pairwise relate of all touching features (for
conflicting overlaps) cost ten times the rasterization itself on a vectorized land-cover map.
:meth:`LabelSource.read_stats` counts, per window, the pixels under any feature and the pixels
where features of different classes overlap (the forward and the reversed burn order differ
there). That is what those checks were for, exactly at the resolution the labels are used at,
and the counts add up over windows in any order.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import Window, from_bounds, subdivide
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform

from tiles.classes import ClassSchema
from tiles.errors import TrustmapError
from tiles.io import atomic_path, check_output_file
from tiles.profiles import class_mask_profile
from tiles.progress import progress as progress_bar
from tiles.raster import (
    VECTOR_SUFFIXES as VECTOR_SUFFIXES,  # re-exported: refine imports it from here
)
from tiles.raster import (
    dataset_path,
    open_class_mask,
    open_raster,
    require_crs,
)

CLASS_FIELD_CANDIDATES = ("class", "code", "label", "name")
# Scanning the label raster's codes up front costs one read of the part that overlaps the
# scene; beyond this many pixels the codes are checked window by window in read() instead.
EAGER_CODE_CHECK_PIXELS = 1 << 24
# Coverage at or above this counts as full: reprojected footprints are not exact.
FULL_COVERAGE = 0.9995
# GDAL's default approximate transformer (1/8 px error) interpolates across the region being
# read, so ~0.4% of pixels along class edges change with the window layout. A near-zero
# tolerance transforms every pixel exactly (tolerance=0 itself fails in rasterio 1.4): a
# pixel's label then never depends on which window it was read in. Same-CRS grids stay fast.
WARP_TOLERANCE = 1e-9


# --- the target grid ------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneGrid:
    """The pixel grid labels are aligned to: CRS, transform and size of the scene."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    name: str = "scene"

    def __post_init__(self) -> None:
        object.__setattr__(self, "crs", CRS.from_user_input(self.crs))
        if self.width <= 0 or self.height <= 0:
            raise TrustmapError(f"scene grid has no pixels ({self.width}x{self.height})", self.name)

    @classmethod
    def of(cls, scene: str | os.PathLike | Mapping[str, Any] | Any) -> SceneGrid:
        """From a scene path, an open rasterio dataset, or a profile (crs, transform, width, height)."""
        if isinstance(scene, SceneGrid):
            return scene
        if isinstance(scene, str | os.PathLike):
            with open_raster(scene) as ds:
                require_crs(ds, scene)
                return cls(ds.crs, ds.transform, ds.width, ds.height, str(scene))
        if isinstance(scene, Mapping):
            missing = [k for k in ("transform", "width", "height") if k not in scene]
            if missing:
                raise TrustmapError(f"scene profile lacks {', '.join(missing)}")
            if not scene.get("crs"):
                raise TrustmapError("has no CRS (coordinate reference system)", "scene profile")
            return cls(scene["crs"], scene["transform"], int(scene["width"]), int(scene["height"]))
        require_crs(scene)  # an open dataset
        return cls(scene.crs, scene.transform, scene.width, scene.height, scene.name)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return self.window_bounds(Window(0, 0, self.width, self.height))

    def window_bounds(self, window: Window) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of a window, in the scene CRS."""
        left, bottom, right, top = window_bounds(window, self.transform)
        return float(left), float(bottom), float(right), float(top)

    @property
    def box(self) -> shapely.Polygon:
        return shapely.box(*self.bounds)

    def window_transform(self, window: Window) -> Affine:
        """The affine transform of ``window`` (rasterio's :func:`rasterio.windows.transform`)."""
        return window_transform(window, self.transform)

    def profile(self) -> dict[str, Any]:
        return {
            "crs": self.crs,
            "transform": self.transform,
            "width": self.width,
            "height": self.height,
        }


def _fmt_bounds(b: tuple[float, float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in b) + ")"


def _disjoint(
    path: Path | str, grid: SceneGrid, label_bounds: tuple[float, float, float, float]
) -> TrustmapError:
    return TrustmapError(
        f"does not overlap the scene: the labels span {_fmt_bounds(label_bounds)}, the scene "
        f"({grid.name}) spans {_fmt_bounds(grid.bounds)} (left, bottom, right, top in "
        f"{grid.crs.to_string()})",
        path,
    )


# --- label sources --------------------------------------------------------------------------


class LabelSource(ABC):
    """Labels readable on the scene grid, window by window, validated once at open."""

    kind: ClassVar[Literal["raster", "vector"]]

    def __init__(
        self, path: Path | str, grid: SceneGrid, schema: ClassSchema, coverage: float | None
    ) -> None:
        self.path = path
        self.grid = grid
        self.schema = schema
        # Fraction of the scene inside the labels' footprint; None until measured (vectors:
        # align_labels measures it on the grid).
        self.coverage = coverage
        self.repaired = 0
        self.warnings: list[str] = []
        if coverage is not None and coverage < FULL_COVERAGE:
            self.warnings.append(f"labels cover {coverage:.1%} of the scene")

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        scene: str | os.PathLike | Mapping[str, Any] | SceneGrid,
        schema: ClassSchema,
        class_field: str | None = None,
        layer: str | None = None,
    ) -> LabelSource:
        """Open a label raster or vector file (chosen by suffix) against ``scene``.

        ``path`` may be a GDAL path or URL (``/vsizip/…``, ``https://…``); its existence is
        then left to the reader to report.
        """
        path = dataset_path(path)
        if isinstance(path, Path) and not path.exists():
            raise TrustmapError("label file not found", path)
        grid = SceneGrid.of(scene)
        if Path(str(path)).suffix.lower() in VECTOR_SUFFIXES:
            return VectorLabels.from_file(path, grid, schema, class_field=class_field, layer=layer)
        if class_field is not None or layer is not None:
            raise TrustmapError(
                "--class-field and --layer apply to vector labels, not to a label raster", path
            )
        return RasterLabels.from_file(path, grid, schema)

    @abstractmethod
    def read(self, window: Window) -> np.ndarray:
        """uint8 codes for ``window`` of the scene grid; ``ignore`` where unlabelled."""

    def read_stats(self, window: Window) -> tuple[np.ndarray, int, int]:
        """:meth:`read`, plus the window's pixels under the labels and pixels in conflict.

        The base class counts every pixel as under the footprint (a raster's footprint is
        known at open) and none in conflict; :class:`VectorLabels` measures both.
        """
        labels = self.read(window)
        return labels, int(labels.size), 0


class RasterLabels(LabelSource):
    """A single-band integer raster, resampled by nearest neighbour through a WarpedVRT."""

    kind = "raster"

    def __init__(
        self, path: Path | str, grid: SceneGrid, schema: ClassSchema, coverage: float, checked: bool
    ) -> None:
        super().__init__(path, grid, schema, coverage)
        self.checked = checked  # all codes were scanned at open; read() need not check again

    @classmethod
    def from_file(cls, path: Path | str, grid: SceneGrid, schema: ClassSchema) -> RasterLabels:
        """Validate the raster against ``grid`` and ``schema``."""
        with open_class_mask(path, role="label raster") as src:
            coverage = _raster_coverage(src, grid, path)
            checked = _check_raster_codes(src, grid, schema, path)
        return cls(path, grid, schema, coverage, checked)

    def read(self, window: Window) -> np.ndarray:
        return read_raster_labels(self.path, self.grid, window, self.schema, check=not self.checked)


def _raster_coverage(src: rasterio.DatasetReader, grid: SceneGrid, path: Path | str) -> float:
    """Share of the scene area inside the raster's extent (densified, then reprojected)."""
    extent = shapely.box(*src.bounds)
    edge = max(extent.bounds[2] - extent.bounds[0], extent.bounds[3] - extent.bounds[1]) / 64
    footprint = shapely.geometry.shape(
        transform_geom(
            src.crs, grid.crs, shapely.geometry.mapping(shapely.segmentize(extent, edge))
        )
    )
    inside = shapely.intersection(footprint, grid.box).area
    if inside <= 0.0:
        raise _disjoint(path, grid, footprint.bounds)
    return float(inside / grid.box.area)


def _check_raster_codes(
    src: rasterio.DatasetReader, grid: SceneGrid, schema: ClassSchema, path: Path | str
) -> bool:
    """Scan the codes of the part of ``src`` under the scene, if small; True when done."""
    left, bottom, right, top = transform_bounds(grid.crs, src.crs, *grid.bounds, densify_pts=21)
    under = from_bounds(left, bottom, right, top, src.transform)
    # widen to whole pixels, then clip to the raster
    col0, row0 = max(0, math.floor(under.col_off)), max(0, math.floor(under.row_off))
    col1 = min(src.width, math.ceil(under.col_off + under.width))
    row1 = min(src.height, math.ceil(under.row_off + under.height))
    if col1 <= col0 or row1 <= row0:
        return True  # nothing of the raster lies under the scene
    part = Window(col0, row0, col1 - col0, row1 - row0)
    if part.width * part.height > EAGER_CODE_CHECK_PIXELS:
        return False
    bh, bw = src.block_shapes[0]
    for win in subdivide(part, max(bh, 1024), max(bw, 1024)):
        values = src.read(1, window=win, masked=True)
        schema.check_codes(values.compressed(), path)
    return True


def read_raster_labels(
    path: Path | str, grid: SceneGrid, window: Window, schema: ClassSchema, check: bool = True
) -> np.ndarray:
    """Nearest-neighbour codes of the label raster at ``path`` for one scene window.

    The VRT is built on the whole scene grid and only ``window`` is read, so any tiling of
    the scene gives the same pixels. The raster's own nodata and everything outside it
    become the VRT's nodata, which is ``ignore``.
    """
    with (
        rasterio.open(path) as src,
        WarpedVRT(
            src,
            crs=grid.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=Resampling.nearest,
            nodata=schema.ignore,
            tolerance=WARP_TOLERANCE,
        ) as vrt,
    ):
        data = vrt.read(1, window=window)
    if check:
        schema.check_codes(data, path)
    return data.astype(np.uint8, copy=False)


class VectorLabels(LabelSource):
    """Features burnt onto the grid with rasterio's rasterize (pixel centres; later features win)."""

    kind = "vector"

    def __init__(
        self,
        path: Path | str,
        grid: SceneGrid,
        schema: ClassSchema,
        coverage: float | None,
        geoms: np.ndarray,
        codes: np.ndarray,
        class_field: str,
    ) -> None:
        super().__init__(path, grid, schema, coverage)
        self.geoms = geoms  # in the scene CRS, valid
        self.codes = codes
        self.class_field = class_field
        self.tree = shapely.STRtree(geoms)
        # A fill value no feature burns, so that "under a feature" can be told from "ignore"
        # (features may carry the ignore code); None if the schema uses all 256 codes.
        free = sorted(set(range(256)) - set(schema.codes) - {schema.ignore})
        self.fill: int | None = free[-1] if free else None
        self._lattice: bool | None = None
        # index burn -> codes: 0 (no feature) is ignore, i + 1 is feature i's code
        self.lut = np.concatenate([[schema.ignore], codes]).astype(np.uint8)

    @classmethod
    def from_file(
        cls,
        path: Path | str,
        grid: SceneGrid,
        schema: ClassSchema,
        class_field: str | None = None,
        layer: str | None = None,
    ) -> VectorLabels:
        """Read, check, repair and reproject the features; reject what cannot be used."""
        gdf = _read_vector(path, layer)
        if gdf.crs is None:
            raise TrustmapError(
                "has no CRS (coordinate reference system); for a Shapefile, the .prj file is missing",
                path,
            )
        field_name = _class_field(gdf, class_field, path)
        warnings: list[str] = []

        missing = gdf.geometry.isna() | gdf.geometry.is_empty
        if missing.all():
            raise TrustmapError("has no features with a geometry", path)
        if missing.any():
            warnings.append(f"skipped {int(missing.sum())} feature(s) without geometry")
            gdf = gdf[~missing]

        codes = _codes_for_values(gdf[field_name], field_name, schema, path)
        geoms, repaired = _repair(gdf.geometry.to_numpy(), gdf.index.to_numpy(), path)
        if CRS.from_user_input(gdf.crs) != grid.crs:
            geoms = gpd.GeoSeries(geoms, crs=gdf.crs).to_crs(grid.crs).to_numpy()
            # Reprojection can bend a valid ring into an invalid one; repair those too.
            bent = ~shapely.is_valid(geoms)
            geoms[bent] = shapely.make_valid(geoms[bent])

        source = cls(path, grid, schema, None, geoms, codes, field_name)
        if not _reaches(source.tree, geoms, grid.box):
            raise _disjoint(path, grid, tuple(shapely.total_bounds(geoms)))
        source.repaired = repaired
        if repaired:
            warnings.append(
                f"repaired {repaired} invalid geometr{'y' if repaired == 1 else 'ies'} with make_valid"
            )
        source.warnings.extend(warnings)
        return source

    def _hits(self, window: Window) -> np.ndarray:
        box = shapely.box(*self.grid.window_bounds(window))
        return np.sort(self.tree.query(box, predicate="intersects"))

    def read(self, window: Window) -> np.ndarray:
        return rasterize_labels(
            self.geoms, self.codes, self.tree, self.grid, window, self.schema.ignore
        )

    def read_stats(self, window: Window) -> tuple[np.ndarray, int, int]:
        """Codes of ``window``, pixels under a feature, and pixels where classes conflict.

        A pixel is in conflict when burning the window's features in reverse order gives
        another class than burning them in file order: features of different classes overlap
        there, and the later one won. Same codes as :meth:`read`.
        """
        height, width = int(window.height), int(window.width)
        ignore = self.schema.ignore
        hits = self._hits(window)
        if not len(hits):
            return np.full((height, width), ignore, dtype=np.uint8), 0, 0
        shapes = _as_geojson(self.geoms[hits])
        codes = self.codes[hits].tolist()
        fill = ignore if self.fill is None else self.fill
        kw: dict[str, Any] = {
            "out_shape": (height, width), "transform": self.grid.window_transform(window),
            "fill": fill, "dtype": np.uint8,
        }  # fmt: skip
        burnt = rasterize(zip(shapes, codes, strict=True), **kw)
        conflicts = 0
        if len(set(codes)) > 1:
            backwards = rasterize(zip(shapes[::-1], codes[::-1], strict=True), **kw)
            conflicts = int(np.count_nonzero(burnt != backwards))
        under = int(np.count_nonzero(burnt != fill)) if self.fill is not None else int(
            np.count_nonzero(burnt != ignore)
        )
        if self.fill is not None:
            burnt[burnt == fill] = ignore
        return burnt, under, conflicts


    # --- the one-pass route for polygons on the pixel lattice -------------------------------
    def on_lattice(self) -> bool:
        """Are all features rectilinear polygons with every vertex on a pixel corner?

        Labels vectorized from a raster on this grid are. Then a feature covers exactly as
        many pixel centres as its area in pixels (no centre lies on an edge), so the pixels a
        feature won in one file-order burn tell whether a later feature covered any of it.
        """
        if self._lattice is None:
            self._lattice = _on_lattice(self.geoms, self.grid.transform)
        return self._lattice

    def read_index(self, window: Window) -> np.ndarray:
        """Which feature each pixel of ``window`` shows (later features win): 0 for none,
        ``i + 1`` for feature ``i`` (uint32). A pure function of the window, like :meth:`read`."""
        height, width = int(window.height), int(window.width)
        hits = self._hits(window)
        if not len(hits):
            return np.zeros((height, width), dtype=np.uint32)
        return rasterize(
            zip(_as_geojson(self.geoms[hits]), (hits + 1).tolist(), strict=True),
            out_shape=(height, width), transform=self.grid.window_transform(window),
            fill=0, dtype=np.uint32,
        )  # fmt: skip

    def pixel_counts(self) -> np.ndarray:
        """Pixels each feature covers inside the scene, from its area (exact on the lattice)."""
        x0, y0, x1, y1 = self.grid.bounds
        geoms = self.geoms
        b = shapely.bounds(geoms)
        outside = (b[:, 0] < x0) | (b[:, 1] < y0) | (b[:, 2] > x1) | (b[:, 3] > y1)
        if outside.any():
            geoms = geoms.copy()
            geoms[outside] = shapely.clip_by_rect(geoms[outside], x0, y0, x1, y1)
        pixel = abs(self.grid.transform.a * self.grid.transform.e)
        return np.rint(shapely.area(geoms) / pixel).astype(np.int64)


def _on_lattice(geoms: np.ndarray, transform: Affine) -> bool:
    """Rectilinear (Multi)Polygons whose vertices all sit on pixel corners of ``transform``."""
    if transform.b != 0 or transform.d != 0 or not len(geoms):
        return False
    if not np.isin(shapely.get_type_id(geoms), (3, 6)).all():
        return False
    _, coords, offsets = shapely.to_ragged_array(geoms)
    col = (coords[:, 0] - transform.c) / transform.a
    row = (coords[:, 1] - transform.f) / transform.e
    if not (np.allclose(col, np.rint(col), rtol=0, atol=1e-6) and np.allclose(row, np.rint(row), rtol=0, atol=1e-6)):
        return False
    col, row = np.rint(col), np.rint(row)
    edge = np.ones(len(coords) - 1, dtype=bool)
    edge[offsets[0][1:-1] - 1] = False  # no edge from one ring's last vertex to the next ring
    straight = (np.diff(col) == 0) | (np.diff(row) == 0)
    return bool(straight[edge].all())


def _recount_conflicts(source: VectorLabels, won: np.ndarray, tile_size: int) -> int:
    """Conflict pixels, from a one-pass burn's per-feature wins (index 0: no feature).

    A feature that won fewer pixels than it covers was overlapped by a later one; only the
    windows such features reach can hold conflicts, and those are counted exactly with
    :meth:`VectorLabels.read_stats`.
    """
    losers = np.flatnonzero(won[1:] < source.pixel_counts())
    if not len(losers):
        return 0
    grid = source.grid
    boxes = shapely.STRtree(source.geoms[losers])
    total = 0
    for window in subdivide(Window(0, 0, grid.width, grid.height), tile_size, tile_size):
        if len(boxes.query(shapely.box(*grid.window_bounds(window)))):
            total += source.read_stats(window)[2]
    return total


def _reaches(tree: shapely.STRtree, geoms: np.ndarray, scene: shapely.Polygon) -> bool:
    """Does any feature share area with the scene? Bounding boxes first, geometry only if needed."""
    hits = tree.query(scene)  # bounding boxes only: cheap
    if not len(hits):
        return False
    x0, y0, x1, y1 = scene.bounds
    b = shapely.bounds(geoms[hits])
    if ((b[:, 0] > x0) & (b[:, 1] > y0) & (b[:, 2] < x1) & (b[:, 3] < y1)).any():
        return True  # a feature lies strictly inside the scene
    near = geoms[hits]
    return bool((shapely.intersects(near, scene) & ~shapely.touches(near, scene)).any())


def _as_geojson(geoms: np.ndarray) -> list[Any]:
    """GeoJSON-like mappings for rasterize, built from coordinate arrays in one pass.

    Shapely's ``__geo_interface__`` walks every coordinate in Python; for a vectorized land-
    cover map that costs more than the rasterization itself. Polygons and MultiPolygons go
    through :func:`shapely.to_ragged_array`; anything else (a repaired collection) falls back.
    """
    types = shapely.get_type_id(geoms)
    if not len(geoms) or not np.isin(types, (3, 6)).all():
        return [g.__geo_interface__ for g in geoms]
    kind, coords, offsets = shapely.to_ragged_array(geoms)
    points = coords.tolist()  # one call: far cheaper than one per ring
    ends = offsets[0].tolist()
    rings = [points[ends[k] : ends[k + 1]] for k in range(len(ends) - 1)]
    ring_off = offsets[1].tolist()
    if kind == shapely.GeometryType.POLYGON:
        return [
            {"type": "Polygon", "coordinates": rings[ring_off[i] : ring_off[i + 1]]}
            for i in range(len(geoms))
        ]
    part_off = offsets[2].tolist()
    polygons = [rings[ring_off[j] : ring_off[j + 1]] for j in range(len(ring_off) - 1)]
    return [
        {"type": "MultiPolygon", "coordinates": polygons[part_off[i] : part_off[i + 1]]}
        for i in range(len(geoms))
    ]


def rasterize_labels(
    geoms: np.ndarray,
    codes: np.ndarray,
    tree: shapely.STRtree,
    grid: SceneGrid,
    window: Window,
    ignore: int,
) -> np.ndarray:
    """Burn the features that reach ``window`` into a uint8 array, in file order."""
    height, width = int(window.height), int(window.width)
    hits = np.sort(tree.query(shapely.box(*grid.window_bounds(window)), predicate="intersects"))
    if not len(hits):
        return np.full((height, width), ignore, dtype=np.uint8)
    return rasterize(
        zip(_as_geojson(geoms[hits]), codes[hits].tolist(), strict=True),
        out_shape=(height, width),
        transform=grid.window_transform(window),
        fill=ignore,
        dtype=np.uint8,
    )


def _read_vector(path: Path | str, layer: str | None) -> gpd.GeoDataFrame:
    try:
        layers = [str(name) for name in pyogrio.list_layers(path)[:, 0]]
    except (pyogrio.errors.DataSourceError, OSError) as exc:
        raise TrustmapError(f"not a readable vector file ({exc})", path) from None
    if layer is None and len(layers) > 1:
        raise TrustmapError(
            f"has {len(layers)} layers ({', '.join(layers)}); choose one with --layer", path
        )
    if layer is not None and layer not in layers:
        raise TrustmapError(f"has no layer {layer!r}; its layers are {', '.join(layers)}", path)
    try:
        gdf = gpd.read_file(path, layer=layer, engine="pyogrio", fid_as_index=True)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
        raise TrustmapError(f"not a readable vector file ({exc})", path) from None
    if len(gdf) == 0:
        raise TrustmapError("has no features (the label layer is empty)", path)
    return gdf


def _class_field(gdf: gpd.GeoDataFrame, requested: str | None, path: Path | str) -> str:
    """The attribute holding the class, matched case-insensitively."""
    columns = [c for c in gdf.columns if c != gdf.geometry.name]
    lower = {c.lower(): c for c in columns}
    if requested is not None:
        if requested in columns:
            return requested
        if requested.lower() in lower:
            return lower[requested.lower()]
        raise TrustmapError(
            f"has no attribute {requested!r} (--class-field); its attributes are {columns}", path
        )
    for candidate in CLASS_FIELD_CANDIDATES:
        if candidate in lower:
            return lower[candidate]
    raise TrustmapError(
        f"has no class attribute: tried {', '.join(CLASS_FIELD_CANDIDATES)} (any case); its "
        f"attributes are {columns}; name the one to use with --class-field",
        path,
    )


def _codes_for_values(
    values: Any, field_name: str, schema: ClassSchema, path: Path | str
) -> np.ndarray:
    """Map attribute values (codes or class names) to codes, naming every value that is neither."""
    if values.isna().any():
        raise TrustmapError(
            f"{int(values.isna().sum())} feature(s) have no value in {field_name!r}", path
        )
    lookup: dict[Any, int] = {}
    unknown = []
    for value in values.unique():
        try:
            lookup[value] = _code_for(value, schema)
        except (KeyError, ValueError):
            unknown.append(value.item() if isinstance(value, np.generic) else value)
    if unknown:
        raise TrustmapError(
            f"values {unknown[:10]} in attribute {field_name!r} are neither class codes nor class "
            f"names; the schema has codes {schema.codes} (ignore={schema.ignore}) and names {schema.names}",
            path,
        )
    return np.array([lookup[v] for v in values], dtype=np.uint8)


def _code_for(value: Any, schema: ClassSchema) -> int:
    if isinstance(value, float | np.floating):
        if not float(value).is_integer():
            raise KeyError(value)
        value = int(value)
    if not isinstance(value, str) and int(value) == schema.ignore:
        return schema.ignore
    return schema.code_for(value if isinstance(value, str) else int(value))


def _repair(geoms: np.ndarray, ids: np.ndarray, path: Path | str) -> tuple[np.ndarray, int]:
    """make_valid every invalid geometry; a polygon that keeps no area is an error."""
    invalid = np.flatnonzero(~shapely.is_valid(geoms))
    out = geoms.copy()
    lost = []
    for i in invalid:
        fixed = shapely.make_valid(geoms[i])
        if shapely.get_dimensions(geoms[i]) == 2:  # keep the polygonal parts only
            parts = shapely.get_parts(fixed)
            fixed = shapely.union_all(parts[shapely.get_dimensions(parts) == 2])
        if fixed.is_empty or (shapely.get_dimensions(geoms[i]) == 2 and fixed.area == 0):
            lost.append(ids[i].item() if isinstance(ids[i], np.generic) else ids[i])
        out[i] = fixed
    if lost:
        raise TrustmapError(
            f"feature(s) with FID {lost[:10]} have invalid geometry that make_valid cannot repair "
            "(nothing with an area is left); fix or delete them",
            path,
        )
    return out, len(invalid)


# --- writing --------------------------------------------------------------------------------


@dataclass
class AlignReport:
    """What :func:`align_labels` did, for the command's summary and for provenance."""

    source: str
    kind: Literal["raster", "vector"]
    out: str
    covered: float  # fraction of the scene under the labels (raster: footprint; vector: pixels under a feature)
    counts: dict[int, int]  # pixels per code on the scene grid, ignore included
    labelled_fraction: float  # share of scene pixels that received a class (not ignore)
    repaired: int = 0
    class_field: str | None = None
    warnings: list[str] = field(default_factory=list)
    conflict_pixels: int = 0  # vector labels: pixels where features of different classes overlap

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "out": self.out,
            "covered": self.covered,
            "labelled_fraction": self.labelled_fraction,
            "counts": {str(k): v for k, v in self.counts.items()},
            "repaired": self.repaired,
            "class_field": self.class_field,
            "warnings": list(self.warnings),
            "conflict_pixels": self.conflict_pixels,
        }

    def summary(self, schema: ClassSchema) -> str:
        """A few human-readable lines: coverage, pixels per class, warnings."""
        names = {c.code: c.name for c in schema.classes} | {schema.ignore: "(ignore)"}
        lines = [
            f"aligned {self.kind} labels {self.source} -> {self.out}",
            f"  footprint covers {self.covered:.1%} of the scene; {self.labelled_fraction:.1%} of pixels labelled",
        ]
        total = sum(self.counts.values()) or 1
        for code, n in sorted(self.counts.items()):
            lines.append(f"  {code:>3} {names.get(code, '?'):<16} {n:>12} px  {n / total:6.1%}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def align_labels(
    label_path: str | os.PathLike[str],
    scene_path: str | os.PathLike[str] | Mapping[str, Any] | SceneGrid,
    schema: ClassSchema,
    out_path: str | os.PathLike[str],
    class_field: str | None = None,
    layer: str | None = None,
    tile_size: int = 1024,
    progress: bool = True,
    creation_options: Mapping[str, Any] | None = None,
) -> AlignReport:
    """Write ``label_path`` onto the scene grid as a tiled, deflated uint8 GeoTIFF with colours.

    Windows are written in turn, so memory stays at one ``tile_size`` window whatever the
    scene's size, and the file appears at ``out_path`` only once complete. For vector labels
    the covered share and the conflicting overlaps are counted on the grid as the windows
    are burnt (see the module docstring). ``creation_options`` (GDAL GTiff options) override
    the output layout.
    """
    if tile_size <= 0:
        raise TrustmapError(f"tile_size must be positive, got {tile_size}")
    scene_file = scene_path if isinstance(scene_path, str | os.PathLike) else None
    check_output_file(out_path, [label_path, scene_file], option="--output")
    source = LabelSource.open(label_path, scene_path, schema, class_field=class_field, layer=layer)
    grid = source.grid
    profile = class_mask_profile(
        width=grid.width, height=grid.height, crs=grid.crs, transform=grid.transform,
        ignore=schema.ignore, **dict(creation_options or {}),
    )  # fmt: skip
    counts = np.zeros(256, dtype=np.int64)  # bincount of uint8 codes
    under = conflicts = 0
    windows: Iterable[Window] = subdivide(Window(0, 0, grid.width, grid.height), tile_size, tile_size)
    if progress:
        windows = progress_bar(windows, desc="align", unit="window")
    # Vector labels on the pixel lattice need one burn per window (who won each pixel); the
    # features that lost pixels are found from their areas, and only the windows they reach
    # are burnt again to count conflicts. Other labels count conflicts as they go.
    one_pass = isinstance(source, VectorLabels) and source.on_lattice()
    won = np.zeros(len(source.geoms) + 1 if isinstance(source, VectorLabels) else 0, np.int64)
    with atomic_path(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write_colormap(1, schema.colormap())
        for window in windows:
            if one_pass:
                assert isinstance(source, VectorLabels)
                index = source.read_index(window)
                won += np.bincount(index.ravel(), minlength=len(won))
                labels = source.lut[index]
                under += int(np.count_nonzero(index))
            else:
                labels, n_under, n_conflict = source.read_stats(window)
                under += n_under
                conflicts += n_conflict
            counts += np.bincount(labels.ravel(), minlength=256)
            dst.write(labels, 1, window=window)
        if one_pass:
            assert isinstance(source, VectorLabels)
            conflicts = _recount_conflicts(source, won, tile_size)
    warnings = list(source.warnings)
    covered = source.coverage
    if covered is None:  # measured on the grid
        covered = under / (grid.width * grid.height)
        source.coverage = covered
        if covered < FULL_COVERAGE:
            warnings.insert(0, f"labels cover {covered:.1%} of the scene")
    if conflicts:
        warnings.append(
            f"{conflicts} pixel(s) lie under overlapping features of different classes; the "
            "later feature wins there"
        )
    return AlignReport(
        source=str(label_path),
        kind=source.kind,
        out=str(out_path),
        covered=covered,
        counts={int(c): int(counts[c]) for c in np.flatnonzero(counts)},
        labelled_fraction=float(1.0 - counts[schema.ignore] / counts.sum()),
        repaired=source.repaired,
        class_field=getattr(source, "class_field", None),
        warnings=warnings,
        conflict_pixels=conflicts,
    )
