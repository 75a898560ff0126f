"""The report says in plain words what is wrong and where, and the HTML stands on its own.

Miscalibration is injected into synthetic detections of a synthetic ground truth (over- or
under-confident scores, wrong boxes in the image corners, on small boxes or for one class);
the real audit pipeline (matching, metrics, breakdowns) runs on them, and the findings must
name what was injected.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from calibration import report
from calibration.audit import TableSweeper, audit_predictions, build_document, draw_figures
from calibration.config import AuditConfig
from calibration.detections import Detections, GroundTruth

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
NO_SWEEPS = {"score_threshold": [], "nms_iou": [], "topk": []}
CATS = [
    {"id": 1, "name": "vehicle"},
    {"id": 2, "name": "building"},
    {"id": 3, "name": "tank"},
    {"id": 4, "name": "ship"},
]


def synthetic(
    kind: str, n_images: int = 60, size: int = 200, seed: int = 0
) -> tuple[GroundTruth, Detections]:
    """Objects at random, one detection each: right (IoU > 0.7) or wrong (IoU < 0.3) by ``kind``.

    calibrated: score ~ U(0, 1) and right with probability = score. Then one subset is made
    confidently wrong: ``corners`` (centre in the outer 20% of both axes), ``small`` (under
    14 px), ``ship`` (category 4); ``over`` and ``under`` shift every score.
    """
    rng = np.random.default_rng(seed)
    images, anns, det = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": size, "height": size, "file_name": f"{i}.png"})
        for _ in range(8):
            side = rng.uniform(8, 40)
            x, y = rng.uniform(0, size - side, 2)
            cat = int(rng.integers(1, 5))
            anns.append(
                {"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, side, side]}
            )
            cx, cy = (x + side / 2) / size, (y + side / 2) / size
            score = rng.uniform(0, 1)
            right = rng.random() < score
            outer = lambda v: v < 0.2 or v > 0.8  # noqa: E731
            if (
                (kind == "corners" and outer(cx) and outer(cy))
                or (kind == "small" and side < 14)
                or (kind == "ship" and cat == 4)
            ):
                score, right = rng.uniform(0.8, 1.0), rng.random() < 0.1
            elif kind == "over":
                score, right = rng.uniform(0.7, 1.0), rng.random() < 0.45
            elif kind == "under":
                score, right = rng.uniform(0.1, 0.5), rng.random() < 0.95
            shift = (
                rng.uniform(-0.05, 0.05, 2) * side
                if right
                else np.sign(rng.uniform(-1, 1, 2)) * 0.8 * side
            )
            bx, by = np.clip([x + shift[0], y + shift[1]], 0, size - side)
            det.append((i, cat, bx, by, side, side, score))
    gt = GroundTruth.from_coco({"images": images, "annotations": anns, "categories": CATS})
    d = np.array(det, dtype=float)
    dets = Detections(image_id=d[:, 0], category_id=d[:, 1], bbox=d[:, 2:6], score=d[:, 6])
    return gt, dets


def document(kind: str, **cfg) -> dict:
    gt, dets = synthetic(kind)
    config = AuditConfig(bootstrap={"n": 0}, sweeps=NO_SWEEPS, **cfg)
    return build_document(
        config,
        gt,
        {"predictions": dets},
        TableSweeper(dets),
        {
            "mode": "predictions",
            "predictions": "synthetic.json",
            "annotations": "synthetic_gt.json",
        },
    )


def _finding(data: dict, topic: str) -> dict:
    return next(f for f in data["findings"] if f["topic"] == topic)


@pytest.mark.parametrize(
    ("kind", "head"),
    [
        ("over", "Over-confident: detections scored"),
        ("under", "Under-confident: detections scored"),
        ("calibrated", "Close to calibrated: no range of scores is off"),
    ],
)
def test_headline_names_the_direction_of_miscalibration(kind, head):
    data = document(kind)
    f = data["findings"][0]
    assert f["topic"] == "overall" and f["text"].startswith(head), f["text"]
    p = data["perspectives"]["predictions"]
    # the sentence quotes the JSON's own numbers
    assert f"{p['metrics']['dece']['value']:.3f}" in f["text"]
    assert f"{p['overall']['confidence']:.2f}" in f["text"]
    assert (f["severity"] == "problem") == (kind != "calibrated")


def test_injected_corner_errors_are_found_in_the_corners():
    data = document("corners")
    f = _finding(data, "position")
    assert f["severity"] == "problem" and "Worst in the image corners" in f["text"], f["text"]
    assert re.search(
        r"Its most miscalibrated cell of the position map is (top|bottom)-(left|right) ", f["text"]
    )
    regions = data["perspectives"]["predictions"]["regions"]
    assert (
        regions["corners"]["gap"] > 0.5 and regions["corners"]["z"] > 3 > regions["interior"]["z"]
    )
    # sizes and classes were left calibrated: nothing is blamed on them
    assert (
        _finding(data, "size")["severity"] == "ok" and _finding(data, "class")["severity"] == "ok"
    )


def test_injected_small_box_errors_are_found_for_small_boxes():
    data = document("small")
    f = _finding(data, "size")
    assert f["severity"] == "problem" and f["text"].startswith("Worst for small boxes (under"), f[
        "text"
    ]


def test_injected_class_errors_name_the_class():
    data = document("ship")
    f = _finding(data, "class")
    assert "class 'ship' (over-confident)" in f["text"], f["text"]
    assert _finding(data, "position")["severity"] == "ok"


def test_sweep_findings_quote_the_change_of_dece_and_map():
    gt, dets = synthetic("over")
    cfg = AuditConfig(
        bootstrap={"n": 0}, sweeps={"score_threshold": [0.75, 0.9], "nms_iou": [], "topk": []}
    )
    data = build_document(
        cfg, gt, {"predictions": dets}, TableSweeper(dets), {"mode": "predictions"}
    )
    f = _finding(data, "post-processing")
    pts = data["sweeps"]["score_threshold"]["points"]
    assert [p["value"] for p in pts] == [0.75, 0.9]
    far = max(
        pts,
        key=lambda p: abs(
            p["metrics"]["dece"] - data["perspectives"]["predictions"]["metrics"]["dece"]["value"]
        ),
    )
    assert f"→ {far['metrics']['dece']:.3f}" in f["text"] and "mAP goes" in f["text"]
    assert pts[1]["detections"] == int((dets.score > 0.9).sum())


def test_html_is_self_contained_and_carries_findings_tables_and_figures():
    data = document("corners")
    pngs = draw_figures(data)
    page = report.render_html(data, pngs)
    assert not re.search(r"(?:src|href)=['\"](?!data:)", page)  # no external asset of any kind
    assert "<link" not in page and "<script" not in page and "@import" not in page
    srcs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(srcs) == len(pngs) == 4
    for s in srcs:
        assert Image.open(io.BytesIO(base64.b64decode(s))).size[0] > 300
    for f in data["findings"]:
        assert report.html.escape(f["text"]) in page
    # findings come before the metric table, and the table shows D-ECE next to mAP
    assert page.index("What is wrong") < page.index("<h2>Metrics</h2>") < page.index("<img")
    dece = data["perspectives"]["predictions"]["metrics"]["dece"]["value"]
    assert f"<td>D-ECE</td><td class='num'>{dece:.3f}</td>" in page


def test_markdown_has_tables_findings_and_figure_links():
    data = document("over")
    kinds = ("reliability", "position", "size", "classes")
    data["figures"] = {f"{k}_predictions": f"figures/{k}_predictions.png" for k in kinds}
    md = report.render_markdown(data)
    assert md.startswith("# Detector calibration audit")
    assert all(f"({path})" in md for path in data["figures"].values())
    assert "| D-ECE |" in md and "| mAP@[.5:.95] |" in md
    assert data["findings"][0]["text"] in md
    assert "```yaml" in md and "iou_threshold: 0.5" in md


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is absent: cannot render the HTML report"
)
def test_report_renders_in_a_real_browser(tmp_path):
    gt, dets = synthetic("over", n_images=20)
    gt.to_coco_json(tmp_path / "gt.json")
    dets.save(tmp_path / "dets.json")
    cfg = AuditConfig(
        bootstrap={"n": 10}, sweeps={"score_threshold": [0.8], "nms_iou": [], "topk": []}
    )
    res = audit_predictions(tmp_path / "dets.json", tmp_path / "gt.json", tmp_path / "audit", cfg)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "screenshot_report.py"),
            str(res.files["html"]),
            str(shot),
            "--width",
            "1100",
            "--height",
            "1400",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (1400, 1100)
    ink = (np.abs(img - 255).sum(axis=2) > 60).mean()
    assert ink > 0.03, "the page rendered (almost) blank"
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 100  # text, tables and embedded figures
    # the findings box (orange border, #D55E00) is drawn near the top of the page
    orange = (np.abs(img[:500] - [213, 94, 0]).sum(axis=2) < 40).sum()
    assert orange > 200
    shutil.rmtree(tmp_path / "audit")
