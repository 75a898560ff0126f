"""QGIS-ready outputs: styles, class names, GeoPackage layer_styles and a project file.

Everything here is written as plain files by pure Python, so it works on machines where
PyQGIS is not importable; the end-to-end tests open the results in the real QGIS (3.22)
to prove that QGIS applies them. What QGIS 3.22 reads, and where:

- raster class map: colours in the GeoTIFF colour table, class names as GDAL category
  names in ``name.tif.aux.xml`` (QGIS 3.22 ignores raster attribute tables), and a
  ``name.qml`` sidecar with a paletted renderer, which QGIS applies on load;
- polygons: a row in the GeoPackage's ``layer_styles`` table (applied on load, found by
  layer and geometry column name) plus a ``.qml`` sidecar for other tools;
- the project (``.qgs``, plain XML) embeds the same styles and references its layers by
  relative paths, so the folder can be moved or zipped as a whole.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pyproj
import rasterio
import rasterio.shutil

from tiles.classes import ClassSchema
from tiles.cog import translate_to_cog, validate_cog, write_class_cog
from tiles.errors import TrustmapError
from tiles.io import (
    atomic_path,
    bundle_stage,
    check_output_dir,
    commit_bundle,
    refuse_existing,
    refuse_inputs,
    staging_dir,
    write_text_atomic,
)
from tiles.progress import Progress
from tiles.raster import dataset_path, open_class_mask, open_raster, require_crs

#: The QGIS version our XML follows; older readers upgrade nothing, newer ones read it as is.
QGIS_XML_VERSION = "3.22.0"
_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
STYLE_NAME = "trustmap classes"
POLYGON_FILL_ALPHA = 128
"""Class polygons are filled at half opacity, so the imagery under them stays visible."""

# QGIS's own layer_styles DDL (what QgsOgrProvider creates in a GeoPackage), verbatim.
_LAYER_STYLES_DDL = """
CREATE TABLE IF NOT EXISTS "layer_styles" (
  "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
  "f_table_catalog" TEXT(256), "f_table_schema" TEXT(256), "f_table_name" TEXT(256),
  "f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT,
  "useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30),
  "update_time" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))
"""


# --- results and inputs --------------------------------------------------------------------
@dataclass(frozen=True)
class QgisExport:
    """The files :func:`export_qgis` wrote, all in one folder."""

    project: Path
    mask: Path
    mask_style: Path
    mask_categories: Path
    polygons: Path
    polygons_style: Path
    quicklook: Path | None
    polygon_count: int

    @property
    def files(self) -> list[Path]:
        paths = [self.mask, self.mask_style, self.mask_categories, self.polygons]
        paths += [self.polygons_style, self.project]
        return paths + ([self.quicklook] if self.quicklook else [])


@dataclass(frozen=True)
class ProjectLayer:
    """One layer of a project written by :func:`write_project`.

    ``schema`` styles it as a class map (paletted raster / categorized polygons on the
    ``code`` attribute); a raster without a schema is shown as RGB from bands 1-3 when it
    is 8-bit with three or more bands (a quick-look), otherwise with QGIS's default style.
    ``layer`` names the table inside a vector file (required for vectors). ``style_qml``
    (a QML document, as :func:`style_document` writes) replaces the schema's style, for
    layers that are not class maps (a review queue graduated by priority).
    """

    path: Path
    name: str
    kind: Literal["raster", "vector"]
    schema: ClassSchema | None = None
    layer: str | None = None
    style_qml: str | None = None
    visible: bool = True
    opacity: float = 1.0
    """Layer opacity, 0-1: class maps at 0.5 let the imagery show through."""
    subset: str | None = None
    """A vector layer's filter (an OGR SQL ``WHERE`` clause, QGIS's "subset string")."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.kind not in ("raster", "vector"):
            raise ValueError(f"kind must be 'raster' or 'vector', not {self.kind!r}")
        if self.kind == "vector" and (
            self.layer is None or (self.schema is None and self.style_qml is None)
        ):
            raise ValueError("a vector ProjectLayer needs `layer` and `schema` or `style_qml`")


# --- the whole bundle ----------------------------------------------------------------------
def export_qgis(
    mask_path: str | os.PathLike,
    schema: ClassSchema,
    out_dir: str | os.PathLike,
    scene_path: str | os.PathLike | None = None,
    name: str | None = None,
    min_area: float = 0.0,
    simplify: float | None = None,
    overwrite: bool = True,
) -> QgisExport:
    """Write a class mask as a QGIS bundle: styled COG, styled polygons, project file.

    All files are staged in a hidden folder inside ``out_dir`` and moved into place only
    when every one of them is complete, so a failure (unknown codes, a multi-band mask,
    a scene that cannot be read) leaves ``out_dir`` as it was. ``overwrite=False`` refuses
    to replace an earlier bundle of the same name (the CLI's default). The mask and the scene
    may be GDAL paths or URLs.
    """
    from tiles.vectorize import vectorize_mask, write_polygons

    mask_path = dataset_path(mask_path)
    name = _check_name(name if name is not None else Path(str(mask_path)).stem)
    out_dir = Path(out_dir)
    if isinstance(mask_path, Path) and (out_dir / f"{name}.tif").resolve() == mask_path.resolve():
        raise TrustmapError(
            "the export would overwrite its own input mask; choose another output folder or name",
            mask_path,
        )
    check_output_dir(out_dir, option="--output")
    for member in bundle_names(name):
        refuse_inputs(out_dir / member, [mask_path, scene_path], option="--output")
    refuse_existing([out_dir / f"{name}.qgs"], overwrite)  # the project: written last
    with open_raster(mask_path) as ds:
        require_crs(ds, mask_path)
        crs, bounds = ds.crs, tuple(ds.bounds)
    if scene_path is not None:  # fail before writing anything, naming the user's file
        with open_raster(scene_path) as ds:
            require_crs(ds, scene_path)
    steps = 5 if scene_path is not None else 4
    with bundle_stage(out_dir) as stage, Progress(total=steps, desc="export-qgis", unit="step") as bar:
        tif = write_class_cog(mask_path, stage / f"{name}.tif", schema)
        bar.update()
        polygons = vectorize_mask(tif, schema, min_area=min_area, simplify=simplify)
        bar.update()
        gpkg = write_polygons(polygons, stage / f"{name}_polygons.gpkg", layer="polygons")
        gpkg_qml = write_gpkg_style(gpkg, "polygons", schema)
        tif_qml, tif_aux = write_raster_style(tif, schema)
        bar.update()
        layers = [
            ProjectLayer(gpkg, f"{name} polygons", "vector", schema=schema, layer="polygons"),
            # the raster is there, switched off: the first view is the imagery under the
            # half-transparent polygons
            ProjectLayer(tif, f"{name} classes", "raster", schema=schema, visible=False),
        ]
        quicklook = None
        if scene_path is not None:
            from tiles.quicklook import write_quicklook

            quicklook = stage / f"{name}_quicklook.tif"
            write_quicklook(scene_path, out_tif=quicklook)
            layers.append(ProjectLayer(quicklook, "scene quick-look", "raster"))
            bar.update()
        project = write_project(stage / f"{name}.qgs", layers, crs=crs, extent=bounds, title=name)
        bar.update()
        # One commit for the whole bundle (a folder exchange where possible); in the
        # file-by-file fallback the project goes last: it must never point at missing files.
        commit_bundle(stage, out_dir, last=[project.name])

    def final(p: Path) -> Path:
        return out_dir / p.name

    return QgisExport(
        project=final(project),
        mask=final(tif),
        mask_style=final(tif_qml),
        mask_categories=final(tif_aux),
        polygons=final(gpkg),
        polygons_style=final(gpkg_qml),
        quicklook=final(quicklook) if quicklook else None,
        polygon_count=len(polygons),
    )


def bundle_names(name: str) -> list[str]:
    """The files :func:`export_qgis` writes for ``name``."""
    return [f"{name}.tif", f"{name}.qml", f"{name}.tif.aux.xml", f"{name}_polygons.gpkg",
            f"{name}_polygons.qml", f"{name}.qgs", f"{name}_quicklook.tif"]  # fmt: skip


def _check_name(name: str) -> str:
    if not name or name.startswith(".") or re.search(r"[\\/:*?\"<>|\x00-\x1f]", name):
        raise TrustmapError(f"output name {name!r} is not a valid file name")
    return name


# --- raster styles ---------------------------------------------------------------------------
def write_raster_style(tif_path: str | os.PathLike, schema: ClassSchema) -> tuple[Path, Path]:
    """Make a class-map GeoTIFF open styled in QGIS; return ``(qml, aux_xml)``.

    Sets the colour table (rebuilding the file as a COG if it is one, since an in-place
    edit would break the COG layout), writes the class names as GDAL category names in
    ``.tif.aux.xml`` (kept: anything else GDAL stored there) and a ``.qml`` sidecar with a
    paletted renderer. Values that are not classes (the ignore code) stay transparent.
    """
    tif = Path(tif_path)
    with open_class_mask(tif, verify=False, role="class map", need_crs=False) as ds:
        current = _colormap_or_none(ds)
    wanted = schema.colormap()
    if current is None or any(current.get(k) != v for k, v in wanted.items()):
        _set_colormap(tif, wanted)
    aux = _write_category_names(tif, schema)
    qml = write_text_atomic(tif.with_suffix(".qml"), style_document(_raster_style_nodes(schema)))
    return qml, aux


def _colormap_or_none(ds: rasterio.DatasetReader) -> dict[int, tuple[int, ...]] | None:
    try:
        return ds.colormap(1)
    except ValueError:  # rasterio: "NULL color table"
        return None


def _set_colormap(tif: Path, colormap: dict[int, tuple[int, int, int, int]]) -> None:
    try:
        validate_cog(tif)
        is_cog = True
    except TrustmapError:
        is_cog = False
    if not is_cog:
        with rasterio.open(tif, "r+") as ds:
            ds.write_colormap(1, colormap)
        return
    with staging_dir(tif.parent, tif.stem) as tmp:
        staged = tmp / "staged.tif"
        rasterio.shutil.copy(str(tif), str(staged), driver="GTiff", TILED="YES", COMPRESS="DEFLATE")
        with rasterio.open(staged, "r+") as ds:
            ds.write_colormap(1, colormap)
        with rasterio.open(tif) as ds:
            blocksize = ds.block_shapes[0][0]
        translate_to_cog(staged, tif, blocksize=blocksize)


def _write_category_names(tif: Path, schema: ClassSchema) -> Path:
    """GDAL PAM category names: entry i names value i, so unused values get empty entries."""
    aux = tif.with_name(tif.name + ".aux.xml")
    root = ET.fromstring(aux.read_text(encoding="utf-8")) if aux.exists() else None
    if root is None or root.tag != "PAMDataset":
        root = ET.Element("PAMDataset")
    band = next((b for b in root.findall("PAMRasterBand") if b.get("band") == "1"), None)
    if band is None:
        band = ET.Element("PAMRasterBand", band="1")
        root.insert(0, band)
    for old in band.findall("CategoryNames"):
        band.remove(old)
    names = ET.Element("CategoryNames")
    by_code = {c.code: c.name for c in schema.classes}
    for value in range(max(schema.codes) + 1):
        ET.SubElement(names, "Category").text = by_code.get(value, "")
    band.insert(0, names)
    ET.indent(root)
    return write_text_atomic(aux, ET.tostring(root, encoding="unicode") + "\n")


def _raster_style_nodes(schema: ClassSchema | None, rgb: bool = False) -> list[ET.Element]:
    pipe = ET.Element("pipe")
    provider = ET.SubElement(pipe, "provider")
    ET.SubElement(
        provider,
        "resampling",
        enabled="false",
        maxOversampling="2",
        zoomedInResamplingMethod="nearestNeighbour",
        zoomedOutResamplingMethod="nearestNeighbour",
    )
    if schema is not None:
        renderer = ET.SubElement(
            pipe, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1",
            nodataColor="",
        )  # fmt: skip
        palette = ET.SubElement(renderer, "colorPalette")
        for c in schema.classes:
            ET.SubElement(
                palette, "paletteEntry", value=str(c.code), color=c.color, alpha="255", label=c.name
            )
    elif rgb:
        renderer = ET.SubElement(
            pipe, "rasterrenderer", type="multibandcolor", redBand="1", greenBand="2",
            blueBand="3", alphaBand="-1", opacity="1", nodataColor="",
        )  # fmt: skip
        ET.SubElement(renderer, "rasterTransparency")
        for colour in ("red", "green", "blue"):
            enh = ET.SubElement(renderer, f"{colour}ContrastEnhancement")
            ET.SubElement(enh, "minValue").text = "0"
            ET.SubElement(enh, "maxValue").text = "255"
            ET.SubElement(enh, "algorithm").text = "NoEnhancement"
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    blend = ET.Element("blendMode")
    blend.text = "0"
    return [pipe, blend]


# --- vector styles ---------------------------------------------------------------------------
def write_gpkg_style(gpkg_path: str | os.PathLike, layer: str, schema: ClassSchema) -> Path:
    """Store the class style in the GeoPackage's ``layer_styles`` table (and a .qml sidecar).

    QGIS applies the row on load when ``f_table_name`` and ``f_geometry_column`` match the
    layer (the geometry column is read from ``gpkg_geometry_columns``, never guessed). A
    previous trustmap style for the layer is replaced; other styles stop being default.
    """
    gpkg = Path(gpkg_path)
    qml = style_document(_vector_style_nodes(schema))
    store_gpkg_style(gpkg, layer, qml, _STYLE_DESCRIPTION)
    return write_text_atomic(gpkg.with_suffix(".qml"), qml)


def store_gpkg_style(
    gpkg_path: str | os.PathLike,
    layer: str,
    qml: str,
    description: str,
    con: sqlite3.Connection | None = None,
    style_name: str = STYLE_NAME,
) -> None:
    """Make ``qml`` the default QGIS style of ``layer`` in its GeoPackage's ``layer_styles``.

    An earlier row named ``style_name`` is replaced; other styles stop being default. With
    ``con`` (an open connection), the rows are written inside the caller's transaction, so a
    style can be committed together with the features it styles.
    """
    gpkg = Path(gpkg_path)
    if con is None and not gpkg.is_file():
        raise TrustmapError("GeoPackage not found", gpkg)
    own = con is None
    try:
        if own:
            con = sqlite3.connect(gpkg)
    except sqlite3.Error as exc:
        raise TrustmapError(f"cannot open GeoPackage ({exc})", gpkg) from None
    assert con is not None
    try:
        with con if own else contextlib.nullcontext():
            geom_column = _geometry_column(con, gpkg, layer)
            _ensure_layer_styles(con)
            con.execute(
                "UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ? "
                "AND f_geometry_column = ?",
                (layer, geom_column),
            )
            con.execute(
                "DELETE FROM layer_styles WHERE f_table_name = ? AND f_geometry_column = ? "
                "AND styleName = ?",
                (layer, geom_column, style_name),
            )
            con.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
                "owner, ui, update_time) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', NULL, ?)",
                (layer, geom_column, style_name, qml, description, _now()),
            )
    except sqlite3.DatabaseError as exc:
        raise TrustmapError(f"cannot store the layer style ({exc})", gpkg) from None
    finally:
        if own:
            con.close()


_STYLE_DESCRIPTION = "Class colours and names from the trustmap class schema"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _geometry_column(con: sqlite3.Connection, gpkg: Path, layer: str) -> str:
    try:
        row = con.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
        ).fetchone()
        if row is None:
            layers = [r[0] for r in con.execute("SELECT table_name FROM gpkg_geometry_columns")]
    except sqlite3.DatabaseError:
        raise TrustmapError("not a GeoPackage (no gpkg_geometry_columns table)", gpkg) from None
    if row is None:
        raise TrustmapError(f"no vector layer {layer!r}; layers: {sorted(layers)}", gpkg)
    return str(row[0])


def _ensure_layer_styles(con: sqlite3.Connection) -> None:
    """Create QGIS's table and register it, so GDAL/QGIS list it as an attributes table."""
    con.execute(_LAYER_STYLES_DDL)
    registered = con.execute(
        "SELECT 1 FROM gpkg_contents WHERE lower(table_name) = 'layer_styles'"
    ).fetchone()
    if not registered:
        con.execute(
            "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, "
            "last_change, srs_id) VALUES ('layer_styles', 'attributes', 'layer_styles', '', ?, 0)",
            (_now(),),
        )
    has_counts = con.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gpkg_ogr_contents'"
    ).fetchone()
    if has_counts:  # GDAL's feature-count cache: NULL means "count it when asked"
        con.execute("DELETE FROM gpkg_ogr_contents WHERE lower(table_name) = 'layer_styles'")
        con.execute(
            "INSERT INTO gpkg_ogr_contents (table_name, feature_count) VALUES ('layer_styles', NULL)"
        )


def _vector_style_nodes(
    schema: ClassSchema, attr: str = "code", alpha: int = POLYGON_FILL_ALPHA
) -> list[ET.Element]:
    """Polygons categorised by the class code in ``attr``, filled in the class colours."""
    renderer = ET.Element(
        "renderer-v2", type="categorizedSymbol", attr=attr, symbollevels="0",
        enableorderby="0", forceraster="0", referencescale="-1",
    )  # fmt: skip
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for i, c in enumerate(schema.classes):
        ET.SubElement(
            categories, "category", value=str(c.code), symbol=str(i), label=c.name, render="true"
        )
        symbols.append(_fill_symbol(str(i), c.rgb, alpha))
    ET.SubElement(renderer, "rotation")
    ET.SubElement(renderer, "sizescale")
    return [renderer, *vector_style_tail()]


def vector_style_tail() -> list[ET.Element]:
    """The blend modes and opacity that close a vector layer's style (QGIS writes them)."""
    tail = []
    for tag, text in (("blendMode", "0"), ("featureBlendMode", "0"), ("layerOpacity", "1")):
        el = ET.Element(tag)
        el.text = text
        tail.append(el)
    return tail


def _fill_symbol(name: str, rgb: tuple[int, int, int], alpha: int = 255) -> ET.Element:
    """A fill in the class colour (``alpha`` 0-255) with a thin opaque outline 40 % darker,
    so adjacent polygons of one class stay distinguishable without hiding the colour."""
    outline = tuple(int(v * 0.6) for v in rgb)
    props = {
        "color": "{},{},{},{}".format(*rgb, alpha),
        "style": "solid",
        "outline_color": "{},{},{},255".format(*outline),
        "outline_style": "solid",
        "outline_width": "0.26",
        "outline_width_unit": "MM",
        "joinstyle": "bevel",
        "offset": "0,0",
        "offset_unit": "MM",
    }
    return simple_fill_symbol(name, props)


def simple_fill_symbol(name: str, props: dict[str, str]) -> ET.Element:
    """A QGIS fill symbol of one SimpleFill layer with ``props`` (colour, style, outline...)."""
    symbol = ET.Element("symbol", type="fill", name=name, alpha="1", clip_to_extent="1")
    symbol.set("force_rhr", "0")
    layer = ET.SubElement(symbol, "layer", attrib={"class": "SimpleFill"})
    layer.set("enabled", "1")
    layer.set("locked", "0")
    layer.set("pass", "0")
    options = ET.SubElement(layer, "Option", type="Map")
    for key, value in props.items():
        ET.SubElement(options, "Option", type="QString", name=key, value=value)
    for key, value in props.items():  # QGIS < 3.26 reads these, newer ones the Option map
        ET.SubElement(layer, "prop", k=key, v=value)
    return symbol


def style_document(nodes: list[ET.Element]) -> str:
    """A QML document holding ``nodes`` (a renderer and its settings)."""
    root = ET.Element(
        "qgis", version=QGIS_XML_VERSION, styleCategories="AllStyleCategories",
        hasScaleBasedVisibilityFlag="0", minScale="1e+08", maxScale="0",
    )  # fmt: skip
    root.extend(nodes)
    ET.indent(root)
    return _DOCTYPE + ET.tostring(root, encoding="unicode") + "\n"


# --- project ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LayerInfo:
    crs: pyproj.CRS
    bounds: tuple[float, float, float, float] | None
    rgb: bool = False
    geometry: str = ""


def write_project(
    path: str | os.PathLike,
    layers: Sequence[ProjectLayer],
    *,
    crs: object | None = None,
    extent: tuple[float, float, float, float] | None = None,
    title: str | None = None,
) -> Path:
    """Write a QGIS project (``.qgs``) showing ``layers``, the first one on top.

    Layer sources are relative to the project file, styles are embedded (QGIS takes a
    project's layer styles from the project, not from sidecars). ``crs`` defaults to the
    first layer's CRS and ``extent`` (in that CRS) to the union of all layers.
    """
    path = Path(path)
    if path.suffix.lower() != ".qgs":
        raise TrustmapError("a project file must end in .qgs", path)
    if not layers:
        raise ValueError("a project needs at least one layer")
    infos = [_layer_info(layer) for layer in layers]
    project_crs = pyproj.CRS.from_user_input(crs) if crs is not None else infos[0].crs
    if extent is None:
        extent = _union_extent(infos, project_crs)
    if extent is None:
        raise TrustmapError("no layer has an extent; pass one explicitly", path)

    root = ET.Element("qgis", projectname=title or path.stem, version=QGIS_XML_VERSION)
    ET.SubElement(root, "homePath", path="")
    ET.SubElement(root, "title").text = title or path.stem
    ET.SubElement(root, "projectCrs").append(_spatialrefsys(project_crs))

    ids = [_layer_id(i, layer) for i, layer in enumerate(layers)]
    sources = [_relative_source(layer, path.parent) for layer in layers]
    tree = ET.SubElement(root, "layer-tree-group")
    ET.SubElement(tree, "customproperties")
    for layer, lid, src in zip(layers, ids, sources, strict=True):
        node = ET.SubElement(
            tree, "layer-tree-layer", id=lid, name=layer.name, source=src,
            providerKey="ogr" if layer.kind == "vector" else "gdal",
            checked="Qt::Checked" if layer.visible else "Qt::Unchecked", expanded="1",
        )  # fmt: skip
        ET.SubElement(node, "customproperties")

    canvas = ET.SubElement(root, "mapcanvas", name="theMapCanvas", annotationsVisible="1")
    ET.SubElement(canvas, "units").text = _map_units(project_crs)
    canvas.append(_extent_element("extent", extent))
    ET.SubElement(canvas, "rotation").text = "0"
    ET.SubElement(canvas, "destinationsrs").append(_spatialrefsys(project_crs))

    maplayers = ET.SubElement(root, "projectlayers")
    for layer, info, lid, src in zip(layers, infos, ids, sources, strict=True):
        maplayers.append(_maplayer(layer, info, lid, src))

    props = ET.SubElement(root, "properties")
    ET.SubElement(ET.SubElement(props, "Paths"), "Absolute", type="bool").text = "false"
    srs_props = ET.SubElement(props, "SpatialRefSys")
    ET.SubElement(srs_props, "ProjectionsEnabled", type="int").text = "1"

    view = ET.SubElement(root, "ProjectViewSettings", UseProjectScales="0", rotation="0")
    ET.SubElement(view, "Scales")
    xmin, ymin, xmax, ymax = (repr(float(v)) for v in extent)
    default_view = ET.SubElement(
        view, "DefaultViewExtent", xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax
    )
    default_view.append(_spatialrefsys(project_crs))

    ET.indent(root)
    with atomic_path(path) as tmp:
        tmp.write_text(_DOCTYPE + ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")
    return path


def _layer_info(layer: ProjectLayer) -> _LayerInfo:
    if not layer.path.exists():
        raise TrustmapError("project layer not found", layer.path)
    if layer.kind == "raster":
        with open_raster(layer.path, verify=False) as ds:
            require_crs(ds, layer.path)
            rgb = ds.count >= 3 and all(np.dtype(d) == np.uint8 for d in ds.dtypes[:3])
            return _LayerInfo(pyproj.CRS.from_user_input(ds.crs.to_wkt()), tuple(ds.bounds), rgb)
    import pyogrio

    try:
        info = pyogrio.read_info(layer.path, layer=layer.layer)
    except Exception as exc:  # pyogrio raises DataSourceError / DataLayerError
        raise TrustmapError(
            f"cannot read vector layer {layer.layer!r} ({exc})", layer.path
        ) from None
    if not info.get("crs"):
        raise TrustmapError(f"vector layer {layer.layer!r} has no CRS", layer.path)
    bounds = info.get("total_bounds")
    if bounds is None or not np.all(np.isfinite(bounds)):
        bounds = None
    return _LayerInfo(
        pyproj.CRS.from_user_input(info["crs"]),
        (float(bounds[0]), float(bounds[1]), float(bounds[2]), float(bounds[3]))
        if bounds is not None
        else None,
        geometry=str(info.get("geometry_type") or "Unknown"),
    )


def _union_extent(
    infos: Sequence[_LayerInfo], crs: pyproj.CRS
) -> tuple[float, float, float, float] | None:
    boxes = []
    for info in infos:
        if info.bounds is None:
            continue
        if info.crs == crs:
            boxes.append(info.bounds)
        else:
            tr = pyproj.Transformer.from_crs(info.crs, crs, always_xy=True)
            boxes.append(tr.transform_bounds(*info.bounds, densify_pts=21))
    if not boxes:
        return None
    arr = np.array(boxes, dtype=float)
    return (arr[:, 0].min(), arr[:, 1].min(), arr[:, 2].max(), arr[:, 3].max())


def _layer_id(index: int, layer: ProjectLayer) -> str:
    """QGIS's own id pattern, name + "_" + UUID, with a UUID derived from the layer so the
    file is reproducible. Short ids are not an option: QGIS 3.22 silently replaces ids of
    under 10 characters on load, which orphans the layer-tree entry (the layer vanishes)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", layer.name).strip("_") or "layer"
    key = uuid.uuid5(uuid.NAMESPACE_URL, f"{index}|{layer.kind}|{layer.path.name}|{layer.name}")
    return f"{slug}_{str(key).replace('-', '_')}"


def _relative_source(layer: ProjectLayer, project_dir: Path) -> str:
    target = layer.path.resolve()
    try:
        rel = Path(os.path.relpath(target, project_dir.resolve())).as_posix()
        src = rel if rel.startswith("../") else f"./{rel}"
    except ValueError:  # another drive on Windows: relative paths cannot reach it
        src = target.as_posix()
    if layer.kind != "vector":
        return src
    return f"{src}|layername={layer.layer}" + (f"|subset={layer.subset}" if layer.subset else "")


def _maplayer(layer: ProjectLayer, info: _LayerInfo, lid: str, source: str) -> ET.Element:
    if layer.kind == "vector":
        geometry = info.geometry.replace("Multi", "").replace(" Z", "").replace(" M", "")
        geometry = {"LineString": "Line"}.get(geometry, geometry)
        el = ET.Element(
            "maplayer", type="vector", geometry=geometry, wkbType=info.geometry.replace(" ", ""),
            styleCategories="AllStyleCategories", hasScaleBasedVisibilityFlag="0",
            minScale="1e+08", maxScale="0", readOnly="0",
        )  # fmt: skip
    else:
        el = ET.Element(
            "maplayer", type="raster", styleCategories="AllStyleCategories",
            hasScaleBasedVisibilityFlag="0", minScale="1e+08", maxScale="0",
        )  # fmt: skip
    if info.bounds is not None:
        el.append(_extent_element("extent", info.bounds))
    ET.SubElement(el, "id").text = lid
    ET.SubElement(el, "datasource").text = source
    ET.SubElement(el, "layername").text = layer.name
    ET.SubElement(el, "srs").append(_spatialrefsys(info.crs))
    if layer.style_qml is not None:
        ET.SubElement(el, "provider", encoding="UTF-8").text = "ogr" if layer.kind == "vector" else "gdal"
        el.extend(list(ET.fromstring(layer.style_qml.split("\n", 1)[1])))
    elif layer.kind == "vector":
        ET.SubElement(el, "provider", encoding="UTF-8").text = "ogr"
        assert layer.schema is not None  # checked in ProjectLayer
        el.extend(_vector_style_nodes(layer.schema))
    else:
        ET.SubElement(el, "provider").text = "gdal"
        el.extend(_raster_style_nodes(layer.schema, rgb=info.rgb))
    if layer.opacity != 1.0:
        for node in el.iter("rasterrenderer"):
            node.set("opacity", f"{layer.opacity:g}")
        for node in el.iter("layerOpacity"):
            node.text = f"{layer.opacity:g}"
    return el


def _spatialrefsys(crs: pyproj.CRS) -> ET.Element:
    """QGIS reads the WKT (lossless); authid and srid are there for people reading the XML."""
    srs = ET.Element("spatialrefsys", nativeFormat="Wkt")
    ET.SubElement(srs, "wkt").text = crs.to_wkt("WKT2_2019")
    epsg = crs.to_epsg()
    ET.SubElement(srs, "srid").text = str(epsg or 0)
    ET.SubElement(srs, "authid").text = f"EPSG:{epsg}" if epsg else ""
    ET.SubElement(srs, "description").text = crs.name
    ET.SubElement(srs, "geographicflag").text = "true" if crs.is_geographic else "false"
    return srs


def _extent_element(tag: str, bounds: Sequence[float]) -> ET.Element:
    el = ET.Element(tag)
    for key, value in zip(("xmin", "ymin", "xmax", "ymax"), bounds, strict=True):
        ET.SubElement(el, key).text = repr(float(value))
    return el


def _map_units(crs: pyproj.CRS) -> str:
    unit = (crs.axis_info[0].unit_name if crs.axis_info else "").lower()
    if unit in ("metre", "meter"):
        return "meters"
    if unit.startswith("degree"):
        return "degrees"
    if "foot" in unit or "feet" in unit:
        return "feet"
    return "unknown"
