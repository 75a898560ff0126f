"""The bad-input matrix: every CLI, fed what a hostile or careless user would feed it.

For every case the command must

* exit 1 (2 for usage errors, as click decides);
* print no ``Traceback`` and no "internal error" (a bug);
* name the file or the option at fault;
* leave the case folder exactly as it was: nothing new (no output, no staging), every
  existing byte identical (inputs and earlier outputs, checked by SHA-256).

Each case runs in its own folder holding copies of a tiny, valid workspace (a 64 x 64 scene,
a class mask, a schema, vector labels, a cut, COCO files), and one broken thing. Most cases
call the CLIs in-process with click's CliRunner (fast); a few run the real executables, to
check exit codes and signal handling as a shell sees them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from shapely.geometry import box

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DATA_DIRS = [ROOT / "tests" / "data"]  # part of the repository: any clone has them
CRS = "EPSG:32618"
TF = Affine(2.0, 0, 500_000.0, 0, -2.0, 4_100_000.0)


def real_file(name: str) -> Path:
    for d in DATA_DIRS:
        if (d / name).exists():
            return d / name
    pytest.fail(f"real test data missing: {name} (looked in {', '.join(map(str, DATA_DIRS))})")


# --- the pristine workspace ------------------------------------------------------------------------
def _write_tif(path: Path, data: np.ndarray, crs=CRS, nodata=None, **kw) -> None:
    data = data if data.ndim == 3 else data[None]
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype.name, crs=crs, transform=TF, nodata=nodata, **kw)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _build_workspace(d: Path) -> None:
    rng = np.random.default_rng(0)
    _write_tif(d / "scene.tif", rng.integers(1, 255, (3, 64, 64), dtype=np.uint8))
    mask = np.full((64, 64), 1, np.uint8)
    mask[:, 32:] = 2
    mask[40:, :20] = 3
    mask[:4, :4] = 255
    _write_tif(d / "mask.tif", mask, nodata=255)
    bad = mask.copy()
    bad[10:12, 10:12] = 77
    _write_tif(d / "badcodes.tif", bad, nodata=255)
    _write_tif(d / "nocrs.tif", rng.integers(0, 255, (3, 64, 64), dtype=np.uint8), crs=None)
    _write_tif(d / "float.tif", rng.random((64, 64)).astype(np.float32))
    _write_tif(d / "twoband.tif", np.stack([mask, mask]))
    _write_tif(d / "nodata.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)
    raw = (d / "scene.tif").read_bytes()
    (d / "truncated.tif").write_bytes(raw[: len(raw) // 2])
    (d / "empty.tif").write_bytes(b"")
    (d / "notes.txt").write_text("not a raster\n")
    shutil.copy(ROOT / "configs" / "classes" / "landcover6.yaml", d / "classes.yaml")
    x0, y0 = TF.c, TF.f
    gdf = gpd.GeoDataFrame({"class": [1, 2]}, geometry=[box(x0, y0 - 64, x0 + 64, y0), box(x0 + 64, y0 - 128, x0 + 128, y0)], crs=CRS)
    gdf.to_file(d / "labels.gpkg", layer="labels", driver="GPKG")
    gdf.assign(kind=["a", "b"]).drop(columns="class").to_file(d / "nofield.gpkg", driver="GPKG")
    far = gpd.GeoDataFrame({"class": [1]}, geometry=[box(0, 0, 10, 10)], crs=CRS)
    far.to_file(d / "far.gpkg", driver="GPKG")

    from tiles.cut import cut_scene

    cut_scene(d / "scene.tif", d / "cut", size=32, overlap=8)
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 64},
              {"id": 2, "file_name": "b.png", "width": 64, "height": 64}]  # fmt: skip
    anns = [{"id": 1, "image_id": 1, "bbox": [4, 4, 10, 10], "category_id": 1, "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 2, "bbox": [20, 20, 8, 8], "category_id": 2, "area": 64, "iscrowd": 0}]  # fmt: skip
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "ship"}]}
    (d / "gt.json").write_text(json.dumps(gt))
    preds = [{"image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 10], "score": 0.9},
             {"image_id": 2, "category_id": 2, "bbox": [21, 21, 8, 8], "score": 0.6},
             {"image_id": 2, "category_id": 1, "bbox": [40, 40, 5, 5], "score": 0.3}]  # fmt: skip
    (d / "preds.json").write_text(json.dumps(preds))


@pytest.fixture(scope="session")
def pristine(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pristine")
    _build_workspace(d)
    return d


@pytest.fixture
def ws(pristine, tmp_path, monkeypatch) -> Path:
    d = tmp_path / "ws"
    shutil.copytree(pristine, d)
    monkeypatch.delenv("TRUSTMAP_DEBUG", raising=False)
    monkeypatch.chdir(d)
    return d


def snapshot(d: Path) -> dict[str, str]:
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --- the cases ----------------------------------------------------------------------------------------
def _json(name: str, value) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / name).write_text(value if isinstance(value, str) else json.dumps(value))

    return setup


def _yaml(name: str, text: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / name).write_text(text)

    return setup


def _gt(**changes) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        gt = json.loads((d / "gt.json").read_text())
        gt.update(changes)
        (d / "bad_gt.json").write_text(json.dumps(gt))

    return setup


def _preds(entries) -> Callable[[Path], None]:
    return _json("bad_preds.json", entries)


def _index(edit: Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame]) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        idx = gpd.read_file(d / "cut" / "index.gpkg", layer="tiles")
        edit(idx).to_file(d / "cut" / "bad.gpkg", layer="tiles", driver="GPKG")

    return setup


def _set_path(value: str) -> Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame]:
    def edit(idx):
        idx.loc[0, "path"] = value
        return idx

    return edit


def _claim(**cols) -> Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame]:
    def edit(idx):
        for k, v in cols.items():
            idx[k] = v
        return idx

    return edit


def _outside(d: Path) -> None:
    (d.parent / "outside").mkdir(exist_ok=True)
    shutil.copy(d / "cut" / "tiles" / "tile_r000_c000.tif", d.parent / "outside" / "x.tif")


def _earlier_audit(d: Path) -> None:
    (d / "audit").mkdir()
    shutil.copy(d / "preds.json", d / "audit" / "preds.json")
    shutil.copy(d / "gt.json", d / "audit" / "gt.json")
    (d / "audit" / "audit.json").write_text("{}")


def _foreign_dir(name: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / name).mkdir(parents=True)
        (d / name / "thesis.docx").write_text("years of work")

    return setup


def _earlier_export(d: Path) -> None:
    from tiles.classes import load_schema
    from tiles.qgis import export_qgis

    export_qgis(d / "mask.tif", load_schema(d / "classes.yaml"), d / "qgis", name="badcodes")


def _real(*names: str) -> Callable[[Path], None]:
    """Copies of the real files from tests/data into the case folder."""

    def setup(d: Path) -> None:
        for name in names:
            shutil.copy(real_file(name), d / name)
            (d / name).chmod(0o644)

    return setup


def _real_truncated(name: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        raw = real_file(name).read_bytes()
        (d / f"cut_{name}").write_bytes(raw[: len(raw) * 2 // 3])

    return setup


def _real_cut(d: Path) -> None:
    from tiles.cut import cut_scene

    _real("RGB.byte.tif")(d)
    cut_scene(d / "RGB.byte.tif", d / "rcut", size=512, overlap=32)


def _all(*setups) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        for s in setups:
            s(d)

    return setup


def _schema(text: str) -> Callable[[Path], None]:
    return _yaml("bad.yaml", text)


TINY_RUN = "regions: {kind: grid, size: 64}\nselect: {budget: 0.5, rounds: 1}\ntrain: {crop: 32, steps: 2, batch_size: 2, finetune_steps: 1}\n"
GOOD_CLASS = '{code: 1, name: water, color: "#1f78b4"}'


@dataclass
class Case:
    id: str
    cli: str
    args: list[str]
    needle: str | tuple[str, ...]
    code: int = 1
    setup: Callable[[Path], None] | None = None
    marks: list = field(default_factory=list)


def C(id, cli, args, needle, code=1, setup=None):  # noqa: N802 - reads like a table
    marks: list = []
    return Case(id, cli, args.split() if isinstance(args, str) else args, needle, code, setup, marks)


ALIGN = "align {d}/labels.gpkg --scene {d}/scene.tif --classes {d}/classes.yaml"
VEC = "vectorize {d}/mask.tif --classes {d}/classes.yaml"
EXP = "export-qgis {d}/mask.tif --classes {d}/classes.yaml"
AUD = "audit --predictions {d}/preds.json --annotations {d}/gt.json"
AUDP = "audit --annotations {d}/gt.json --out {d}/audit --bootstrap 0 --predictions"
AUDG = "audit --predictions {d}/preds.json --out {d}/audit --bootstrap 0 --annotations"
SIM = "simulate --scene {d}/scene.tif --labels {d}/mask.tif --truth {d}/mask.tif --classes {d}/classes.yaml"

CASES = [
    # --- tiles info ------------------------------------------------------------------------------
    C("info-missing", "tiles", "info {d}/missing.tif", "missing.tif: file not found"),
    C("info-dir", "tiles", "info {d}/cut", "cut: is a directory"),
    C("info-text", "tiles", "info {d}/notes.txt", "notes.txt: not a readable raster"),
    C("info-empty", "tiles", "info {d}/empty.tif", "empty.tif:"),
    C("info-truncated", "tiles", "info {d}/truncated.tif", "truncated.tif: corrupt or truncated"),
    C("info-usage", "tiles", "info", "Missing argument", code=2),
    C("info-unknown-option", "tiles", "info {d}/scene.tif --colour", "No such option", code=2),
    # --- tiles quicklook: inputs are never outputs -------------------------------------------------
    C("quicklook-png-is-scene", "tiles", "quicklook {d}/scene.tif --png {d}/scene.tif", "is the input"),
    C("quicklook-tif-is-scene", "tiles", "quicklook {d}/scene.tif --tif {d}/scene.tif", "--tif is the input"),
    C("quicklook-png-is-scene-relative", "tiles", "quicklook scene.tif --png ./scene.tif", "is the input"),
    C("quicklook-png-hardlink", "tiles", "quicklook {d}/scene.tif --png {d}/link.tif", "is the input",
      setup=lambda d: os.link(d / "scene.tif", d / "link.tif")),
    C("quicklook-same-png-tif", "tiles", "quicklook {d}/scene.tif --png {d}/q.png --tif {d}/q.png", "same file"),
    C("quicklook-png-dir", "tiles", "quicklook {d}/scene.tif --png {d}/cut", "is a directory"),
    C("quicklook-png-proc", "tiles", "quicklook {d}/scene.tif --png /proc/x.png", "/proc/x.png"),
    C("quicklook-truncated", "tiles", "quicklook {d}/truncated.tif --png {d}/q.png", "truncated.tif"),
    C("quicklook-text", "tiles", "quicklook {d}/notes.txt --png {d}/q.png", "notes.txt"),
    C("quicklook-missing", "tiles", "quicklook {d}/missing.tif --png {d}/q.png", "missing.tif: file not found"),
    C("quicklook-bands-text", "tiles", "quicklook {d}/scene.tif --png {d}/q.png --bands a,b,c", "--bands"),
    C("quicklook-bands-range", "tiles", "quicklook {d}/scene.tif --png {d}/q.png --bands 9,2,1", "do not exist"),
    C("quicklook-bands-two", "tiles", "quicklook {d}/scene.tif --png {d}/q.png --bands 1,2", "give 3 bands"),
    C("quicklook-max-size", "tiles", "quicklook {d}/scene.tif --png {d}/q.png --max-size 0", "--max-size", code=2),
    # --- tiles cut -------------------------------------------------------------------------------------
    C("cut-size-1", "tiles", "cut {d}/scene.tif --out {d}/o --size 1 --overlap 0 --max-tiles 1000", "--max-tiles"),
    C("cut-overlap-ge-size", "tiles", "cut {d}/scene.tif --out {d}/o --size 16 --overlap 16", "larger than the overlap"),
    C("cut-overlap-negative", "tiles", "cut {d}/scene.tif --out {d}/o --size 16 --overlap -1", "--overlap", code=2),
    C("cut-size-zero", "tiles", "cut {d}/scene.tif --out {d}/o --size 0", "--size", code=2),
    C("cut-out-is-file", "tiles", "cut {d}/scene.tif --out {d}/notes.txt", "notes.txt: --output exists and is not a directory"),
    C("cut-scene-in-out-tiles", "tiles", "cut {d}/cut/tiles/tile_r000_c000.tif --out {d}/cut", "contains the input"),
    C("cut-scene-is-index", "tiles", "cut {d}/cut/index.gpkg --out {d}/cut", "index.gpkg"),
    C("cut-foreign-tiles-dir", "tiles", "cut {d}/scene.tif --out {d}/f", "not one that tiles cut wrote",
      setup=_foreign_dir("f/tiles")),
    C("cut-proc", "tiles", "cut {d}/scene.tif --out /proc/x", "/proc/x"),
    C("cut-truncated", "tiles", "cut {d}/truncated.tif --out {d}/o", "truncated.tif"),
    C("cut-nocrs", "tiles", "cut {d}/nocrs.tif --out {d}/o", "nocrs.tif: has no CRS"),
    C("cut-missing", "tiles", "cut {d}/missing.tif --out {d}/o", "missing.tif: file not found"),
    C("cut-all-nodata-into-earlier-cut", "tiles", "cut {d}/nodata.tif -o {d}/cut --skip-nodata --overwrite", "nothing to cut"),
    C("cut-earlier-cut-without-overwrite", "tiles", "cut {d}/scene.tif -o {d}/cut", "index.gpkg: --output exists; pass --overwrite"),
    C("cut-tile-size-zero", "tiles", "cut {d}/scene.tif -o {d}/o --tile-size 0", "--tile-size", code=2),
    C("cut-size-and-tile-size-disagree", "tiles", "cut {d}/scene.tif -o {d}/o --tile-size 16 --size 32", "--size and --tile-size", code=2),
    C("cut-co-unknown", "tiles", "cut {d}/scene.tif -o {d}/o --co FOO=1", "--co FOO=1"),
    C("cut-co-no-equals", "tiles", "cut {d}/scene.tif -o {d}/o --co DEFLATE", "KEY=VALUE", code=2),
    C("cut-no-output", "tiles", "cut {d}/scene.tif", "Missing option '-o' / '--output'", code=2),
    C("cut-size-text", "tiles", "cut {d}/scene.tif --out {d}/o --size big", "--size", code=2),
    # --- tiles stitch: the index is untrusted ----------------------------------------------------------
    C("stitch-out-is-index", "tiles", "stitch {d}/cut/index.gpkg --out {d}/cut/index.gpkg", "is the input"),
    C("stitch-out-is-tile", "tiles", "stitch {d}/cut/index.gpkg --out {d}/cut/tiles/tile_r000_c001.tif", "is the input"),
    C("stitch-out-holds-index", "tiles", "stitch {d}/cut/index.gpkg --out {d}/cut", "contains the input"),
    C("stitch-out-dir", "tiles", "stitch {d}/cut/index.gpkg --out {d}/o.tif", "is a directory",
      setup=lambda d: (d / "o.tif").mkdir()),
    C("stitch-out-proc", "tiles", "stitch {d}/cut/index.gpkg --out /proc/x.tif", "/proc/x.tif"),
    C("stitch-index-text", "tiles", "stitch {d}/notes.txt --out {d}/o.tif", "notes.txt: not a trustmap tile index"),
    C("stitch-index-raster", "tiles", "stitch {d}/scene.tif --out {d}/o.tif", "scene.tif: not a trustmap tile index"),
    C("stitch-index-dir", "tiles", "stitch {d}/cut --out {d}/o.tif", "cut: is a directory"),
    C("stitch-index-missing", "tiles", "stitch {d}/missing.gpkg --out {d}/o.tif", "missing.gpkg: tile index not found"),
    C("stitch-index-no-rows", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "lists no tiles",
      setup=_index(lambda idx: idx.iloc[0:0])),
    C("stitch-index-lacks-column", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "lacks column",
      setup=_index(lambda idx: idx.drop(columns=["scene_width"]))),
    C("stitch-path-dotdot", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "points outside",
      setup=_all(_outside, _index(_set_path("../../outside/x.tif")))),
    C("stitch-path-absolute", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "points outside",
      setup=_index(_set_path("/etc/passwd"))),
    C("stitch-path-absolute-missing", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "points outside",
      setup=_index(_set_path("/nonexistent/x.tif"))),
    C("stitch-path-symlink-out", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "points outside",
      setup=_all(_outside, lambda d: os.symlink(d.parent / "outside", d / "cut" / "esc"),
                 _index(_set_path("esc/x.tif")))),
    C("stitch-path-missing-tile", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "nope.tif: file not found",
      setup=_index(_set_path("tiles/nope.tif"))),
    C("stitch-path-tile-is-text", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "notes.txt",
      setup=_all(lambda d: shutil.copy(d / "notes.txt", d / "cut" / "notes.txt"), _index(_set_path("notes.txt")))),
    C("stitch-claims-1e9-pixels", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "--max-pixels",
      setup=_index(_claim(scene_width=31623, scene_height=31623))),
    C("stitch-claims-size-1", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "--max-tiles",
      setup=_index(_claim(size=2, overlap=1, scene_width=2000, scene_height=2000))),
    C("stitch-claims-other-tile-size", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "tile_r000_c000.tif",
      setup=_index(_claim(size=16, overlap=4))),
    C("stitch-claims-negative", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "bad.gpkg",
      setup=_index(_claim(scene_width=-5))),
    C("stitch-claims-overlap-ge-size", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "overlap",
      setup=_index(_claim(overlap=64))),
    C("stitch-tile-window-mismatch", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "does not match",
      setup=_index(lambda idx: idx.assign(col_off=idx.col_off.where(idx.tile != 1, 3)))),
    C("stitch-duplicate-tile", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "more than once",
      setup=_index(lambda idx: idx.assign(tile=idx.tile.where(idx.tile != 1, 0)))),
    C("stitch-tile-outside-grid", "tiles", "stitch {d}/cut/bad.gpkg --out {d}/o.tif", "outside its own grid",
      setup=_index(lambda idx: idx.assign(tile=idx.tile.where(idx.tile != 1, 999)))),
    C("stitch-tile-truncated", "tiles", "stitch {d}/cut/index.gpkg --out {d}/o.tif", "tile_r000_c000.tif",
      setup=lambda d: (d / "cut/tiles/tile_r000_c000.tif").write_bytes((d / "truncated.tif").read_bytes())),
    C("stitch-bad-mode", "tiles", "stitch {d}/cut/index.gpkg --out {d}/o.tif --mode mean", "--mode", code=2),
    C("stitch-jpg-suffix", "tiles", "stitch {d}/cut/index.gpkg -o {d}/o.jpg", "o.jpg: --output is a JPEG name"),
    C("stitch-no-suffix", "tiles", "stitch {d}/cut/index.gpkg -o {d}/o", "--output is not a GeoTIFF name"),
    C("stitch-co-bad-value", "tiles", "stitch {d}/cut/index.gpkg -o {d}/o.tif --co COMPRESS=BOGUS", "COMPRESS"),
    C("stitch-existing-output", "tiles", "stitch {d}/cut/index.gpkg -o {d}/mask.tif", "mask.tif: --output exists; pass --overwrite"),
    C("stitch-out-and-output-disagree", "tiles", "stitch {d}/cut/index.gpkg -o {d}/a.tif --out {d}/b.tif", "--out and -o/--output", code=2),
    # --- tiles align -------------------------------------------------------------------------------------
    C("align-out-is-scene", "tiles", ALIGN + " --out {d}/scene.tif", "is the input"),
    C("align-out-is-labels", "tiles", ALIGN + " --out {d}/labels.gpkg", "is the input"),
    C("align-out-is-classes", "tiles", ALIGN + " --out {d}/classes.yaml", "is the input"),
    C("align-out-dir", "tiles", ALIGN + " --out {d}/cut", "is a directory"),
    C("align-out-proc", "tiles", ALIGN + " --out /proc/x.tif", "/proc/x.tif"),
    C("align-labels-text", "tiles", "align {d}/notes.txt --scene {d}/scene.tif --classes {d}/classes.yaml --out {d}/o.tif", "notes.txt"),
    C("align-labels-unknown-codes", "tiles", "align {d}/badcodes.tif --scene {d}/scene.tif --classes {d}/classes.yaml --out {d}/o.tif", "77"),
    C("align-vector-no-field", "tiles", "align {d}/nofield.gpkg --scene {d}/scene.tif --classes {d}/classes.yaml --out {d}/o.tif", "nofield.gpkg"),
    C("align-vector-disjoint", "tiles", "align {d}/far.gpkg --scene {d}/scene.tif --classes {d}/classes.yaml --out {d}/o.tif", "does not overlap"),
    C("align-scene-truncated", "tiles", "align {d}/labels.gpkg --scene {d}/truncated.tif --classes {d}/classes.yaml --out {d}/o.tif", "truncated.tif"),
    C("align-scene-nocrs", "tiles", "align {d}/labels.gpkg --scene {d}/nocrs.tif --classes {d}/classes.yaml --out {d}/o.tif", "nocrs.tif: has no CRS"),
    C("align-layer-missing", "tiles", ALIGN + " --out {d}/o.tif --layer nope", "nope"),
    C("align-positional-scene-missing", "tiles", "align {d}/labels.gpkg --classes {d}/classes.yaml -o {d}/o.tif", "Missing argument 'SCENE'", code=2),
    C("align-scene-twice", "tiles", "align {d}/labels.gpkg {d}/scene.tif --scene {d}/mask.tif --classes {d}/classes.yaml -o {d}/o.tif", "--scene and", code=2),
    C("align-existing-output", "tiles", "align {d}/labels.gpkg {d}/scene.tif --classes {d}/classes.yaml -o {d}/mask.tif", "mask.tif: --output exists; pass --overwrite"),
    C("align-jpg-output", "tiles", "align {d}/labels.gpkg {d}/scene.tif --classes {d}/classes.yaml -o {d}/o.jpg", "--output is a JPEG name"),
    C("align-field-on-raster", "tiles", "align {d}/mask.tif {d}/scene.tif --classes {d}/classes.yaml -o {d}/o.tif --class-field x", "--class-field and --layer apply to vector labels"),
    C("align-field-unknown", "tiles", ALIGN + " -o {d}/o.tif --class-field nope", "has no attribute 'nope' (--class-field)"),
    C("align-url-unreachable", "tiles", "align {d}/labels.gpkg https://127.0.0.1:9/s.tif --classes {d}/classes.yaml -o {d}/o.tif", "https://127.0.0.1:9/s.tif: cannot open"),
    # --- class schemas (through align) ---------------------------------------------------------------------
    *[
        C(f"schema-{name}", "tiles", "align {d}/labels.gpkg --scene {d}/scene.tif --classes {d}/bad.yaml --out {d}/o.tif",
          needle, setup=_schema(text))
        for name, text, needle in [
            ("unknown-key-colour", "classes: [{code: 1, name: water, colour: '#1f78b4'}]", "unknown key"),
            ("control-char-name", 'classes: [{code: 1, name: "wa\\x01ter", color: "#1f78b4"}]', "control"),
            ("nul-name", 'classes: [{code: 1, name: "wa\\0ter", color: "#1f78b4"}]', "control"),
            ("name-list", "classes: [{code: 1, name: [a, b], color: '#1f78b4'}]", "must be a text string"),
            ("code-300", "classes: [{code: 300, name: water, color: '#1f78b4'}]", "classes[0].code"),
            ("code-bool", "classes: [{code: true, name: water, color: '#1f78b4'}]", "classes[0].code"),
            ("code-text", "classes: [{code: one, name: water, color: '#1f78b4'}]", "classes[0].code"),
            ("dup-code", f"classes: [{GOOD_CLASS}, {{code: 1, name: tree, color: '#000000'}}]", "duplicate class code"),
            ("dup-name", f"classes: [{GOOD_CLASS}, {{code: 2, name: water, color: '#000000'}}]", "duplicate class name"),
            ("ignore-is-class", f"classes: [{GOOD_CLASS}]\nignore: 1", "ignore code 1"),
            ("bad-colour", "classes: [{code: 1, name: water, color: blue}]", "#rrggbb"),
            ("formula-name", "classes: [{code: 1, name: '=HYPERLINK(1)', color: '#1f78b4'}]", "formula"),
            ("formula-name-at", "classes: [{code: 1, name: '@SUM(A1)', color: '#1f78b4'}]", "formula"),
            ("no-classes", "ignore: 255", "classes"),
            ("empty-classes", "classes: []", "classes"),
            ("not-mapping", "- a\n- b", "mapping"),
            ("not-yaml", "classes: [unclosed", "not valid YAML"),
            ("bad-date", "classes: 2001-02-30", "bad.yaml"),
            ("empty-file", "", "bad.yaml"),
        ]
    ],
    C("schema-binary", "tiles", "align {d}/labels.gpkg --scene {d}/scene.tif --classes {d}/scene.tif --out {d}/o.tif", "scene.tif"),
    C("schema-missing", "tiles", "align {d}/labels.gpkg --scene {d}/scene.tif --classes {d}/nope.yaml --out {d}/o.tif", "nope.yaml"),
    C("schema-dir", "tiles", "align {d}/labels.gpkg --scene {d}/scene.tif --classes {d}/cut --out {d}/o.tif", "cut"),
    # --- tiles vectorize -------------------------------------------------------------------------------------
    C("vectorize-out-proc", "tiles", VEC + " --out /proc/x.gpkg", "/proc/x.gpkg"),
    C("vectorize-out-not-gpkg", "tiles", VEC + " --out {d}/o.shp", "use a .gpkg file name"),
    C("vectorize-existing-output", "tiles", VEC + " -o {d}/labels.gpkg", "labels.gpkg: --output"),
    C("vectorize-out-is-classes", "tiles", "vectorize {d}/mask.tif --classes {d}/c.gpkg --out {d}/c.gpkg", "is the input",
      setup=lambda d: shutil.copy(d / "classes.yaml", d / "c.gpkg")),
    C("vectorize-out-dir", "tiles", VEC + " --out {d}/d.gpkg", "is a directory", setup=lambda d: (d / "d.gpkg").mkdir()),
    C("vectorize-mask-two-bands", "tiles", "vectorize {d}/twoband.tif --classes {d}/classes.yaml --out {d}/o.gpkg", "twoband.tif"),
    C("vectorize-mask-float", "tiles", "vectorize {d}/float.tif --classes {d}/classes.yaml --out {d}/o.gpkg", "float.tif"),
    C("vectorize-mask-unknown-codes", "tiles", "vectorize {d}/badcodes.tif --classes {d}/classes.yaml --out {d}/o.gpkg", "77"),
    C("vectorize-mask-truncated", "tiles", "vectorize {d}/truncated.tif --classes {d}/classes.yaml --out {d}/o.gpkg", "truncated.tif"),
    C("vectorize-simplify-negative", "tiles", VEC + " --out {d}/o.gpkg --simplify -1", "--simplify", code=2),
    C("vectorize-min-area-negative", "tiles", VEC + " --out {d}/o.gpkg --min-area -1", "--min-area", code=2),
    C("export-simplify-text", "tiles", EXP + " --out {d}/q --simplify x", "--simplify", code=2),
    # --- tiles export-qgis ---------------------------------------------------------------------------------------
    C("export-scene-truncated", "tiles", EXP + " --out {d}/q --scene {d}/truncated.tif", "truncated.tif"),
    C("export-scene-nocrs", "tiles", EXP + " --out {d}/q --scene {d}/nocrs.tif", "nocrs.tif: has no CRS"),
    C("export-scene-missing", "tiles", EXP + " --out {d}/q --scene {d}/nope.tif", "nope.tif: file not found"),
    C("export-out-is-file", "tiles", EXP + " --out {d}/notes.txt", "notes.txt"),
    C("export-out-proc", "tiles", EXP + " --out /proc/x", "/proc/x"),
    C("export-out-holds-mask", "tiles", EXP + " --out {d}", "would overwrite its own input mask"),
    C("export-out-holds-scene-as-quicklook", "tiles",
      "export-qgis {d}/mask.tif --classes {d}/classes.yaml --out {d}/q --scene {d}/q/mask_quicklook.tif", "is the input",
      setup=lambda d: (d / "q").mkdir() or shutil.copy(d / "scene.tif", d / "q" / "mask_quicklook.tif")),
    C("export-out-holds-classes-as-style", "tiles", "export-qgis {d}/mask.tif --classes {d}/q/mask.qml --out {d}/q",
      "is the input", setup=lambda d: (d / "q").mkdir() or shutil.copy(d / "classes.yaml", d / "q" / "mask.qml")),
    C("export-mask-unknown-codes-keeps-earlier-bundle", "tiles",
      "export-qgis {d}/badcodes.tif --classes {d}/classes.yaml --out {d}/qgis --overwrite", "77", setup=_earlier_export),
    C("export-earlier-bundle-without-overwrite", "tiles",
      "export-qgis {d}/badcodes.tif --classes {d}/classes.yaml -o {d}/qgis", "badcodes.qgs: --output exists; pass --overwrite",
      setup=_earlier_export),
    C("export-positional-scene-truncated", "tiles", EXP + " {d}/truncated.tif -o {d}/q", "truncated.tif"),
    C("export-mask-two-bands", "tiles", "export-qgis {d}/twoband.tif --classes {d}/classes.yaml --out {d}/q", "twoband.tif"),
    C("export-bad-classes", "tiles", "export-qgis {d}/mask.tif --classes {d}/bad.yaml --out {d}/q", "bad.yaml",
      setup=_schema('classes: [{code: 1, name: "a\\x00", color: "#000000"}]')),
    # --- real scenes from tests/data -------------------------------------------------------------------------------
    C("real-quicklook-png-is-scene", "tiles", "quicklook {d}/RGB.byte.tif --png {d}/RGB.byte.tif", "is the input",
      setup=_real("RGB.byte.tif")),
    C("real-quicklook-tif-is-scene", "tiles", "quicklook {d}/OSBS_029.tif --tif {d}/OSBS_029.tif", "is the input",
      setup=_real("OSBS_029.tif")),
    C("real-quicklook-truncated", "tiles", "quicklook {d}/cut_OSBS_029.tif --png {d}/q.png", "cut_OSBS_029.tif",
      setup=_real_truncated("OSBS_029.tif")),
    C("real-cut-size-2-default-limit", "tiles", "cut {d}/RGB.byte.tif --out {d}/o --size 2 --overlap 0", "--max-tiles",
      setup=_real("RGB.byte.tif")),
    C("real-align-out-is-scene", "tiles", "align {d}/mask.tif --scene {d}/RGB.byte.tif --classes {d}/classes.yaml "
      "--out {d}/RGB.byte.tif", "is the input", setup=_real("RGB.byte.tif")),
    C("real-stitch-out-is-tile", "tiles", "stitch {d}/rcut/index.gpkg --out {d}/rcut/tiles/tile_r000_c001.tif",
      "is the input", setup=_real_cut),
    C("real-export-scene-truncated", "tiles", EXP + " --out {d}/q --scene {d}/cut_RGB.byte.tif", "cut_RGB.byte.tif",
      setup=_real_truncated("RGB.byte.tif")),
    C("real-export-mask-is-scene", "tiles", "export-qgis {d}/OSBS_029.tif --classes {d}/classes.yaml --out {d}/q",
      "OSBS_029.tif", setup=_real("OSBS_029.tif")),
    # --- tiles sample --------------------------------------------------------------------------------------------
    C("sample-out-is-file", "tiles", "sample --out {d}/notes.txt --size 256", "notes.txt"),
    C("sample-out-proc", "tiles", "sample --out /proc/x --size 256", "/proc/x"),
    C("sample-size-small", "tiles", "sample --out {d}/s --size 10", "--size", code=2),
    C("quicklook-output-is-scene", "tiles", "quicklook {d}/scene.tif -o {d}/scene.tif", "--output is the input"),
    C("quicklook-output-and-png-disagree", "tiles", "quicklook {d}/scene.tif -o {d}/a.png --png {d}/b.png", "--png and -o/--output", code=2),
    C("quicklook-png-not-png", "tiles", "quicklook {d}/scene.tif --png {d}/notes.txt", "--output must name a .png file"),
    C("quicklook-co-without-tif", "tiles", "quicklook {d}/scene.tif --png {d}/q.png --co COMPRESS=LZW", "--co applies to the --tif", code=2),
    C("quicklook-remote-needs-png", "tiles", "quicklook /vsicurl/https://127.0.0.1:9/s.tif", "give -o/--output"),
    # --- calibration audit ------------------------------------------------------------------------------------------
    C("audit-out-proc", "calibration", AUD + " --out /proc/x", "/proc/x"),
    C("audit-out-holds-inputs", "calibration",
      "audit --predictions {d}/audit/preds.json --annotations {d}/audit/gt.json --out {d}/audit", "contains the input",
      setup=_earlier_audit),
    C("audit-out-is-predictions", "calibration", AUD + " --out {d}/preds.json", "preds.json"),
    C("audit-out-foreign-folder", "calibration", AUD + " --out {d}/thesis", "did not write", setup=_foreign_dir("thesis")),
    C("audit-out-is-file", "calibration", AUD + " --out {d}/notes.txt", "notes.txt"),
    C("audit-only-predictions", "calibration", "audit --predictions {d}/preds.json --out {d}/audit", "--annotations"),
    C("audit-preds-missing", "calibration", AUDP + " {d}/nope.json", "nope.json: file not found"),
    C("audit-preds-text", "calibration", AUDP + " {d}/notes.txt", "notes.txt"),
    C("audit-preds-binary", "calibration", AUDP + " {d}/bad_preds.json", "bad_preds.json",
      setup=lambda d: (d / "bad_preds.json").write_bytes(b"\x89PNG\x00\xff\xfe")),
    C("audit-preds-truncated", "calibration", AUDP + " {d}/bad_preds.json", "bad_preds.json: not valid JSON",
      setup=_json("bad_preds.json", '[{"image_id": 1, "category_id": 1, "bbox": [1, 2')),
    C("audit-preds-dict", "calibration", AUDP + " {d}/gt.json", "gt.json: not a COCO results file"),
    C("audit-preds-image-id-1e30", "calibration", AUDP + " {d}/bad_preds.json", "bad_preds.json: detection 0",
      setup=_preds([{"image_id": 10**30, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5}])),
    C("audit-preds-string-probs", "calibration", AUDP + " {d}/bad_preds.json", "'probs'",
      setup=_preds([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5, "probs": "abc"}])),
    C("audit-preds-ragged-probs", "calibration", AUDP + " {d}/bad_preds.json", "'probs'",
      setup=_preds([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5, "probs": [0.2, 0.3, 0.5]},
                    {"image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5, "probs": [0.5]}])),
    C("audit-preds-nested-probs", "calibration", AUDP + " {d}/bad_preds.json", "'probs'",
      setup=_preds([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5, "probs": [[0.5], [0.5]]}])),
    C("audit-preds-score-text", "calibration", AUDP + " {d}/bad_preds.json", "detection 0",
      setup=_preds([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "score": "high"}])),
    C("audit-preds-score-huge", "calibration", AUDP + " {d}/bad_preds.json", "detection 0",
      setup=_preds([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 10**400}])),
    C("audit-preds-bbox-3", "calibration", AUDP + " {d}/bad_preds.json", "detection 0",
      setup=_preds([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 2], "score": 0.5}])),
    C("audit-preds-entry-number", "calibration", AUDP + " {d}/bad_preds.json", "detection 0", setup=_preds([5])),
    C("audit-preds-unknown-image", "calibration", AUDP + " {d}/bad_preds.json", "bad_preds.json",
      setup=_preds([{"image_id": 99, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5}])),
    C("audit-gt-annotations-5", "calibration", AUDG + " {d}/bad_gt.json", "'annotations'", setup=_gt(annotations=5)),
    C("audit-gt-annotations-null", "calibration", AUDG + " {d}/bad_gt.json", "'annotations'", setup=_gt(annotations=None)),
    C("audit-gt-images-dict", "calibration", AUDG + " {d}/bad_gt.json", "'images'", setup=_gt(images={"id": 1})),
    C("audit-gt-list", "calibration", AUDG + " {d}/preds.json", "preds.json: not a COCO annotations file"),
    C("audit-gt-image-id-1e30", "calibration", AUDG + " {d}/bad_gt.json", "images",
      setup=_gt(images=[{"id": 10**30, "width": 64, "height": 64}])),
    C("audit-gt-category-name-list", "calibration", AUDG + " {d}/bad_gt.json", "categories",
      setup=_gt(categories=[{"id": 1, "name": ["car", "van"]}, {"id": 2, "name": "ship"}])),
    C("audit-gt-category-name-control", "calibration", AUDG + " {d}/bad_gt.json", "categories",
      setup=_gt(categories=[{"id": 1, "name": "car\x01"}, {"id": 2, "name": "ship"}])),
    C("audit-gt-bbox-text", "calibration", AUDG + " {d}/bad_gt.json", "annotation 0",
      setup=_gt(annotations=[{"id": 1, "image_id": 1, "bbox": "abcd", "category_id": 1}])),
    C("audit-gt-duplicate-image", "calibration", AUDG + " {d}/bad_gt.json", "more than once",
      setup=_gt(images=[{"id": 1, "width": 64, "height": 64}, {"id": 1, "width": 64, "height": 64}])),
    C("audit-config-unknown-key", "calibration", "audit --config {d}/bad.yaml --out {d}/audit", "bad.yaml",
      setup=_yaml("bad.yaml", "metrics: {binz: 5}\n")),
    C("audit-config-not-yaml", "calibration", "audit --config {d}/bad.yaml --out {d}/audit", "bad.yaml",
      setup=_yaml("bad.yaml", "metrics: [unclosed\n")),
    C("audit-bootstrap-negative", "calibration", AUD + " --out {d}/audit --bootstrap -1", "--bootstrap", code=2),
    C("audit-coco-file-name-escapes", "calibration", "audit --config {d}/run.yaml --out {d}/audit", "points outside",
      setup=_all(lambda d: (d / "imgs").mkdir(), _gt(images=[{"id": 1, "file_name": "../../outside/x.png", "width": 64, "height": 64}], annotations=[]),
                 _yaml("run.yaml", "detector: {model: sample_fasterrcnn}\ndata: {coco: {annotations: bad_gt.json, images: imgs}}\n"))),
    # --- refine simulate ---------------------------------------------------------------------------------------------
    C("refine-out-holds-scene", "refine", SIM + " --out {d}", "contains the input"),
    C("refine-restart-inputs-inside-out", "refine",
      "simulate --scene {d}/run/inputs/scene.tif --labels {d}/run/inputs/mask.tif --truth {d}/run/inputs/mask.tif "
      "--classes {d}/classes.yaml --out {d}/run --restart", "contains the input",
      setup=lambda d: (d / "run" / "inputs").mkdir(parents=True) or [shutil.copy(d / n, d / "run" / "inputs" / n) for n in ("scene.tif", "mask.tif")]),
    C("refine-out-is-file", "refine", SIM + " --out {d}/notes.txt", "notes.txt"),
    C("refine-out-proc", "refine", SIM + " --out /proc/x", "/proc/x"),
    C("refine-no-truth", "refine", "simulate --scene {d}/scene.tif --labels {d}/mask.tif --out {d}/run", "--truth"),
    C("refine-no-labels", "refine", "simulate --scene {d}/scene.tif --truth {d}/mask.tif --out {d}/run", "--labels"),
    C("refine-labels-unknown-codes", "refine",
      "simulate --scene {d}/scene.tif --labels {d}/badcodes.tif --truth {d}/mask.tif --classes {d}/classes.yaml --out {d}/run", "77"),
    C("refine-scene-truncated", "refine",
      "simulate --scene {d}/truncated.tif --labels {d}/mask.tif --truth {d}/mask.tif --classes {d}/classes.yaml --out {d}/run", "truncated.tif"),
    C("refine-resume-and-restart", "refine", SIM + " --out {d}/run --resume --restart", "--resume",
      setup=lambda d: (d / "run").mkdir() or (d / "run" / "x").write_text("x")),
    C("refine-out-foreign-files", "refine", SIM + " --out {d}/thesis --restart", "thesis", setup=_foreign_dir("thesis")),
    C("refine-config-missing-encoder-weights", "refine", SIM + " --config {d}/run.yaml --out {d}/run", "encoder_weights",
      setup=_yaml("run.yaml", "model: {encoder_weights: nowhere.pt}\n")),
    C("refine-config-garbage-encoder-weights-leaves-nothing", "refine",
      "simulate --scene {d}/scene.tif --labels {d}/mask.tif --truth {d}/mask.tif --classes {d}/classes.yaml "
      "--config {d}/run.yaml --out {d}/run", "junk.pt",
      setup=_all(_yaml("junk.pt", "not weights"), _yaml("run.yaml", TINY_RUN + "model: {encoder_weights: junk.pt, tile_size: 64, overlap: 8}\n"))),
    C("refine-config-unknown-key", "refine", SIM + " --config {d}/run.yaml --out {d}/run", "run.yaml",
      setup=_yaml("run.yaml", "selct: {budget: 0.1}\n")),
    C("refine-classes-control-char", "refine",
      "simulate --scene {d}/scene.tif --labels {d}/mask.tif --truth {d}/mask.tif --classes {d}/bad.yaml --out {d}/run", "bad.yaml",
      setup=_schema('classes: [{code: 1, name: "a\\x00", color: "#000000"}]')),
]


def _cli(name: str):
    if name == "tiles":
        from tiles.cli import main
    elif name == "calibration":
        from calibration.cli import main
    else:
        from refine.cli import main
    return main


def _argv(case: Case, d: Path) -> list[str]:
    return [a.format(d=d) for a in case.args]


def _needles(case: Case, d: Path) -> tuple[str, ...]:
    needles = case.needle if isinstance(case.needle, tuple) else (case.needle,)
    return tuple(n.format(d=d) for n in needles)


def check_result(case: Case, d: Path, code: int, output: str, before: dict[str, str]) -> None:
    assert code == case.code, f"exit {code}, expected {case.code}:\n{output}"
    assert "Traceback" not in output, output
    assert "internal error" not in output, output
    for needle in _needles(case, d):
        assert needle in output, f"{needle!r} not in:\n{output}"
    if case.code == 1:
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, output
        named = [t for t in _argv(case, d) if t.startswith("--") or "/" in t]
        named += [Path(t).name for t in named if "/" in t] + [str(d)]
        assert any(t in errors[0] for t in named) or re.search(r"--[a-z]", errors[0]), (
            f"the error names no file or option:\n{output}"
        )
    after = snapshot(d)
    new = sorted(set(after) - set(before))
    gone = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (new or gone or changed), f"new {new}, removed {gone}, changed {changed}\n{output}"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, ws: Path) -> None:
    if case.setup:
        case.setup(ws)
    before = snapshot(ws)
    result = CliRunner().invoke(_cli(case.cli), _argv(case, ws), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback would have reached the user
    check_result(case, ws, result.exit_code, result.output, before)


def test_matrix_is_large_enough() -> None:
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


# --- real processes: exit codes and stderr as a shell sees them ---------------------------------------------------
SUBPROCESS = [
    "info-truncated", "quicklook-png-is-scene", "stitch-out-is-index", "stitch-path-absolute",
    "align-out-dir", "vectorize-out-proc", "export-scene-truncated", "cut-size-text",
    "audit-preds-image-id-1e30", "refine-out-holds-scene",
]  # fmt: skip


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUBPROCESS], ids=lambda c: c.id)
def test_bad_input_in_a_real_process(case: Case, ws: Path) -> None:
    if case.setup:
        case.setup(ws)
    before = snapshot(ws)
    env = {k: v for k, v in os.environ.items() if k != "TRUSTMAP_DEBUG"}
    proc = subprocess.run([str(BIN / case.cli), *_argv(case, ws)], capture_output=True, text=True, env=env, timeout=120)
    check_result(case, ws, proc.returncode, proc.stdout + proc.stderr, before)
    if case.code == 1:
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_internal_errors_are_one_line_that_says_bug(monkeypatch, ws: Path) -> None:
    import tiles.raster

    def boom(path):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(tiles.raster, "scene_info", boom)
    result = CliRunner().invoke(_cli("tiles"), ["info", str(ws / "scene.tif")])
    assert result.exit_code == 1
    assert "internal error (ZeroDivisionError: division by zero)" in result.output
    assert "TRUSTMAP_DEBUG=1" in result.output and "Traceback" not in result.output
    monkeypatch.setenv("TRUSTMAP_DEBUG", "1")
    result = CliRunner().invoke(_cli("tiles"), ["info", str(ws / "scene.tif")])
    assert isinstance(result.exception, ZeroDivisionError)


def test_empty_predictions_are_an_audit_not_a_crash(ws: Path) -> None:
    (ws / "none.json").write_text("[]")
    args = ["audit", "--predictions", str(ws / "none.json"), "--annotations", str(ws / "gt.json"),
            "--out", str(ws / "audit"), "--bootstrap", "0"]  # fmt: skip
    result = CliRunner().invoke(_cli("calibration"), args)
    assert result.exit_code in (0, 1) and "Traceback" not in result.output and "internal error" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_audit_markdown_escapes_category_names(ws: Path) -> None:
    gt = json.loads((ws / "gt.json").read_text())
    gt["categories"][0]["name"] = "<img src=x onerror=alert(1)> *car*"
    (ws / "gt.json").write_text(json.dumps(gt))
    args = ["audit", "--predictions", str(ws / "preds.json"), "--annotations", str(ws / "gt.json"),
            "--out", str(ws / "audit"), "--bootstrap", "0"]  # fmt: skip
    result = CliRunner().invoke(_cli("calibration"), args)
    assert result.exit_code == 0, result.output
    md = (ws / "audit" / "audit.md").read_text()
    assert "<img" not in md and "*car*" not in md


def test_real_file_inputs_survive(ws: Path) -> None:
    """The real scene from tests/data: quick-look and align onto it may not replace it."""
    real = ws / "RGB.byte.tif"
    shutil.copy(real_file("RGB.byte.tif"), real)
    before = snapshot(ws)
    runner = CliRunner()
    for args in (["quicklook", str(real), "--png", str(real)], ["quicklook", str(real), "--tif", str(real)],
                 ["align", str(ws / "mask.tif"), "--scene", str(real), "--classes", str(ws / "classes.yaml"),
                  "--out", str(real)]):  # fmt: skip
        result = runner.invoke(_cli("tiles"), args)
        assert result.exit_code == 1 and "is the input" in result.output, result.output
    assert snapshot(ws) == before


# --- signals: SIGTERM is cleaned up like SIGINT; SIGKILL's staging is removed by the next run ------------------------
def _big_scene(path: Path, size: int = 1536) -> None:
    rng = np.random.default_rng(1)
    _write_tif(path, rng.integers(0, 255, (3, size, size), dtype=np.uint8), tiled=True, blockxsize=256, blockysize=256)


def _staging(d: Path) -> list[Path]:
    return [p for p in d.rglob(".*") if ".part" in p.name]


def _start_cut(d: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "tiles"), "cut", str(d / "big.tif"), "-o", str(d / "cut"), "--tile-size", "64",
                             "--overlap", "0", "--overwrite"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def _wait_for_staging(proc: subprocess.Popen, d: Path, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not _staging(d):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.02)
    time.sleep(0.2)  # some tiles into the staging


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_leave_no_staging_and_keep_the_earlier_cut(ws: Path, sig) -> None:
    _big_scene(ws / "big.tif")
    before = snapshot(ws)
    proc = _start_cut(ws)
    _wait_for_staging(proc, ws)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), err
    assert "Traceback" not in err and "no partial output" in err
    assert snapshot(ws) == before


def test_sigkill_staging_is_removed_by_the_next_run(ws: Path) -> None:
    _big_scene(ws / "big.tif")
    proc = _start_cut(ws)
    _wait_for_staging(proc, ws)
    proc.kill()
    proc.wait()
    assert _staging(ws), "the kill should have left staging behind"
    result = CliRunner().invoke(_cli("tiles"), ["cut", str(ws / "scene.tif"), "-o", str(ws / "cut"), "--tile-size", "32",
                                                "--overlap", "8", "--overwrite"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _staging(ws) == []
