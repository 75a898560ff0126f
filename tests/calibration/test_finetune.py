"""Last-layer fine-tuning: only the class layer moves, D-ECE improves on a fixed seed, and
the checkpoint loads back safely (and is refused for another architecture)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from calibration.adapters import images_from_coco, load_detector
from calibration.adapters.torchvision_models import TorchvisionDetector, read_image
from calibration.cli import main
from calibration.detections import GroundTruth
from calibration.finetune import FinetuneSettings, finetune, save_checkpoint, trainable_layers
from calibration.metrics import MetricsConfig, compute_metrics
from tiles.errors import TrustmapError

MCFG = MetricsConfig(dece_dims=("confidence", "cx", "cy"), dece_bins=(10, 5, 5), n_boot=0)


@pytest.fixture(scope="module")
def tuned(sample_run):
    torch.set_num_threads(1)
    root = sample_run["root"]
    det = load_detector("sample_fasterrcnn")
    gt = GroundTruth.from_coco_json(sample_run["cal_gt"])
    recs = images_from_coco(root, sample_run["cal_gt"])
    s = FinetuneSettings(loss="label_smoothing", lr=1e-2, epochs=6, patience=6, seed=0)
    res = finetune(det, [read_image(r.path) for r in recs], [r.image_id for r in recs], gt, s, MCFG)
    return det, res


def test_only_the_class_layer_is_trained(tuned):
    det, res = tuned
    assert res.trained == [
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
    ]
    before, after = det.model.state_dict(), res.detector.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == res.trained
    assert res.history[0]["epoch"] == 0 and 1 <= res.best_epoch <= 6


def test_finetuning_improves_test_dece_on_a_fixed_seed(tuned, sample_run):
    det, res = tuned
    gt = GroundTruth.from_coco_json(sample_run["test_gt"])
    recs = images_from_coco(sample_run["root"], sample_run["test_gt"])
    vals = {}
    for name, d in (("before", det), ("after", res.detector)):
        dets = d.candidates(recs, batch_size=8, show_progress=False).postprocess()
        m = compute_metrics(dets, gt, MCFG, validate=False)["metrics"]
        vals[name] = (m["dece"]["value"], m["map"]["value"])
    (d0, m0), (d1, m1) = vals["before"], vals["after"]
    assert d1 < d0, vals
    assert m1 > m0 - 0.01, vals  # mAP within a point


def test_checkpoint_loads_with_weights_only_and_refuses_other_architectures(tuned, tmp_path):
    det, res = tuned
    cats = [{"id": c, "name": str(c)} for c in det.prob_category_ids]
    path = save_checkpoint(res, tmp_path / "ft.pt", "sample_fasterrcnn", cats)
    ck = torch.load(path, weights_only=True)
    assert ck["arch"] == "sample_fasterrcnn" and ck["finetune"]["trained"] == res.trained
    again = load_detector("sample_fasterrcnn", path)
    w = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(again.model.state_dict()[w], res.detector.model.state_dict()[w])
    with pytest.raises(
        TrustmapError, match="weights were saved for architecture 'sample_fasterrcnn'"
    ):
        load_detector("fasterrcnn_resnet50_fpn", path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(TrustmapError, match="truncated/corrupt"):
        load_detector("sample_fasterrcnn", bad)


def _tiny_dense(name: str):
    """A real torchvision RetinaNet / FCOS on the sample detector's small backbone (4 levels)."""
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from calibration.models import sample_backbone

    kw = dict(num_classes=2, min_size=96, max_size=96)
    if name == "retinanet":
        anchors = AnchorGenerator(((12,), (24,), (48,), (96,)), ((0.5, 1.0, 2.0),) * 4)
        return RetinaNet(sample_backbone(), anchor_generator=anchors, **kw)
    anchors = AnchorGenerator(((12,), (24,), (48,), (96,)), ((1.0,),) * 4)
    return FCOS(sample_backbone(), anchor_generator=anchors, **kw)


@pytest.mark.parametrize("name", ["retinanet", "fcos"])
def test_dense_heads_train_only_cls_logits(name):
    torch.manual_seed(0)
    model = _tiny_dense(name)
    det = TorchvisionDetector(model, name=name, category_ids=[1, 2], background_label=None)
    assert trainable_layers(model) == [
        "head.classification_head.cls_logits.weight",
        "head.classification_head.cls_logits.bias",
    ]
    from calibration.detections import AnnotationTable, ImageTable

    n = 4
    gt = GroundTruth(
        ImageTable(np.arange(1, n + 1), np.array(["x"] * n), np.full(n, 96.0), np.full(n, 96.0)),
        AnnotationTable(np.arange(1, n + 1), np.arange(1, n + 1), np.tile([20, 20, 30, 30.0], (n, 1)),
                        np.array([1, 2, 1, 2]), np.zeros(n, bool), np.zeros(n, bool), np.full(n, 900.0)),
        {1: "a", 2: "b"},
    )  # fmt: skip
    imgs = [torch.rand(3, 96, 96) for _ in range(n)]
    res = finetune(
        det,
        imgs,
        list(range(1, n + 1)),
        gt,
        FinetuneSettings(epochs=1, lr=1e-3, loss="focal", batch_images=2),
        MCFG,
    )
    before, after = model.state_dict(), res.detector.model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] in (
        [],
        res.trained,
    )  # best epoch may be 0
    with pytest.raises(TrustmapError, match="torchvision's focal loss"):
        finetune(det, imgs, list(range(1, n + 1)), gt, FinetuneSettings(epochs=1, loss="ce"), MCFG)


def test_finetune_cli_reports_before_and_after(sample_run, tmp_path):
    out = tmp_path / "tuned.pt"
    res = CliRunner().invoke(
        main,
        ["finetune", "--images", str(sample_run["root"]), "--annotations", str(sample_run["cal_gt"]),
         "--test-images", str(sample_run["root"]), "--test-annotations", str(sample_run["test_gt"]),
         "--epochs", "1", "--lr", "0.01", "--loss", "label_smoothing", "--out", str(out)],
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    rep = json.loads(out.with_suffix(".json").read_text())
    assert set(rep["test"]) == {"before", "after"} and "map" in rep["test"]["after"]
    assert "dece" in res.output and "map" in res.output and out.exists()
