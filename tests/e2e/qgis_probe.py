"""Open layers and projects in the real QGIS and report what it sees, as JSON.

Run with the interpreter that has PyQGIS (Debian: /usr/bin/python3), not the venv:

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/e2e/qgis_probe.py SPEC.json OUT.json

SPEC lists layers to load on their own (so QGIS applies their default style: a sidecar
.qml, or a GeoPackage's layer_styles row) and projects to read and render to PNG. OUT gets
the facts: validity, CRS, renderer type, classes with labels and colours, and for each
render the PNG path and the visible map extent, so a test can map coordinates to pixels.
One process handles everything because QGIS start-up is the slow part.

Only the standard library and qgis are imported: this must run outside the venv.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateTransform,
    QgsMapLayer,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor

SYMBOL_TYPES = {0: "marker", 1: "line", 2: "fill"}


def colour(c: QColor) -> dict[str, Any]:
    return {"color": c.name().lower(), "alpha": c.alpha()}


def gdal_category_names(path: str) -> list[str] | None:
    try:
        from osgeo import gdal
    except ImportError:
        return None
    ds = gdal.Open(path)
    if ds is None:
        return None
    # Band.GetCategoryNames() returns None when the first name is empty (GDAL 3.6
    # bindings); gdal.Info reports them faithfully.
    return list(gdal.Info(ds, format="json")["bands"][0].get("categories", []))


def layer_facts(layer: QgsMapLayer) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "name": layer.name(),
        "valid": layer.isValid(),
        "source": layer.source(),
        "provider": layer.providerType(),
        "crs": layer.crs().authid(),
        "crs_valid": layer.crs().isValid(),
        "renderer": None,
        "classes": [],
    }
    if not layer.isValid():
        return facts
    ext = layer.extent()
    facts["extent"] = [ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum()]
    if isinstance(layer, QgsRasterLayer):
        renderer = layer.renderer()
        facts["renderer"] = renderer.type() if renderer else None
        facts["band_count"] = layer.bandCount()
        if renderer is not None and renderer.type() == "paletted":
            facts["classes"] = [
                {"value": int(c.value), "label": c.label, **colour(c.color)}
                for c in renderer.classes()
            ]
        facts["gdal_category_names"] = gdal_category_names(layer.source())
    elif isinstance(layer, QgsVectorLayer):
        renderer = layer.renderer()
        facts["renderer"] = renderer.type() if renderer else None
        facts["feature_count"] = layer.featureCount()
        facts["geometry_type"] = QgsWkbTypes.displayString(layer.wkbType())
        if renderer is not None and renderer.type() == "categorizedSymbol":
            facts["class_attribute"] = renderer.classAttribute()
            facts["classes"] = [
                {
                    "value": int(cat.value()),
                    "label": cat.label(),
                    "symbol": SYMBOL_TYPES.get(int(cat.symbol().type()), "other"),
                    **colour(cat.symbol().color()),
                }
                for cat in renderer.categories()
            ]
        facts["styles_in_database"] = list(layer.listStylesInDatabase()[2])
    return facts


def load_layer(spec: dict[str, Any]) -> dict[str, Any]:
    load_default = not spec.get("style")
    if spec["kind"] == "raster":
        opts = QgsRasterLayer.LayerOptions(loadDefaultStyle=load_default)
        layer: QgsMapLayer = QgsRasterLayer(spec["uri"], spec.get("name", "layer"), "gdal", opts)
    else:
        opts = QgsVectorLayer.LayerOptions(loadDefaultStyle=load_default)
        layer = QgsVectorLayer(spec["uri"], spec.get("name", "layer"), "ogr", opts)
    if spec.get("style") and layer.isValid():
        message, ok = layer.loadNamedStyle(spec["style"])
        if not ok:
            return {"valid": layer.isValid(), "style_error": message}
    return layer_facts(layer)


def render(project: QgsProject, spec: dict[str, Any], extent: QgsRectangle) -> dict[str, Any]:
    # What the user sees on opening: the layers switched on in the project, unless the spec
    # shows or hides some by name.
    hidden, shown = set(spec.get("hide", [])), set(spec.get("show", []))
    root = project.layerTreeRoot()
    layers = [
        lyr
        for lyr in root.layerOrder()
        if lyr.name() not in hidden and (lyr.name() in shown or root.findLayer(lyr.id()).isVisible())
    ]
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(project.crs())
    settings.setTransformContext(project.transformContext())
    settings.setBackgroundColor(QColor(255, 255, 255))
    settings.setOutputDpi(96)
    settings.setOutputSize(QSize(int(spec["width"]), int(spec["height"])))
    settings.setExtent(QgsRectangle(*spec["extent"]) if spec.get("extent") else extent)
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    Path(spec["png"]).parent.mkdir(parents=True, exist_ok=True)
    saved = image.save(spec["png"], "PNG")
    vis = settings.visibleExtent()
    return {
        "png": spec["png"],
        "saved": bool(saved),
        "layers": [lyr.name() for lyr in layers],
        "width": image.width(),
        "height": image.height(),
        "visible_extent": [vis.xMinimum(), vis.yMinimum(), vis.xMaximum(), vis.yMaximum()],
        "errors": [f"{e.layerID}: {e.message}" for e in job.errors()],
    }


def probe_project(spec: dict[str, Any]) -> dict[str, Any]:
    project = QgsProject.instance()
    project.clear()
    ok = project.read(spec["path"])
    out: dict[str, Any] = {"read": bool(ok), "error": project.error()}
    if not ok:
        return out
    out["crs"] = project.crs().authid()
    out["absolute_paths"] = project.readBoolEntry("Paths", "/Absolute", True)[0]
    order = project.layerTreeRoot().layerOrder()
    out["layers"] = [layer_facts(layer) for layer in order]
    view = project.viewSettings().defaultViewExtent()
    extent = QgsRectangle(view)
    if view.crs().isValid() and view.crs() != project.crs():
        tr = QgsCoordinateTransform(view.crs(), project.crs(), project.transformContext())
        extent = tr.transformBoundingBox(extent)
    out["view_extent"] = [
        extent.xMinimum(),
        extent.yMinimum(),
        extent.xMaximum(),
        extent.yMaximum(),
    ]
    out["view_extent_crs"] = view.crs().authid()
    out["renders"] = [render(project, r, extent) for r in spec.get("renders", [])]
    project.clear()
    return out


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    app = QgsApplication([], False)
    app.initQgis()
    try:
        result = {
            "qgis_version": Qgis.version(),
            "layers": {key: load_layer(s) for key, s in spec.get("layers", {}).items()},
            "projects": {key: probe_project(s) for key, s in spec.get("projects", {}).items()},
        }
    finally:
        app.exitQgis()
    Path(sys.argv[2]).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
