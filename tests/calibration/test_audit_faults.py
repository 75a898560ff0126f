"""Regression tests for the audit's known faults (issue 8, section 7), each tried on files."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import uq_detr

import calibration.matching as matching
from calibration import metrics as M
from calibration.audit import audit_predictions
from calibration.config import parse_config
from calibration.detections import Detections, GroundTruth
from calibration.matching import match

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_calibration_cli import write_pair  # noqa: E402
from test_matching import _dets, _gt, coco_flags, synthetic  # noqa: E402

FAST = {"bootstrap": {"n": 30}, "sweeps": {"nms_iou": [0.5], "topk": []}}


def _audit(tmp_path: Path, entries, name: str, n_images: int = 20, **cfg):
    pr, gt = write_pair(tmp_path / "src", n_images)
    rows = entries(json.loads(pr.read_text()))
    f = tmp_path / f"{name}.json"
    f.write_text(json.dumps(rows))
    return audit_predictions(f, gt, tmp_path / name, parse_config(FAST | cfg)), gt


def _finding(res, topic: str) -> str:
    return next(f["text"] for f in res.data["findings"] if f["topic"] == topic)


def test_empty_predictions_give_a_report_not_a_traceback(tmp_path):
    res, _ = _audit(tmp_path, lambda rows: [], "empty")
    assert "no detections" in res.findings[0]
    assert (tmp_path / "empty" / "audit.html").exists()


def test_scores_below_every_sweep_threshold_do_not_crash(tmp_path):
    """Real DeepForest crowns top out at 0.615: most of the default sweep keeps nothing."""
    res, _ = _audit(
        tmp_path,
        lambda rows: [r | {"score": r["score"] * 0.6} for r in rows],
        "low",
        sweeps={"score_threshold": [0.05, 0.3, 0.6, 0.7], "nms_iou": [], "topk": []},
    )
    pts = res.data["sweeps"]["score_threshold"]["points"]
    assert [p["detections"] for p in pts if p["value"] >= 0.6] == [0, 0]
    assert all(p["metrics"]["dece"] is None for p in pts if p["detections"] == 0)


def test_intervals_contain_the_value_and_the_bias_flag_is_live(tmp_path):
    res, _ = _audit(tmp_path, lambda rows: rows, "ci")
    ms = res.data["perspectives"]["predictions"]["metrics"]
    for name, e in ms.items():
        if e.get("value") is None or e.get("ci_low") is None:
            continue
        assert e["ci_low"] <= e["value"] <= e["ci_high"], name
    assert any(abs(e.get("ci_z0") or 0.0) > 0 for e in ms.values())  # was always 0.0
    assert res.data["inputs"]["metrics_config"]["ci_method"] == "shifted"
    assert "ece_debiased" in ms and ms["ece_debiased"]["value"] <= ms["ece"]["value"] + 0.2


def test_ap50_interval_never_exceeds_one(tmp_path):
    """Perfect boxes: AP50 = 1 and its binned bootstrap used to reach 1.0000024."""
    pr, gt_path = write_pair(tmp_path / "src", 20)
    gt = json.loads(gt_path.read_text())
    rows = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
         "score": 0.5 + 0.5 * (i % 7) / 7}
        for i, a in enumerate(gt["annotations"])
    ]  # fmt: skip
    f = tmp_path / "perfect.json"
    f.write_text(json.dumps(rows))
    res = audit_predictions(f, gt_path, tmp_path / "perfect", parse_config(FAST))
    ms = res.data["perspectives"]["predictions"]["metrics"]
    assert ms["ap50"]["value"] == pytest.approx(1.0)
    assert ms["ap50"]["ci_high"] <= 1.0 and ms["map"]["ci_high"] <= 1.0


def test_few_detections_are_too_few_to_tell(tmp_path):
    """A 7-detection file was headlined "Close to calibrated" at ECE 0.33."""
    res, _ = _audit(tmp_path, lambda rows: rows[:7], "seven")
    assert res.findings[0].startswith("Too few to tell: 7 detections, fewer than 50")
    assert res.data["findings"][0]["severity"] == "info"


def test_few_images_get_no_interval_and_no_verdict(tmp_path):
    """3 images have only 10 distinct resamples; 1 image gave a zero-width interval."""
    res, _ = _audit(tmp_path, lambda rows: rows, "three", n_images=3)
    e = res.data["perspectives"]["predictions"]["metrics"]["ece"]
    assert e["ci_low"] is None and "fewer than min_images = 10" in e["ci_skipped"]
    assert res.findings[0].startswith("Too few to tell: 3 images")
    assert "95% CI" not in res.findings[0]


def test_class_finding_says_what_it_ranks(tmp_path):
    res, _ = _audit(tmp_path, lambda rows: rows, "cls", n_images=40)
    assert "ranked by z" in _finding(res, "class")


def test_the_report_names_the_matching_rule_and_shows_the_other(tmp_path):
    """Two boxes per object: greedy calls one of them wrong, 'any' calls both right."""

    def doubled(rows):
        return rows + [r | {"score": r["score"] * 0.95} for r in rows]

    res, _ = _audit(tmp_path, doubled, "rules", n_images=30)
    mr = res.data["perspectives"]["predictions"]["matching_rules"]
    assert mr["used"] == "greedy" and set(mr["rules"]) == {"greedy", "any"}
    assert mr["rules"]["any"]["precision"] > mr["rules"]["greedy"]["precision"] + 0.1
    text = _finding(res, "matching")
    assert "greedy, one-to-one in score order" in text and "'any': ECE" in text


def test_the_report_says_ap_and_ece_count_different_detections(tmp_path):
    pr, gt = write_pair(tmp_path / "src2", 10)
    cfg = parse_config(FAST | {"metrics": {"ap_max_dets": 2}})
    res = audit_predictions(pr, gt, tmp_path / "sets", cfg)
    c = res.data["perspectives"]["predictions"]["counts"]
    assert c["ap_detections"] < c["detections"]
    assert any("AP keeps the 2 best detections per image and class" in t for t in res.findings)


def test_audit_saves_its_detections_as_coco_results(tmp_path):
    res, _ = _audit(tmp_path, lambda rows: rows, "saved")
    rel = res.data["detections_files"]["predictions"]
    again = Detections.load(tmp_path / "saved" / rel)
    src = Detections.load(tmp_path / "saved.json")
    np.testing.assert_allclose(again.score, src.score)
    np.testing.assert_allclose(again.bbox, src.bbox)


def test_both_perspectives_from_files(tmp_path):
    pr, gt = write_pair(tmp_path / "src", 20)
    rows = json.loads(pr.read_text())
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(rows + [r | {"score": r["score"] * 0.3} for r in rows]))
    res = audit_predictions(pr, gt, tmp_path / "both", parse_config(FAST), modeling=raw)
    ps = res.data["perspectives"]
    assert set(ps) == {"application", "modeling"}
    assert ps["modeling"]["counts"]["detections"] == 2 * ps["application"]["counts"]["detections"]
    assert _finding(res, "perspective").startswith("Post-processing changes the picture")


def test_greedy_matching_of_duplicates_is_linear():
    """50k copies of one box took 17.8 s (one Python round per copy)."""
    n = 50_000
    gt = _gt([[10, 10, 20, 20], [120, 120, 30, 30]], [1, 1])
    dets = _dets(np.tile([10.0, 10, 20, 20], (n, 1)), np.linspace(1, 0, n), np.ones(n, int))
    t0 = time.perf_counter()
    m = match(dets, gt, [0.5, 0.75], "greedy")
    assert time.perf_counter() - t0 < 2.0
    assert m.tp[0].sum() == 1 and m.tp[0][0]  # the best-scored copy takes the object


@pytest.mark.parametrize("seed", [0, 1])
def test_compacted_greedy_equals_pycocotools_on_duplicate_heavy_sets(monkeypatch, seed):
    monkeypatch.setattr(matching, "GREEDY_WASTE_MIN", 1)  # compact after every wasted round
    dets, gt = synthetic(20, 30, seed=seed, ties=True)
    rep = np.repeat(np.arange(len(dets)), 3)  # every box three times
    dets = dets.subset(rep)
    thr = [0.1, 0.5, 0.75]
    m = match(dets, gt, thr, "greedy")
    tp, ig, _ = coco_flags(dets, gt, thr)
    np.testing.assert_array_equal(m.tp, tp)
    np.testing.assert_array_equal(m.ignored, ig)


def test_laece0_differs_from_uq_detr_greedy_where_boxes_compete():
    """Two boxes on one object at tau = 0: trustmap's greedy gives the object to one of them
    (one-to-one, as COCO); uq-detr's greedy criterion lets the used ground truth be taken
    again, so both count as TPs. With uq-detr's "independent" criterion (our "any") they agree."""
    gt = _gt([[0, 0, 20, 20]], [1])
    dets = _dets([[0, 0, 20, 20], [2, 2, 20, 20]], [0.9, 0.8], [1, 1])
    D = [uq_detr.Detections.from_xywh(dets.bbox, dets.score, labels=dets.category_id)]
    G = [uq_detr.GroundTruth.from_xywh(gt.annotations.bbox, gt.annotations.category_id)]
    ours = match(dets, gt, [0.0], "greedy")
    assert ours.tp[0].tolist() == [True, False]
    la_ours = M.laece(dets.score, ours.iou[0], dets.category_id, 25, value_range=None)
    la_uq = uq_detr.laece(D, G, tp_criterion="greedy", iou_threshold=0.0, n_bins=25).score
    assert abs(la_ours - la_uq) > 0.05
    anym = match(dets, gt, [0.0], "any")
    la_any = M.laece(dets.score, anym.iou[0], dets.category_id, 25, value_range=None)
    la_ind = uq_detr.laece(D, G, tp_criterion="independent", iou_threshold=0.0, n_bins=25).score
    assert la_any == pytest.approx(la_ind, abs=1e-9)


def test_metrics_is_a_package_with_one_config():
    import calibration.config as C
    import calibration.metrics as pkg

    assert Path(pkg.__file__).name == "__init__.py"
    assert not hasattr(C, "MetricsSection")
    assert C.AuditConfig.model_fields["metrics"].annotation is M.BinningConfig
    assert issubclass(M.MetricsConfig, M.BinningConfig)
    assert GroundTruth  # the package re-exports work with the containers
