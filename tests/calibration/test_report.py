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


# ----------------------------------------------------- class sentence vs per-class table

#: (category id, detections, score range, P(right) given the score): vehicle very
#: over-confident, building mildly, tank calibrated, ship confidently wrong but too few to rank.
RANKED_CLASSES = (
    (1, 150, (0.7, 1.0), lambda s: 0.35),
    (2, 150, (0.5, 0.9), lambda s: s - 0.2),
    (3, 150, (0.0, 1.0), lambda s: s),
    (4, 8, (0.9, 1.0), lambda s: 0.0),
)


def ranked_classes_set(seed: int = 0) -> tuple[GroundTruth, Detections, np.ndarray]:
    """One object per slot of a 5 x 5 grid of 40 px cells, one detection per object, right
    (IoU > 0.7) or shifted off it (IoU < 0.1) as ``RANKED_CLASSES`` says; also returns
    which detections are right."""
    rng = np.random.default_rng(seed)
    objs = [(cid, spec) for cid, n, *spec in RANKED_CLASSES for _ in range(n)]
    order = rng.permutation(len(objs))
    images, anns, det, right = [], [], [], []
    for slot, k in enumerate(order):
        cid, ((lo, hi), p_right) = objs[k]
        img, cell = divmod(slot, 25)
        if cell == 0:
            images.append(
                {"id": img + 1, "width": 200, "height": 200, "file_name": f"{img + 1}.png"}
            )
        side = rng.uniform(14, 24)
        x, y = 40 * (cell % 5) + 8, 40 * (cell // 5) + 8
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": img + 1,
                "category_id": cid,
                "bbox": [x, y, side, side],
            }
        )
        score = rng.uniform(lo, hi)
        ok = rng.random() < p_right(score)
        dx = 0.5 if ok else 0.9 * side
        det.append((img + 1, cid, x + dx, y + dx, side, side, score))
        right.append(ok)
    gt = GroundTruth.from_coco({"images": images, "annotations": anns, "categories": CATS})
    d = np.array(det, dtype=float)
    dets = Detections(image_id=d[:, 0], category_id=d[:, 1], bbox=d[:, 2:6], score=d[:, 6])
    return gt, dets, np.array(right)


def _html_table_after(page: str, heading: str) -> list[list[str]]:
    """Body rows (cell texts) of the first table after ``heading``."""
    start = page.index(heading)
    table = page[start : page.index("</table>", start)]
    body = table[table.index("<tbody>") :]
    return [
        [report.html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body)
    ]


def test_class_sentence_and_per_class_table_agree():
    gt, dets, _ = ranked_classes_set()
    data = build_document(
        AuditConfig(bootstrap={"n": 0}, sweeps=NO_SWEEPS), gt, {"predictions": dets},
        TableSweeper(dets), {"mode": "predictions", "predictions": "p.json", "annotations": "a.json"},
    )  # fmt: skip
    p = data["perspectives"]["predictions"]
    # the set ranks as built: vehicle worst, then building, tank best; ship too small to rank
    assert report.ranked(p["classes"]) == ["1", "2", "3"]
    assert p["classes"]["4"]["n"] == 8 and p["per_category"]["4"]["ece"] > p["classes"]["1"]["ece"]
    text = _finding(data, "class")["text"]
    page = report.render_html(data, {})  # the tables do not depend on the figures
    rows = _html_table_after(page, "Per class — predictions file</h3>")
    head = report.class_rows(p)[0]
    col = {h: head.index(h) for h in head}
    names = [r[col["class"]] for r in rows]
    assert names == ["vehicle (1)", "building (2)", "tank (3)", "ship (4)"]
    assert [r[col["rank (by z)"]] for r in rows] == ["1", "2", "3", "– (fewer than 20 detections)"]
    zs = [float(r[col["z"]]) for r in rows[:3]]
    assert zs == sorted(zs, reverse=True)
    worst, best = rows[0], rows[2]
    # the sentence names the table's first and last ranked rows, with the table's numbers
    assert text.startswith("Worst for class 'vehicle' (over-confident): ECE " + worst[col["ECE"]])
    assert f"Best by z: 'tank', ECE {best[col['ECE']]} (z {best[col['z']]})" in text
    assert "as in the per-class table" in text
    assert "Not ranked, fewer than 20 detections: 'ship' (n = 8)." in text
    # the table's ECE column is the one the sentence ranks (the group's, not a re-binned one)
    for r in rows:
        cid = r[col["class"]].split("(")[-1].rstrip(")")
        assert r[col["ECE"]] == f"{p['classes'][cid]['ece']:.3f}"
        assert r[col["detections"]] == str(p["classes"][cid]["n"])
    # the per-class bars are drawn in the table's order
    from calibration import figures

    fig = figures.per_class_figure(report.class_table(p), "classes")
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert [t.split(" (n=")[0] for t in ticks] == ["1. vehicle", "2. building", "3. tank", "ship"]


# ----------------------------------------------------- over-confident false positives


def test_false_positive_examples_are_the_highest_scored_unmatched_detections():
    gt, dets, right = ranked_classes_set()
    data = build_document(
        AuditConfig(bootstrap={"n": 0}, sweeps=NO_SWEEPS), gt, {"predictions": dets},
        TableSweeper(dets), {"mode": "predictions", "predictions": "p.json", "annotations": "a.json"},
    )  # fmt: skip
    ex = data["perspectives"]["predictions"]["false_positives"]
    wrong = np.flatnonzero(~right)
    top = wrong[np.argsort(-dets.score[wrong], kind="stable")][: report.FP_EXAMPLES]
    assert [e["rank"] for e in ex] == list(range(1, report.FP_EXAMPLES + 1))
    assert [e["score"] for e in ex] == pytest.approx(dets.score[top].tolist())
    assert [e["image_id"] for e in ex] == dets.image_id[top].astype(int).tolist()
    assert [e["category"] for e in ex] == [gt.categories[int(c)] for c in dets.category_id[top]]
    assert all(e["why"].startswith("background") for e in ex)  # shifted off their objects
    # a predictions-only audit has no images: one line says so, the table lists them
    assert report.example_images(data)[0] == {}
    page = report.render_html(data, {})
    assert page.count("missing-crops") == 1
    assert "No example crops: this audit read a predictions file and annotations only" in page
    rows = _html_table_after(page, "Most over-confident false positives</h2>")
    assert [r[3] for r in rows] == [f"{s:.3f}" for s in dets.score[top]]
    assert "No example crops" in report.render_markdown(data)


def _crop_set(tmp_path: Path) -> tuple[GroundTruth, Detections, np.ndarray]:
    """One 128 x 128 image: a vehicle and a ship painted on noise, and detections that are
    a TP, a duplicate, the wrong class, background, a poorly placed box and both."""
    rng = np.random.default_rng(1)
    pix = rng.integers(0, 60, (128, 128, 3), dtype=np.uint8)
    pix[10:30, 10:30] = (230, 200, 40)  # the vehicle
    pix[60:80, 60:80] = (40, 90, 230)  # the ship
    (tmp_path / "images").mkdir()
    Image.fromarray(pix).save(tmp_path / "images" / "a.png")
    gt = GroundTruth.from_coco(
        {
            "images": [{"id": 7, "width": 128, "height": 128, "file_name": "a.png"}],
            "annotations": [
                {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20]},
                {"id": 2, "image_id": 7, "category_id": 4, "bbox": [60, 60, 20, 20]},
            ],
            "categories": CATS,
        }
    )
    d = np.array(
        [
            (7, 1, 10, 10, 20, 20, 0.90),  # TP
            (7, 1, 11, 10, 20, 20, 0.80),  # duplicate of the vehicle
            (7, 1, 60, 60, 20, 20, 0.95),  # a vehicle on the ship
            (7, 3, 100, 100, 20, 20, 0.70),  # a tank on background
            (7, 1, 18, 10, 20, 20, 0.60),  # poorly placed on the vehicle
            (7, 3, 70, 60, 20, 20, 0.50),  # a tank half on the ship
        ]
    )
    dets = Detections(image_id=d[:, 0], category_id=d[:, 1], bbox=d[:, 2:6], score=d[:, 6])
    return gt, dets, pix


def test_false_positive_crops_show_the_boxes_on_the_audits_images(tmp_path):
    from calibration import figures

    gt, dets, pix = _crop_set(tmp_path)
    inputs = {
        "mode": "model", "images": str(tmp_path / "images"), "annotations": "a.json",
        "detector": {"model": "handmade", "weights": "none"},
    }  # fmt: skip
    cfg = AuditConfig(bootstrap={"n": 0}, sweeps=NO_SWEEPS)
    data = build_document(cfg, gt, {"application": dets}, None, inputs)
    ex = data["perspectives"]["application"]["false_positives"]
    assert [(e["score"], e["category"]) for e in ex] == [
        (0.95, "vehicle"), (0.80, "vehicle"), (0.70, "tank"), (0.60, "vehicle"), (0.50, "tank"),
    ]  # fmt: skip
    whys = [e["why"] for e in ex]
    assert whys[0].startswith("wrong class: on a ship (IoU 1.00)")
    assert whys[1].startswith("duplicate: the vehicle it covers (IoU 0.90)")
    assert whys[2].startswith("background")
    assert whys[3].startswith("poorly placed: IoU 0.43 < 0.5")
    assert whys[4] == "wrong class, poorly placed: overlaps a ship (IoU 0.33)"
    images, why = report.example_images(data)
    assert why is None and images == {7: tmp_path / "images" / "a.png"}

    fig = figures.false_positive_figure(ex, images)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 5
    for ax, e in zip(shown, ex, strict=True):
        assert ax.get_title() == f"#{e['rank']} {e['category']} · score {e['score']:.2f} · image 7"
        x0, y0, x1, y1 = (int(v) for v in e["crop"])
        assert np.array_equal(
            ax.images[0].get_array(), pix[y0:y1, x0:x1] / 255.0
        )  # the image itself
        red = [r for r in ax.patches if r.get_edgecolor()[:3] == (213 / 255, 94 / 255, 0.0)]
        assert [(r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in red] == [
            tuple(e["bbox"])
        ]
        assert len(ax.patches) == 1 + len(e["truth"])  # truth boxes drawn in green
    # the wrong-class crop shows the ship under the red box, the ship's truth box around it
    assert ex[0]["truth"][0]["category"] == "ship"

    pngs = draw_figures(data)
    page = report.render_html(data, pngs)
    assert "false_positives" in pngs and "missing-crops" not in page
    img = np.asarray(Image.open(io.BytesIO(pngs["false_positives"])).convert("RGB")).astype(int)
    assert (np.abs(img - [213, 94, 0]).sum(axis=2) < 30).sum() > 200  # red boxes drawn
    assert (np.abs(img - [40, 90, 230]).sum(axis=2) < 30).sum() > 200  # the ship's pixels
    b64 = base64.b64encode(pngs["false_positives"]).decode()
    assert page.index("Most over-confident false positives") < page.index(b64)
    # the images gone: no crops (draw_figures draws them only with images), one line instead
    shutil.rmtree(tmp_path / "images")
    assert report.example_images(data)[0] == {}
    page = report.render_html(data, {k: v for k, v in pngs.items() if k != "false_positives"})
    assert page.count("missing-crops") == 1 and "their images are no longer in" in page
