"""Play the analyst in the real QGIS: open a workspace's review project, answer queue
features and draw a correction through QGIS's own editing API, then render the project.

Run with the interpreter that has PyQGIS (Debian: /usr/bin/python3), not the venv:

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/e2e/qgis_review.py SPEC.json OUT.json

SPEC: {"project": path, "answers": {fid: class code or name}, "reviewed": [fid, ...],
"draw": [{"wkt": ..., "class": ...}], "render": PNG path or null, "size": [w, h]}.
OUT: what QGIS saw (layers, CRS, renderers, edit widgets) and what it committed.

Only the standard library and qgis are imported: this must run outside the venv.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsGeometry,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsProject,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor


def by_source_layer(project: QgsProject, table: str, subset: str = "") -> QgsVectorLayer:
    """The project's layer on GeoPackage table ``table`` whose filter contains ``subset``."""
    for layer in project.mapLayers().values():
        if (
            isinstance(layer, QgsVectorLayer)
            and f"layername={table}" in layer.source()
            and subset in layer.subsetString()
        ):
            return layer
    raise SystemExit(f"project has no layer on table {table!r} filtered by {subset!r}")


def facts(layer: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": layer.name(),
        "valid": layer.isValid(),
        "opacity": layer.opacity(),
        "crs": layer.crs().authid(),
    }
    if isinstance(layer, QgsVectorLayer):
        r = layer.renderer()
        out["renderer"] = r.type() if r else None
        out["features"] = layer.featureCount()
        out["subset"] = layer.subsetString()
        out["widgets"] = {
            f.name(): layer.editorWidgetSetup(i).type() for i, f in enumerate(layer.fields())
        }
        if r is not None and r.type() == "graduatedSymbol":
            ranges = r.ranges()  # keep the copies alive while their symbols are read
            out["classes"] = len(ranges)
            out["attr"] = r.classAttribute()
            out["fill_style"] = ranges[0].symbol().symbolLayer(0).properties().get("style")
        if r is not None and r.type() == "categorizedSymbol":
            categories = r.categories()
            out["attr"] = r.classAttribute()
            out["symbol_alpha"] = categories[0].symbol().opacity()
    return out


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    app = QgsApplication([], False)
    app.initQgis()
    project = QgsProject.instance()
    if not project.read(spec["project"]):
        raise SystemExit(f"QGIS cannot read {spec['project']}: {project.error()}")
    result: dict[str, Any] = {
        "layers": [facts(layer) for layer in project.layerTreeRoot().layerOrder()],
        "crs": project.crs().authid(),
    }
    queue = by_source_layer(project, "review_queue", "= 'queued'")
    corrections = by_source_layer(project, "corrections")
    # The analyst answers queue features: set corrected_class, or tick reviewed.
    if not queue.startEditing():
        raise SystemExit("QGIS cannot edit the review queue")
    i_cls = queue.fields().indexOf("corrected_class")
    i_rev = queue.fields().indexOf("reviewed")
    for fid, value in spec.get("answers", {}).items():
        if not queue.changeAttributeValue(int(fid), i_cls, str(value)):
            raise SystemExit(f"cannot set corrected_class of feature {fid}")
    for fid in spec.get("reviewed", []):
        if not queue.changeAttributeValue(int(fid), i_rev, 1):
            raise SystemExit(f"cannot tick reviewed of feature {fid}")
    if not queue.commitChanges():
        raise SystemExit(f"QGIS could not commit the queue: {queue.commitErrors()}")
    # ... and draws new polygons in the corrections layer.
    if spec.get("draw"):
        if not corrections.startEditing():
            raise SystemExit("QGIS cannot edit the corrections layer")
        for d in spec["draw"]:
            f = QgsFeature(corrections.fields())
            f.setGeometry(QgsGeometry.fromWkt(d["wkt"]))
            f.setAttribute("class", str(d["class"]))
            f.setAttribute("author", d.get("author", "qgis-analyst"))
            if not corrections.addFeature(f):
                raise SystemExit("QGIS refused the drawn feature")
        if not corrections.commitChanges():
            raise SystemExit(f"QGIS could not commit the corrections: {corrections.commitErrors()}")
    result["committed"] = {
        "queue_features": queue.featureCount(),
        "corrections_features": corrections.featureCount(),
    }
    if spec.get("render"):
        settings = QgsMapSettings()
        layers = [
            layer
            for layer in project.layerTreeRoot().layerOrder()
            if project.layerTreeRoot().findLayer(layer.id()).isVisible()
        ]
        settings.setLayers(layers)
        settings.setDestinationCrs(project.crs())
        settings.setExtent(project.viewSettings().defaultViewExtent())
        w, h = spec.get("size", [900, 900])
        settings.setOutputSize(QSize(w, h))
        settings.setBackgroundColor(QColor(255, 255, 255))
        job = QgsMapRendererSequentialJob(settings)
        job.start()
        job.waitForFinished()
        job.renderedImage().save(spec["render"], "PNG")
        result["render"] = spec["render"]
        result["rendered_layers"] = [layer.name() for layer in layers]
    Path(sys.argv[2]).write_text(json.dumps(result, indent=2), encoding="utf-8")
    app.exitQgis()


if __name__ == "__main__":
    main()
