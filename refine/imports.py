"""``refine import``: fold the analyst's edits into a new label version, losing nothing.

Edits come from three places: the ``review_queue`` rows the analyst answered
(``corrected_class`` set, or ``reviewed`` = 1 meaning the label was right), the polygons
drawn in the ``corrections`` layer, and optionally a vector file of polygons in any CRS
(``--edits``). Each edit is validated on its own; a bad one (unknown class, invalid or
empty geometry, outside the scene) is named, marked on its row with the reason, and left
for the analyst to fix, while the good ones go in.

Every edit that goes in gets a row in ``correction_log`` keyed by what it is (the queue
row's round, region and class; a drawn polygon's geometry and class), so importing the
same edits twice changes nothing the second time. The new label raster and its
provenance raster (which log row last set each pixel) are written first, then the log,
the queue statuses and the label version are committed in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.features
import shapely
from shapely.geometry import MultiPolygon, box
from shapely.geometry.base import BaseGeometry

from refine import gpkg
from refine.review import SKIP, parse_class, write_review_project
from refine.workspace import (
    CORRECTIONS,
    LOG,
    QUEUE,
    Echo,
    Workspace,
    default_author,
    set_meta,
    sha256_of,
)
from tiles.errors import TrustmapError


@dataclass
class Edit:
    """One edit, validated: what it sets where, and where it came from."""

    source: str
    """``queue``, ``suggestion``, ``drawn`` or ``file``."""
    feature: str
    """How to find it again: ``review_queue:12``, ``corrections:3``, ``FILE:7``."""
    key: str
    code: int | None
    """The class it sets; None for "the label was right"."""
    pixels: np.ndarray
    """Flat indices of the scene pixels it relabels (empty for a confirmation)."""
    geometry: BaseGeometry | None
    round: int | None = None
    region_id: int | None = None
    author: str = ""
    fid: int | None = None
    rejects: int | None = None
    """For a suggestion answered otherwise: the suggested class that was rejected."""
    skip: bool = False


@dataclass
class ImportResult:
    version: int
    """The label version after the import (unchanged when nothing changed a pixel)."""
    imported: int
    pixels_changed: int
    confirmed: int
    skipped: int
    rejected: int
    invalid: list[str] = field(default_factory=list)
    already: int = 0
    per_class: dict[str, int] = field(default_factory=dict)


def _key(*parts: Any) -> str:
    return ":".join(str(p) for p in parts)


def _geom_key(prefix: str, geom: BaseGeometry, code: int) -> str:
    digest = hashlib.sha1(shapely.to_wkb(shapely.normalize(geom), byte_order=1) + bytes([code]))
    return f"{prefix}:{digest.hexdigest()}"


def _burn(geom: BaseGeometry, ws: Workspace, valid: np.ndarray) -> np.ndarray:
    """Flat indices of the valid scene pixels whose centres fall inside ``geom``, rasterised
    inside the polygon's own window (a drawn polygon costs its size, not the scene's)."""
    from rasterio.windows import from_bounds

    s = ws.scene
    win = from_bounds(*geom.bounds, transform=s.transform)  # fractional; widened by a pixel
    r0, c0 = max(int(np.floor(win.row_off)) - 1, 0), max(int(np.floor(win.col_off)) - 1, 0)
    r1 = min(int(np.ceil(win.row_off + win.height)) + 1, s.height)
    c1 = min(int(np.ceil(win.col_off + win.width)) + 1, s.width)
    if r1 <= r0 or c1 <= c0:
        return np.zeros(0, np.int64)
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    inside = rasterio.features.geometry_mask(
        [geom], out_shape=(r1 - r0, c1 - c0),
        transform=window_transform(Window(c0, r0, c1 - c0, r1 - r0), s.transform), invert=True,
    ) & valid[r0:r1, c0:c1]  # fmt: skip
    rows, cols = np.nonzero(inside)
    return ((rows + r0) * s.width + (cols + c0)).astype(np.int64)


def _region_pixels(regions: Any, rid: int) -> np.ndarray:
    """Flat indices of region ``rid``'s pixels, found inside its bbox only."""
    r0, c0, r1, c1 = (int(v) for v in regions.bbox[rid])
    rows, cols = np.nonzero(regions.labels[r0:r1, c0:c1] == rid)
    return ((rows + r0) * regions.labels.shape[1] + (cols + c0)).astype(np.int64)


def _check_polygon(geom: BaseGeometry | None, scene_box: BaseGeometry) -> str | None:
    """Why ``geom`` cannot be burnt in, or None."""
    if geom is None or geom.is_empty:
        return "it has no geometry"
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        return f"it is a {geom.geom_type}, not a polygon"
    if not geom.is_valid:
        return f"invalid geometry ({shapely.is_valid_reason(geom)}); fix it in QGIS (Vector > Geometry Tools > Check Validity)"
    if not geom.intersects(scene_box):
        return "it lies outside the scene"
    return None


def _polygon_pixels(
    geom: BaseGeometry | None, ws: Workspace, scene_box: BaseGeometry, valid: np.ndarray
) -> tuple[np.ndarray, str | None]:
    """(the pixels a drawn polygon relabels, None) or (empty, why it cannot be burnt in)."""
    problem = _check_polygon(geom, scene_box)
    if problem is not None:
        return np.zeros(0, np.int64), problem
    pix = _burn(geom, ws, valid)
    return pix, None if pix.size else "it covers no pixel centre of the scene"


def import_edits(
    ws: Workspace,
    *,
    author: str | None = None,
    all_reviewed: bool = False,
    edits_file: Path | None = None,
    class_field: str = "class",
    echo: Echo | None = None,
) -> ImportResult:
    """Fold every pending edit into a new label version (see the module docstring)."""
    echo = echo or (lambda _: None)
    author = author or default_author()
    schema = ws.schema
    file_edits = _read_edits_file(ws, edits_file, class_field) if edits_file is not None else []
    with ws.locked("refine import"), ws.connect() as con:
        con.execute("BEGIN IMMEDIATE")
        try:
            result = _import(ws, con, author, all_reviewed, file_edits, echo)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        version = ws.current_version(con)
        scores = [s for (s,) in con.execute(f"SELECT score FROM {QUEUE}")]
    write_review_project(ws, version.path, scores)
    for problem in result.invalid:
        echo(f"not imported: {problem}")
    if result.imported == result.confirmed == result.skipped == 0:
        echo("nothing new to import" + (f" ({result.already} edits were imported before)" if result.already else ""))
    else:
        echo(
            f"imported {result.imported} corrections ({result.pixels_changed} px changed), "
            f"{result.confirmed} regions confirmed, {result.skipped} skipped, "
            f"{result.rejected} suggestions rejected; labels are now v{result.version}"
        )
    del schema
    return result


def _import(
    ws: Workspace,
    con: sqlite3.Connection,
    author: str,
    all_reviewed: bool,
    file_edits: list[tuple[str, int, Any, BaseGeometry | None]],
    echo: Echo,
) -> ImportResult:
    schema = ws.schema
    version = ws.current_version(con)
    labels, provenance = ws.read_version(version)
    valid = ws.scene.valid_mask()
    regions = ws.regions
    s = ws.scene
    bounds = rasterio.transform.array_bounds(s.height, s.width, s.transform)
    scene_box = box(bounds[0], bounds[1], bounds[2], bounds[3])
    known = {k for (k,) in con.execute(f"SELECT key FROM {LOG}")}
    now = gpkg.now()
    edits: list[Edit] = []
    invalid: list[str] = []
    marks: list[tuple[str, str, int]] = []  # (layer, status, fid) for rows refused
    already = 0
    rounds = {int(r) for (r,) in con.execute("SELECT round FROM rounds")}

    # 1. The queue: answered rows, in round and rank order.
    rows = con.execute(
        f"SELECT fid, round, region_id, kind, corrected_class, reviewed, suggested_class, status "
        f'FROM {QUEUE} WHERE status = \'queued\' OR status LIKE \'invalid%\' ORDER BY round, "rank", fid'
    ).fetchall()
    sug_cache: dict[int, dict[str, np.ndarray]] = {}
    for fid, rnd, rid, kind, corrected, reviewed, suggested, _status in rows:
        name = f"{QUEUE} fid {fid}"
        try:
            code = parse_class(corrected, schema)
        except ValueError as exc:
            invalid.append(f"{name}: {exc}")
            marks.append((QUEUE, f"invalid: {exc}", fid))
            continue
        looked = code is not None or _truthy(reviewed) or (all_reviewed and kind == "review")
        if not looked:
            continue
        if rid is None or not 0 <= int(rid) < regions.n or rnd not in rounds:
            msg = f"region {rid} of round {rnd} is not in this workspace"
            invalid.append(f"{name}: {msg}")
            marks.append((QUEUE, f"invalid: {msg}", fid))
            continue
        rid, rnd = int(rid), int(rnd)
        if code == SKIP:
            edits.append(Edit("queue", name, _key("queue", rnd, rid, kind, "skip"), None,
                              np.zeros(0, np.int64), None, rnd, rid, author, fid, skip=True))  # fmt: skip
            continue
        if kind == "suggestion":
            if rnd not in sug_cache:
                sug_cache[rnd] = _round_npz(ws, rnd, "suggestions")
            z = sug_cache[rnd]
            pix = z["pixels"][z["region"] == rid]
            rejects = int(suggested) if suggested is not None and code != suggested else None
            key = _key("suggestion", rnd, rid, code if code is not None else "reject")
            edits.append(Edit("suggestion", name, key, code, pix if code is not None else np.zeros(0, np.int64),
                              None, rnd, rid, author, fid, rejects=rejects))  # fmt: skip
            continue
        pix = _region_pixels(regions, rid) if code is not None else np.zeros(0, np.int64)
        key = _key("queue", rnd, rid, code if code is not None else "confirm")
        edits.append(Edit("queue", name, key, code, pix, None, rnd, rid, author, fid))

    # 2. Polygons drawn in the corrections layer.
    layer_crs = gpkg.layer_crs(con, CORRECTIONS)
    drawn = con.execute(
        f'SELECT fid, geom, "class", author FROM {CORRECTIONS} WHERE imported_version IS NULL ORDER BY fid'
    ).fetchall()
    for fid, blob, cls, who in drawn:
        name = f"{CORRECTIONS} fid {fid}"
        try:
            code = parse_class(cls, schema)
            geom = gpkg.decode_geometry(blob)
        except ValueError as exc:
            invalid.append(f"{name}: {exc}")
            marks.append((CORRECTIONS, f"invalid: {exc}", fid))
            continue
        if code is None or code == SKIP:
            msg = "it has no class; set `class` to a class code or name"
            invalid.append(f"{name}: {msg}")
            marks.append((CORRECTIONS, f"invalid: {msg}", fid))
            continue
        if geom is not None and layer_crs is not None and layer_crs != s.crs:
            geom = _reproject(geom, layer_crs, s.crs)
        pix, problem = _polygon_pixels(geom, ws, scene_box, valid)
        if problem:
            invalid.append(f"{name}: {problem}")
            marks.append((CORRECTIONS, f"invalid: {problem}", fid))
            continue
        edits.append(Edit("drawn", name, _geom_key("drawn", geom, code), code, pix, geom,
                          author=str(who).strip() if who else author, fid=fid))  # fmt: skip

    # 3. Polygons from a file (already in the scene's CRS).
    for name, code, problem, geom in file_edits:
        if problem is None:
            pix, problem = _polygon_pixels(geom, ws, scene_box, valid)
        if problem:
            invalid.append(f"{name}: {problem}")
            continue
        edits.append(Edit("file", name, _geom_key("file", geom, code), code, pix, geom, author=author))

    # Already imported (same key): nothing to do but mark the row.
    fresh = []
    for e in edits:
        if e.key in known:
            already += 1
            if e.fid is not None:
                marks.append((QUEUE if e.source in ("queue", "suggestion") else CORRECTIONS, "imported before", e.fid))
        else:
            fresh.append(e)
            known.add(e.key)

    # Burn, in order; later edits win where they overlap.
    new = labels.copy()
    flat, prov = new.reshape(-1), provenance.copy().reshape(-1)
    first_id = int(con.execute(f"SELECT COALESCE(MAX(fid), 0) FROM {LOG}").fetchone()[0]) + 1
    names = {c.code: c.name for c in schema.classes} | {schema.ignore: "ignore"}
    log_rows, per_class = [], {}
    total_changed = np.zeros(flat.size, bool)
    for i, e in enumerate(fresh):
        log_id = first_id + i
        changes: dict[str, int] = {}
        n_changed = 0
        if e.code is not None and e.pixels.size:
            before = flat[e.pixels]
            diff = before != e.code
            moved = e.pixels[diff]
            for b, n in zip(*np.unique(before[diff], return_counts=True), strict=True):
                changes[f"{names.get(int(b), b)}->{names.get(e.code, e.code)}"] = int(n)
            flat[moved] = e.code
            prov[e.pixels] = log_id
            total_changed[moved] = True
            n_changed = int(moved.size)
            per_class[names[e.code]] = per_class.get(names[e.code], 0) + n_changed
        geom = e.geometry
        if geom is None and e.region_id is not None:
            from refine.review import region_polygon

            if e.source == "suggestion" and e.pixels.size:
                geom = _pixels_polygon(ws, e.pixels)
            else:
                geom = region_polygon(regions, e.region_id, s.transform)
        if geom is not None and geom.geom_type == "Polygon":
            geom = MultiPolygon([geom])
        log_rows.append({
            "fid": log_id, "key": e.key, "source": e.source, "feature": e.feature, "round": e.round,
            "region_id": e.region_id, "class_code": e.code,
            "class_name": names.get(e.code) if e.code is not None else ("skip" if e.skip else "(label right)"),
            "author": e.author, "imported_at": now, "label_version": None, "pixels_changed": n_changed,
            "changes": json.dumps(changes), "summary": _summary(changes, e, names), "geom": geom,
        })  # fmt: skip
    pixels_changed = int(total_changed.sum())
    new_version = version.version
    if pixels_changed:
        new_version = version.version + 1
        path, prov_path = ws.write_version_files(new_version, new, prov.reshape(new.shape))
        con.execute(
            "INSERT INTO label_versions (version, file, provenance, created, parent, corrections, "
            "pixels_changed, sha256, command) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'import')",
            (new_version, path.relative_to(ws.root).as_posix(), prov_path.relative_to(ws.root).as_posix(),
             now, version.version, len(fresh), pixels_changed, sha256_of(path)),
        )  # fmt: skip
    sid = gpkg.srs_id(con, LOG)
    for row in log_rows:
        row["label_version"] = new_version
        row["geom"] = gpkg.encode_geometry(row["geom"], sid)
    gpkg.insert_rows(con, LOG, log_rows)

    # Statuses: queue rows, regions, drawn rows, rejections.
    confirmed = skipped = rejected = 0
    for e in fresh:
        if e.source in ("queue", "suggestion"):
            status = "skipped" if e.skip else ("reviewed" if e.code is None else f"corrected v{new_version}")
            con.execute(
                f"UPDATE {QUEUE} SET status = ?, imported_version = ?, reviewed = 1 WHERE fid = ?",
                (status, new_version, e.fid),
            )
            if e.source == "queue":
                con.execute(
                    "UPDATE regions SET status = ?, updated = ? WHERE region_id = ?",
                    ("skipped" if e.skip else "reviewed", now, e.region_id),
                )
            confirmed += int(e.code is None and not e.skip and e.source == "queue")
            skipped += int(e.skip)
            if e.source == "suggestion" and (e.code is None or e.rejects is not None):
                sug = e.rejects
                if sug is None:
                    sug = con.execute(f"SELECT suggested_class FROM {QUEUE} WHERE fid = ?", (e.fid,)).fetchone()[0]
                con.execute(
                    "INSERT OR REPLACE INTO rejections (region_id, class_code, round, author, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (e.region_id, int(sug), e.round, e.author, now),
                )
                rejected += 1
        elif e.source == "drawn":
            con.execute(
                f"UPDATE {CORRECTIONS} SET status = ?, imported_version = ? WHERE fid = ?",
                (f"imported v{new_version}", new_version, e.fid),
            )
    for layer, status, fid in marks:
        con.execute(f"UPDATE {layer} SET status = ? WHERE fid = ?", (status, fid))

    # The audit sample's answers calibrate the model's suggestions (refine.autocorrect).
    _update_tally(ws, con, fresh, new)
    imported = sum(1 for e in fresh if e.code is not None and not e.skip)
    return ImportResult(new_version, imported, pixels_changed, confirmed, skipped, rejected,
                        invalid, already, per_class)  # fmt: skip


def _summary(changes: dict[str, int], e: Edit, names: dict[int, str]) -> str:
    """One line for the map: the main from -> to change, or what the answer was."""
    if changes:
        main = max(changes, key=changes.get)
        return main.replace("->", " → ") + (f" (+{len(changes) - 1} more)" if len(changes) > 1 else "")
    if e.skip:
        return "skipped"
    return "label right" if e.code is None else f"{names.get(e.code, e.code)} (no change)"


def _truthy(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "y", "x")
    return bool(v)


def _round_npz(ws: Workspace, rnd: int, name: str) -> dict[str, np.ndarray]:
    path = ws.rounds_dir / f"r{rnd:03d}" / f"{name}.npz"
    if not path.is_file():
        raise TrustmapError(f"round {rnd}'s {name} are missing from the workspace", path)
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _pixels_polygon(ws: Workspace, pixels: np.ndarray) -> BaseGeometry | None:
    """The polygon of a set of scene pixels (flat indices), traced inside their bounding box."""
    from rasterio.windows import Window

    from tiles.vectorize import mask_polygon

    w = ws.scene.width
    rows, cols = pixels // w, pixels % w
    r0, c0 = int(rows.min()), int(cols.min())
    sub = np.zeros((int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1), bool)
    sub[rows - r0, cols - c0] = True
    return mask_polygon(sub, Window(c0, r0, sub.shape[1], sub.shape[0]), ws.scene.transform)


def _update_tally(ws: Workspace, con: sqlite3.Connection, fresh: list[Edit], labels: np.ndarray) -> None:
    from refine.autocorrect import ConfidenceTally, tally_predictions

    answered: dict[int, set[int]] = {}
    for e in fresh:
        if e.source == "queue" and not e.skip and e.round is not None and e.region_id is not None:
            answered.setdefault(e.round, set()).add(e.region_id)
    if not answered:
        return
    audit = {
        (int(r), int(rid))
        for r, rid in con.execute("SELECT round, region_id FROM regions WHERE audit = 1")
    }
    meta = dict(con.execute("SELECT key, value FROM workspace").fetchall())
    tally = ConfidenceTally.from_dict(json.loads(meta["tally"])) if json.loads(meta.get("tally", "null")) else ConfidenceTally()
    lut = ws.schema.code_to_index()
    added = False
    for rnd, rids in answered.items():
        ids = [rid for rid in rids if (rnd, rid) in audit]
        if not ids:
            continue
        z = _round_npz(ws, rnd, "audit")
        on = np.isin(z["region"], ids)
        answers = lut[labels.reshape(-1)[z["pixels"][on]]]
        tally += tally_predictions(z["pred"][on], z["conf"][on], z["before"][on], answers)
        added = True
    if added:
        set_meta(con, "tally", tally.to_dict())


def _reproject(geom: BaseGeometry, src: Any, dst: Any) -> BaseGeometry:
    from pyproj import Transformer

    tr = Transformer.from_crs(src, dst, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def _read_edits_file(
    ws: Workspace, path: Path, class_field: str
) -> list[tuple[str, int, Any, BaseGeometry | None]]:
    """Polygons of ``path`` in the scene's CRS, each with its class or why it has none."""
    import pyogrio

    if not path.exists():
        raise TrustmapError("edits file not found", path)
    try:
        frame = pyogrio.read_dataframe(path, fid_as_index=True)
    except Exception as exc:  # pyogrio's errors for unreadable files vary by driver
        raise TrustmapError(f"cannot read the edits file ({exc})", path) from None
    if class_field not in frame.columns:
        raise TrustmapError(
            f"the edits have no field {class_field!r} (--class-field); fields: "
            f"{', '.join(c for c in frame.columns if c != 'geometry')}",
            path,
        )
    if frame.crs is None:
        raise TrustmapError("the edits file has no CRS; save it with one", path)
    frame = frame.to_crs(ws.scene.crs.to_wkt())
    out = []
    for fid, row in frame.iterrows():
        name = f"{path.name} fid {fid}"
        try:
            code = parse_class(row[class_field], ws.schema)
        except ValueError as exc:
            out.append((name, 0, str(exc), None))
            continue
        if code is None or code == SKIP:
            out.append((name, 0, f"it has no class in {class_field!r}", None))
            continue
        out.append((name, int(code), None, row.geometry))
    return out
