"""Open detect-scene GeoPackages in the real QGIS and report what it applied, as JSON.

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/e2e/qgis_scene_probe.py SPEC.json OUT.json

SPEC: ``{"layers": {key: uri}, "scene": path-or-null}``. For each layer (loaded with its
default style, i.e. the GeoPackage's ``layer_styles`` row): validity, CRS, feature count,
extent, renderer type and, for a graduated renderer, its attribute and ranges (bounds,
colour), and every feature's bounding box; for the scene raster, its CRS and extent as QGIS
reads them. Only the standard library and qgis are imported: this runs outside the venv
(see qgis_probe.py for the general probe).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from qgis.core import Qgis, QgsApplication, QgsRasterLayer, QgsVectorLayer


def vector_facts(uri: str) -> dict[str, Any]:
    layer = QgsVectorLayer(uri, "detections", "ogr", QgsVectorLayer.LayerOptions(loadDefaultStyle=True))
    facts: dict[str, Any] = {"valid": layer.isValid(), "crs": layer.crs().authid()}
    if not layer.isValid():
        return facts
    ext = layer.extent()
    renderer = layer.renderer()
    facts |= {
        "feature_count": layer.featureCount(),
        "extent": [ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum()],
        "renderer": renderer.type() if renderer else None,
        "fields": [f.name() for f in layer.fields()],
        "styles_in_database": list(layer.listStylesInDatabase()[2]),
    }
    if renderer is not None and renderer.type() == "graduatedSymbol":
        facts["class_attribute"] = renderer.classAttribute()
        facts["ranges"] = [
            {"lower": r.lowerValue(), "upper": r.upperValue(), "label": r.label(), "color": r.symbol().color().name()}
            for r in renderer.ranges()
        ]
    boxes = []
    for feat in layer.getFeatures():
        b = feat.geometry().boundingBox()
        boxes.append([b.xMinimum(), b.yMinimum(), b.xMaximum(), b.yMaximum()])
    facts["boxes"] = boxes
    return facts


def raster_facts(path: str) -> dict[str, Any]:
    layer = QgsRasterLayer(path, "scene", "gdal")
    ext = layer.extent()
    return {
        "valid": layer.isValid(),
        "crs": layer.crs().authid(),
        "extent": [ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum()],
    }


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    app = QgsApplication([], False)
    app.initQgis()
    try:
        result = {
            "qgis_version": Qgis.version(),
            "layers": {k: vector_facts(uri) for k, uri in spec.get("layers", {}).items()},
            "scene": raster_facts(spec["scene"]) if spec.get("scene") else None,
        }
    finally:
        app.exitQgis()
    Path(sys.argv[2]).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
