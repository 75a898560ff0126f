"""The torchvision adapter: exact agreement with torchvision, probability vectors, weights, images.

Models are tiny and randomly initialised with fixed seeds (small conv backbones inside the real
torchvision FasterRCNN / RetinaNet / FCOS / SSD classes), so every check runs in well under a
second; one real builder per family is exercised too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou

from calibration.adapters import (
    MODELS,
    TorchvisionDetector,
    build_model,
    images_from_coco,
    images_from_folder,
    load_detector,
    postprocess,
    read_image,
)
from calibration.adapters.detectron2 import MISSING, require_detectron2
from calibration.detections import GroundTruth
from calibration.models import sample_backbone, sample_fasterrcnn
from calibration.samples import make_split
from tiles.errors import TrustmapError

SIZE = 96


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _images(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, SIZE, SIZE, generator=g), torch.rand(3, 80, 112, generator=g)]


def tiny_rcnn(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return sample_fasterrcnn(num_classes=num_classes, min_size=SIZE, max_size=SIZE).eval()


def _spread(head: nn.Module) -> None:
    """torchvision initialises heads to near-constant scores (std 0.01 weights, a prior bias).

    Exactly tied scores may be ordered either way (by torchvision as well), so give the random
    head scale-preserving weights and spread biases: then no two candidates tie.
    """
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    for layer in convs:
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    last = head.cls_logits if hasattr(head, "cls_logits") else head.module_list
    for layer in [last] if isinstance(last, nn.Conv2d) else last:
        layer.weight.data.mul_(0.2)
        nn.init.normal_(layer.bias, mean=-2.0, std=0.5)


def tiny_retinanet(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    anchors = AnchorGenerator(((12,), (24,), (48,), (96,)), ((0.5, 1.0, 2.0),) * 4)
    m = RetinaNet(
        sample_backbone(),
        num_classes,
        min_size=SIZE,
        max_size=SIZE,
        anchor_generator=anchors,
        score_thresh=0.15,
        topk_candidates=50,
    )
    _spread(m.head.classification_head)
    return m.eval()


def tiny_fcos(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,)), ((1.0,),) * 4)
    m = FCOS(
        sample_backbone(),
        num_classes,
        min_size=SIZE,
        max_size=SIZE,
        anchor_generator=anchors,
        score_thresh=0.15,
        topk_candidates=50,
    )
    _spread(m.head.classification_head)
    return m.eval()


class _TinySSDBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = sample_backbone().body
        self.out_channels = [32, 64, 128]

    def forward(self, x):
        return self.body(x)  # OrderedDict '0', '1', '2' at strides 4, 8, 16


def tiny_ssd(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    boxes = DefaultBoxGenerator([[2], [2, 3], [2]], min_ratio=0.1, max_ratio=0.6)
    m = SSD(
        _TinySSDBackbone(), boxes, (SIZE, SIZE), num_classes, score_thresh=0.2, topk_candidates=60
    )
    _spread(m.head.classification_head)
    return m.eval()


TINY = {"rcnn": tiny_rcnn, "retinanet": tiny_retinanet, "fcos": tiny_fcos, "ssd": tiny_ssd}


def _assert_same(ref: list[dict], ours: list[dict]) -> None:
    assert sum(len(r["scores"]) for r in ref) > 0, "test needs detections to compare"
    for r, o in zip(ref, ours, strict=True):
        assert torch.equal(r["boxes"], o["boxes"])
        assert torch.equal(r["scores"], o["scores"])
        assert torch.equal(r["labels"], o["labels"])


@pytest.mark.parametrize("family", sorted(TINY))
def test_application_equals_torchvision_output(family):
    model = TINY[family]()
    images = _images()
    with torch.no_grad():
        ref = model(images)
    # background_label=None: the sigmoid heads' label 0 stays a class, as in torchvision's filter
    det = TorchvisionDetector(
        model, background_label=None if family in ("retinanet", "fcos") else 0
    )
    cands = det.candidates_for_tensors(images, [10, 11])
    _assert_same(ref, cands.postprocess_tensors())
    assert cands.family == family


@pytest.mark.parametrize("family", sorted(TINY))
def test_sweep_reapplies_torchvision_filter(family):
    """Other thresholds on stored candidates == the model re-run with those thresholds."""
    model = TINY[family]()
    images = _images(seed=3)
    det = TorchvisionDetector(
        model, background_label=None if family in ("retinanet", "fcos") else 0
    )
    cands = det.candidates_for_tensors(images, [1, 2])
    scores = torch.cat([ic.pair_score for ic in cands.images])
    for q, iou, topk in [(0.9, 0.3, 7), (0.98, 0.7, 40)]:
        thresh = float(torch.quantile(scores, q))
        target = model.roi_heads if family == "rcnn" else model
        target.score_thresh, target.nms_thresh, target.detections_per_img = thresh, iou, topk
        with torch.no_grad():
            ref = model(images)
        _assert_same(ref, cands.postprocess_tensors(thresh, iou, topk))
        d = postprocess(cands, thresh, iou, topk)
        assert len(d) == sum(len(r["scores"]) for r in ref)


def test_softmax_heads_probs_background_last_and_sum_to_one():
    for family in ("rcnn", "ssd"):
        det = TorchvisionDetector(TINY[family]())
        cands = det.candidates_for_tensors(_images(), [1, 2])
        for d in (cands.postprocess(), cands.modeling()):
            assert d.probs.shape[1] == 5 and d.prob_category_ids == (1, 2, 3, 4)
            np.testing.assert_allclose(d.probs.sum(axis=1), 1.0, atol=1e-5)
            # score is the probability of the detected class; background is the last column
            col = np.searchsorted(d.prob_category_ids, d.category_id)
            np.testing.assert_allclose(d.probs[np.arange(len(d)), col], d.score, rtol=1e-6)
            e = np.exp(d.logits - d.logits.max(axis=1, keepdims=True))
            np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), d.probs, atol=1e-5)
        # SSD reorders torchvision's [background, classes] to [classes, background]
        if family == "ssd":
            with torch.no_grad():
                tr, _ = det.model.transform(_images()[:1])
                head = det.model.head(list(det.model.backbone(tr.tensors).values()))
            raw = torch.softmax(head["cls_logits"][0], -1)
            ic = cands.images[0]
            assert torch.allclose(ic.row_probs[:, -1], raw[ic.row_index, 0])
            assert torch.allclose(ic.row_probs[:, :-1], raw[ic.row_index, 1:])


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_sigmoid_heads_give_k_columns(family):
    det = TorchvisionDetector(TINY[family](num_classes=5), category_ids=[11, 12, 13, 14])
    d = det.candidates_for_tensors(_images(), [1, 2]).postprocess()
    assert len(d) > 0
    assert d.probs.shape[1] == 4 and d.prob_category_ids == (
        11,
        12,
        13,
        14,
    )  # label 0 is background
    assert set(d.category_id.tolist()) <= {11, 12, 13, 14}
    assert d.probs.sum(axis=1).max() != pytest.approx(1.0)  # independent sigmoids, not a softmax
    col = np.searchsorted(d.prob_category_ids, d.category_id)
    np.testing.assert_allclose(d.probs[np.arange(len(d)), col], d.score, rtol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-d.logits)), d.probs, rtol=1e-4, atol=1e-6)
    keep_all = TorchvisionDetector(TINY[family](num_classes=5), background_label=None)
    assert keep_all.candidates_for_tensors(_images(), [1, 2]).postprocess().probs.shape[1] == 5


@pytest.mark.parametrize("family", sorted(TINY))
def test_modeling_perspective_has_at_least_application_count(family):
    cands = TorchvisionDetector(TINY[family]()).candidates_for_tensors(_images(), [1, 2])
    app, mod = cands.detections("application"), cands.detections("modeling")
    for image_id in (1, 2):
        assert (mod.image_id == image_id).sum() >= (app.image_id == image_id).sum()
    assert len(mod) > len(app)
    # every application detection comes from a candidate of the modeling table, same vector
    for i in range(len(app)):
        same = (mod.image_id == app.image_id[i]) & (mod.proposal_index == app.proposal_index[i])
        assert same.sum() == 1
        np.testing.assert_array_equal(mod.probs[same][0], app.probs[i])
    assert len(cands.modeling(max_per_image=3)) == 6
    with pytest.raises(TrustmapError, match="perspective"):
        cands.detections("both")


def test_min_score_bounds_the_sweep():
    det = TorchvisionDetector(tiny_rcnn(), min_score=0.1)
    cands = det.candidates_for_tensors(_images(), [1, 2])
    with pytest.raises(TrustmapError, match="min_score"):
        cands.postprocess(score_thresh=0.05)
    assert len(cands.postprocess(score_thresh=0.1)) > 0


# --------------------------------------------------------------------------- weights


def test_weights_roundtrip_by_name_and_path(tmp_path):
    torch.manual_seed(0)
    model = build_model("sample_fasterrcnn", num_classes=3)
    sd = model.state_dict()
    torch.save({"model": sd, "epoch": 3}, tmp_path / "ckpt.pt")
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "ddp.pt")
    torch.save(sd, tmp_path / "plain.pth")
    for name in ("ckpt.pt", "ddp.pt", "plain.pth"):
        det = load_detector("sample_fasterrcnn", tmp_path / name)  # num_classes read from the file
        assert det.prob_category_ids == (1, 2)
        for k, v in det.model.state_dict().items():
            assert torch.equal(v, sd[k]), k


def test_weights_errors_name_the_file_and_the_keys(tmp_path):
    with pytest.raises(TrustmapError, match="weights file not found") as e:
        load_detector("sample_fasterrcnn", tmp_path / "nope.pt")
    assert "nope.pt" in str(e.value)
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a checkpoint\n" * 50)
    with pytest.raises(TrustmapError, match="corrupt.pt: cannot read weights"):
        load_detector("sample_fasterrcnn", bad)
    good = tmp_path / "good.pt"
    torch.save(build_model("sample_fasterrcnn", num_classes=5).state_dict(), good)
    trunc = tmp_path / "truncated.pt"
    trunc.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(TrustmapError, match="truncated.pt: cannot read weights"):
        load_detector("sample_fasterrcnn", trunc)
    torch.save({"model": {"w": torch.zeros(1)}, "note": torch.__version__}, tmp_path / "objects.pt")
    with pytest.raises(TrustmapError, match="objects.pt: cannot read weights safely.*TorchVersion"):
        load_detector("sample_fasterrcnn", tmp_path / "objects.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(TrustmapError, match="no model weights found"):
        load_detector("sample_fasterrcnn", tmp_path / "list.pt")
    with pytest.raises(
        TrustmapError,
        match=r"another shape: roi_heads\.box_predictor\.cls_score\.weight.*num_classes",
    ):
        load_detector("sample_fasterrcnn", good, num_classes=9)
    sd = torch.load(good, weights_only=True)
    sd["extra.weight"] = torch.zeros(1)
    del sd["backbone.fpn.layer_blocks.0.0.weight"]
    torch.save(sd, tmp_path / "keys.pt")
    with pytest.raises(
        TrustmapError,
        match=r"1 missing key\(s\): backbone\.fpn\.layer_blocks\.0\.0\.weight; "
        r"1 unexpected key\(s\): extra\.weight",
    ):
        load_detector("sample_fasterrcnn", tmp_path / "keys.pt")
    with pytest.raises(
        TrustmapError, match="do not fit architecture 'fasterrcnn_mobilenet_v3_large_320_fpn'"
    ):
        load_detector("fasterrcnn_mobilenet_v3_large_320_fpn", good)
    with pytest.raises(TrustmapError, match="unknown detector"):
        load_detector("yolo", good)
    with pytest.raises(TrustmapError, match="needs a local weights file"):
        load_detector("ssd300_vgg16")


def test_real_builders_load_and_run(tmp_path):
    """One real torchvision builder per cheap family: weights saved, reloaded by name, run."""
    assert {"fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn"} <= set(
        MODELS
    )
    for name in ("fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large"):
        torch.manual_seed(0)
        model = build_model(name, num_classes=4)
        torch.save(model.state_dict(), tmp_path / f"{name}.pt")
        det = load_detector(name, tmp_path / f"{name}.pt", category_ids=[7, 8, 9])
        assert len(det.prob_category_ids) == 3
        images = _images()
        with torch.no_grad():
            ref = det.model(images)
        cands = det.candidates_for_tensors(images, [1, 2])
        for r, o in zip(ref, cands.postprocess_tensors(), strict=True):
            assert torch.equal(r["boxes"], o["boxes"]) and torch.equal(r["scores"], o["scores"])
        d = cands.modeling()
        assert d.probs.shape[1] == 4 and set(d.category_id.tolist()) <= {7, 8, 9}


# --------------------------------------------------------------------------- images


def test_images_from_folder_coco_and_geotiff(tmp_path, real_data):
    make_split(tmp_path, "test", 2, size=64)
    recs = images_from_coco(tmp_path, tmp_path / "test.json")
    assert [r.image_id for r in recs] == [1, 2] and recs[0].width == 64
    folder = images_from_folder(tmp_path / "test")
    assert [r.path.name for r in folder] == ["000001.png", "000002.png"]
    img = read_image(folder[0].path)
    assert (
        img.shape == (3, 64, 64)
        and img.dtype == torch.float32
        and img.min() >= 0
        and img.max() <= 1
    )
    # a real 8-bit GeoTIFF (Landsat, UTM, nodata collar): bands 1-3 / 255, nodata -> 0
    real = read_image(real_data / "RGB.byte.tif")
    with rasterio.open(real_data / "RGB.byte.tif") as src:
        ref = src.read(masked=True)
    assert real.shape == (3, 718, 791)
    np.testing.assert_allclose(real.numpy(), ref.filled(0) / 255.0, atol=1e-6)
    # a 16-bit single-band GeoTIFF: stretched to [0, 1], repeated to RGB
    arr = np.arange(40 * 50, dtype=np.uint16).reshape(1, 40, 50) * 7
    with rasterio.open(
        tmp_path / "scene.tif",
        "w",
        driver="GTiff",
        width=50,
        height=40,
        count=1,
        dtype="uint16",
        crs="EPSG:32618",
        transform=from_origin(500000, 4000000, 10, 10),
    ) as dst:
        dst.write(arr)
    geo = read_image(tmp_path / "scene.tif")
    assert geo.shape == (3, 40, 50) and geo.min() == 0 and geo.max() == 1
    assert torch.equal(geo[0], geo[2])


def test_image_errors_name_the_file(tmp_path):
    with pytest.raises(TrustmapError, match="image folder not found"):
        images_from_folder(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrustmapError, match="no images"):
        images_from_folder(tmp_path / "empty")
    (tmp_path / "empty" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(TrustmapError, match="broken.png: cannot read image"):
        read_image(tmp_path / "empty" / "broken.png")
    make_split(tmp_path, "test", 1, size=64)
    coco = json.loads((tmp_path / "test.json").read_text())
    coco["images"][0]["width"] = 65
    (tmp_path / "wrong.json").write_text(json.dumps(coco))
    det = TorchvisionDetector(tiny_rcnn())
    with pytest.raises(
        TrustmapError, match="000001.png: image is 64x64 pixels but the annotations say 65x64"
    ):
        det.candidates(images_from_coco(tmp_path, tmp_path / "wrong.json"), show_progress=False)
    coco["images"][0]["file_name"] = "test/missing.png"
    (tmp_path / "missing.json").write_text(json.dumps(coco))
    with pytest.raises(TrustmapError, match="missing.png: image listed in missing.json not found"):
        images_from_coco(tmp_path, tmp_path / "missing.json")


def test_detect_over_files_is_batched_and_deterministic(tmp_path):
    make_split(tmp_path, "test", 3, size=SIZE)
    recs = images_from_coco(tmp_path, tmp_path / "test.json")
    det = TorchvisionDetector(tiny_rcnn())
    a = det.detect(recs, batch_size=2, show_progress=False)
    b = det.detect(recs, batch_size=2, show_progress=False)
    assert set(a.image_id.tolist()) == {1, 2, 3}  # the last batch is a partial one
    np.testing.assert_array_equal(a.bbox, b.bbox)
    np.testing.assert_array_equal(a.score, b.score)
    a.validate(GroundTruth.from_coco_json(tmp_path / "test.json"))


# --------------------------------------------------------------------------- sample detector


def test_sample_detector_finds_objects(tmp_path):
    """The packaged, trained detector loads by name and finds real objects on test images."""
    make_split(tmp_path, "test", 2)
    gt = GroundTruth.from_coco_json(tmp_path / "test.json")
    det = load_detector("sample_fasterrcnn")
    d = det.detect(images_from_coco(tmp_path, tmp_path / "test.json"), show_progress=False)
    d.validate(gt)
    assert d.prob_category_ids == (1, 2, 3, 4) and d.probs.shape[1] == 5
    confident = d.subset(d.score > 0.5)
    hits = 0
    for image_id in (1, 2):
        p = confident.subset(confident.image_id == image_id)
        a = gt.annotations
        g = a.image_id == image_id
        if len(p) and g.any():
            iou = box_iou(
                torch.as_tensor(p.bbox_xyxy),
                torch.as_tensor(
                    np.concatenate([a.bbox[g, :2], a.bbox[g, :2] + a.bbox[g, 2:]], axis=1)
                ),
            )
            same = torch.as_tensor(p.category_id[:, None] == a.category_id[g][None, :])
            hits += int(((iou > 0.5) & same).any(dim=0).sum())
    assert hits >= 0.5 * len(gt.annotations), f"found {hits} of {len(gt.annotations)} objects"


def test_detectron2_missing_says_how_to_use_the_export():
    try:
        import detectron2  # noqa: F401
    except ImportError:
        with pytest.raises(TrustmapError) as e:
            require_detectron2()
        assert str(e.value) == MISSING
        assert "coco_instances_results.json" in MISSING and "--predictions" in MISSING
    else:  # pragma: no cover - detectron2 is not installable here
        assert require_detectron2()


def test_sample_weights_file_is_small():
    from calibration.adapters.torchvision_models import SAMPLE_WEIGHTS

    assert SAMPLE_WEIGHTS.exists() and SAMPLE_WEIGHTS.stat().st_size <= 10 * 2**20
    meta = torch.load(SAMPLE_WEIGHTS, map_location="cpu", weights_only=True)
    assert meta["arch"] == "sample_fasterrcnn" and meta["test_metrics"]["mAP50"] > 0.5
