"""Fuzzing the COCO loaders: any JSON either loads or gives a TrustmapError, never anything else.

Two generators: arbitrary JSON values (anything a file can hold), and COCO-shaped documents
whose every field may be replaced by a wrong type, a huge number, NaN, a nested list or an
odd string. Documents that load are also validated against each other (detections against
ground truth), which must fail the same way or pass.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calibration.detections import Detections, GroundTruth
from tiles.errors import TrustmapError

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([0, 1, 2, -1, 2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["", "1", "car", "a\x00b", "../x.png", "/etc/shadow", "=1+1", "<b>", "1e400"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def maybe(good: st.SearchStrategy, junk: int = 40) -> st.SearchStrategy:
    """A valid value, about once in ``junk`` times anything at all."""
    return st.integers(0, junk - 1).flatmap(lambda k: json_values if k == 0 else good)


numbers = st.one_of(st.integers(1, 60), st.floats(0.5, 60, allow_nan=False))
bbox = maybe(st.lists(maybe(numbers, 30), min_size=4, max_size=4), 20)
ids = maybe(st.integers(1, 3))
names = st.one_of(st.text("abc xyz-<>*|", min_size=1, max_size=6), st.text(max_size=4))


def entry(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A dict of ``fields`` (each now and then wrong); sometimes one is dropped or an extra added."""
    full = st.fixed_dictionaries(fields, optional={"extra": json_values})
    partial = st.fixed_dictionaries({}, optional=fields)
    return st.integers(0, 15).flatmap(lambda k: partial if k == 0 else full)


def _image_key(im):
    return repr(im.get("id")) if isinstance(im, dict) else repr(im)


image = entry(
    {
        "id": ids,
        "file_name": maybe(st.text(max_size=6)),
        "width": maybe(numbers),
        "height": maybe(numbers),
    }
)
annotation = entry({"id": ids, "image_id": ids, "bbox": bbox, "category_id": ids, "area": maybe(numbers),
                    "iscrowd": maybe(st.integers(0, 1)), "ignore": maybe(st.integers(0, 1))})  # fmt: skip
category = entry({"id": ids, "name": maybe(names)})
coco_gt = maybe(
    st.fixed_dictionaries(
        {
            "images": maybe(st.lists(maybe(image, 30), max_size=3, unique_by=_image_key)),
            "annotations": maybe(st.lists(maybe(annotation, 30), max_size=4)),
            "categories": maybe(st.lists(maybe(category, 30), min_size=1, max_size=3)),
        }
    ),
    20,
)
probs = maybe(st.lists(maybe(st.floats(0, 1), 30), min_size=3, max_size=3))
detection = entry({"image_id": ids, "category_id": ids, "bbox": bbox, "score": maybe(st.floats(0, 1)),
                   "probs": probs, "logits": probs, "proposal_index": maybe(st.integers(0, 9))})  # fmt: skip
coco_results = maybe(st.lists(maybe(detection, 30), max_size=5), 20)


def loads_or_trustmap_error(fn, *args):
    try:
        return fn(*args)
    except TrustmapError as exc:
        assert str(exc).strip(), "an error needs a message"
        assert "\n" not in str(exc), "errors are one line"
        return None


@SETTINGS
@given(json_values)
def test_any_json_value_as_ground_truth(value):
    loads_or_trustmap_error(GroundTruth.from_coco, value, "gt.json")


@SETTINGS
@given(json_values)
def test_any_json_value_as_results(value):
    loads_or_trustmap_error(Detections.from_coco_results, value, "preds.json")


@SETTINGS
@given(coco_gt, coco_results)
def test_coco_shaped_documents(gt_doc, results_doc):
    gt = loads_or_trustmap_error(GroundTruth.from_coco, gt_doc, "gt.json")
    det = loads_or_trustmap_error(Detections.from_coco_results, results_doc, "preds.json")
    if gt is not None:
        assert all(isinstance(n, str) for n in gt.categories.values())
        assert all(math.isfinite(w) and w > 0 for w in gt.images.width)
    if gt is not None and det is not None:
        loads_or_trustmap_error(det.validate, gt)


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=40),
        st.text(max_size=40).map(str.encode),
        json_values.map(lambda v: json.dumps(v).encode()),
    )
)
def test_any_file_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "x.json"
    path.write_bytes(data)
    loads_or_trustmap_error(GroundTruth.from_coco_json, path)
    loads_or_trustmap_error(Detections.load, path)
