"""Label-map metrics against hand-computed values, and the raster path against the array path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from refine.metrics import (
    confusion,
    iou_per_class,
    normalised_area,
    review_precision,
    score_labels,
    score_raster,
    track_errors,
)
from tiles.classes import ClassDef, ClassSchema

SCHEMA = ClassSchema(
    classes=[
        ClassDef(code=1, name="a", color="#ff0000"),
        ClassDef(code=2, name="b", color="#00ff00"),
        ClassDef(code=5, name="c", color="#0000ff"),
    ],  # fmt: skip
    ignore=255,
)
TRUTH = np.array([[1, 1, 2, 2], [5, 5, 255, 1]], np.uint8)
PRED = np.array([[1, 2, 2, 2], [5, 255, 1, 1]], np.uint8)


def test_confusion_and_iou_by_hand() -> None:
    conf = confusion(PRED, TRUTH, SCHEMA)
    # rows: truth a, b, c; columns: a, b, c, none. The ignore-truth pixel does not count.
    np.testing.assert_array_equal(conf, [[2, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1]])
    # a: tp 2, fn 1, fp 0 -> 2/3; b: tp 2, fp 1 -> 2/3; c: tp 1, fn 1 (missing label) -> 1/2
    np.testing.assert_allclose(iou_per_class(conf), [2 / 3, 2 / 3, 1 / 2])
    s = score_labels(PRED, TRUTH, SCHEMA)
    assert s.miou == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s.accuracy == pytest.approx(5 / 7) and s.pixels == 7
    assert s.support == {"a": 3, "b": 2, "c": 2}


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    s = score_labels(np.array([[1, 2]], np.uint8), np.array([[1, 2]], np.uint8), SCHEMA)
    assert s.iou["c"] is None and s.miou == 1.0


def test_error_tracking_and_review_precision() -> None:
    cheap = PRED
    fixed = PRED.copy()
    fixed[0, 1] = 1  # fix a wrong pixel
    fixed[0, 0] = 5  # break a right one
    t = track_errors(cheap, fixed, TRUTH, 255)
    assert (t.initial_wrong, t.fixed, t.introduced, t.remaining, t.labelled) == (2, 1, 1, 2, 7)
    assert t.recall == 0.5
    mask = np.zeros_like(TRUTH, bool)
    mask[0, :2] = True  # one right, one wrong pixel reviewed
    mask[1, 2] = True  # truth ignore: not counted
    p = review_precision(cheap, TRUTH, mask, 255)
    assert p == {"reviewed_pixels": 2, "wrong_before": 1, "precision": 0.5}


def test_score_raster_of_probabilities_matches_array_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    truth = rng.choice(np.array([1, 2, 5, 255], np.uint8), size=(40, 56))
    probs = rng.random((3, 40, 56)).astype(np.float32)
    probs[:, :3, :4] = np.nan  # nodata: counts as 'no label'
    path = tmp_path / "p.tif"
    profile = dict(driver="GTiff", width=56, height=40, count=3, dtype="float32", crs="EPSG:32643",
                   transform=Affine(1, 0, 0, 0, -1, 0), tiled=True, blockxsize=16, blockysize=16)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(probs)
    pred = SCHEMA.index_to_code()[np.argmax(np.nan_to_num(probs, nan=-1), axis=0)]
    pred[:3, :4] = 255
    assert score_raster(path, truth, SCHEMA, probabilities=True) == score_labels(
        pred, truth, SCHEMA
    )


def test_normalised_area() -> None:
    assert normalised_area([0, 5, 10], [0.5, 0.5, 0.5], 10) == pytest.approx(0.5)
    assert normalised_area([0, 10], [0.0, 1.0], 10) == pytest.approx(0.5)
    assert np.isnan(normalised_area([0], [1.0], 10))
