"""Scene detections as a GeoPackage that opens in QGIS styled by (calibrated) confidence.

One polygon per detection in the scene's CRS (the pixel box's four corners through the
geotransform, so rotated grids stay exact), with the class, the raw and the calibrated
confidence, the full probability vector as JSON (class name -> probability, ``background``
last for softmax heads), the tile that owned it and its pixel box. Rows are appended chunk
by chunk while the scene is detected, so memory does not grow with the scene; the file is
written under a staging name and renamed when complete (``tiles.io.atomic_path``).

The style is a QGIS graduated renderer over ``calibrated`` (``score`` without a
calibrator), stored as the default row of the GeoPackage's ``layer_styles`` table, which
QGIS applies on load (see ``tiles.qgis`` for the table's rules).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calibration.detections import Detections

LAYER = "detections"
STYLE_NAME = "trustmap confidence"
#: Equal-interval classes of the graduated style, low (red) to high (green) confidence.
RANGES: tuple[tuple[float, float, tuple[int, int, int]], ...] = (
    (0.0, 0.2, (215, 25, 28)),
    (0.2, 0.4, (253, 174, 97)),
    (0.4, 0.6, (255, 255, 191)),
    (0.6, 0.8, (166, 217, 106)),
    (0.8, 1.0, (26, 150, 65)),
)
COLUMNS = ("label", "category_id", "score", "calibrated", "probs", "tile", "xmin", "ymin", "xmax", "ymax")


class DetectionWriter:
    """Append detections (scene pixel boxes) to a GeoPackage layer, then style it.

    ``path`` is the staging file the caller renames into place. Rows are buffered and
    written ``flush_rows`` at a time: each append reopens the file (about 0.1 s), so writing
    every batch of tiles would cost more than detecting them, while the buffer bounds memory.
    """

    flush_rows = 5_000

    def __init__(
        self,
        path: str | os.PathLike,
        crs: Any,
        transform: Any,
        categories: dict[int, str],
        prob_columns: Sequence[str],
        calibrated: bool,
    ):
        import geopandas as gpd
        import pandas as pd
        import pyogrio

        self.path = Path(path)
        self.crs, self.transform = crs, transform
        self.categories = {int(k): str(v) for k, v in categories.items()}
        self.prob_columns = list(prob_columns)
        self.calibrated = calibrated
        self.count = 0
        self._pending: list[tuple[Detections, np.ndarray | None]] = []
        self._pending_rows = 0
        empty = gpd.GeoDataFrame(
            {
                "label": pd.Series([], dtype=str),
                "category_id": pd.Series([], dtype=np.int64),
                "score": pd.Series([], dtype=np.float64),
                "calibrated": pd.Series([], dtype=np.float64),
                "probs": pd.Series([], dtype=str),
                "tile": pd.Series([], dtype=np.int64),
                **{k: pd.Series([], dtype=np.float64) for k in ("xmin", "ymin", "xmax", "ymax")},
            },
            geometry=gpd.GeoSeries([], crs=crs),
        )
        pyogrio.write_dataframe(
            empty, self.path, layer=LAYER, driver="GPKG", geometry_type="Polygon",
            dataset_options={"VERSION": "1.2"},  # QGIS 3.22's GDAL reads 1.2 without a warning
        )  # fmt: skip

    def write(self, dets: Detections, calibrated: np.ndarray | None) -> None:
        """Queue one chunk (``image_id`` is the owning tile); written once enough are queued."""
        if len(dets) == 0:
            return
        self._pending.append((dets, calibrated))
        self._pending_rows += len(dets)
        self.count += len(dets)
        if self._pending_rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Append the queued rows to the layer."""
        if not self._pending:
            return
        dets = Detections.concat([d for d, _ in self._pending])
        cal = [c for _, c in self._pending]
        present = [c for c in cal if c is not None]
        calibrated = np.concatenate(present) if len(present) == len(cal) else None
        self._pending, self._pending_rows = [], 0
        self._append(dets, calibrated)

    def _append(self, dets: Detections, calibrated: np.ndarray | None) -> None:
        import geopandas as gpd
        import pyogrio
        import shapely

        n = len(dets)
        x0, y0 = dets.bbox[:, 0], dets.bbox[:, 1]
        x1, y1 = x0 + dets.bbox[:, 2], y0 + dets.bbox[:, 3]
        t = self.transform
        corners = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1), np.stack([x0, y1], 1)], 1)
        mx = t.a * corners[..., 0] + t.b * corners[..., 1] + t.c
        my = t.d * corners[..., 0] + t.e * corners[..., 1] + t.f
        rings = np.concatenate([np.stack([mx, my], -1), np.stack([mx[:, :1], my[:, :1]], -1)], axis=1)
        geoms = shapely.polygons(rings)
        labels = [self.categories.get(int(c), str(int(c))) for c in dets.category_id]
        frame = gpd.GeoDataFrame(
            {
                "label": labels,
                "category_id": dets.category_id.astype(np.int64),
                "score": dets.score,
                "calibrated": calibrated if calibrated is not None else np.full(n, np.nan),
                "probs": self._probs_json(dets),
                "tile": dets.image_id.astype(np.int64),
                "xmin": x0,
                "ymin": y0,
                "xmax": x1,
                "ymax": y1,
            },
            geometry=geoms,
            crs=self.crs,
        )
        pyogrio.write_dataframe(frame, self.path, layer=LAYER, driver="GPKG", append=True)

    def _probs_json(self, dets: Detections) -> list[str | None]:
        if dets.probs is None:
            return [None] * len(dets)
        names = self.prob_columns
        p = np.round(dets.probs, 6)
        return [json.dumps(dict(zip(names, row.tolist(), strict=True))) for row in p]

    def finish(self, description: str) -> None:
        """Write what is queued and store the graduated style as the layer's default."""
        self.flush()
        attr = "calibrated" if self.calibrated else "score"
        write_confidence_style(self.path, LAYER, attr, description)


def prob_column_names(categories: dict[int, str], prob_category_ids: Sequence[int], softmax: bool) -> list[str]:
    """Names of the probability vector's entries: class names, then ``background``."""
    names = [categories.get(int(c), str(int(c))) for c in prob_category_ids]
    return [*names, "background"] if softmax else names


# --------------------------------------------------------------------------- style


def write_confidence_style(gpkg: str | os.PathLike, layer: str, attr: str, description: str) -> None:
    """Make a graduated-by-``attr`` QGIS style the layer's default ``layer_styles`` row."""
    from tiles.qgis import store_gpkg_style, style_document

    store_gpkg_style(Path(gpkg), layer, style_document(graduated_nodes(attr)), description, style_name=STYLE_NAME)


def graduated_nodes(attr: str) -> list[ET.Element]:
    """``renderer-v2`` of type graduatedSymbol: outlined boxes coloured by ``attr``'s range."""
    r = ET.Element(
        "renderer-v2",
        type="graduatedSymbol",
        attr=attr,
        graduatedMethod="GraduatedColor",
        symbollevels="0",
        forceraster="0",
        enableorderby="0",
        referencescale="-1",
    )
    ranges = ET.SubElement(r, "ranges")
    symbols = ET.SubElement(r, "symbols")
    for i, (lo, hi, rgb) in enumerate(RANGES):
        ET.SubElement(ranges, "range", lower=f"{lo:.6f}", upper=f"{hi:.6f}", symbol=str(i), label=f"{lo:.1f} - {hi:.1f}", render="true")
        symbols.append(_outline_symbol(str(i), rgb))
    source = ET.SubElement(r, "source-symbol")
    source.append(_outline_symbol("0", RANGES[-1][2]))
    ramp = ET.SubElement(r, "colorramp", type="gradient", name="[source]")
    ramp_opts = ET.SubElement(ramp, "Option", type="Map")
    stops = ";".join(f"{(k + 0.5) / len(RANGES):.3f};{c[0]},{c[1]},{c[2]},255" for k, (_, _, c) in enumerate(RANGES[1:-1], start=1))
    for k, v in (("color1", "{},{},{},255".format(*RANGES[0][2])), ("color2", "{},{},{},255".format(*RANGES[-1][2])), ("discrete", "0"), ("rampType", "gradient"), ("stops", stops)):
        ET.SubElement(ramp_opts, "Option", type="QString", name=k, value=v)
        ET.SubElement(ramp, "prop", k=k, v=v)
    method = ET.SubElement(r, "classificationMethod", id="EqualInterval")
    ET.SubElement(method, "symmetricMode", enabled="0", symmetrypoint="0", astride="0")
    ET.SubElement(method, "labelFormat", format="%1 - %2", labelprecision="1", trimtrailingzeroes="0")
    ET.SubElement(method, "parameters")
    ET.SubElement(method, "extraInformation")
    ET.SubElement(r, "rotation")
    ET.SubElement(r, "sizescale")
    from tiles.qgis import vector_style_tail

    return [r, *vector_style_tail()]


def _outline_symbol(name: str, rgb: tuple[int, int, int]) -> ET.Element:
    """A box outline in the range's colour with a faint fill, so the imagery stays visible."""
    props = {
        "color": "{},{},{},40".format(*rgb),
        "style": "solid",
        "outline_color": "{},{},{},255".format(*rgb),
        "outline_style": "solid",
        "outline_width": "0.6",
        "outline_width_unit": "MM",
        "joinstyle": "miter",
        "offset": "0,0",
        "offset_unit": "MM",
    }
    from tiles.qgis import simple_fill_symbol

    return simple_fill_symbol(name, props)
