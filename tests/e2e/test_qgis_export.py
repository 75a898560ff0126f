"""tiles.qgis: the exported bundle, checked as files and then opened in the real QGIS.

The QGIS checks run in one subprocess (qgis_probe.py) for all cases, because QGIS
start-up dominates. Two cases:

- synthetic: a 120x80 mask in EPSG:32633 with classes in known rectangles and an ignore
  quadrant, over a 4-band uint16 scene larger than the mask;
- real georeferencing: a mask derived from RGB.byte.tif (EPSG:32618, 300 m pixels, nodata
  collar -> ignore), over that scene.
"""

from __future__ import annotations

import shutil
import sqlite3
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rio_cogeo.cogeo import cog_validate

from tiles.classes import ClassSchema, load_schema
from tiles.errors import TrustmapError
from tiles.qgis import (
    POLYGON_FILL_ALPHA,
    ProjectLayer,
    QgisExport,
    export_qgis,
    write_gpkg_style,
    write_project,
    write_raster_style,
)

ROOT = Path(__file__).parents[2]
SCHEMA = load_schema(ROOT / "configs/classes/landcover6.yaml")
RGB_BYTE = ROOT / "tests" / "data" / "RGB.byte.tif"
QGIS_STYLE_COLUMNS = [
    "id", "f_table_catalog", "f_table_schema", "f_table_name", "f_geometry_column", "styleName",
    "styleQML", "styleSLD", "useAsDefault", "description", "owner", "ui", "update_time",
]  # fmt: skip
TOL = 3  # RGB tolerance for rendered colours (antialiasing, PNG)

# synthetic mask: (row0, row1, col0, col1, code); everything else is ignore
SYN_TRANSFORM = Affine(5, 0, 500000, 0, -5, 4500000)
SYN_RECTS = [(0, 40, 0, 60, 1), (0, 40, 60, 120, 2), (40, 80, 0, 60, 4), (50, 70, 80, 100, 6)]
SYN_IGNORE_PIXELS = [(45, 70), (75, 115), (60, 110)]


def _write_raster(path: Path, data: np.ndarray, transform: Affine, crs: str, **kw) -> Path:
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(
        path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
        count=data.shape[0], dtype=data.dtype, crs=crs, transform=transform, **kw,
    ) as ds:  # fmt: skip
        ds.write(data)
    return path


def synthetic_mask(path: Path) -> Path:
    mask = np.full((80, 120), SCHEMA.ignore, np.uint8)
    for r0, r1, c0, c1, code in SYN_RECTS:
        mask[r0:r1, c0:c1] = code
    return _write_raster(path, mask, SYN_TRANSFORM, "EPSG:32633")


def synthetic_scene(path: Path) -> Path:
    """4-band uint16, 20 px wider than the mask on every side, smooth gradients."""
    yy, xx = np.mgrid[:120, :160].astype(np.float64)
    bands = [1000 + 30 * xx, 1500 + 40 * yy, 800 + 20 * (xx + yy), 3000 - 10 * xx]
    transform = SYN_TRANSFORM @ Affine.translation(-20, -20)
    return _write_raster(path, np.stack(bands).astype(np.uint16), transform, "EPSG:32633")


def real_mask(path: Path) -> Path:
    """Six brightness classes on 16x16 blocks of RGB.byte.tif; its nodata collar -> ignore."""
    with rasterio.open(RGB_BYTE) as ds:
        rgb, transform, crs = ds.read().astype(np.float64), ds.transform, ds.crs
    valid = (rgb != 0).any(axis=0)
    bright = np.where(valid, rgb.mean(axis=0), 0.0)
    h, w = valid.shape
    b = 16
    hb, wb = -(-h // b), -(-w // b)
    total = np.zeros((hb * b, wb * b))
    count = np.zeros_like(total)
    total[:h, :w], count[:h, :w] = bright, valid
    blocks = total.reshape(hb, b, wb, b).sum((1, 3)) / np.maximum(
        count.reshape(hb, b, wb, b).sum((1, 3)), 1
    )
    edges = np.quantile(blocks[blocks > 0], np.arange(1, 6) / 6)
    classes = (np.digitize(blocks, edges) + 1).astype(np.uint8)
    mask = np.repeat(np.repeat(classes, b, 0), b, 1)[:h, :w]
    mask[~valid] = SCHEMA.ignore
    return _write_raster(path, mask, transform, crs)


def uniform_points(mask: np.ndarray, value: int, n: int, radius: int = 4) -> list[tuple[int, int]]:
    """Up to ``n`` pixels whose (2r+1)^2 neighbourhood is all ``value``: far from any edge."""
    win = np.lib.stride_tricks.sliding_window_view(mask == value, (2 * radius + 1,) * 2)
    rows, cols = np.nonzero(win.all(axis=(2, 3)))
    pick = np.linspace(0, len(rows) - 1, num=min(n, len(rows))).astype(int) if len(rows) else []
    return [(int(rows[i]) + radius, int(cols[i]) + radius) for i in pick]


# --- files, without QGIS -----------------------------------------------------------------------
def test_bundle_files_are_what_qgis_reads(tmp_path: Path) -> None:
    res = export_qgis(synthetic_mask(tmp_path / "mask.tif"), SCHEMA, tmp_path / "out", name="syn")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in res.files)
    assert res.quicklook is None and res.polygon_count == 4
    assert cog_validate(str(res.mask))[0]

    # category names: one per value 0..max code, empty where no class
    cats = ET.parse(res.mask_categories).getroot().find("PAMRasterBand[@band='1']/CategoryNames")
    expected = [""] * (max(SCHEMA.codes) + 1)
    for c in SCHEMA.classes:
        expected[c.code] = c.name
    assert [(e.text or "") for e in cats] == expected

    # raster qml: a paletted renderer, one entry per class, no entry for ignore
    entries = ET.parse(res.mask_style).getroot().findall("pipe/rasterrenderer/colorPalette/*")
    assert ET.parse(res.mask_style).getroot().find("pipe/rasterrenderer").get("type") == "paletted"
    assert [(e.get("value"), e.get("label"), e.get("color"), e.get("alpha")) for e in entries] == [
        (str(c.code), c.name, c.color, "255") for c in SCHEMA.classes
    ]

    # layer_styles: QGIS's columns; the geometry column is the real one
    with sqlite3.connect(res.polygons) as con:
        cols = [r[1] for r in con.execute("PRAGMA table_info(layer_styles)")]
        geom = con.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name='polygons'"
        ).fetchone()[0]
        rows = con.execute(
            "SELECT f_table_schema, f_table_name, f_geometry_column, useAsDefault, update_time,"
            " styleQML FROM layer_styles"
        ).fetchall()
        registered = con.execute(
            "SELECT data_type FROM gpkg_contents WHERE table_name='layer_styles'"
        ).fetchone()
    assert cols == QGIS_STYLE_COLUMNS and registered == ("attributes",)
    assert len(rows) == 1
    schema_, table, geom_col, default, updated, qml = rows[0]
    assert (schema_, table, geom_col, default) == ("", "polygons", geom, 1) and updated
    assert qml == res.polygons_style.read_text(encoding="utf-8")

    # project: relative sources, polygons above the class raster, CRS of the mask
    root = ET.parse(res.project).getroot()
    tree = [(n.get("name"), n.get("source")) for n in root.iter("layer-tree-layer")]
    assert tree == [
        ("syn polygons", "./syn_polygons.gpkg|layername=polygons"),
        ("syn classes", "./syn.tif"),
    ]
    assert root.find("projectCrs/spatialrefsys/authid").text == "EPSG:32633"
    assert root.find("properties/Paths/Absolute").text == "false"


@pytest.mark.parametrize("case", ["unknown codes", "two bands", "out is a file", "input in out"])
def test_errors_leave_nothing_behind(tmp_path: Path, case: str) -> None:
    mask = np.full((30, 40), 1, np.uint8)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier file\n")
    src = tmp_path / "m.tif"
    if case == "unknown codes":
        mask[3, 3], mask[20, 30] = 9, 42
        expected = r"unknown class code\(s\) \[9, 42\]"
    elif case == "two bands":
        mask = np.stack([mask, mask])
        expected = "must have one band, this raster has 2"
    elif case == "out is a file":
        out = out / "keep.txt"  # a file where the output folder should be
        expected = "not a directory|cannot create output directory"
    else:
        src = out / "m.tif"  # exporting out/m.tif into out/ would replace it by the COG
        expected = "would overwrite its own input mask"
    _write_raster(src, mask, SYN_TRANSFORM, "EPSG:32633")

    def snapshot() -> dict[str, bytes]:  # every file under tmp_path, hidden ones included
        return {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*")
                if p.is_file()}  # fmt: skip

    before = snapshot()
    with pytest.raises(TrustmapError, match=expected) as err:
        export_qgis(src, SCHEMA, out)
    if case != "out is a file":
        assert str(src) in str(err.value)
    assert snapshot() == before
    assert not [p for p in tmp_path.rglob("*") if p.is_dir() and p.name.startswith(".")]


def test_write_gpkg_style_replaces_its_row_and_demotes_others(tmp_path: Path) -> None:
    res = export_qgis(synthetic_mask(tmp_path / "mask.tif"), SCHEMA, tmp_path / "out")
    with sqlite3.connect(res.polygons) as con:
        con.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
            "f_geometry_column, styleName, styleQML, useAsDefault) "
            "VALUES ('', '', 'polygons', 'geom', 'analyst', '<qgis/>', 1)"
        )
    write_gpkg_style(res.polygons, "polygons", SCHEMA)
    with sqlite3.connect(res.polygons) as con:
        rows = con.execute(
            "SELECT styleName, useAsDefault FROM layer_styles ORDER BY id"
        ).fetchall()
    assert rows == [("analyst", 0), ("trustmap classes", 1)]
    with pytest.raises(TrustmapError, match=r"no vector layer 'roads'; layers: \['polygons'\]"):
        write_gpkg_style(res.polygons, "roads", SCHEMA)


def test_write_raster_style_rebuilds_a_cog_colour_table(tmp_path: Path) -> None:
    """A COG cannot be edited in place; the colour table is set by rebuilding it."""
    from tiles.cog import translate_to_cog

    mask = np.repeat(np.arange(1, 7, dtype=np.uint8), 100)[None].repeat(600, axis=0)
    plain = _write_raster(tmp_path / "plain.tif", mask, SYN_TRANSFORM, "EPSG:32633")
    cog = translate_to_cog(plain, tmp_path / "refined.tif", blocksize=256)
    qml, aux = write_raster_style(cog, SCHEMA)
    assert cog_validate(str(cog))[0]
    with rasterio.open(cog) as ds:
        assert ds.colormap(1)[3] == (*SCHEMA.by_code(3).rgb, 255)
        np.testing.assert_array_equal(ds.read(1), mask)
    assert qml == tmp_path / "refined.qml" and aux == tmp_path / "refined.tif.aux.xml"


# --- the real QGIS -------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    export: QgisExport
    mask: np.ndarray
    transform: Affine
    crs: str
    moved_project: Path  # the bundle copied elsewhere: relative paths must still resolve


def _renders(case: Case, out: Path, width: int, height: int) -> list[dict[str, Any]]:
    polys, classes = f"{case.name} polygons", f"{case.name} classes"
    return [
        {"png": str(out / f"{case.name}_full.png"), "width": width, "height": height},
        {"png": str(out / f"{case.name}_classes.png"), "width": width, "height": height,
         "hide": [polys], "show": [classes]},
        {"png": str(out / f"{case.name}_quicklook.png"), "width": width, "height": height,
         "hide": [polys, classes]},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory, qgis) -> dict[str, Any]:
    """Export both cases, then open everything in QGIS in one probe run."""
    work = tmp_path_factory.mktemp("qgis_export")
    cases: dict[str, Case] = {}
    sources = {"syn": (synthetic_mask, synthetic_scene)}
    if RGB_BYTE.exists():
        sources["real"] = (real_mask, lambda _p: RGB_BYTE)
    for name, (make_mask, make_scene) in sources.items():
        src = work / "inputs" / name
        src.mkdir(parents=True)
        mask_path = make_mask(src / "mask.tif")
        res = export_qgis(mask_path, SCHEMA, work / name, scene_path=make_scene(src / "scene.tif"),
                          name=name)  # fmt: skip
        moved = shutil.copytree(work / name, work / "moved" / name)
        with rasterio.open(mask_path) as ds:
            cases[name] = Case(name, res, ds.read(1), ds.transform, ds.crs.to_string(),
                               moved / res.project.name)  # fmt: skip

    syn = cases["syn"].export
    db_only = work / "db_only"  # the GeoPackage alone: no .qml sidecar next to it
    db_only.mkdir()
    shutil.copy(syn.polygons, db_only)
    aux_only = work / "aux_only"  # the class raster with its aux.xml, no .qml
    aux_only.mkdir()
    shutil.copy(syn.mask, aux_only)
    shutil.copy(syn.mask_categories, aux_only)
    assert not list(db_only.glob("*.qml")) and not list(aux_only.glob("*.qml"))

    layers: dict[str, Any] = {
        "syn_raster": {"kind": "raster", "uri": str(syn.mask)},
        "syn_raster_aux_only": {"kind": "raster", "uri": str(aux_only / syn.mask.name)},
        "syn_vector_db": {
            "kind": "vector",
            "uri": f"{db_only / syn.polygons.name}|layername=polygons",
        },
        "syn_vector_qml": {
            "kind": "vector",
            "uri": f"{db_only / syn.polygons.name}|layername=polygons",
            "style": str(syn.polygons_style),
        },
    }
    renders = work / "renders"
    projects = {"syn": {"path": str(cases["syn"].moved_project),
                        "renders": _renders(cases["syn"], renders, 600, 400)}}  # fmt: skip
    if "real" in cases:
        real = cases["real"].export
        layers["real_raster"] = {"kind": "raster", "uri": str(real.mask)}
        layers["real_vector_db"] = {"kind": "vector", "uri": f"{real.polygons}|layername=polygons"}
        projects["real"] = {
            "path": str(cases["real"].moved_project),
            "renders": _renders(cases["real"], renders, 791, 718),
        }
    # write_project on its own: sources in a sibling folder ("../"), short layer names, and
    # rasters without a schema (QGIS then styles them itself)
    elsewhere = write_project(
        work / "elsewhere" / "review.qgs",
        [ProjectLayer(syn.mask, "m", "raster"), ProjectLayer(syn.quicklook, "q", "raster")],
    )
    projects["elsewhere"] = {"path": str(elsewhere)}
    facts = qgis({"layers": layers, "projects": projects}, work)
    return {"facts": facts, "cases": cases, "work": work}


def _schema_classes(schema: ClassSchema, symbol: str | None = None) -> list[dict[str, Any]]:
    extra = {"symbol": symbol} if symbol else {}
    alpha = POLYGON_FILL_ALPHA if symbol == "fill" else 255  # polygons: half-transparent fills
    return [
        {"value": c.code, "label": c.name, **extra, "color": c.color, "alpha": alpha}
        for c in schema.classes
    ]


def _assert_class_raster(layer: dict[str, Any], crs: str) -> None:
    assert layer["valid"] and layer["crs"] == crs and layer["renderer"] == "paletted"
    assert layer["classes"] == _schema_classes(SCHEMA)  # exactly the classes: ignore absent
    if layer["gdal_category_names"] is not None:
        assert layer["gdal_category_names"] == ["", *SCHEMA.names]


def _assert_class_polygons(layer: dict[str, Any], crs: str, count: int) -> None:
    assert layer["valid"] and layer["crs"] == crs and layer["feature_count"] == count
    assert layer["renderer"] == "categorizedSymbol" and layer["class_attribute"] == "code"
    assert layer["classes"] == _schema_classes(SCHEMA, symbol="fill")


@pytest.mark.qgis
def test_qgis_applies_the_styles(probed: dict[str, Any]) -> None:
    layers, syn = probed["facts"]["layers"], probed["cases"]["syn"].export
    _assert_class_raster(layers["syn_raster"], "EPSG:32633")  # via the sidecar .qml
    # from layer_styles alone (no .qml in that folder), and from the .qml alone
    _assert_class_polygons(layers["syn_vector_db"], "EPSG:32633", syn.polygon_count)
    assert layers["syn_vector_db"]["styles_in_database"] == ["trustmap classes"]
    _assert_class_polygons(layers["syn_vector_qml"], "EPSG:32633", syn.polygon_count)
    # without the .qml, QGIS falls back to the colour table and takes names from aux.xml
    aux_only = {c["value"]: c for c in layers["syn_raster_aux_only"]["classes"]}
    assert layers["syn_raster_aux_only"]["renderer"] == "paletted"
    for c in SCHEMA.classes:
        assert (aux_only[c.code]["label"], aux_only[c.code]["color"]) == (c.name, c.color)


@pytest.mark.qgis
@pytest.mark.parametrize("name", ["syn", "real"])
def test_qgis_opens_the_project(probed: dict[str, Any], name: str) -> None:
    if name not in probed["cases"]:
        pytest.fail(f"real test data missing: {RGB_BYTE}")
    case = probed["cases"][name]
    project = probed["facts"]["projects"][name]
    assert project["read"], project["error"]
    assert project["crs"] == case.crs and project["absolute_paths"] is False
    names = [layer["name"] for layer in project["layers"]]
    assert names == [f"{name} polygons", f"{name} classes", "scene quick-look"]
    polygons, classes, quicklook = project["layers"]
    # sources resolved against the moved copy, not where the bundle was written
    moved = str(case.moved_project.parent)
    assert all(layer["source"].startswith(moved) for layer in project["layers"])
    _assert_class_polygons(polygons, case.crs, case.export.polygon_count)
    _assert_class_raster(classes, case.crs)
    assert quicklook["valid"] and quicklook["renderer"] == "multibandcolor"
    with rasterio.open(case.export.mask) as ds:
        bounds = list(ds.bounds)
    np.testing.assert_allclose(project["view_extent"], bounds, rtol=0, atol=1e-6)


@pytest.mark.qgis
def test_qgis_opens_a_project_with_layers_in_another_folder(probed: dict[str, Any]) -> None:
    project = probed["facts"]["projects"]["elsewhere"]
    syn = probed["cases"]["syn"].export
    assert project["read"], project["error"]
    assert project["crs"] == "EPSG:32633"
    sources = [(layer["name"], layer["valid"], layer["source"]) for layer in project["layers"]]
    assert sources == [("m", True, str(syn.mask)), ("q", True, str(syn.quicklook))]
    root = ET.parse(probed["work"] / "elsewhere" / "review.qgs").getroot()
    assert [n.text for n in root.iter("datasource")] == [
        "../syn/syn.tif",
        "../syn/syn_quicklook.tif",
    ]
    # no schema given: QGIS builds its own palette from the colour table, names from aux.xml
    classes = {c["value"]: c["label"] for c in project["layers"][0]["classes"]}
    assert all(classes[c.code] == c.name for c in SCHEMA.classes)


def _pixel(render: dict[str, Any], x: float, y: float) -> tuple[int, int]:
    x0, y0, x1, y1 = render["visible_extent"]
    col = int((x - x0) / (x1 - x0) * render["width"])
    row = int((y1 - y) / (y1 - y0) * render["height"])
    return row, col


def _rgb(images: dict[str, np.ndarray], key: str, rowcol: tuple[int, int]) -> np.ndarray:
    return images[key][rowcol].astype(int)


@pytest.mark.qgis
@pytest.mark.parametrize("name", ["syn", "real"])
def test_qgis_renders_class_colours_in_place(probed: dict[str, Any], name: str) -> None:
    if name not in probed["cases"]:
        pytest.fail(f"real test data missing: {RGB_BYTE}")
    case = probed["cases"][name]
    renders = probed["facts"]["projects"][name]["renders"]
    assert all(r["saved"] and not r["errors"] for r in renders)
    images = {}
    for key, r in zip(("full", "classes", "quicklook"), renders, strict=True):
        images[key] = np.asarray(Image.open(r["png"]).convert("RGB"))
        assert images[key].shape == (r["height"], r["width"], 3)
    geo = renders[0]
    assert all(r["visible_extent"] == geo["visible_extent"] for r in renders)

    def image_pixel(row: int, col: int) -> tuple[int, int]:
        x, y = case.transform @ (col + 0.5, row + 0.5)
        return _pixel(geo, x, y)

    checked = 0
    for c in SCHEMA.classes:
        for row, col in uniform_points(case.mask, c.code, n=4):
            at = image_pixel(row, col)
            # the raster alone: the class colour; the first view (polygons over the imagery,
            # the raster switched off): the class colour half over the quick-look
            got = _rgb(images, "classes", at)
            assert np.abs(got - c.rgb).max() <= TOL, (c.name, "classes", (row, col), got)
            a = POLYGON_FILL_ALPHA / 255
            blend = a * np.asarray(c.rgb) + (1 - a) * _rgb(images, "quicklook", at)
            got = _rgb(images, "full", at)
            assert np.abs(got - blend).max() <= TOL + 1, (c.name, "full", (row, col), got, blend)
            checked += 1
    assert checked >= (4 if name == "syn" else 20)

    # ignore pixels: no polygon, a transparent raster, the quick-look shows through
    ignored = uniform_points(case.mask, SCHEMA.ignore, n=6)
    if name == "syn":
        assert ignored and all(case.mask[p] == SCHEMA.ignore for p in SYN_IGNORE_PIXELS)
        ignored += SYN_IGNORE_PIXELS
    assert ignored
    with rasterio.open(case.export.quicklook) as ql:
        for row, col in ignored:
            at = image_pixel(row, col)
            background = _rgb(images, "quicklook", at)
            for key in ("full", "classes"):
                assert np.abs(_rgb(images, key, at) - background).max() <= TOL, (key, row, col)
            if name == "syn":  # inside the scene: the quick-look's own colour, not canvas white
                x, y = case.transform @ (col + 0.5, row + 0.5)
                qrow, qcol = ql.index(x, y)
                expected = ql.read(window=((qrow, qrow + 1), (qcol, qcol + 1)))[:3, 0, 0]
                assert np.abs(background - expected.astype(int)).max() <= TOL
