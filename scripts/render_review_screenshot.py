"""Render the README's "review in QGIS" screenshot with the real QGIS, from a real workspace.

    python scripts/render_review_screenshot.py [--out docs/img/review_qgis.png]

Builds a workspace on the Dubai scene in tests/data (crowd-style cheap labels simulated from
its truth), trains, selects round 1, lets a simulated analyst answer half the queue in QGIS
(through PyQGIS, as in tests/e2e/test_review_qgis.py), imports, selects round 2, and renders
review.qgs as QGIS draws it. Needs PyQGIS under /usr/bin/python3 (scripts/test.sh installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "dubai"
REVIEW = ROOT / "tests" / "e2e" / "qgis_review.py"
CONFIG = {"train": {"steps": 120, "epochs": 0, "finetune_steps": 30}}


def refine(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "refine", *args], check=True)


def qgis(spec: dict, work: Path) -> dict:
    (work / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    subprocess.run(["/usr/bin/python3", str(REVIEW), str(work / "spec.json"), str(work / "out.json")],
                   check=True, env=env)  # fmt: skip
    return json.loads((work / "out.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "review_qgis.png")
    args = ap.parse_args()
    from refine.cheap.edits import EditNoise, write_simulated_edits
    from tiles.classes import load_schema

    work = Path(tempfile.mkdtemp(prefix="trustmap-screenshot-"))
    schema = load_schema(DATA / "classes.yaml")
    with rasterio.open(DATA / "t2_007_truth.tif") as ds:
        truth = ds.read(1)
    write_simulated_edits(DATA / "t2_007_truth.tif", work / "crowd.tif", schema, EditNoise(noise=0.2, seed=1))
    (work / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    ws = work / "ws"
    refine("init", str(DATA / "t2_007_scene.tif"), "--labels", str(work / "crowd.tif"), "--classes",
           str(DATA / "classes.yaml"), "--workspace", str(ws), "--config", str(work / "config.yaml"))  # fmt: skip
    refine("run", "--workspace", str(ws), "--budget", "4%")
    with np.load(ws / "regions.npz") as z:
        regions = z["labels"]
    con = sqlite3.connect(ws / "session.gpkg")
    rows = con.execute("SELECT fid, region_id, current_class FROM review_queue ORDER BY \"rank\"").fetchall()
    con.close()
    answers, confirmed = {}, []
    for fid, rid, cur in rows[: len(rows) // 2]:
        t = truth[(regions == rid) & (truth != schema.ignore)]
        dom = int(np.bincount(t).argmax())
        (answers.__setitem__(str(fid), dom) if dom != cur else confirmed.append(fid))
    qgis({"project": str(ws / "review.qgs"), "answers": answers, "reviewed": confirmed}, work)
    refine("import", "--workspace", str(ws))
    with rasterio.open(ws / "labels" / "v000.tif") as a, rasterio.open(ws / "labels" / "v001.tif") as b:
        known = truth != schema.ignore
        before = float(((a.read(1) != truth) & known).sum() / known.sum())
        after = float(((b.read(1) != truth) & known).sum() / known.sum())
    print(f"round 1: {len(answers)} regions corrected and {len(confirmed)} confirmed in QGIS; "
          f"label error {before:.2%} -> {after:.2%} against the truth (never seen by the workspace)")
    refine("run", "--workspace", str(ws), "--budget", "2%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    seen = qgis({"project": str(ws / "review.qgs"), "render": str(args.out), "size": [1000, 1060]}, work)
    print(f"rendered {', '.join(seen['rendered_layers'])} to {args.out}")


if __name__ == "__main__":
    main()
