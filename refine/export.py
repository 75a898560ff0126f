"""``refine export``: a workspace's refined labels as a QGIS bundle, the change map, and a
report of every round and every import.

The export is a snapshot of the committed state: it reads the current label version and
the log, and never changes the workspace. Everything is staged and moved into the output
folder at the end, so a failed export leaves the folder as it was.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from refine.workspace import LOG, Echo, Workspace, workspace_status, write_json
from tiles.errors import TrustmapError


def export_workspace(
    ws: Workspace, out_dir: str | Path, *, overwrite: bool = False, echo: Echo | None = None
) -> dict[str, Path]:
    """Write ``refined.tif`` (+ polygons, project), ``change_map.tif`` and ``report.html``."""
    from refine.report import change_map_png
    from tiles.io import bundle_stage, commit_bundle
    from tiles.qgis import ProjectLayer, export_qgis, write_project, write_raster_style

    echo = echo or (lambda _: None)
    out_dir = Path(out_dir)
    if out_dir.resolve() == ws.root.resolve() or ws.root.resolve() in out_dir.resolve().parents:
        raise TrustmapError("an export cannot go inside its workspace; choose a folder outside it", out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise TrustmapError("output folder exists and is not empty; pass --overwrite to replace it", out_dir)
    with ws.connect() as con:
        version = ws.current_version(con)
        labels, provenance = ws.read_version(version)
        versions = con.execute(
            "SELECT version, created, corrections, pixels_changed, command FROM label_versions ORDER BY version"
        ).fetchall()
        log = con.execute(
            f"SELECT fid, source, feature, round, region_id, class_name, author, imported_at, label_version, "
            f"pixels_changed FROM {LOG} ORDER BY fid"
        ).fetchall()
        log_version = dict(con.execute(f"SELECT fid, label_version FROM {LOG}").fetchall())
        reviewed_regions = np.asarray(
            [r for (r,) in con.execute("SELECT region_id FROM regions WHERE status = 'reviewed'")], np.int64
        )
        start = ws.read_version(_version(ws, con, 0))[0]
    status = workspace_status(ws)
    # The label version in which each pixel last changed (0 = as the cheap labels had it).
    lut = np.zeros(max(log_version, default=0) + 1, np.uint8)
    for fid, v in log_version.items():
        lut[fid] = min(int(v or 0), 255)
    changed = labels != start
    change_map = np.where(changed, lut[np.clip(provenance, 0, lut.size - 1)], 0).astype(np.uint8)
    change_map[changed & (change_map == 0)] = min(version.version, 255)
    from refine.rounds import round_schema

    rounds_schema = round_schema(max(version.version, 1))
    with bundle_stage(out_dir) as stage:
        refined = stage / "refined_labels.tif"
        with rasterio.open(version.path) as src, rasterio.open(refined, "w", **src.profile) as dst:
            dst.write(src.read())
            cmap = src.colormap(1) if src.colormap else None
            if cmap:
                dst.write_colormap(1, cmap)
        bundle = export_qgis(refined, ws.schema, stage / "qgis", scene_path=ws.scene_path, name="refined", min_area=4.0)
        cm_path = stage / "change_map.tif"
        profile = {**ws.label_profile(), "nodata": None}
        with rasterio.open(cm_path, "w", **profile) as dst:
            dst.write(change_map, 1)
            dst.write_colormap(1, rounds_schema.colormap())
            dst.set_band_description(1, "label version in which the pixel changed (0 = unchanged)")
        write_raster_style(cm_path, rounds_schema)
        reviewed = np.zeros(ws.regions.n, bool)
        reviewed[reviewed_regions] = True
        picture = change_map_png(ws.scene_path, ws.regions.labels, reviewed, changed, np.zeros_like(changed))
        report = {
            "status": status,
            "label_versions": [dict(zip(("version", "created", "corrections", "pixels_changed", "command"), v, strict=True))
                               for v in versions],
            "corrections": [dict(zip(("id", "source", "feature", "round", "region_id", "class", "author",
                                      "imported_at", "label_version", "pixels_changed"), r, strict=True)) for r in log],
            "pixels_changed_since_cheap": int(changed.sum()),
            "valid_pixels": int(ws.scene.valid_mask().sum()),
        }  # fmt: skip
        write_json(stage / "report.json", report)
        (stage / "report.html").write_text(_render(report, picture), encoding="utf-8")
        write_project(
            stage / "refined_review.qgs",
            [
                ProjectLayer(cm_path, "changed in label version", "raster", schema=rounds_schema),
                ProjectLayer(bundle.polygons, "refined labels (polygons)", "vector", schema=ws.schema,
                             layer="polygons", visible=False),
                ProjectLayer(bundle.mask, "refined labels", "raster", schema=ws.schema),
                *([ProjectLayer(bundle.quicklook, "scene quick-look", "raster")] if bundle.quicklook else []),
            ],
            crs=ws.scene.crs,
            title="trustmap refine: refined labels",
        )  # fmt: skip
        commit_bundle(stage, out_dir, last=["refined_review.qgs"])
    out = {
        "labels": out_dir / "refined_labels.tif",
        "polygons": out_dir / "qgis" / bundle.polygons.name,
        "project": out_dir / "refined_review.qgs",
        "change_map": out_dir / "change_map.tif",
        "report": out_dir / "report.html",
    }
    echo(
        f"exported labels v{version.version} ({int(changed.sum())} px changed since the cheap labels) "
        f"to {out_dir}; open {out['project']} in QGIS, {out['report']} in a browser"
    )
    return out


def _version(ws: Workspace, con: Any, n: int):
    from refine.workspace import LabelVersion

    row = con.execute("SELECT version, file, provenance FROM label_versions WHERE version = ?", (n,)).fetchone()
    if row is None:
        raise TrustmapError(f"label version {n} is not in the workspace", ws.session)
    return LabelVersion(int(row[0]), ws.root / row[1], ws.root / row[2] if row[2] else None)


def _render(report: dict[str, Any], picture: str) -> str:
    e = html.escape
    st = report["status"]
    rows = "".join(
        f"<tr><td>{r['round']}</td><td>{e(str(r['created']))}</td><td>v{r['label_version']}</td>"
        f"<td>{e(str(r['strategy']))}</td><td>{r['queued']}</td><td>{r['suggestions']}</td></tr>"
        for r in st["rounds"]
    )
    versions = "".join(
        f"<tr><td>v{v['version']}</td><td>{e(str(v['created']))}</td><td>{e(str(v['command']))}</td>"
        f"<td>{v['corrections']}</td><td>{v['pixels_changed']}</td></tr>"
        for v in report["label_versions"]
    )
    log = "".join(
        f"<tr><td>{c['id']}</td><td>{e(str(c['source']))}</td><td>{e(str(c['feature']))}</td><td>{c['round'] or ''}</td>"
        f"<td>{e(str(c['class']))}</td><td>{e(str(c['author']))}</td><td>{e(str(c['imported_at']))}</td>"
        f"<td>v{c['label_version']}</td><td>{c['pixels_changed']}</td></tr>"
        for c in report["corrections"]
    )
    changes = "".join(f"<li>{e(k)}: {v} px</li>" for k, v in sorted(st["pixels_changed"].items()))
    share = report["pixels_changed_since_cheap"] / max(report["valid_pixels"], 1)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>trustmap refine: workspace report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}img{{max-width:100%}}</style></head><body>
<h1>Workspace report</h1>
<p>Scene <code>{e(st['scene'])}</code>. Labels are at version v{st['label_version']}: {report['pixels_changed_since_cheap']} pixels
({share:.2%} of the valid scene) differ from the cheap labels, after {len(report['corrections'])} imported answers.
The analyst reviewed {st['budget_spent']['reviewed']:.2%} of the scene.</p>
<h2>Map</h2><p>Scene quick-look, darkened; <b style="color:#ff00c8">magenta</b>: pixels the analyst's corrections changed;
white outlines: reviewed regions.</p><img src="{picture}" alt="change map">
<h2>Rounds</h2><table><tr><th>round</th><th>created (UTC)</th><th>on labels</th><th>strategy</th><th>regions queued</th><th>suggestions</th></tr>{rows}</table>
<h2>Label versions</h2><table><tr><th>version</th><th>created (UTC)</th><th>by</th><th>corrections</th><th>pixels changed</th></tr>{versions}</table>
<h2>Pixels changed, from → to</h2><ul>{changes or '<li>none</li>'}</ul>
<h2>Every correction</h2><table><tr><th>id</th><th>source</th><th>feature</th><th>round</th><th>class</th><th>author</th><th>imported (UTC)</th><th>version</th><th>pixels changed</th></tr>{log}</table>
</body></html>
"""

