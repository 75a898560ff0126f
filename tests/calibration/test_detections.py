"""calibration.detections: the containers, their file formats and their validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calibration.detections import Detections, GroundTruth
from tiles.errors import TrustmapError

DATA = Path(__file__).resolve().parents[1] / "data"  # tests/data (see its README)


def _gt_dict() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 5, "file_name": "b.png", "width": 50, "height": 50},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [10, 10, 20, 20], "category_id": 3},
            {"id": 2, "image_id": 1, "bbox": [50, 40, 30, 30], "category_id": 7, "iscrowd": 1},
            {
                "id": 3,
                "image_id": 5,
                "bbox": [0, 0, 10, 10],
                "category_id": 3,
                "ignore": 1,
                "area": 42.0,
            },
        ],
        "categories": [{"id": 7, "name": "car"}, {"id": 3, "name": "tree"}],
    }


def _dets(**kw) -> Detections:
    base = {
        "image_id": [1, 1, 5],
        "bbox": [[10, 10, 20, 20], [40, 30, 10, 10], [1, 1, 5, 5]],
        "category_id": [3, 7, 3],
        "score": [0.9, 0.4, 0.2],
    }
    base.update(kw)
    return Detections(**base)


@pytest.fixture
def gt() -> GroundTruth:
    return GroundTruth.from_coco(_gt_dict())


def test_ground_truth_from_coco(gt):
    assert gt.categories == {7: "car", 3: "tree"}
    np.testing.assert_array_equal(gt.category_ids, [3, 7])
    an = gt.annotations
    np.testing.assert_array_equal(an.iscrowd, [False, True, False])
    np.testing.assert_array_equal(an.is_region, [False, True, True])
    np.testing.assert_array_equal(an.area, [400.0, 900.0, 42.0])
    np.testing.assert_array_equal(gt.images.index_of(np.array([5, 2, 1])), [1, -1, 0])


def test_ground_truth_json_round_trip_and_pycocotools(tmp_path, gt):
    path = gt.to_coco_json(tmp_path / "gt.json")
    again = GroundTruth.from_coco_json(path)
    np.testing.assert_array_equal(again.annotations.bbox, gt.annotations.bbox)
    np.testing.assert_array_equal(again.annotations.ignore, gt.annotations.ignore)
    coco = gt.to_coco()
    assert sorted(coco.getImgIds()) == [1, 5] and sorted(coco.getCatIds()) == [3, 7]
    # pycocotools has no 'ignore'; ignore regions reach it as crowd regions
    assert [coco.anns[i]["iscrowd"] for i in (1, 2, 3)] == [0, 1, 1]


def test_ground_truth_from_raster_boxes():
    tif, csv = DATA / "OSBS_029.tif", DATA / "OSBS_029.csv"
    if not tif.exists():
        pytest.fail(f"real test data missing: {DATA} (tests/data is part of the repository)")
    gt = GroundTruth.from_raster_boxes(tif, csv)
    assert len(gt.annotations) == 61 and gt.categories == {1: "Tree"}
    assert gt.images.file_name.tolist() == ["OSBS_029.tif"] and gt.images.width[0] == 400


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["annotations"][0].update(bbox=[1, 1, 0, 5]),
            r"annotation 0 \(id 1\): bbox .* width or height <= 0",
        ),
        (
            lambda d: d["annotations"][1].update(image_id=9),
            r"annotation 1 \(id 2\): image_id 9 has no image",
        ),
        (
            lambda d: d["annotations"][2].update(category_id=4),
            r"annotation 2 \(id 3\): category_id 4 is not a known category",
        ),
        (
            lambda d: d["annotations"][0].update(bbox=[90, 10, 20, 20]),
            r"annotation 0 \(id 1\): bbox .* outside its 100x80 image",
        ),
        (lambda d: d["annotations"][0].pop("bbox"), r"annotation 0: malformed"),
        (
            lambda d: d["images"].append({"id": 1, "width": 3, "height": 3}),
            "image id 1 appears more than once",
        ),
        (lambda d: d.pop("categories"), "not a COCO annotations file"),
    ],
)
def test_ground_truth_errors_name_the_entry(tmp_path, edit, message):
    d = _gt_dict()
    edit(d)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(d))
    with pytest.raises(TrustmapError, match=message) as err:
        GroundTruth.from_coco_json(path)
    assert str(path) in str(err.value)


def test_detections_json_round_trip_with_vectors(tmp_path, gt):
    probs = np.array([[0.7, 0.1, 0.2], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    dets = _dets(probs=probs, logits=np.log(probs), proposal_index=[4, 9, 0])
    path = dets.save(tmp_path / "coco_instances_results.json")
    entries = json.loads(path.read_text())
    assert entries[0]["bbox"] == [10.0, 10.0, 20.0, 20.0] and entries[0]["probs"] == [0.7, 0.1, 0.2]
    back = Detections.load(path)
    assert back == dets  # dataclass equality compares every column
    back.validate(gt)


def test_detections_npz_round_trip_keeps_prob_category_ids(tmp_path, gt):
    dets = _dets(probs=np.full((3, 2), 0.5), prob_category_ids=(7, 3))
    back = Detections.load(dets.save(tmp_path / "d.npz"))
    np.testing.assert_array_equal(back.probs, dets.probs)
    assert back.prob_category_ids == (7, 3) and back.logits is None
    back.validate(gt)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**6),
            st.floats(0, 1e4, allow_nan=False),
            st.floats(0, 1e4, allow_nan=False),
            st.floats(1e-3, 1e4, allow_nan=False),
            st.floats(1e-3, 1e4, allow_nan=False),
            st.integers(-5, 10**6),
            st.floats(0, 1),
        ),
        max_size=30,
    )
)
def test_both_formats_round_trip_exactly(tmp_path_factory, rows):
    arr = np.array(rows, dtype=np.float64).reshape(-1, 7)
    dets = Detections(arr[:, 0], arr[:, 1:5], arr[:, 5], arr[:, 6])
    d = tmp_path_factory.mktemp("rt")
    for name in ("d.json", "d.npz"):
        assert Detections.load(dets.save(d / name)) == dets


def test_subset_concat_and_probabilities_from_logits(gt):
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.5]])
    dets = _dets(logits=logits)
    p = dets.class_probabilities(gt.category_ids)  # 3 columns for K=2: softmax
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(p[1], [1 / 3] * 3)
    sig = _dets(logits=logits[:, :2]).class_probabilities(gt.category_ids)  # K columns: sigmoid
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-logits[:, :2])))
    two = Detections.concat([dets.subset([0]), dets.subset(np.array([False, True, True]))])
    assert two == dets
    mixed = Detections.concat([dets.subset([0]), _dets().subset([1, 2])])
    assert mixed.logits is None and len(mixed) == 3


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"bbox": [[10, 10, 0, 20], [40, 30, 10, 10], [1, 1, 5, 5]]},
            r"detection 0 \(image_id 1\): bbox .* width or height <= 0",
        ),
        (
            {"bbox": [[10, 10, 20, 20], [40, np.nan, 10, 10], [1, 1, 5, 5]]},
            r"detection 1 \(image_id 1\): bbox .* not finite",
        ),
        (
            {"bbox": [[10, 10, 20, 20], [40, 30, 10, 10], [45, 1, 10, 5]]},
            r"detection 2 \(image_id 5\): bbox .* outside its 50x50 image",
        ),
        (
            {"score": [0.9, 1.2, -0.1]},
            r"detection 1 \(image_id 1\): score 1.2 is outside \[0, 1\] \(and 1 more\)",
        ),
        ({"score": [0.9, np.nan, 0.1]}, r"detection 1 .*score nan is outside"),
        (
            {"category_id": [3, 8, 3]},
            r"detection 1 \(image_id 1\): category_id 8 is not a ground-truth category",
        ),
        (
            {"image_id": [1, 1, 6]},
            r"detection 2 \(image_id 6\): image_id 6 is not an image of the ground truth",
        ),
        ({"probs": np.full((3, 4), 0.25)}, "'probs' has 4 columns; expected 2 .* or 3"),
        (
            {"probs": [[0.5, 0.5, 0.5], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]},
            r"detection 0 .*softmax probs sum to 1.5",
        ),
        ({"probs": [[0.5, 1.5], [0.2, 0.5], [0.1, 0.1]]}, r"detection 0 .*probs outside \[0, 1\]"),
        (
            {"prob_category_ids": (3, 99), "probs": np.full((3, 2), 0.5)},
            r"prob_category_ids \[99\] are not ground-truth categories",
        ),
    ],
)
def test_detection_validation_names_the_entry(gt, kw, message):
    with pytest.raises(TrustmapError, match=message):
        _dets(**kw).validate(gt)


def test_column_shape_errors():
    with pytest.raises(TrustmapError, match="column 'score' has 2 rows, image_id has 3"):
        _dets(score=[0.1, 0.2])
    with pytest.raises(TrustmapError, match="'probs' must be \\(N, classes\\)"):
        _dets(probs=[0.1, 0.2, 0.3])


def test_results_json_errors(tmp_path):
    good = _dets(probs=np.full((3, 3), 1 / 3)).to_coco_results()
    cases = {
        "truncated.json": json.dumps(good)[:-25],
        "notlist.json": json.dumps(_gt_dict()),
        "missing.json": json.dumps([{"image_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]),
        "ragged.json": json.dumps([good[0], {k: v for k, v in good[1].items() if k != "probs"}]),
        "shortvec.json": json.dumps([good[0], {**good[1], "probs": [0.5, 0.5]}]),
        "badbox.json": json.dumps([{**good[0], "bbox": [1, 2, 3]}]),
    }
    messages = {
        "truncated.json": "not valid JSON \\(truncated or corrupt\\?\\)",
        "notlist.json": "expected a list of detections \\(this looks like a COCO annotations file\\)",
        "missing.json": "detection 0: malformed entry .*'category_id'",
        "ragged.json": "detection 1: 'probs' is missing here but present in entry 0",
        "shortvec.json": "detection 1: 'probs' has 2 values, entry 0 has 3",
        "badbox.json": "detection 0: malformed entry .*bbox has 3 numbers",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(TrustmapError, match=messages[name]) as err:
            Detections.load(path)
        assert name in str(err.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(TrustmapError, match="nope.json: file not found"):
        Detections.load(tmp_path / "nope.json")
    with pytest.raises(TrustmapError, match="nope.npz: file not found"):
        Detections.load(tmp_path / "nope.npz")
    with pytest.raises(TrustmapError, match="gt.json: file not found"):
        GroundTruth.from_coco_json(tmp_path / "gt.json")
    bad = tmp_path / "bad.npz"
    full = _dets().save(tmp_path / "full.npz").read_bytes()
    bad.write_bytes(full[: len(full) // 2])
    with pytest.raises(TrustmapError, match="bad.npz: not a readable .npz file"):
        Detections.load(bad)
    np.savez(tmp_path / "cols.npz", image_id=np.array([1]))
    with pytest.raises(
        TrustmapError, match=r"lacks column\(s\) \['bbox', 'category_id', 'score'\]"
    ):
        Detections.load(tmp_path / "cols.npz")
    with pytest.raises(TrustmapError, match="use a .json or .npz"):
        Detections.load(tmp_path / "d.csv")
    with pytest.raises(TrustmapError, match="use a .json or .npz"):
        _dets().save(tmp_path / "d.parquet")


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = _dets().save(tmp_path / "d.json")
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("calibration.detections.json.dumps", boom)
    with pytest.raises(RuntimeError):
        _dets(score=[0.1, 0.1, 0.1]).save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]
