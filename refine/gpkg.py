"""GeoPackage rows read and written with SQLite itself, inside one transaction.

The workspace's state (``session.gpkg``) must change all at once or not at all: a new
label version, the corrections that made it and the queue rows they answered are one
commit. GDAL writes layers in transactions of its own, so after GDAL has created the
empty layers (:func:`create_layers`), every row is written here with :mod:`sqlite3`, and
geometries are encoded as GeoPackage binary (OGC 12-128r18, section 2.1.3) by hand: a
small header (magic, flags, SRS id, envelope) followed by ISO WKB.

Layers are created without an R-tree index: GDAL's index triggers call SQL functions
(``ST_MinX`` ...) that only GDAL registers, so a plain SQLite writer would fail on them;
the queue and the corrections hold hundreds of features, which QGIS draws without one.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.crs import CRS
from shapely.geometry.base import BaseGeometry

from tiles.errors import TrustmapError

_MAGIC = b"GP"
_ENVELOPE_BYTES = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}


def now() -> str:
    """UTC timestamp as GeoPackage and QGIS write it (ISO 8601 with milliseconds, Z)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def encode_geometry(geom: BaseGeometry | None, srs_id: int) -> bytes | None:
    """GeoPackage binary of ``geom``: little-endian header with an XY envelope, then WKB."""
    if geom is None:
        return None
    if geom.is_empty:
        flags = 0b0001_0001  # empty, no envelope, little endian
        return _MAGIC + bytes([0, flags]) + struct.pack("<i", srs_id) + shapely.to_wkb(geom)
    minx, miny, maxx, maxy = geom.bounds
    flags = 0b0000_0011  # envelope [minx, maxx, miny, maxy], little endian
    header = _MAGIC + bytes([0, flags]) + struct.pack("<i", srs_id)
    envelope = struct.pack("<4d", minx, maxx, miny, maxy)
    return header + envelope + shapely.to_wkb(geom, byte_order=1)


def decode_geometry(blob: bytes | None) -> BaseGeometry | None:
    """The shapely geometry of a GeoPackage binary blob (None for NULL)."""
    if blob is None:
        return None
    blob = bytes(blob)
    if len(blob) < 8 or blob[:2] != _MAGIC:
        raise ValueError("not a GeoPackage geometry blob")
    flags = blob[3]
    envelope = _ENVELOPE_BYTES.get((flags >> 1) & 0b111)
    if envelope is None:
        raise ValueError(f"bad envelope code in geometry flags {flags:#x}")
    return shapely.from_wkb(blob[8 + envelope :])


def create_layers(
    path: Path, layers: dict[str, dict[str, str]], crs: CRS, geometry_type: str = "MultiPolygon"
) -> None:
    """Create a GeoPackage holding empty polygon ``layers`` ({name: {field: dtype}})."""
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    for i, (name, fields) in enumerate(layers.items()):
        frame = gpd.GeoDataFrame(
            {k: pd.Series([], dtype=v) for k, v in fields.items()},
            geometry=gpd.GeoSeries([], crs=crs.to_wkt()),
        )
        pyogrio.write_dataframe(
            frame, path, layer=name, driver="GPKG", geometry_type=geometry_type,
            append=i > 0, layer_options={"SPATIAL_INDEX": "NO"},
            dataset_options=None if i else {"VERSION": "1.2"},  # QGIS 3.22's GDAL reads 1.2 without a warning
        )  # fmt: skip


def register_attributes(con: sqlite3.Connection, table: str, description: str = "") -> None:
    """List an attribute (non-spatial) table in ``gpkg_contents``, so QGIS offers it."""
    con.execute(
        "INSERT OR REPLACE INTO gpkg_contents (table_name, data_type, identifier, description, "
        "last_change, srs_id) VALUES (?, 'attributes', ?, ?, ?, 0)",
        (table, table, description, now()),
    )


def srs_id(con: sqlite3.Connection, layer: str) -> int:
    row = con.execute(
        "SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
    ).fetchone()
    if row is None:
        raise TrustmapError(f"the GeoPackage has no layer {layer!r}")
    return int(row[0])


def layer_crs(con: sqlite3.Connection, layer: str) -> CRS | None:
    """The CRS a layer's geometries are in (None when its SRS is undefined)."""
    sid = srs_id(con, layer)
    row = con.execute(
        "SELECT definition, organization, organization_coordsys_id FROM gpkg_spatial_ref_sys "
        "WHERE srs_id = ?",
        (sid,),
    ).fetchone()
    if row is None or sid in (0, -1):
        return None
    definition, org, code = row
    if definition and definition != "undefined":
        return CRS.from_wkt(definition)
    return CRS.from_string(f"{org}:{code}")


def insert_rows(
    con: sqlite3.Connection, table: str, rows: Sequence[dict[str, Any]]
) -> list[int]:
    """Insert ``rows`` (dicts of column values, same keys) and return their row ids."""
    ids: list[int] = []
    for row in rows:
        cols = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join("?" * len(row))
        cur = con.execute(
            f'INSERT INTO "{table}" ({cols}) VALUES ({marks})', [_sql_value(v) for v in row.values()]
        )
        ids.append(int(cur.lastrowid))
    return ids


def _sql_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v
