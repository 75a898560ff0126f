"""The analyst's round trip with real processes: ``refine init`` → ``train`` → ``select`` →
edit in the real QGIS (PyQGIS, offscreen) → ``refine import`` → ``export``, on a real Dubai
scene whose cheap labels are simulated crowd labels; and ``kill -9`` at any moment of
``import``, ``select`` and ``train`` loses and duplicates nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from refine.cheap.edits import EditNoise, write_simulated_edits
from tiles.classes import load_schema

from .conftest import QGIS_PYTHON, _qgis_env

REVIEW = Path(__file__).with_name("qgis_review.py")
FAST = {
    "model": {"tile_size": 128, "overlap": 16, "predict_batch": 8},
    "train": {"steps": 16, "epochs": 0, "crop": 96, "batch_size": 4, "finetune_steps": 6},
}


def refine(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "refine", *args], capture_output=True, text=True, timeout=600)
    if check and res.returncode != 0:
        pytest.fail(f"refine {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res


def current(ws: Path) -> tuple[int, np.ndarray]:
    con = sqlite3.connect(ws / "session.gpkg")
    v, f = con.execute("SELECT version, file FROM label_versions ORDER BY version DESC LIMIT 1").fetchone()
    con.close()
    with rasterio.open(ws / f) as ds:
        return v, ds.read(1)


def one(ws: Path, sql: str, params: tuple = ()):
    con = sqlite3.connect(ws / "session.gpkg")
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def selected(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A workspace after init, train and select (5 %), with no truth in it."""
    d = real_data / "dubai"
    root = tmp_path_factory.mktemp("review")
    schema = load_schema(d / "classes.yaml")
    write_simulated_edits(d / "t2_007_truth.tif", root / "crowd.tif", schema, EditNoise(noise=0.2, seed=1))
    (root / "fast.yaml").write_text(yaml.safe_dump(FAST))
    ws = root / "ws"
    refine("init", str(d / "t2_007_scene.tif"), "--labels", str(root / "crowd.tif"), "--classes",
           str(d / "classes.yaml"), "--workspace", str(ws), "--config", str(root / "fast.yaml"))  # fmt: skip
    refine("train", "--workspace", str(ws))
    refine("select", "--workspace", str(ws), "--budget", "5%")
    return {"ws": ws, "truth": d / "t2_007_truth.tif", "root": root}


def analyst_answers(ws: Path, truth: np.ndarray, n: int) -> tuple[dict[str, int], list[int], dict[int, int]]:
    """What an analyst who knows the truth answers for the top ``n`` queue features."""
    with np.load(ws / "regions.npz") as z:
        labels = z["labels"]
    rows = one(ws, "SELECT fid, region_id, current_class FROM review_queue WHERE status = 'queued' "
                   "ORDER BY round, \"rank\" LIMIT ?", (n,))  # fmt: skip
    answers, confirmed, regions = {}, [], {}
    for fid, rid, cur in rows:
        t = truth[labels == rid]
        t = t[t != 255]
        dom = int(np.bincount(t).argmax())
        regions[rid] = dom
        if dom != cur:
            answers[str(fid)] = dom
        else:
            confirmed.append(fid)
    return answers, confirmed, regions


def wrong_block(ws: Path, truth: np.ndarray, cheap: np.ndarray, queued: np.ndarray, size: int = 12):
    """A size² block of one true class that the cheap labels mostly get wrong, away from the queue."""
    h, w = truth.shape
    best = None
    for r in range(0, h - size, size):
        for c in range(0, w - size, size):
            t = truth[r : r + size, c : c + size]
            if (t != t[0, 0]).any() or t[0, 0] == 255 or queued[r : r + size, c : c + size].any():
                continue
            wrong = int((cheap[r : r + size, c : c + size] != t[0, 0]).sum())
            if best is None or wrong > best[0]:
                best = (wrong, r, c, int(t[0, 0]))
    assert best is not None and best[0] > size * size // 2
    return best[1], best[2], best[3]


@pytest.mark.qgis
def test_the_analyst_round_trip_through_qgis(selected, qgis, tmp_path: Path) -> None:
    ws = selected["ws"]
    with rasterio.open(selected["truth"]) as ds:
        truth = ds.read(1)
    v0, before = current(ws)
    with np.load(ws / "regions.npz") as z:
        region_ids = z["labels"]
    queued_ids = [r for (r,) in one(ws, "SELECT region_id FROM review_queue WHERE status = 'queued'")]
    answers, confirmed, regions = analyst_answers(ws, truth, 10)
    r, c, cls = wrong_block(ws, truth, before, np.isin(region_ids, queued_ids))
    from refine.workspace import Workspace

    t = Workspace.open(ws).scene.transform
    (x0, y0), (x1, y1) = t * (c + 0.1, r + 0.1), t * (c + 11.9, r + 11.9)
    wkt = f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"
    spec = {"project": str(ws / "review.qgs"), "answers": answers, "reviewed": confirmed,
            "draw": [{"wkt": wkt, "class": cls, "author": "qgis-analyst"}]}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    res = subprocess.run([QGIS_PYTHON, str(REVIEW), str(tmp_path / "spec.json"), str(tmp_path / "out.json")],
                         env=_qgis_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    seen = json.loads((tmp_path / "out.json").read_text())
    layers = {x["name"]: x for x in seen["layers"]}
    assert seen["crs"] == "EPSG:32640" and all(x["valid"] and x["crs"] == "EPSG:32640" for x in layers.values())
    q = layers["review queue (to answer)"]
    assert q["renderer"] == "graduatedSymbol" and q["attr"] == "score" and q["fill_style"] == "no"
    assert q["widgets"]["corrected_class"] == "ValueMap" and q["widgets"]["reviewed"] == "CheckBox"
    assert layers["corrections (draw here)"]["renderer"] == "categorizedSymbol"
    assert layers["changes made (from → to)"]["subset"] == '"pixels_changed" > 0'
    assert layers["review queue (answered)"]["renderer"] == "singleSymbol"
    assert layers["labels (v000)"]["opacity"] < 1
    assert seen["committed"]["corrections_features"] == 1

    out = refine("import", "--workspace", str(ws))
    assert "refused" in out.stdout
    v1, after = current(ws)
    assert v1 == v0 + 1
    changed = after != before
    block = np.zeros_like(changed)
    block[r : r + 12, c : c + 12] = True
    answered = np.isin(region_ids, [int(k) for k in regions])
    assert changed.any() and not (changed & ~(answered | block)).any()  # changed exactly there
    assert (after[block] == cls).all()
    m = truth != 255
    assert ((after != truth) & m).sum() < ((before != truth) & m).sum()  # the label error fell
    log = one(ws, "SELECT source, author, round, label_version FROM correction_log")
    assert len(log) == len(answers) + len(confirmed) + 1
    assert ("drawn", "qgis-analyst", None, v1) in log
    assert all(row[2] == 1 for row in log if row[0] == "queue")
    # Importing the same edits again changes nothing.
    snapshot = one(ws, "SELECT COUNT(*) FROM correction_log")
    again = refine("import", "--workspace", str(ws))
    assert "nothing new to import" in again.stderr
    assert current(ws)[0] == v1 and one(ws, "SELECT COUNT(*) FROM correction_log") == snapshot

    status = json.loads(refine("status", "--workspace", str(ws), "--json").stdout)
    assert status["label_version"] == v1 and status["regions"]["reviewed"] == len(regions)
    exported = refine("export", "--workspace", str(ws), "-o", str(tmp_path / "out"))
    assert "refined_review.qgs" in exported.stdout
    with rasterio.open(tmp_path / "out" / "refined_labels.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), after)
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000
    refused = refine("export", "--workspace", str(ws), "-o", str(tmp_path / "out"), check=False)
    assert refused.returncode == 1 and "--overwrite" in refused.stderr


def _digest(ws: Path) -> dict:
    """The committed state, as a reader sees it: tables, and every referenced raster's hash."""
    con = sqlite3.connect(ws / "session.gpkg")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        out = {
            "versions": con.execute("SELECT version, file, sha256 FROM label_versions ORDER BY version").fetchall(),
            "log": con.execute("SELECT key, label_version, pixels_changed FROM correction_log ORDER BY key").fetchall(),
            "queue": con.execute("SELECT fid, status FROM review_queue ORDER BY fid").fetchall(),
            "rounds": con.execute("SELECT round, queued FROM rounds ORDER BY round").fetchall(),
            "models": con.execute("SELECT model, file FROM models ORDER BY model").fetchall(),
            "regions": con.execute("SELECT status, COUNT(*) FROM regions GROUP BY status ORDER BY status").fetchall(),
        }
    finally:
        con.close()
    for _, f, sha in out["versions"]:  # every committed version is on disk, whole
        assert hashlib.sha256((ws / f).read_bytes()).hexdigest() == sha
    for _, f in out["models"]:
        assert (ws / f).is_file()
    queued_rounds = {r for (r,) in one(ws, "SELECT DISTINCT round FROM review_queue")}
    assert queued_rounds <= {r for r, _ in out["rounds"]}  # no queue row without its round
    return out


def _kill_at(args: list[str], delay: float) -> None:
    p = subprocess.Popen([sys.executable, "-m", "refine", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()


def test_kill_9_during_import_loses_and_duplicates_nothing(selected, tmp_path: Path) -> None:
    with rasterio.open(selected["truth"]) as ds:
        truth = ds.read(1)
    edited = tmp_path / "edited"
    shutil.copytree(selected["ws"], edited)
    answers, confirmed, _ = analyst_answers(edited, truth, 15)
    con = sqlite3.connect(edited / "session.gpkg")
    with con:
        for fid, code in answers.items():
            con.execute("UPDATE review_queue SET corrected_class = ? WHERE fid = ?", (str(code), int(fid)))
        for fid in confirmed:
            con.execute("UPDATE review_queue SET reviewed = 1 WHERE fid = ?", (fid,))
    con.close()
    reference = tmp_path / "reference"
    shutil.copytree(edited, reference)
    t0 = time.perf_counter()
    refine("import", "--workspace", str(reference))
    took = time.perf_counter() - t0
    want = _digest(reference)
    start = _digest(edited)
    for frac in (0.4, 0.7, 0.85, 0.97):
        _kill_at(["import", "--workspace", str(edited)], frac * took)
        now = _digest(edited)
        assert now in (start, want)  # all of the import, or none of it
    refine("import", "--workspace", str(edited))
    assert _digest(edited) == want
    np.testing.assert_array_equal(current(edited)[1], current(reference)[1])


def test_kill_9_during_select_and_train_leaves_a_workspace_that_carries_on(selected, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(selected["ws"], ws)
    timing = tmp_path / "timing"
    shutil.copytree(selected["ws"], timing)
    t0 = time.perf_counter()
    refine("select", "--workspace", str(timing), "--budget", "3%")
    t_select = time.perf_counter() - t0
    t0 = time.perf_counter()
    refine("train", "--workspace", str(timing))
    t_train = time.perf_counter() - t0
    for frac in (0.6,):  # once mid-way each; the import test above kills at four moments
        _kill_at(["select", "--workspace", str(ws), "--budget", "3%"], frac * t_select)
        _digest(ws)  # consistent after every kill (a round is there whole, or not at all)
        _kill_at(["train", "--workspace", str(ws)], frac * t_train)
        _digest(ws)
    refine("run", "--workspace", str(ws), "--budget", "3%")
    after = _digest(ws)
    rounds = [r for r, _ in after["rounds"]]
    models = [m for m, _ in after["models"]]
    assert rounds == list(range(1, len(rounds) + 1)) and len(rounds) >= 2
    assert models == list(range(1, len(models) + 1)) and len(models) >= 2
    for r, queued in after["rounds"]:  # each round's queue is whole
        assert one(ws, "SELECT COUNT(*) FROM review_queue WHERE round = ? AND kind = 'review'", (r,))[0][0] == queued
    leftovers = [p for p in ws.rglob(".*") if p.name != ".trustmap.lock"]
    assert leftovers == []  # the staging of the killed commands was cleaned up
