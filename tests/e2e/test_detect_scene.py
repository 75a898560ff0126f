"""`calibration detect-scene` and `calibration audit --scene` as an analyst runs them.

The real-data case is DeepForest's OSBS_029 (NEON RGB, EPSG:32617, 400x400 px at 0.1 m, 61
hand-drawn crowns) with a small tree detector trained on that tile
(`scripts/train_tree_detector.py`; its numbers measure fit, not generalisation). The
GeoPackage is opened in the real QGIS (tests/e2e/qgis_scene_probe.py under /usr/bin/python3).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

from calibration.boxfiles import ground_truth, read_scored_boxes, scene_truth
from calibration.calibrators import Calibrator, fit
from calibration.cli import main
from calibration.detections import Detections
from calibration.samples import write_sample_scene, write_truth_gpkg

from .conftest import QGIS_PYTHON, _qgis_env

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
TREES = ROOT / "tests" / "calibration" / "data" / "osbs029_tree_detector.pt"
PROBE = Path(__file__).with_name("qgis_scene_probe.py")
TREE_ARGS = ["--weights", str(TREES)]
#: The scene audits of these tests: no bootstrap, one sweep point (sweeps are most of an audit's time).
FAST_AUDIT = "bootstrap: {n: 0}\nsweeps: {score_threshold: [0.5], nms_iou: [], topk: []}\n"


def _invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _metrics(audit_dir: Path, perspective: str | None = None) -> dict[str, float]:
    data = json.loads((audit_dir / "audit.json").read_text())
    p = data["perspectives"][perspective] if perspective else next(iter(data["perspectives"].values()))
    return {k: p["metrics"][k]["value"] for k in ("ece", "dece", "laece", "map", "ap50")}


@pytest.fixture(scope="module")
def osbs(tmp_path_factory) -> dict[str, Any]:
    """detect-scene over OSBS_029 with truth, then with a calibrator fitted on that run."""
    d = tmp_path_factory.mktemp("osbs")
    (d / "fast.yaml").write_text(FAST_AUDIT)
    raw = _invoke(["detect-scene", DATA / "OSBS_029.tif", *TREE_ARGS, "--truth", DATA / "OSBS_029.csv", "--config", d / "fast.yaml",
                   "--out", d / "raw.gpkg"])  # fmt: skip
    assert raw.exit_code == 0, raw.output
    g = gpd.read_file(d / "raw.gpkg", layer="detections")
    dets = Detections(
        image_id=np.ones(len(g), np.int64),
        bbox=np.column_stack([g.xmin, g.ymin, g.xmax - g.xmin, g.ymax - g.ymin]),
        category_id=g.category_id.to_numpy(), score=g.score.to_numpy(),
    )  # fmt: skip
    gt = ground_truth(scene_truth(DATA / "OSBS_029.tif", DATA / "OSBS_029.csv"), {1: "Tree"})
    fit(dets, gt, "platt").save(d / "platt.json")
    cal = _invoke(["detect-scene", DATA / "OSBS_029.tif", *TREE_ARGS, "--truth", DATA / "OSBS_029.csv", "--config", d / "fast.yaml",
                   "--calibrator", d / "platt.json", "--out", d / "cal.gpkg"])  # fmt: skip
    assert cal.exit_code == 0, cal.output
    return {"dir": d, "raw": raw, "cal": cal, "gdf": g}


def test_osbs_gpkg_holds_georeferenced_detections_with_probabilities(osbs) -> None:
    d, g = osbs["dir"], osbs["gdf"]
    assert "gpkg  " in osbs["raw"].output and str(d / "raw_audit" / "audit.html") in osbs["raw"].output
    assert len(g) > 30 and g.crs.to_epsg() == 32617
    assert set(g.label) == {"Tree"}
    with rasterio.open(DATA / "OSBS_029.tif") as src:
        b = src.bounds
    x0, y0, x1, y1 = g.total_bounds
    assert b.left <= x0 and b.bottom <= y0 and x1 <= b.right and y1 <= b.top
    probs = [json.loads(p) for p in g.probs]
    assert all(set(p) == {"Tree", "background"} for p in probs)
    np.testing.assert_allclose([p["Tree"] for p in probs], g.score, atol=1e-6)
    np.testing.assert_allclose([sum(p.values()) for p in probs], 1.0, atol=1e-5)
    assert g.calibrated.isna().all()  # no calibrator: nothing pretends to be calibrated
    c = gpd.read_file(d / "cal.gpkg", layer="detections")
    cal = Calibrator.load(d / "platt.json")
    np.testing.assert_allclose(c.calibrated, cal.calibrate(c.score.to_numpy(), None, c.category_id.to_numpy()), atol=1e-9)
    # the scene audit measured both: raw scores and the calibrator's
    data = json.loads((d / "cal_audit" / "audit.json").read_text())
    assert set(data["perspectives"]) == {"application", "calibrated"}
    assert data["dataset"]["objects"] == 61


def test_osbs_audits_from_box_files_as_detect_scene_did(osbs, tmp_path) -> None:
    """`audit --scene TILE --truth CSV --predictions CSV|GPKG` gives the run's own numbers."""
    g = osbs["gdf"]
    preds = tmp_path / "preds.csv"  # DeepForest's columns, scored
    g.assign(image_path="OSBS_029.tif")[["image_path", "xmin", "ymin", "xmax", "ymax", "label", "score"]].to_csv(preds, index=False)
    truth_4326 = tmp_path / "truth.geojson"  # the truth as polygons in another CRS
    t = scene_truth(DATA / "OSBS_029.tif", DATA / "OSBS_029.csv")
    with rasterio.open(DATA / "OSBS_029.tif") as src:
        tr = src.transform
    import shapely

    polys = [shapely.box(*(tr * (x0, y1)), *(tr * (x1, y0))) for x0, y0, x1, y1 in t.xyxy]
    gpd.GeoDataFrame({"label": t.labels}, geometry=polys, crs="EPSG:32617").to_crs(4326).to_file(truth_4326)
    own = _metrics(osbs["dir"] / "raw_audit")
    for name, truth, pred in (("csv", DATA / "OSBS_029.csv", preds), ("gpkg", DATA / "OSBS_029.csv", osbs["dir"] / "raw.gpkg"),
                              ("reprojected", truth_4326, preds)):  # fmt: skip
        res = _invoke(["audit", "--scene", DATA / "OSBS_029.tif", "--truth", truth, "--predictions", pred,
                       "--config", osbs["dir"] / "fast.yaml", "--out", tmp_path / name])  # fmt: skip
        assert res.exit_code == 0, res.output
        got = _metrics(tmp_path / name)
        tol = 1e-9 if name != "reprojected" else 0.02  # reprojected boxes move by millimetres
        for k, v in own.items():
            assert got[k] == pytest.approx(v, abs=tol), (name, k)
    # --score-column calibrated reads the calibrated confidences back, box for box
    c = gpd.read_file(osbs["dir"] / "cal.gpkg", layer="detections")
    back = read_scored_boxes(DATA / "OSBS_029.tif", osbs["dir"] / "cal.gpkg", score_column="calibrated")
    np.testing.assert_allclose(back.scores, c.calibrated)
    np.testing.assert_allclose(back.xyxy, c[["xmin", "ymin", "xmax", "ymax"]].to_numpy(), atol=1e-6)


@pytest.mark.qgis
def test_qgis_opens_the_osbs_gpkg_styled_by_confidence(osbs, qgis, tmp_path) -> None:
    d = osbs["dir"]
    spec = {"layers": {k: f"{d / f'{k}.gpkg'}|layername=detections" for k in ("raw", "cal")}, "scene": str(DATA / "OSBS_029.tif")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    res = subprocess.run([QGIS_PYTHON, str(PROBE), str(tmp_path / "spec.json"), str(tmp_path / "out.json")],
                         env=_qgis_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    facts = json.loads((tmp_path / "out.json").read_text())
    scene = facts["scene"]
    assert scene["crs"] == "EPSG:32617"
    for key, attr in (("raw", "score"), ("cal", "calibrated")):
        layer = facts["layers"][key]
        assert layer["valid"] and layer["crs"] == "EPSG:32617"
        assert layer["renderer"] == "graduatedSymbol" and layer["class_attribute"] == attr
        assert [(r["lower"], r["upper"]) for r in layer["ranges"]] == [(0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0)]
        assert layer["styles_in_database"] == ["trustmap confidence"]
        assert layer["feature_count"] == len(osbs["gdf"]) == len(layer["boxes"])
        sx0, sy0, sx1, sy1 = scene["extent"]
        for x0, y0, x1, y1 in layer["boxes"]:
            assert sx0 - 1e-6 <= x0 < x1 <= sx1 + 1e-6 and sy0 - 1e-6 <= y0 < y1 <= sy1 + 1e-6


# ----------------------------------------------------------------------------- bad input


def _raster(path: Path, count: int = 3, crs: str | None = "EPSG:32633") -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=300, height=300, count=count, dtype="uint8",
                       crs=crs, transform=Affine(1, 0, 500000, 0, -1, 4000000)) as dst:  # fmt: skip
        dst.write(np.full((count, 300, 300), 90, np.uint8))
    return path


def _bad_cases(d: Path) -> dict[str, tuple[list[Any], Path, str]]:
    """case -> (arguments, the file the error must name, what it must say)."""
    scene = write_sample_scene(d / "scene.tif", cells=2)
    gdf = gpd.read_file(write_truth_gpkg(scene, d / "truth.gpkg"))
    gdf.set_crs("EPSG:32610", allow_override=True).to_file(d / "far.gpkg")  # same numbers, zone 10N: elsewhere
    Calibrator("platt", "shared", {"a": 1.0, "b": 0.0}, {1: "Tree"}).save(d / "trees.json")
    return {
        "no-crs": (["detect-scene", _raster(d / "nocrs.tif", crs=None)], d / "nocrs.tif", "has no CRS"),
        "boxes-elsewhere": (["detect-scene", scene.path, "--truth", d / "far.gpkg"], d / "far.gpkg", "no box lies on the scene"),
        "calibrator-other-classes": (["detect-scene", scene.path, "--calibrator", d / "trees.json"], d / "trees.json", "fitted on classes 1 Tree"),
        "one-band": (["detect-scene", _raster(d / "grey.tif", count=1)], d / "grey.tif", "has 1 band(s), but the detector takes 3"),
    }  # fmt: skip


@pytest.mark.parametrize("case", ["no-crs", "boxes-elsewhere", "calibrator-other-classes", "one-band"])
def test_bad_input_is_one_line_naming_the_file_and_leaves_nothing(tmp_path, case) -> None:
    args, culprit, says = _bad_cases(tmp_path)[case]
    out = tmp_path / "out" / "dets.gpkg"
    before = sorted(p for p in tmp_path.rglob("*"))
    res = CliRunner().invoke(main, [str(a) for a in [*args, "--out", out]])
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert str(culprit) in lines[0] and says in lines[0], lines[0]
    after = sorted(p for p in tmp_path.rglob("*"))
    assert after == before, "no output (or staging) may be left behind"


def test_bands_option_and_4band_scene_on_the_cli(tmp_path) -> None:
    scene = write_sample_scene(tmp_path / "bgrn.tif", cells=2, bands="bgrn")
    res = _invoke(["detect-scene", scene.path, "--out", tmp_path / "a.gpkg"])
    assert res.exit_code == 0 and "bands 3,2,1 as R,G,B" in res.output
    given = _invoke(["detect-scene", scene.path, "--bands", "3,2,1", "--out", tmp_path / "b.gpkg"])
    assert given.exit_code == 0
    a, b = (gpd.read_file(tmp_path / n, layer="detections") for n in ("a.gpkg", "b.gpkg"))
    assert len(a) > 0 and a.drop(columns="geometry").equals(b.drop(columns="geometry"))


def test_detect_scene_help_explains_itself() -> None:
    res = CliRunner().invoke(main, ["detect-scene", "--help"])
    assert res.exit_code == 0
    for text in ("core", "--calibrator", "--truth", "--bands", "--overlap", "GeoPackage"):
        assert text in res.output
