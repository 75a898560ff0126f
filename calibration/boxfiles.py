"""Ground truth and scored predictions as box files on one georeferenced scene.

Detectors for aerial imagery rarely write COCO: DeepForest writes a CSV of pixel boxes
(``image_path, xmin, ymin, xmax, ymax, label, score``), GIS tools write polygons in map
coordinates. Both become COCO-like objects on the scene's pixel grid here, so the audit
runs on them unchanged:

* ground truth: ``tiles.boxes.read_boxes`` (CSV in pixels, vector in any CRS, reprojected
  with densified edges), then a check that the boxes do land on the scene;
* predictions: the same two forms with a ``score`` column (and, optionally, ``probs``:
  the JSON vector ``{class: p, ..., "background": p}`` that ``detect-scene`` writes).

Columns are documented in ``docs/formats.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from calibration.detections import Detections, GroundTruth
from tiles.errors import TrustmapError

if TYPE_CHECKING:
    from affine import Affine
    from rasterio.crs import CRS

    from tiles.boxes import BoxTable

#: What the CSV and vector readers return: (N, 4) boxes, labels, scores, probability
#: mappings (None without a ``probs`` column) and the name of each row for messages.
_Rows = tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, float]] | None, list[str]]

PRED_COLUMNS = ("xmin", "ymin", "xmax", "ymax")


@dataclass
class ScoredBoxes:
    """Predicted pixel boxes on a scene: xyxy, class names, scores, optional prob vectors."""

    xyxy: np.ndarray  # (N, 4) float64, scene pixels
    labels: np.ndarray  # (N,) str
    scores: np.ndarray  # (N,) float64 in [0, 1]
    probs: list[dict[str, float]] | None = None

    def __len__(self) -> int:
        return len(self.xyxy)


def scene_truth(
    scene: str | os.PathLike, truth: str | os.PathLike, label_column: str = "label"
) -> BoxTable:
    """The truth boxes of ``truth`` on ``scene``'s grid (``tiles.boxes.BoxTable``).

    A vector file whose boxes all fall off the scene is an error that names both CRSs:
    that is what a wrong or missing CRS looks like, and an audit against no objects
    would be meaningless.
    """
    from tiles.boxes import VECTOR_SUFFIXES, read_boxes

    table = read_boxes(scene, truth, label_column=label_column)
    tpath = Path(truth)
    if len(table) == 0:
        crs = _vector_crs(tpath) if tpath.suffix.lower() in VECTOR_SUFFIXES else None
        where = f" (boxes in {crs}, scene in {_crs_name(table.crs)})" if crs else ""
        raise TrustmapError(
            f"no box lies on the scene {Path(scene).name}{where}: the file covers another area or declares the wrong CRS",
            tpath,
        )
    return table


def _vector_crs(path: Path) -> str | None:
    try:
        import pyogrio

        return pyogrio.read_info(path).get("crs")
    except Exception:  # only for the message
        return None


def _crs_name(crs: CRS | None) -> str:
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()[:60]


def read_scored_boxes(
    scene: str | os.PathLike,
    path: str | os.PathLike,
    label_column: str = "label",
    score_column: str = "score",
    image_column: str = "image_path",
) -> ScoredBoxes:
    """Scored predictions on ``scene``'s pixel grid, from a CSV (pixels) or a vector file (map units).

    CSV rows whose ``image_column`` names another image are skipped, as for ground truth.
    Boxes partly outside the scene are clipped; a box wholly outside is an error (the
    file belongs to another scene, or its CRS is wrong).
    """
    from tiles.boxes import VECTOR_SUFFIXES
    from tiles.raster import open_raster, require_crs

    spath, p = Path(scene), Path(path)
    if not p.exists():
        raise TrustmapError("file not found", p)
    with open_raster(spath, verify=False) as ds:
        width, height, transform, crs = ds.width, ds.height, ds.transform, ds.crs
        suffix = p.suffix.lower()
        if suffix in VECTOR_SUFFIXES:
            require_crs(ds, spath)
    if suffix == ".csv":
        xyxy, labels, scores, probs, rows = _read_csv(p, spath.name, label_column, score_column, image_column)
    elif suffix in VECTOR_SUFFIXES:
        xyxy, labels, scores, probs, rows = _read_vector(p, crs, transform, label_column, score_column)
    else:
        raise TrustmapError(f"unknown predictions file type '{p.suffix}': use .csv, .gpkg or .geojson (or COCO .json with --annotations)", p)
    bad = np.flatnonzero(~np.isfinite(scores) | (scores < 0) | (scores > 1))
    if bad.size:
        raise TrustmapError(f"{rows[bad[0]]}: score {scores[bad[0]]} is not a probability in [0, 1]", p)
    x0, y0, x1, y1 = xyxy.T
    bad = np.flatnonzero(~np.isfinite(xyxy).all(axis=1) | (x1 <= x0) | (y1 <= y0))
    if bad.size:
        raise TrustmapError(f"{rows[bad[0]]}: box {xyxy[bad[0]].tolist()} has xmax <= xmin or ymax <= ymin", p)
    out = (x1 <= 0) | (y1 <= 0) | (x0 >= width) | (y0 >= height)
    bad = np.flatnonzero(out)
    if bad.size:
        raise TrustmapError(
            f"{rows[bad[0]]}: box {np.round(xyxy[bad[0]], 2).tolist()} lies wholly outside the {width}x{height} scene "
            f"{spath.name}{f' (and {bad.size - 1} more)' if bad.size > 1 else ''}",
            p,
        )
    xyxy = np.column_stack([np.clip(x0, 0, width), np.clip(y0, 0, height), np.clip(x1, 0, width), np.clip(y1, 0, height)])
    return ScoredBoxes(xyxy, labels, scores, probs)


def _read_csv(
    path: Path, image_name: str, label_column: str, score_column: str, image_column: str
) -> _Rows:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TrustmapError(f"not a readable CSV ({exc})", path) from None
    missing = [c for c in (*PRED_COLUMNS, label_column, score_column) if c not in df.columns]
    if missing:
        raise TrustmapError(f"predictions CSV lacks column(s) {missing}; has {list(df.columns)}", path)
    rows = np.arange(len(df)) + 2
    if image_column in df.columns:
        keep = (df[image_column].astype(str).map(lambda s: Path(s).name) == image_name).to_numpy()
        df, rows = df[keep], rows[keep]
    coords = df[list(PRED_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    scores = pd.to_numeric(df[score_column], errors="coerce").to_numpy(np.float64)
    probs = _parse_probs(df["probs"].tolist(), [f"line {r}" for r in rows], path) if "probs" in df.columns else None
    return coords, df[label_column].astype(str).to_numpy(), scores, probs, [f"line {r}" for r in rows]


def _read_vector(
    path: Path, crs: CRS, transform: Affine, label_column: str, score_column: str
) -> _Rows:
    import geopandas as gpd
    import shapely

    from tiles.boxes import DENSIFY_SEGMENTS

    try:
        gdf = gpd.read_file(path, layer=_box_layer(path))
    except Exception as exc:  # pyogrio raises several unrelated types for unreadable files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrustmapError(f"not a readable vector file ({first})", path) from None
    missing = [c for c in (label_column, score_column) if c not in gdf.columns]
    if missing:
        raise TrustmapError(f"vector file lacks column(s) {missing}; has {[c for c in gdf.columns if c != 'geometry']}", path)
    if gdf.crs is None:
        raise TrustmapError("vector file has no CRS, so its boxes cannot be placed on the scene", path)
    names = [f"feature {i}" for i in range(len(gdf))]
    geoms = gdf.geometry.to_numpy()
    bad = np.flatnonzero(shapely.is_missing(geoms) | shapely.is_empty(geoms) | ~np.isin(shapely.get_type_id(geoms), (3, 6)))
    if bad.size:
        raise TrustmapError(f"{names[bad[0]]}: not a polygon; boxes must be polygons", path)
    if not gdf.crs.equals(crs):  # densify first: a box stays a box under a curved reprojection
        b = shapely.bounds(geoms)
        step = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / DENSIFY_SEGMENTS
        geoms = shapely.segmentize(geoms, np.where(step > 0, step, np.inf))
        geoms = gpd.GeoSeries(geoms, crs=gdf.crs).to_crs(crs).to_numpy()
    inv = ~transform

    def to_pixel(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c, inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f])

    xyxy = shapely.bounds(shapely.transform(geoms, to_pixel)).astype(np.float64)
    scores = np.asarray(gdf[score_column].to_numpy(), np.float64)
    probs = _parse_probs(gdf["probs"].tolist(), names, path) if "probs" in gdf.columns else None
    return xyxy, gdf[label_column].astype(str).to_numpy(), scores, probs, names


def _box_layer(path: Path) -> str | None:
    """The layer to read: ``detections`` (what detect-scene writes) if present, else the
    first layer with geometry (a GeoPackage also lists ``layer_styles``)."""
    import pyogrio

    try:
        layers = pyogrio.list_layers(path)
    except Exception:  # unreadable: read_file reports it
        return None
    names = [str(n) for n, _ in layers]
    if "detections" in names:
        return "detections"
    geometric = [str(n) for n, g in layers if g]
    return geometric[0] if geometric else None


def _parse_probs(values: list, rows: list[str], path: Path) -> list[dict[str, float]] | None:
    """The ``probs`` JSON column; None when any row lacks it (then the audit uses scores only)."""
    out = []
    for v, where in zip(values, rows, strict=True):
        if v is None or (isinstance(v, float) and np.isnan(v)) or v == "":
            return None
        try:
            d = v if isinstance(v, dict) else json.loads(v)  # GeoJSON readers may parse it already
        except (TypeError, ValueError):
            raise TrustmapError(f"{where}: 'probs' is not JSON ({str(v)[:40]!r})", path) from None
        if not isinstance(d, dict) or not all(isinstance(x, int | float) for x in d.values()):
            raise TrustmapError(f"{where}: 'probs' must be a JSON object of class -> probability", path)
        out.append({str(k): float(x) for k, x in d.items()})
    return out


def categories_for(*label_sets: np.ndarray) -> dict[int, str]:
    """Category ids 1..K for the sorted class names found in the given files."""
    names = sorted({str(x) for labels in label_sets for x in labels})
    return {i + 1: n for i, n in enumerate(names)}


def to_detections(boxes: ScoredBoxes, categories: dict[int, str], image_id: int = 1, source: str | None = None) -> Detections:
    """Detections of one image; ``probs`` kept when every row names exactly the categories."""
    by_name = {n: c for c, n in categories.items()}
    xyxy = boxes.xyxy
    cats = np.array([by_name[str(lab)] for lab in boxes.labels], np.int64)
    probs, prob_ids = None, None
    if boxes.probs:
        keys = set(boxes.probs[0])
        names = [categories[c] for c in sorted(categories)]
        softmax = "background" in keys
        if all(set(d) == keys for d in boxes.probs) and keys - {"background"} == set(names):
            order = names + (["background"] if softmax else [])
            probs = np.array([[d[k] for k in order] for d in boxes.probs], np.float64)
            prob_ids = tuple(sorted(categories))
    return Detections(
        image_id=np.full(len(boxes), image_id, np.int64),
        bbox=np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]]) if len(boxes) else np.zeros((0, 4)),
        category_id=cats,
        score=boxes.scores,
        probs=probs,
        prob_category_ids=prob_ids,
        source=source,
    )


def ground_truth(
    table: BoxTable, categories: dict[int, str], source: str | os.PathLike | None = None
) -> GroundTruth:
    """COCO ground truth of one scene from a ``tiles.boxes.BoxTable`` (image id 1)."""
    from tiles.boxes import to_coco

    unknown = sorted({str(x) for x in table.labels} - set(categories.values()))
    if unknown:
        raise TrustmapError(
            f"truth labels {unknown} are not classes of the detector ({', '.join(sorted(categories.values()))})",
            source,
        )
    return GroundTruth.from_coco(to_coco([table], categories=categories), source=source)
