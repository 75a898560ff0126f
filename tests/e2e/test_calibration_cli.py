"""`calibration audit` as an analyst runs it: files in, report out, one-line errors."""

from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from calibration.cli import main
from calibration.detections import Detections, GroundTruth
from calibration.matching import match
from calibration.metrics import MetricsConfig, box_features, compute_metrics, dece

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_WEIGHTS = ROOT / "calibration" / "weights" / "sample_detector.pt"
FAST = """
bootstrap: {n: 40, seed: 1}
metrics: {bins: 10, dece_dims: [confidence, cx, cy], dece_bins: [10, 4, 4]}
sweeps: {score_threshold: [0.8, 0.9], nms_iou: [0.3], topk: []}
"""


def write_pair(
    folder: Path, n_images: int = 30, size: int = 160, seed: int = 0
) -> tuple[Path, Path]:
    """A COCO ground truth and over-confident predictions for it: scores 0.7-1.0, 45% right."""
    rng = np.random.default_rng(seed)
    cats = [{"id": 3, "name": "car"}, {"id": 7, "name": "boat"}]
    images, anns, preds = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.png", "width": size, "height": size})
        for _ in range(6):
            side = float(rng.uniform(8, 30))
            x, y = (float(v) for v in rng.uniform(0, size - side, 2))
            cat = int(rng.choice([3, 7]))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": cat,
                    "bbox": [x, y, side, side],
                    "area": side * side,
                    "iscrowd": 0,
                }
            )
            right = rng.random() < 0.45
            dx, dy = (
                rng.uniform(-0.05, 0.05, 2) if right else np.sign(rng.uniform(-1, 1, 2)) * 0.8
            ) * side
            bx, by = (float(np.clip(v, 0, size - side)) for v in (x + dx, y + dy))
            preds.append(
                {
                    "image_id": i,
                    "category_id": cat,
                    "bbox": [bx, by, side, side],
                    "score": float(rng.uniform(0.7, 1.0)),
                }
            )
    folder.mkdir(parents=True, exist_ok=True)
    gt, pr = folder / "instances.json", folder / "results.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    pr.write_text(json.dumps(preds))
    return pr, gt


def audit(*args: object, ok: bool = True):
    res = CliRunner().invoke(main, ["audit", *map(str, args)], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("cal")
    pr, gt = write_pair(d)
    cfg = d / "fast.yaml"
    cfg.write_text(FAST)
    return pr, gt, cfg


@pytest.fixture(scope="module")
def audited(pair, tmp_path_factory) -> tuple[Path, object]:
    pr, gt, cfg = pair
    out = tmp_path_factory.mktemp("out") / "audit"
    return out, audit("--predictions", pr, "--annotations", gt, "--config", cfg, "--out", out)


def test_audit_writes_html_json_markdown_and_figures(audited):
    out, res = audited
    assert sorted(p.name for p in out.iterdir()) == [
        "audit.html",
        "audit.json",
        "audit.md",
        "detections",
        "figures",
    ]
    data = json.loads((out / "audit.json").read_text())
    assert data["format"] == "trustmap-calibration-audit-v1"
    assert data["inputs"]["config"]["bootstrap"]["n"] == 40 and data["inputs"]["versions"]["numpy"]
    for rel in data["figures"].values():
        assert (out / rel).stat().st_size > 5000
        assert f"]({rel})" in (out / "audit.md").read_text()
    page = (out / "audit.html").read_text()
    assert page.count("src='data:image/png;base64,") == len(data["figures"]) == 5
    assert "html" in res.output and str(out / "audit.html") in res.output


def test_audit_numbers_are_the_metrics_functions_numbers(audited, pair):
    out, _ = audited
    pr, gt_path, _ = pair
    data = json.loads((out / "audit.json").read_text())
    p = data["perspectives"]["predictions"]
    gt, dets = GroundTruth.from_coco_json(gt_path), Detections.load(pr)
    mcfg = MetricsConfig(**{**data["inputs"]["metrics_config"], "n_boot": 0})
    direct = compute_metrics(dets, gt, mcfg)
    for key in ("dece", "ece", "laece", "map"):
        assert p["metrics"][key]["value"] == pytest.approx(
            direct["metrics"][key]["value"], abs=1e-12
        ), key
    # and D-ECE from first principles (netcal's definition) over [confidence, cx, cy]
    m = match(dets, gt, 0.5, "greedy")
    feats = box_features(dets, gt, ("confidence", "cx", "cy"))
    assert p["metrics"]["dece"]["value"] == pytest.approx(
        dece(feats, m.tp[0], [10, 4, 4]), abs=1e-12
    )
    e = p["metrics"]["dece"]
    assert e["ci_low"] <= e["value"] <= e["ci_high"]
    assert p["overall"]["ece"] == pytest.approx(p["metrics"]["ece"]["value"], abs=1e-12)
    # the human-readable files print the same numbers
    dece_txt = f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"
    assert dece_txt in (out / "audit.html").read_text()
    assert f"| D-ECE | {dece_txt} |" in (out / "audit.md").read_text()
    sweep = data["sweeps"]["score_threshold"]["points"]
    assert [q["value"] for q in sweep] == [0.8, 0.9]
    assert sweep[1]["detections"] == int((dets.score > 0.9).sum())


def test_summary_reports_the_injected_over_confidence(audited):
    out, res = audited
    head = json.loads((out / "audit.json").read_text())["findings"][0]["text"]
    assert head.startswith("Over-confident: detections scored")
    assert "- [overall] Over-confident" in res.output
    assert head in (out / "audit.md").read_text()
    assert html.escape(head) in (out / "audit.html").read_text()


def test_npz_predictions_give_the_same_audit(pair, audited, tmp_path):
    pr, gt, cfg = pair
    Detections.load(pr).save(tmp_path / "results.npz")
    audit(
        "--predictions",
        tmp_path / "results.npz",
        "--annotations",
        gt,
        "--config",
        cfg,
        "--out",
        tmp_path / "a",
    )
    a = json.loads((tmp_path / "a" / "audit.json").read_text())["perspectives"]["predictions"][
        "metrics"
    ]
    b = json.loads((audited[0] / "audit.json").read_text())["perspectives"]["predictions"][
        "metrics"
    ]
    assert a == b


def _corrupt(kind: str, pr: Path, gt: Path, d: Path) -> list[object]:
    """Arguments for one kind of bad input (files written into d)."""
    preds, truth = json.loads(pr.read_text()), json.loads(gt.read_text())
    bad = d / "bad.json"
    if kind == "missing predictions":
        return ["--predictions", d / "nope.json", "--annotations", gt]
    if kind == "missing annotations":
        return ["--predictions", pr, "--annotations", d / "nope.json"]
    if kind == "truncated predictions":
        bad.write_text(pr.read_text()[:200])
        return ["--predictions", bad, "--annotations", gt]
    if kind == "truncated annotations":
        bad.write_text(gt.read_text()[:-40])
        return ["--predictions", pr, "--annotations", bad]
    if kind == "corrupt npz":
        (d / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
        return ["--predictions", d / "bad.npz", "--annotations", gt]
    if kind == "annotations swapped for results":
        return ["--predictions", pr, "--annotations", pr]
    edits = {
        "unknown category": ("category_id", 99),
        "image with no image": ("image_id", 4242),
        "score above 1": ("score", 1.5),
        "box out of image": ("bbox", [150.0, 150.0, 40.0, 40.0]),
    }
    key, value = edits[kind]
    preds[5][key] = value
    bad.write_text(json.dumps(preds))
    assert truth["images"]
    return ["--predictions", bad, "--annotations", gt]


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("missing predictions", "nope.json: file not found"),
        ("missing annotations", "nope.json: file not found"),
        ("truncated predictions", "bad.json: not valid JSON (truncated or corrupt?)"),
        ("truncated annotations", "bad.json: not valid JSON (truncated or corrupt?)"),
        ("corrupt npz", "bad.npz: not a readable .npz file"),
        ("annotations swapped for results", "results.json: not a COCO annotations file"),
        (
            "unknown category",
            "detection 5 (image_id 1): category_id 99 is not a ground-truth category",
        ),
        ("image with no image", "image_id 4242 is not an image of the ground truth"),
        ("score above 1", "score 1.5 is outside [0, 1]"),
        ("box out of image", "lies outside its 160x160 image"),
    ],
)
def test_bad_input_is_one_line_exit_1_and_writes_nothing(pair, tmp_path, kind, needle):
    pr, gt, _ = pair
    out = tmp_path / "out" / "audit"
    res = audit(*_corrupt(kind, pr, gt, tmp_path), "--out", out, ok=False)
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert not out.exists() and not (tmp_path / "out").exists()


def test_bad_config_names_the_key_and_writes_nothing(pair, tmp_path):
    pr, gt, _ = pair
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("metrics:\n  bins: 0\n")
    res = audit(
        "--predictions", pr, "--annotations", gt, "--config", cfg, "--out", tmp_path / "o", ok=False
    )
    assert res.exit_code == 1
    assert res.stderr.strip() == f"error: {cfg}: key 'metrics.bins': must be >= 1"
    assert not (tmp_path / "o").exists()


def test_refuses_to_replace_a_folder_that_is_not_an_audit(pair, tmp_path):
    pr, gt, _ = pair
    (tmp_path / "notes.txt").write_text("keep me")
    res = audit("--predictions", pr, "--annotations", gt, "--out", tmp_path, ok=False)
    assert res.exit_code == 1 and "choose a new or empty folder" in res.stderr
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_usage_errors_and_module_entry_point(pair, tmp_path):
    pr, _, _ = pair
    res = audit("--predictions", pr, "--out", tmp_path / "o", ok=False)
    assert res.exit_code == 1 and "give both --predictions and --annotations" in res.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "calibration", "audit", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and "--predictions" in proc.stdout and "--config" in proc.stdout


def test_config_runs_the_sample_detector(tmp_path):
    """The model path end to end on a few generated images: detector, both perspectives, sweeps."""
    cfg = tmp_path / "model.yaml"
    cfg.write_text(f"""
detector: {{model: sample_fasterrcnn, weights: {SAMPLE_WEIGHTS}, batch_size: 4}}
data: {{sample: {{split: test, n_images: 4, seed: 0}}}}
postprocess: {{max_per_image: 50}}
bootstrap: {{n: 10}}
sweeps: {{score_threshold: [0.5], nms_iou: [0.7], topk: []}}
""")
    out = tmp_path / "audit"
    audit("--config", cfg, "--out", out)
    data = json.loads((out / "audit.json").read_text())
    assert set(data["perspectives"]) == {"application", "modeling"}
    assert data["inputs"]["detector"]["postprocess"] == {
        "score_thresh": 0.05,
        "nms_iou": 0.5,
        "topk": 100,
    }
    mod = data["perspectives"]["modeling"]
    assert mod["counts"]["detections"] == 4 * 50  # every proposal, before threshold/NMS/top-k
    assert mod["metrics"]["nll"]["value"] is not None  # softmax vectors reach the K+1 metrics
    nms = data["sweeps"]["nms_iou"]["points"]
    assert [q["value"] for q in nms] == [0.5, 0.7] and nms[0]["audited"]
    app = data["perspectives"]["application"]
    assert nms[0]["metrics"]["dece"] == pytest.approx(app["metrics"]["dece"]["value"], abs=1e-12)
    assert (out / "data" / "test.json").exists() and len(
        list((out / "data" / "test").glob("*.png"))
    ) == 4


def test_model_on_a_coco_set_with_a_missing_image_fails_before_writing(pair, tmp_path):
    _, gt, _ = pair
    (tmp_path / "images").mkdir()
    cfg = tmp_path / "coco.yaml"
    cfg.write_text(
        f"detector: {{weights: {SAMPLE_WEIGHTS}}}\ndata: {{coco: {{annotations: {gt}, images: images}}}}\n"
    )
    res = audit("--config", cfg, "--out", tmp_path / "out" / "audit", ok=False)
    assert res.exit_code == 1
    assert (
        res.stderr.strip()
        == f"error: {tmp_path / 'images' / '1.png'}: image listed in instances.json not found (and 29 more)"
    )
    assert not (tmp_path / "out").exists()


EXTRAS = """
detector: {model: sample_fasterrcnn, batch_size: 8}
data: {sample: {split: test, n_images: 12, seed: 0, size: 128}}
perspectives: [application]
bootstrap: {n: 20}
metrics: {dece_dims: [confidence, cx, cy], dece_bins: [10, 3, 3], min_images: 5, min_detections: 10}
sweeps: {score_threshold: [], nms_iou: [0.5], topk: []}
shift: {corruptions: [gaussian_noise, fog], severities: [1, 3], n_images: 6}
ood: {sample: {n_images: 6, domain: ood, size: 128}}
repair:
  calibration: {sample: {split: cal, n_images: 24, size: 128}}
  methods: [platt, isotonic]
  cv_folds: 3
  finetune: {epochs: 1, loss: label_smoothing, lr: 0.01}
"""


def test_audit_with_shift_ood_and_repair_sections(tmp_path):
    import torch

    torch.set_num_threads(1)  # a shared 2-core machine: one thread is the fastest
    cfg = tmp_path / "extras.yaml"
    cfg.write_text(EXTRAS)
    out = tmp_path / "audit"
    res = audit("--config", cfg, "--out", out)
    data = json.loads((out / "audit.json").read_text())
    sh, ood, rp = data["shift"], data["ood"], data["repair"]
    assert set(sh["grid"]) == {"gaussian_noise", "fog"} and set(sh["grid"]["fog"]) == {"1", "3"}
    assert sh["grid"]["gaussian_noise"]["3"]["map"] < sh["clean"]["map"]  # noise hurts
    assert ood["known_class_objects"] == 0 and ood["images"] == 6
    assert set(rp["repairs"]) == {"original", "platt", "isotonic", "finetune"}
    assert rp["repairs"]["platt"]["test"]["dece"]["ci_low"] is not None
    assert data["findings"][0]["topic"] == "repair" and "- [repair]" in res.output
    for f in ("calibrator_platt.json", "calibrator_isotonic.json", "finetuned.pt"):
        assert (out / "repair" / f).exists()
    assert {"shift", "ood", "repair"} <= set(data["figures"])
    page = (out / "audit.html").read_text()
    for h in (
        "<h2>Repair</h2>",
        "<h2>Under distribution shift</h2>",
        "<h2>Out-of-distribution images</h2>",
    ):
        assert h in page
    # the saved calibrator applies to the saved detections (fit / apply / re-audit round trip)
    app = out / "detections" / "application.json"
    cal = out / "repair" / "calibrator_isotonic.json"
    r = CliRunner().invoke(
        main,
        [
            "apply",
            "--predictions",
            str(app),
            "--calibrator",
            str(cal),
            "--out",
            str(tmp_path / "c.json"),
        ],
    )
    assert r.exit_code == 0, r.output


def test_shift_needs_a_detector(pair, tmp_path):
    pr, gt, _ = pair
    res = audit(
        "--predictions", pr, "--annotations", gt, "--shift", "--out", tmp_path / "o", ok=False
    )
    assert (
        res.exit_code == 1 and "--shift corrupts images and runs the detector again" in res.stderr
    )


def test_empty_predictions_file_through_the_cli(pair, tmp_path):
    _, gt, _ = pair
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    res = audit(
        "--predictions", empty, "--annotations", gt, "--bootstrap", "10", "--out", tmp_path / "o"
    )
    assert "no detections" in res.output


def test_allow_outside_paths_is_the_flag_the_error_names(tmp_path: Path) -> None:
    """A COCO file_name leading out of the images folder is refused, and the message's
    advice, --allow-outside-paths, exists on `calibration audit` and lets a trusted file in."""
    import yaml

    from calibration.samples import make_split

    ann = make_split(tmp_path / "elsewhere", "test", 2, size=96, seed=3)
    coco = json.loads(ann.read_text())
    for im in coco["images"]:
        im["file_name"] = f"../elsewhere/{im['file_name']}"
    (tmp_path / "imgs").mkdir()
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    cfg = {"detector": {"model": "sample_fasterrcnn"}, "data": {"coco": {"annotations": "gt.json", "images": "imgs"}},
           "bootstrap": {"n": 0}, "sweeps": {"score_threshold": [], "nms_iou": [], "topk": []}}  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    args = ["audit", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "audit")]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1
    assert "points outside" in refused.stderr and "--allow-outside-paths" in refused.stderr
    assert not (tmp_path / "audit").exists()
    help_text = CliRunner().invoke(main, ["audit", "--help"]).output
    assert "--allow-outside-paths" in help_text
    allowed = CliRunner().invoke(main, [*args, "--allow-outside-paths"])
    assert allowed.exit_code == 0, allowed.output + allowed.stderr
    data = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert data["dataset"]["images"] == 2
