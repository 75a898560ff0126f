"""An analyst's refinement workspace: the state of days of review, in one folder.

Layout of ``DIR``::

    session.gpkg        the state, as a GeoPackage (opens in QGIS as it is):
                          review_queue    polygons to review, ranked (the analyst edits it)
                          corrections     polygons the analyst draws, with a class
                          correction_log  every correction ever imported: geometry, class,
                                          author, time, round, label version, pixels changed
                          workspace, rounds, regions, label_versions, models, rejections
                                          (attribute tables)
    labels/v000.tif     the cheap labels; v001.tif ... one per import that changed a pixel
    labels/v001.provenance.tif   int32: the correction_log id that last set each pixel
    models/model_001.pt one per ``refine train``
    rounds/r001/        what a round's selection saw (the audit sample's model outputs,
                        the model's suggestions), for folding the answers in later
    regions.npz         the review regions (built once, at ``init``)
    quicklook.tif       the scene as 8-bit RGB, for QGIS
    classes.yaml, config.yaml   the class schema and the settings of every command
    review.qgs          the QGIS project of the review (rewritten by select and import)

**Nothing is lost.** Every command holds the workspace lock (:func:`refine.lock.exclusive`)
and commits its rows in one SQLite transaction, after the rasters it refers to are
written (each to a temporary file, then renamed). A command killed at any moment leaves
the last committed state; files that no committed row refers to are overwritten by the
next command that needs their name. So a correction, once imported, is in the log and in
a label version together, or in neither.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml

from refine import gpkg
from refine.config import RefineConfig, load_config
from refine.model import SegmentationModel
from refine.regions import Regions
from tiles.classes import ClassSchema, load_schema
from tiles.errors import TrustmapError
from tiles.io import atomic_path, remove_path, write_text_atomic
from tiles.raster import SceneImage

FORMAT = "trustmap.refine.workspace/1"
SESSION = "session.gpkg"
QUEUE, CORRECTIONS, LOG = "review_queue", "corrections", "correction_log"
Echo = Callable[[str], None]

QUEUE_FIELDS = {
    "rank": "int64", "round": "int64", "region_id": "int64", "kind": "object",
    "score": "float64", "current_class": "int64", "current_name": "object",
    "suggested_class": "int64", "suggested_name": "object", "suggested_share": "float64",
    "area_m2": "float64", "corrected_class": "object", "reviewed": "int64",
    "note": "object", "status": "object", "imported_version": "int64",
}  # fmt: skip
"""The queue's columns. The analyst edits ``corrected_class`` (a code or a class name;
``skip`` to pass), ``reviewed`` (1 = looked at; an empty ``corrected_class`` then means
the label was right) and ``note``; trustmap writes the rest."""
CORRECTION_FIELDS = {
    "class": "object", "author": "object", "note": "object", "status": "object",
    "imported_version": "int64",
}  # fmt: skip
LOG_FIELDS = {
    "key": "object", "source": "object", "feature": "object", "round": "int64",
    "region_id": "int64", "class_code": "int64", "class_name": "object", "author": "object",
    "imported_at": "object", "label_version": "int64", "pixels_changed": "int64",
    "changes": "object", "summary": "object",
}  # fmt: skip

_TABLES = {
    "workspace": "CREATE TABLE workspace (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "rounds": (
        "CREATE TABLE rounds (round INTEGER PRIMARY KEY, created TEXT NOT NULL, "
        "label_version INTEGER NOT NULL, model INTEGER, strategy TEXT, unit TEXT, "
        "budget REAL, spent REAL, queued INTEGER, audit INTEGER, suggestions INTEGER, "
        "threshold REAL, record TEXT)"
    ),
    "regions": (
        "CREATE TABLE regions (region_id INTEGER PRIMARY KEY, area INTEGER NOT NULL, "
        "cost REAL NOT NULL, status TEXT NOT NULL DEFAULT 'open' "
        "CHECK (status IN ('open', 'queued', 'reviewed', 'skipped')), round INTEGER, "
        "audit INTEGER NOT NULL DEFAULT 0, score REAL, updated TEXT)"
    ),
    "label_versions": (
        "CREATE TABLE label_versions (version INTEGER PRIMARY KEY, file TEXT NOT NULL, "
        "provenance TEXT, created TEXT NOT NULL, parent INTEGER, corrections INTEGER, "
        "pixels_changed INTEGER, sha256 TEXT NOT NULL, command TEXT)"
    ),
    "models": (
        "CREATE TABLE models (model INTEGER PRIMARY KEY, file TEXT NOT NULL, created TEXT NOT NULL, "
        "label_version INTEGER NOT NULL, steps INTEGER, steps_total INTEGER, final_loss REAL, "
        "warm_start INTEGER, seconds REAL)"
    ),
    "rejections": (
        "CREATE TABLE rejections (region_id INTEGER NOT NULL, class_code INTEGER NOT NULL, "
        "round INTEGER, author TEXT, created TEXT, PRIMARY KEY (region_id, class_code))"
    ),
}


def scene_fingerprint(scene: SceneImage) -> dict[str, Any]:
    """What makes a scene *this* scene for the workspace: its grid and bands."""
    return {
        "width": scene.width,
        "height": scene.height,
        "count": scene.count,
        "crs": scene.crs.to_wkt() if scene.crs else None,
        "transform": [round(v, 9) for v in tuple(scene.transform)[:6]],
    }


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_author() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "analyst"


@dataclass
class LabelVersion:
    version: int
    path: Path
    provenance: Path | None


class Workspace:
    """An opened workspace: its folder, its settings and a connection to its state."""

    def __init__(self, root: Path, meta: dict[str, Any], scene_path: Path):
        self.root = root
        self.meta = meta
        self.session = root / SESSION
        self.labels_dir = root / "labels"
        self.models_dir = root / "models"
        self.rounds_dir = root / "rounds"
        self.work = root / "work"
        self.project = root / "review.qgs"
        self.quicklook = root / "quicklook.tif"
        self.schema: ClassSchema = load_schema(root / "classes.yaml")
        self.config: RefineConfig = load_config(root / "config.yaml")
        self.scene_path = scene_path
        self._scene: SceneImage | None = None
        self._regions: Regions | None = None

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike, scene: str | os.PathLike | None = None) -> Workspace:
        """Open ``root``, checking it is a workspace of this format and, when ``scene`` is
        given (the scene moved), that it is the workspace's scene."""
        root = Path(root)
        session = root / SESSION
        if not root.is_dir():
            raise TrustmapError("workspace not found (create one with `refine init`)", root)
        if not session.is_file():
            raise TrustmapError(f"not a refine workspace: no {SESSION}", root)
        meta = read_meta(session)
        if meta.get("format") != FORMAT:
            raise TrustmapError(
                f"workspace format {meta.get('format')!r} is not {FORMAT!r} "
                "(made by another trustmap version?)",
                session,
            )
        check_schema(session)
        for name in ("classes.yaml", "config.yaml", "regions.npz"):
            if not (root / name).is_file():
                raise TrustmapError(f"workspace file {name} is missing", root)
        scene_path = Path(scene) if scene is not None else Path(meta["scene"])
        ws = cls(root, meta, scene_path)
        if not scene_path.exists():
            raise TrustmapError(
                "the workspace's scene is not there any more; pass its new path with --scene",
                scene_path,
            )
        got = scene_fingerprint(ws.scene)
        if got != meta["scene_fingerprint"]:
            diff = [k for k in got if got[k] != meta["scene_fingerprint"].get(k)]
            raise TrustmapError(
                f"this is not the workspace's scene: its {', '.join(diff)} differ from the "
                f"scene the workspace was made on ({meta['scene']})",
                scene_path,
            )
        return ws

    @property
    def scene(self) -> SceneImage:
        if self._scene is None:
            self._scene = SceneImage(self.scene_path)
        return self._scene

    @property
    def regions(self) -> Regions:
        if self._regions is None:
            with np.load(self.root / "regions.npz") as z:
                self._regions = Regions(
                    z["labels"], z["area"], z["bbox"], z["centroid"], z["cost"],
                    str(z["cost_unit"]), str(z["kind"]),
                )  # fmt: skip
        return self._regions

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection whose ``with con:`` blocks are transactions (BEGIN IMMEDIATE)."""
        try:
            con = sqlite3.connect(self.session, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise TrustmapError(f"cannot open the workspace state ({exc})", self.session) from None
        try:
            yield con
        except sqlite3.DatabaseError as exc:
            raise TrustmapError(
                f"the workspace state is damaged or was edited into an invalid state ({exc})",
                self.session,
            ) from None
        finally:
            con.close()

    @contextlib.contextmanager
    def locked(self, command: str) -> Iterator[None]:
        from refine.lock import exclusive

        with exclusive(self.root, command):
            clean_stale_staging(self.root)
            yield

    # --- label versions --------------------------------------------------------------------
    def current_version(self, con: sqlite3.Connection) -> LabelVersion:
        row = con.execute(
            "SELECT version, file, provenance FROM label_versions ORDER BY version DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise TrustmapError("the workspace has no label version (damaged?)", self.session)
        return LabelVersion(
            int(row[0]), self.root / row[1], self.root / row[2] if row[2] else None
        )

    def read_version(self, version: LabelVersion) -> tuple[np.ndarray, np.ndarray]:
        """(labels uint8, provenance int32) of a committed version, checked on disk."""
        for p in (version.path, version.provenance):
            if p is not None and not p.is_file():
                raise TrustmapError(f"label version {version.version} is missing on disk", p)
        with rasterio.open(version.path) as ds:
            labels = ds.read(1)
        if version.provenance is None:
            prov = np.zeros(labels.shape, np.int32)
        else:
            with rasterio.open(version.provenance) as ds:
                prov = ds.read(1)
        return labels, prov

    def region_status(self, con: sqlite3.Connection) -> np.ndarray:
        """(R,) object array of each region's status."""
        n = self.regions.n
        out = np.full(n, "open", object)
        for rid, status in con.execute("SELECT region_id, status FROM regions"):
            if 0 <= rid < n:
                out[rid] = status
        return out

    def reviewed_pixels(self, con: sqlite3.Connection, provenance: np.ndarray) -> np.ndarray:
        """(H, W) bool: pixels an analyst looked at (reviewed regions, drawn corrections)."""
        status = self.region_status(con)
        mask = self.regions.mask(np.flatnonzero(status == "reviewed"))
        return mask | (provenance > 0)

    def latest_model(self, con: sqlite3.Connection) -> tuple[int, Path] | None:
        row = con.execute("SELECT model, file FROM models ORDER BY model DESC LIMIT 1").fetchone()
        return (int(row[0]), self.root / row[1]) if row else None

    def load_model(self, con: sqlite3.Connection) -> tuple[int, SegmentationModel] | None:
        found = self.latest_model(con)
        if found is None:
            return None
        return found[0], SegmentationModel.load(found[1], self.schema, threads=self.config.threads)

    def label_profile(self) -> dict[str, Any]:
        from refine.inputs import label_profile

        s = self.scene
        return label_profile(
            {"width": s.width, "height": s.height, "crs": s.crs, "transform": s.transform},
            self.schema,
        )

    def write_version_files(
        self, version: int, labels: np.ndarray, provenance: np.ndarray
    ) -> tuple[Path, Path]:
        """Write ``labels/vNNN.tif`` and its provenance raster (not yet committed)."""
        from refine.inputs import write_labels
        from tiles.qgis import write_raster_style

        self.labels_dir.mkdir(exist_ok=True)
        path = self.labels_dir / f"v{version:03d}.tif"
        write_labels(path, labels, self.label_profile(), self.schema, f"labels v{version}")
        write_raster_style(path, self.schema)
        prov = self.labels_dir / f"v{version:03d}.provenance.tif"
        profile = {**self.label_profile(), "dtype": "int32", "nodata": None}
        profile.pop("photometric", None)
        with atomic_path(prov) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.write(provenance.astype(np.int32), 1)
            dst.set_band_description(1, "correction_log id that last set the pixel (0 = cheap)")
        return path, prov


# --- creating -------------------------------------------------------------------------------
def init_workspace(
    root: str | os.PathLike,
    scene_path: str | os.PathLike,
    labels: list[Path],
    classes: str | os.PathLike,
    config: RefineConfig,
    echo: Echo | None = None,
) -> Workspace:
    """Create a workspace in ``root`` (new or empty) for ``scene_path`` and its cheap labels.

    Everything is built in a hidden staging folder and renamed into place at the end, so
    a failed or killed ``init`` leaves no half workspace behind.
    """
    from refine.inputs import fuse_sources, read_labels
    from refine.rounds import scene_regions
    from tiles.io import atomic_dir
    from tiles.raster import open_raster, require_crs

    echo = echo or (lambda _: None)
    root, scene_path = Path(root), Path(scene_path).resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise TrustmapError(
            "workspace folder exists and is not empty; choose a new folder", root
        )
    if not labels:
        raise TrustmapError("init needs the cheap labels (--labels)")
    schema = load_schema(classes)
    with open_raster(scene_path) as ds:
        require_crs(ds, scene_path)
    scene = SceneImage(scene_path)
    valid = scene.valid_mask()
    if not valid.any():
        raise TrustmapError("scene is empty: every pixel is nodata", scene_path)
    sources = np.stack([read_labels(Path(p), scene, schema, "cheap labels") for p in labels])
    start = fuse_sources(sources, schema, config.cheap.fusion)
    start[~valid] = schema.ignore
    if not np.any(start[valid] != schema.ignore):
        raise TrustmapError("the cheap labels label no pixel of the scene", labels[0])
    echo(f"building review regions ({config.regions.kind}, ~{config.regions.size} px each)")
    regions = scene_regions(config, schema, scene, valid, start)
    if regions.n == 0:
        raise TrustmapError("no review regions could be built on the scene's valid pixels")
    root.parent.mkdir(parents=True, exist_ok=True)
    created = not root.exists()
    if not created:
        root.rmdir()  # empty (checked above); atomic_dir renames the staging folder here
    meta = {
        "format": FORMAT,
        "scene": str(scene_path),
        "scene_fingerprint": scene_fingerprint(scene),
        "labels": [str(Path(p).resolve()) for p in labels],
        "created": gpkg.now(),
        "tally": None,
    }
    with atomic_dir(root) as tmp:
        shutil.copyfile(classes, tmp / "classes.yaml")
        (tmp / "config.yaml").write_text(
            yaml.safe_dump(config.to_json_dict(), sort_keys=False), encoding="utf-8"
        )
        np.savez_compressed(
            tmp / "regions.npz", labels=regions.labels, area=regions.area, bbox=regions.bbox,
            centroid=regions.centroid, cost=regions.cost, cost_unit=regions.cost_unit, kind=regions.kind,
        )  # fmt: skip
        from tiles.quicklook import write_quicklook

        write_quicklook(scene_path, out_tif=tmp / "quicklook.tif")
        staged = Workspace.__new__(Workspace)
        staged.root, staged.schema, staged.scene_path = tmp, schema, scene_path
        staged.labels_dir, staged._scene = tmp / "labels", scene
        path, prov = staged.write_version_files(0, start, np.zeros(start.shape, np.int32))
        _create_session(tmp / SESSION, scene, schema, meta, regions, path, prov, tmp)
    echo(
        f"workspace {root}: {regions.n} regions on {int(valid.sum())} valid pixels, "
        f"labels v0 from {len(labels)} source(s)"
    )
    return Workspace.open(root)


def _create_session(
    session: Path,
    scene: SceneImage,
    schema: ClassSchema,
    meta: dict[str, Any],
    regions: Regions,
    labels: Path,
    provenance: Path,
    root: Path,
) -> None:
    from refine.review import corrections_style, queue_style
    from tiles.qgis import store_gpkg_style

    gpkg.create_layers(
        session, {QUEUE: QUEUE_FIELDS, CORRECTIONS: CORRECTION_FIELDS, LOG: LOG_FIELDS}, scene.crs
    )
    con = sqlite3.connect(session, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        for name, ddl in _TABLES.items():
            con.execute(ddl)
            gpkg.register_attributes(con, name, f"trustmap refine workspace: {name}")
        con.executemany(
            "INSERT INTO workspace (key, value) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in meta.items()],
        )
        con.executemany(
            "INSERT INTO regions (region_id, area, cost) VALUES (?, ?, ?)",
            zip(range(regions.n), regions.area.tolist(), regions.cost.tolist(), strict=True),
        )
        con.execute(
            "INSERT INTO label_versions (version, file, provenance, created, parent, corrections, "
            "pixels_changed, sha256, command) VALUES (0, ?, ?, ?, NULL, 0, 0, ?, 'init')",
            (
                labels.relative_to(root).as_posix(),
                provenance.relative_to(root).as_posix(),
                gpkg.now(),
                sha256_of(labels),
            ),
        )
        store_gpkg_style(session, QUEUE, queue_style(schema, []), "trustmap review queue", con)
        store_gpkg_style(session, CORRECTIONS, corrections_style(schema), "trustmap corrections", con)
        store_gpkg_style(session, LOG, corrections_style(schema, "class_code"), "trustmap log", con)
        con.execute("COMMIT")
    finally:
        con.close()


def read_meta(session: Path) -> dict[str, Any]:
    try:
        con = sqlite3.connect(f"file:{session}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT key, value FROM workspace").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise TrustmapError(f"not a refine workspace state ({exc})", session) from None
    try:
        return {k: json.loads(v) for k, v in rows}
    except (TypeError, ValueError) as exc:
        raise TrustmapError(f"workspace table was edited into an invalid state ({exc})", session) from None


def check_schema(session: Path) -> None:
    """Refuse a state whose tables or columns are not the ones this version writes."""
    con = sqlite3.connect(f"file:{session}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        expected = {**dict.fromkeys(_TABLES), QUEUE: None, CORRECTIONS: None, LOG: None}
        missing = sorted(set(expected) - tables)
        if missing:
            raise TrustmapError(f"workspace state lacks the table(s) {', '.join(missing)}", session)
        for layer, fields in ((QUEUE, QUEUE_FIELDS), (CORRECTIONS, CORRECTION_FIELDS), (LOG, LOG_FIELDS)):
            cols = {r[1] for r in con.execute(f'PRAGMA table_info("{layer}")')}
            lost = sorted(set(fields) - cols)
            if lost:
                raise TrustmapError(
                    f"layer {layer!r} lacks the field(s) {', '.join(lost)} (deleted in QGIS?)",
                    session,
                )
    except sqlite3.DatabaseError as exc:
        raise TrustmapError(f"not a refine workspace state ({exc})", session) from None
    finally:
        con.close()


def set_meta(con: sqlite3.Connection, key: str, value: Any) -> None:
    con.execute(
        "INSERT OR REPLACE INTO workspace (key, value) VALUES (?, ?)", (key, json.dumps(value))
    )


def clean_stale_staging(root: Path) -> list[Path]:
    """Remove the staging files of killed trustmap commands inside the workspace (only
    trustmap's own staging names, only of processes that are gone)."""
    from tiles.io import is_stale_staging

    removed = []
    for folder in (root, root / "labels", root / "models", root / "rounds", root / "work"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if is_stale_staging(p):
                remove_path(p)
                removed.append(p)
    return removed


def write_json(path: Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


# --- train ------------------------------------------------------------------------------------------
def train_workspace(ws: Workspace, echo: Echo | None = None, fresh: bool = False) -> dict[str, Any]:
    """Train (first time, or ``fresh``) or fine-tune the model on the current labels.

    Pixels an analyst looked at weigh ``train.reviewed_weight`` in the loss. The model is
    saved as ``models/model_NNN.pt`` and committed with the label version it learnt from.
    """
    import time

    echo = echo or (lambda _: None)
    cfg = ws.config
    with ws.locked("refine train"), ws.connect() as con:
        version = ws.current_version(con)
        labels, provenance = ws.read_version(version)
        reviewed = ws.reviewed_pixels(con, provenance)
        loaded = None if fresh or not cfg.train.warm_start else ws.load_model(con)
        t0 = time.perf_counter()
        if loaded is None:
            model = SegmentationModel.create(cfg.model, ws.schema, ws.scene, seed=cfg.seed, threads=cfg.threads)
            steps = model.first_round_steps(labels, cfg.train)
        else:
            model, steps = loaded[1], cfg.train.finetune_steps
        n = int(con.execute("SELECT COALESCE(MAX(model), 0) FROM models").fetchone()[0]) + 1
        echo(
            f"training model {n} on labels v{version.version} ({steps} steps, "
            + ("fine-tuning model " + str(loaded[0]) if loaded else "from the encoder's weights")
            + ")"
        )
        log = model.fit(ws.scene, labels, cfg.train, steps, seed=cfg.seed + n, desc=f"train m{n}",
                        reviewed=reviewed if reviewed.any() else None)  # fmt: skip
        ws.models_dir.mkdir(exist_ok=True)
        path = model.save(ws.models_dir / f"model_{n:03d}.pt")
        seconds = time.perf_counter() - t0
        con.execute("BEGIN IMMEDIATE")
        con.execute(
            "INSERT INTO models (model, file, created, label_version, steps, steps_total, final_loss, "
            "warm_start, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (n, path.relative_to(ws.root).as_posix(), gpkg.now(), version.version, steps,
             model.steps_trained, log.final_loss, int(loaded is not None), seconds),
        )  # fmt: skip
        con.execute("COMMIT")
    echo(f"model {n} saved ({path}); final loss {log.final_loss:.3f}" if log.final_loss is not None else f"model {n} saved")
    return {"model": n, "path": path, "steps": steps, "label_version": version.version,
            "final_loss": log.final_loss, "seconds": seconds}  # fmt: skip


# --- status -----------------------------------------------------------------------------------------
def workspace_status(ws: Workspace) -> dict[str, Any]:
    """Rounds, budget spent, pixels changed per class, the queue: what ``refine status`` shows."""
    with ws.connect() as con:
        version = ws.current_version(con)
        rounds = [
            dict(zip(("round", "created", "label_version", "strategy", "budget", "unit", "queued", "audit",
                      "suggestions", "threshold"), row, strict=True))
            for row in con.execute(
                "SELECT round, created, label_version, strategy, budget, unit, queued, audit, suggestions, "
                "threshold FROM rounds ORDER BY round"
            )
        ]  # fmt: skip
        regions = dict(con.execute("SELECT status, COUNT(*) FROM regions GROUP BY status").fetchall())
        cost = dict(con.execute("SELECT status, SUM(cost) FROM regions GROUP BY status").fetchall())
        total_cost = float(sum(cost.values()) or 1.0)
        queue = dict(
            con.execute(f"SELECT status, COUNT(*) FROM {QUEUE} GROUP BY status").fetchall()
        )
        top = [
            dict(zip(("rank", "round", "region_id", "kind", "current_name", "suggested_name", "score"), r, strict=True))
            for r in con.execute(
                f'SELECT "rank", round, region_id, kind, current_name, suggested_name, score FROM {QUEUE} '
                "WHERE status = 'queued' ORDER BY round, \"rank\" LIMIT 5"
            )
        ]  # fmt: skip
        changes: dict[str, int] = {}
        for (text,) in con.execute(f"SELECT changes FROM {LOG}"):
            for k, v in json.loads(text or "{}").items():
                changes[k] = changes.get(k, 0) + int(v)
        corrections = int(con.execute(f"SELECT COUNT(*) FROM {LOG}").fetchone()[0])
        pending = int(
            con.execute(f"SELECT COUNT(*) FROM {CORRECTIONS} WHERE imported_version IS NULL").fetchone()[0]
        )
        models = int(con.execute("SELECT COUNT(*) FROM models").fetchone()[0])
    reviewed_cost = float(cost.get("reviewed", 0.0) or 0.0) + float(cost.get("skipped", 0.0) or 0.0)
    return {
        "workspace": str(ws.root),
        "scene": str(ws.scene_path),
        "label_version": version.version,
        "models": models,
        "rounds": rounds,
        "regions": {"total": ws.regions.n, **regions},
        "budget_spent": {
            "reviewed": reviewed_cost / total_cost,
            "queued": float(cost.get("queued", 0.0) or 0.0) / total_cost,
            "unit": ws.regions.cost_unit,
        },
        "queue": queue,
        "next_in_queue": top,
        "log_entries": corrections,
        "drawn_not_imported": pending,
        "pixels_changed": changes,
    }


def format_status(st: dict[str, Any]) -> str:
    lines = [
        f"workspace {st['workspace']} on {st['scene']}",
        f"labels v{st['label_version']}, {st['models']} model(s), {len(st['rounds'])} round(s)",
        f"regions: {st['regions']['total']} ("
        + ", ".join(f"{k} {v}" for k, v in st["regions"].items() if k != "total")
        + ")",
        f"budget spent: {st['budget_spent']['reviewed']:.2%} of the scene reviewed, "
        f"{st['budget_spent']['queued']:.2%} queued",
    ]
    for r in st["rounds"]:
        lines.append(
            f"  round {r['round']}: {r['queued']} regions queued on labels v{r['label_version']} "
            f"({r['strategy']}), {r['suggestions']} suggestions, {r['created']}"
        )
    if st["queue"]:
        lines.append("queue: " + ", ".join(f"{k} {v}" for k, v in sorted(st["queue"].items())))
    for t in st["next_in_queue"]:
        lines.append(
            f"  next: #{t['rank']} of round {t['round']}, region {t['region_id']} ({t['kind']}): "
            f"{t['current_name']} -> model says {t['suggested_name']}"
        )
    if st["pixels_changed"]:
        lines.append("pixels changed: " + ", ".join(f"{k} {v}" for k, v in sorted(st["pixels_changed"].items())))
    lines.append(f"{st['log_entries']} corrections imported, {st['drawn_not_imported']} drawn and not yet imported")
    return "\n".join(lines)
