"""Object boxes on a georeferenced tile, in the tile's pixel grid.

Detection ground truth for aerial imagery comes two ways: a CSV of pixel boxes per image
(DeepForest's ``image_path,xmin,ymin,xmax,ymax,label``) or a vector layer of box polygons
in map coordinates. Both end up as axis-aligned pixel boxes on the raster's grid: vector
boxes are reprojected to the raster CRS (edges densified first, so a box stays a box
under a curved reprojection) and mapped through the inverse geotransform. The result is a
plain COCO annotations dict, so this module needs nothing from ``calibration``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tiles.errors import TrustmapError
from tiles.raster import VECTOR_SUFFIXES, open_raster, require_crs

CSV_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
#: Each box edge is split into this many segments before reprojection.
DENSIFY_SEGMENTS = 8


@dataclass
class BoxTable:
    """Pixel boxes (x right, y down, origin at the raster's top-left corner) of one tile."""

    file_name: str
    width: int
    height: int
    xyxy: np.ndarray  # (N, 4) float64
    labels: np.ndarray  # (N,) str
    crs: Any = None
    transform: Any = None

    def __len__(self) -> int:
        return len(self.xyxy)


def read_boxes(
    raster: str | os.PathLike,
    boxes: str | os.PathLike,
    label_column: str = "label",
    outside: Literal["error", "clip"] | None = None,
    image_column: str = "image_path",
) -> BoxTable:
    """Read a box file onto ``raster``'s pixel grid.

    ``boxes`` is a CSV in pixel coordinates (rows whose ``image_column`` names another
    image are skipped) or a vector file (GPKG, GeoJSON, ...) of polygons in any CRS.
    ``outside`` says what to do with boxes that leave the raster: ``"error"`` (the
    default for CSV, whose pixel boxes must fit their image) or ``"clip"`` (the default
    for vectors, which often cover more than one tile; boxes wholly outside are dropped).
    """
    rpath, bpath = Path(raster), Path(boxes)
    with open_raster(rpath, verify=False) as ds:
        width, height, transform, crs = ds.width, ds.height, ds.transform, ds.crs
        is_vector = bpath.suffix.lower() in VECTOR_SUFFIXES
        if is_vector:
            require_crs(ds, rpath)
    if not bpath.exists():
        raise TrustmapError("file not found", bpath)
    if bpath.suffix.lower() == ".csv":
        xyxy, labels, rows = _read_csv(bpath, rpath.name, label_column, image_column)
        mode = outside or "error"
    elif is_vector:
        xyxy, labels, rows = _read_vector(bpath, crs, transform, label_column)
        mode = outside or "clip"
    else:
        raise TrustmapError(
            f"unknown box file type '{bpath.suffix}': use .csv or a vector file ({sorted(VECTOR_SUFFIXES)})",
            bpath,
        )
    xyxy, labels = _fit_to_image(xyxy, labels, rows, width, height, mode, bpath)
    return BoxTable(rpath.name, width, height, xyxy, labels, crs, transform)


def _read_csv(
    path: Path, image_name: str, label_column: str, image_column: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TrustmapError(f"not a readable CSV ({exc})", path) from None
    missing = [c for c in (*CSV_COLUMNS, label_column) if c not in df.columns]
    if missing:
        raise TrustmapError(f"CSV lacks column(s) {missing}; has {list(df.columns)}", path)
    rows = np.arange(len(df)) + 2  # 1-based line numbers after the header
    if image_column in df.columns:
        names = df[image_column].astype(str).map(lambda s: Path(s).name)
        keep = (names == image_name).to_numpy()
        if not keep.any():
            raise TrustmapError(
                f"no boxes for image '{image_name}' (column '{image_column}' has {sorted(set(names))[:5]})",
                path,
            )
        df, rows = df[keep], rows[keep]
    coords = df[list(CSV_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(coords).all(axis=1))
    if bad.size:
        raise TrustmapError(
            f"line {rows[bad[0]]}: box coordinates {df.iloc[bad[0]][list(CSV_COLUMNS)].tolist()} are not numbers",
            path,
        )
    labels = df[label_column].astype(str).to_numpy()
    return coords, labels, [f"line {r}" for r in rows]


def _read_vector(
    path: Path, crs: Any, transform: Any, label_column: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import geopandas as gpd
    import shapely

    try:
        gdf = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises several unrelated types for unreadable files
        raise TrustmapError(
            f"not a readable vector file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
            path,
        ) from None
    if label_column not in gdf.columns:
        raise TrustmapError(
            f"vector file lacks the label column '{label_column}'; has {[c for c in gdf.columns if c != 'geometry']}",
            path,
        )
    if gdf.crs is None:
        raise TrustmapError(
            "vector file has no CRS, so its boxes cannot be placed on the raster", path
        )
    geoms = gdf.geometry.to_numpy()
    names = [f"feature {i}" for i in range(len(gdf))]
    empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    kinds = shapely.get_type_id(geoms)
    not_area = ~empty & ~np.isin(kinds, (3, 6))  # Polygon, MultiPolygon
    for mask, what in ((empty, "has no geometry"), (not_area, "is not a polygon")):
        bad = np.flatnonzero(mask)
        if bad.size:
            raise TrustmapError(f"{names[bad[0]]}: {what}; boxes must be polygons", path)
    if not gdf.crs.equals(crs):
        b = shapely.bounds(geoms)
        step = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / DENSIFY_SEGMENTS
        geoms = shapely.segmentize(geoms, np.where(step > 0, step, np.inf))
        geoms = gpd.GeoSeries(geoms, crs=gdf.crs).to_crs(crs).to_numpy()
    inv = ~transform  # map -> pixel (col, row), fractional

    def to_pixel(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(
            [
                inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c,
                inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f,
            ]
        )

    xyxy = shapely.bounds(shapely.transform(geoms, to_pixel)).astype(np.float64)
    return xyxy, gdf[label_column].astype(str).to_numpy(), names


def _fit_to_image(
    xyxy: np.ndarray, labels: np.ndarray, rows: Sequence[str], width: int, height: int,
    mode: str, path: Path,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    x0, y0, x1, y1 = xyxy.T
    bad = np.flatnonzero((x1 <= x0) | (y1 <= y0))
    if bad.size:
        raise TrustmapError(
            f"{rows[bad[0]]}: box {xyxy[bad[0]].tolist()} has xmax <= xmin or ymax <= ymin", path
        )
    out = (x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height)
    if mode == "error":
        bad = np.flatnonzero(out)
        if bad.size:
            raise TrustmapError(
                f"{rows[bad[0]]}: box {xyxy[bad[0]].tolist()} lies outside the {width}x{height} raster"
                f"{f' (and {bad.size - 1} more)' if bad.size > 1 else ''}",
                path,
            )
        return xyxy, labels
    clipped = np.column_stack(
        [
            np.clip(x0, 0, width),
            np.clip(y0, 0, height),
            np.clip(x1, 0, width),
            np.clip(y1, 0, height),
        ]
    )
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped[keep], labels[keep]


def to_coco(
    tables: Sequence[BoxTable],
    categories: Mapping[int, str] | None = None,
    first_image_id: int = 1,
) -> dict[str, Any]:
    """COCO annotations dict for one or more tiles (image ids ``first_image_id``, +1, ...).

    Without ``categories`` the label names found, sorted, become ids 1..K.
    """
    if categories is None:
        names = sorted({str(lab) for t in tables for lab in t.labels})
        categories = {i + 1: n for i, n in enumerate(names)}
    by_name = {n: c for c, n in categories.items()}
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for k, t in enumerate(tables):
        img_id = first_image_id + k
        images.append(
            {"id": img_id, "file_name": t.file_name, "width": int(t.width), "height": int(t.height)}
        )
        unknown = sorted({str(lab) for lab in t.labels} - set(by_name))
        if unknown:
            raise TrustmapError(
                f"labels {unknown} of '{t.file_name}' are not among the categories {sorted(by_name)}"
            )
        for box, lab in zip(t.xyxy, t.labels, strict=True):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "bbox": [float(box[0]), float(box[1]), w, h],
                    "category_id": int(by_name[str(lab)]),
                    "iscrowd": 0,
                    "area": w * h,
                }
            )
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": int(c), "name": n} for c, n in sorted(categories.items())],
    }
