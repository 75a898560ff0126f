"""The simulated expert and how its answers become a label version."""

from __future__ import annotations

import numpy as np
import pytest

from refine.oracle import Corrections, Expert, SimulatedExpert, apply_corrections
from refine.regions import regions_from_labels
from tiles.classes import load_schema
from tiles.errors import TrustmapError


@pytest.fixture(scope="module")
def schema(landcover6_path):
    return load_schema(landcover6_path)


def _setup():
    # three 4x4 regions side by side (ids 0, 1, 2) and one pixel outside (-1)
    ids = np.repeat(np.repeat(np.arange(3), 4)[None], 4, axis=0).astype(np.int32)
    ids[0, 0] = -1
    truth = np.full(ids.shape, 2, np.uint8)  # tree
    truth[:, 4:8] = 3  # grass/crop
    truth[3, 4:8] = 6  # road, a minority in region 1
    truth[:, 8:] = 255  # region 2: truth unknown
    cheap = np.full(ids.shape, 4, np.uint8)  # all built-up: wrong everywhere
    return regions_from_labels(ids, "grid"), truth, cheap


def test_expert_answers_dominant_truth_and_pixels(schema) -> None:
    regions, truth, cheap = _setup()
    expert = SimulatedExpert(truth, schema)
    assert isinstance(expert, Expert)
    ans = expert.review(np.array([1, 0, 2]), regions, cheap)
    np.testing.assert_array_equal(ans.region_ids, [1, 0, 2])
    np.testing.assert_array_equal(ans.classes, [3, 2, 255])  # region 2 has no truth: no answer
    assert not ans.mistaken.any()
    exact = np.zeros(truth.size, np.uint8)
    exact[ans.pixels] = ans.pixel_codes
    inside = (regions.labels >= 0) & (regions.labels < 2)
    np.testing.assert_array_equal(exact.reshape(truth.shape)[inside], truth[inside])


def test_dominant_and_pixel_relabelling(schema) -> None:
    regions, truth, cheap = _setup()
    ans = SimulatedExpert(truth, schema).review(np.array([0, 1, 2]), regions, cheap)
    dom, rec = apply_corrections(cheap, ans, regions, "dominant", schema)
    assert dom[0, 0] == 4  # outside every region: untouched
    assert (dom[:, 8:] == 4).all()  # answered ignore: untouched
    assert (dom[:, 4:8] == 3).all()  # the road minority gets the dominant class
    assert rec.count == 15 + 16 and set(rec.region.tolist()) == {0, 1}
    assert (rec.before == 4).all()
    assert rec.per_class(schema)["to"] == {"tree": 15, "grass/crop": 16}
    np.testing.assert_array_equal(dom.reshape(-1)[rec.index], rec.after)
    pix, _ = apply_corrections(cheap, ans, regions, "pixel", schema)
    assert (pix[3, 4:8] == 6).all() and (pix[:3, 4:8] == 3).all()
    assert cheap[0, 5] == 4  # the input is not modified


def test_expert_mistakes_pick_confusable_classes_and_are_seeded_per_region(schema) -> None:
    ids = np.arange(400, dtype=np.int32).reshape(20, 20)
    regions = regions_from_labels(ids, "grid")
    truth = np.full(ids.shape, 2, np.uint8)  # every region is tree
    expert = SimulatedExpert(truth, schema, error_rate=0.3, seed=4)
    ans = expert.review(np.arange(400), regions, truth)
    wrong = ans.classes != 2
    assert 0.2 < wrong.mean() < 0.4
    np.testing.assert_array_equal(wrong, ans.mistaken)
    # tree is mostly confused with grass/crop (code 3), the most confusable class
    values, counts = np.unique(ans.classes[wrong], return_counts=True)
    assert values[np.argmax(counts)] == 3
    # the same region gets the same answer whatever it is reviewed with
    again = expert.review(np.array([399, 7, 123]), regions, truth)
    np.testing.assert_array_equal(again.classes, ans.classes[[399, 7, 123]])


def test_bad_answers_are_errors(schema) -> None:
    regions, truth, cheap = _setup()
    with pytest.raises(TrustmapError, match="unknown class code"):
        apply_corrections(
            cheap, Corrections(np.array([0]), np.array([9])), regions, "dominant", schema
        )
    with pytest.raises(TrustmapError, match="2 region ids but 1 classes"):
        Corrections(np.array([0, 1]), np.array([2]))
    with pytest.raises(TrustmapError, match="unknown relabel mode"):
        apply_corrections(
            cheap, Corrections(np.array([0]), np.array([2])), regions, "polygon", schema
        )
    with pytest.raises(TrustmapError, match="error rate"):
        SimulatedExpert(truth, schema, error_rate=1.0)
