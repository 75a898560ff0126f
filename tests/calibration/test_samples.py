"""The synthetic aerial detection set: deterministic bytes, valid COCO, sensible content."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from calibration.detections import GroundTruth
from calibration.samples import CATEGORIES, DOMAINS, make_detection_set, make_split
from tiles.errors import TrustmapError


def _digest(root) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    paths = make_detection_set(root, n_train=12, n_cal=4, n_test=4, size=128, seed=3)
    return root, paths


def test_same_seed_same_bytes(small_set, tmp_path):
    root, _ = small_set
    make_detection_set(tmp_path, n_train=12, n_cal=4, n_test=4, size=128, seed=3)
    assert _digest(root) == _digest(tmp_path)
    assert set(_digest(root)) >= {
        "train.json",
        "cal.json",
        "test.json",
        "train/000001.png",
        "test/000004.png",
    }


def test_images_do_not_depend_on_split_counts_and_seed_matters(small_set, tmp_path):
    root, _ = small_set
    make_split(tmp_path / "a", "train", 3, size=128, seed=3)
    make_split(tmp_path / "b", "train", 3, size=128, seed=4)
    for i in (1, 2, 3):
        assert (root / f"train/{i:06d}.png").read_bytes() == (
            tmp_path / f"a/train/{i:06d}.png"
        ).read_bytes()
        assert (root / f"train/{i:06d}.png").read_bytes() != (
            tmp_path / f"b/train/{i:06d}.png"
        ).read_bytes()
    # the splits are different images
    assert (root / "train/000001.png").read_bytes() != (root / "test/000001.png").read_bytes()


def test_annotations_are_valid_coco(small_set):
    root, paths = small_set
    assert set(paths) == {"train", "cal", "test"}
    per_cat = dict.fromkeys(range(1, 5), 0)
    for split, path in paths.items():
        gt = GroundTruth.from_coco_json(path)  # validates ids, categories and boxes inside images
        coco = json.loads(path.read_text())
        assert coco["categories"] == [dict(c) for c in CATEGORIES]
        assert len(gt.images) == {"train": 12, "cal": 4, "test": 4}[split]
        for im in coco["images"]:
            with Image.open(root / im["file_name"]) as img:
                assert img.size == (128, 128) and img.mode == "RGB"
        a = gt.annotations
        assert len(np.unique(a.id)) == len(a)
        x0, y0 = a.bbox[:, 0], a.bbox[:, 1]
        assert (x0 >= 0).all() and (y0 >= 0).all()
        assert (x0 + a.bbox[:, 2] <= 128).all() and (y0 + a.bbox[:, 3] <= 128).all()
        assert (a.bbox[:, 2] > 1).all() and (a.bbox[:, 3] > 1).all()
        assert (a.area > 0).all() and (
            a.area <= (a.bbox[:, 2] + 0.01) * (a.bbox[:, 3] + 0.01)
        ).all()  # 2-decimal rounding
        for c in per_cat:
            per_cat[c] += int((a.category_id == c).sum())
        for ann in coco["annotations"]:  # the box is the hull of the drawn polygon
            poly = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
            x, y, w, h = ann["bbox"]
            assert poly[:, 0].min() == pytest.approx(x, abs=0.011)
            assert poly[:, 1].max() == pytest.approx(y + h, abs=0.011)
    assert all(n > 0 for n in per_cat.values()), per_cat


def test_objects_are_drawn_where_annotated(small_set):
    """Object pixels differ from the terrain around them (boxes are not empty labels)."""
    root, paths = small_set
    coco = json.loads(paths["train"].read_text())
    contrast = []
    for ann in coco["annotations"]:
        img = np.asarray(Image.open(root / f"train/{ann['image_id']:06d}.png"), dtype=np.float32)
        x, y, w, h = (int(round(v)) for v in ann["bbox"])
        inner = (
            img[y + h // 3 : y + h - h // 3 + 1, x + w // 3 : x + w - w // 3 + 1]
            .reshape(-1, 3)
            .mean(0)
        )
        ring = np.concatenate(
            [img[max(y - 3, 0), x : x + w], img[min(y + h + 2, 127), x : x + w]]
        ).mean(0)
        contrast.append(np.abs(inner - ring).max())
    assert np.median(contrast) > 20


def test_domains_and_errors(tmp_path):
    assert {"temperate", "arid", "arid_unseen"} <= set(DOMAINS)
    path = make_split(tmp_path, "test", 6, size=128, seed=0, domain="arid_unseen")
    coco = json.loads(path.read_text())
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5]
    assert coco["info"]["domain"] == "arid_unseen"
    temperate = make_split(tmp_path / "t", "test", 1, size=128, seed=0)
    a = np.asarray(Image.open(tmp_path / "test/000001.png"), dtype=np.float32)
    b = np.asarray(Image.open(temperate.parent / "test/000001.png"), dtype=np.float32)
    assert a.mean() > b.mean() + 30  # the arid palette is much brighter: a real shift
    with pytest.raises(TrustmapError, match="unknown sample domain"):
        make_split(tmp_path, "test", 1, domain="moon")
    with pytest.raises(TrustmapError, match="at least 64"):
        make_split(tmp_path, "test", 1, size=32)
