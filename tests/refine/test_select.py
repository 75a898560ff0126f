"""Region aggregation, class balance and budgeted selection against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refine import select as Sel
from tiles.errors import TrustmapError

NAN = float("nan")
IDS = np.array([[0, 0, 1], [1, 1, -1], [2, 2, 2]])
SCORE = np.array([[1, 3, 2], [NAN, 4, 5], [NAN, NAN, NAN]], np.float32)
E2 = math.exp(-2)


@pytest.mark.parametrize(
    ("how", "kw", "expected"),
    [
        ("mean", {}, [2.0, 3.0]),
        ("sum", {}, [4.0, 6.0]),
        ("max", {}, [3.0, 4.0]),
        ("top_quantile", {"q": 0.5}, [3.0, 4.0]),
        ("top_quantile", {"q": 1.0}, [2.0, 3.0]),
        ("softmax", {"temperature": 1.0}, [(1 * E2 + 3) / (E2 + 1), (2 * E2 + 4) / (E2 + 1)]),
        ("softmin", {"temperature": 1.0}, [(1 + 3 * E2) / (1 + E2), (2 + 4 * E2) / (1 + E2)]),
    ],
)
def test_aggregate_by_hand(how: str, kw: dict, expected: list[float]) -> None:
    # NaN pixels and id -1 do not count; region 2 has no finite score -> NaN
    got = Sel.aggregate(SCORE, IDS, 3, how, **kw)
    np.testing.assert_allclose(got[:2], expected, rtol=1e-12)
    assert np.isnan(got[2])


def test_aggregate_pads_regions_without_pixels() -> None:
    got = Sel.aggregate(SCORE, IDS, 5, "mean")
    assert got.shape == (5,) and np.isnan(got[2:]).all()


def test_top_quantile_with_negative_scores() -> None:
    ids = np.zeros((1, 4), int)
    s = np.array([[-0.5, -2.0, 0.25, -0.0]], np.float32)
    assert Sel.aggregate(s, ids, 1, "top_quantile", q=0.5)[0] == pytest.approx(0.125)  # top 2
    assert Sel.aggregate(s, ids, 1, "top_quantile", q=0.3)[0] == pytest.approx(
        0.125
    )  # ceil(1.2) = 2
    assert Sel.aggregate(s, ids, 1, "top_quantile", q=0.25)[0] == pytest.approx(0.25)  # top 1
    s = np.array([[-3.0, -1.0, -2.0, -7.0]], np.float32)
    assert Sel.aggregate(s, ids, 1, "top_quantile", q=0.5)[0] == pytest.approx(-1.5)


def test_top_quantile_matches_a_per_region_loop() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(-1, 40, (50, 60))
    s = rng.normal(size=(50, 60)).astype(np.float32)
    s[rng.random(s.shape) < 0.1] = np.nan
    for q in (0.05, 0.3, 1.0):
        got = Sel.aggregate(s, ids, 40, "top_quantile", q=q)
        for r in range(40):
            v = np.sort(s[(ids == r) & np.isfinite(s)])[::-1]
            k = max(1, math.ceil(q * v.size))
            assert got[r] == pytest.approx(v[:k].astype(np.float64).mean(), rel=1e-9, abs=1e-12)


def test_pooling_limits() -> None:
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 5, (30, 30))
    s = rng.random((30, 30)).astype(np.float32)
    mx, mean = Sel.aggregate(s, ids, 5, "max"), Sel.aggregate(s, ids, 5, "mean")
    mn = np.array([s[ids == r].min() for r in range(5)])
    # T -> 0: the extreme; T -> inf: the mean; in between: strictly between the two
    np.testing.assert_allclose(Sel.aggregate(s, ids, 5, "softmax", temperature=1e-4), mx, atol=1e-3)
    np.testing.assert_allclose(Sel.aggregate(s, ids, 5, "softmin", temperature=1e-4), mn, atol=1e-3)
    for how in ("softmax", "softmin"):
        np.testing.assert_allclose(Sel.aggregate(s, ids, 5, how, temperature=1e4), mean, atol=1e-3)
    mid = Sel.aggregate(s, ids, 5, "softmin", temperature=0.1)
    assert ((mn < mid) & (mid < mean)).all()


def test_aggregate_errors() -> None:
    with pytest.raises(TrustmapError, match="unknown aggregation"):
        Sel.aggregate(SCORE, IDS, 3, "median")
    with pytest.raises(TrustmapError, match="q must be"):
        Sel.aggregate(SCORE, IDS, 3, "top_quantile", q=0)
    with pytest.raises(TrustmapError, match="temperature"):
        Sel.aggregate(SCORE, IDS, 3, "softmax", temperature=0)
    with pytest.raises(TrustmapError, match="shape"):
        Sel.aggregate(SCORE[:2], IDS, 3)


# --- class balance ----------------------------------------------------------------------------
def test_class_histogram_dominant_and_weights() -> None:
    cls = np.array([[0, 0, 1], [0, 1, 1], [-1, -1, 0]])
    ids = np.array([[0, 0, 0], [0, 1, 1], [2, 2, -1]])
    hist = Sel.class_histogram(ids, cls, 3, 2)
    np.testing.assert_array_equal(hist, [[3, 1], [0, 2], [0, 0]])
    np.testing.assert_array_equal(Sel.dominant_class(hist), [0, 1, -1])
    # shares: class 0 = 3/6, class 1 = 3/6 -> equal weights; region without class -> 1
    np.testing.assert_allclose(
        Sel.class_balance_weights(hist), [math.exp(-0.5), math.exp(-0.5), 1.0]
    )
    hist = np.array([[5, 1], [0, 2], [0, 0]])  # shares 5/8 and 3/8
    np.testing.assert_allclose(
        Sel.class_balance_weights(hist), [math.exp(-5 / 8), math.exp(-3 / 8), 1.0]
    )


# --- greedy selection -------------------------------------------------------------------------
def test_greedy_ratio_and_value_by_hand() -> None:
    values = np.array([0.9, 0.8, 0.7, 0.1])
    costs = np.array([5.0, 1.0, 1.0, 1.0])
    # ratio: 0.18, 0.8, 0.7, 0.1 -> 1, 2, then 0 does not fit (5 > 1 left), then 3
    sel = Sel.select_greedy(values, costs, 3)
    assert sel.ids.tolist() == [1, 2, 3] and sel.spent == 3 and sel.costs.tolist() == [1, 1, 1]
    np.testing.assert_allclose(sel.scores, [0.8, 0.7, 0.1])
    # value: 0 first (fits a budget of 6), then 1; 2 and 3 no longer fit
    sel = Sel.select_greedy(values, costs, 6, objective="value")
    assert sel.ids.tolist() == [0, 1] and sel.spent == 6


def test_greedy_skips_reviewed_and_nan_and_clips_negative_ratio() -> None:
    values = np.array([0.9, NAN, 0.5, -0.4, 0.3])
    costs = np.ones(5)
    sel = Sel.select_greedy(values, costs, 10, reviewed=[0])
    assert sel.ids.tolist() == [2, 4, 3]  # negative value clipped to 0 -> last, NaN never
    sel = Sel.select_greedy(
        values, costs, 10, reviewed=np.array([False, False, True, False, False])
    )
    assert sel.ids.tolist() == [0, 4, 3]
    sel = Sel.select_greedy(values, costs * np.array([1, 1, 1, 10, 1]), 10, objective="value")
    assert sel.ids.tolist() == [0, 2, 4]  # -0.4 costs 10: does not fit after the others


def test_greedy_class_weights_change_the_order() -> None:
    values, costs = np.array([1.0, 0.9]), np.ones(2)
    assert Sel.select_greedy(values, costs, 1).ids.tolist() == [0]
    sel = Sel.select_greedy(values, costs, 1, weights=np.exp(-np.array([0.9, 0.1])))
    assert sel.ids.tolist() == [1]
    assert sel.scores[0] == pytest.approx(0.9 * math.exp(-0.1))


def test_ties_broken_by_seed_deterministically() -> None:
    values, costs = np.ones(50), np.ones(50)
    a = Sel.select_greedy(values, costs, 10, seed=1).ids
    b = Sel.select_greedy(values, costs, 10, seed=1).ids
    c = Sel.select_greedy(values, costs, 10, seed=2).ids
    np.testing.assert_array_equal(a, b)
    assert a.tolist() != c.tolist()
    # jitter only breaks exact ties: a strictly better region always comes first
    values[37] = 1.0001
    assert Sel.select_greedy(values, costs, 1, seed=3).ids.tolist() == [37]


def _walk(order, costs, budget):
    left, out = budget, []
    for i in order:
        if costs[i] <= left:
            out.append(i)
            left -= costs[i]
    return out


@settings(max_examples=60, deadline=None)
@given(
    costs=st.lists(st.integers(1, 20), min_size=1, max_size=40),
    budget=st.integers(0, 120),
    seed=st.integers(0, 5),
)
def test_fill_budget_equals_the_plain_walk_and_never_overspends(costs, budget, seed) -> None:
    c = np.array(costs, float)
    order = np.random.default_rng(seed).permutation(c.size)
    got = Sel.fill_budget(order, c, budget)
    assert got.tolist() == _walk(order.tolist(), c, budget)
    assert c[got].sum() <= budget
    rest = np.setdiff1d(np.arange(c.size), got)
    assert (c[rest] > budget - c[got].sum()).all()  # nothing left that would still fit


def _lattice(n: int = 10):
    rr, cc = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    centroids = np.stack([rr.ravel() * 10.0, cc.ravel() * 10.0], axis=1)
    values = -(rr + cc).ravel().astype(float)  # best regions crowd the (0, 0) corner
    return centroids, values


def test_spatial_diversity_spreads_the_batch() -> None:
    centroids, values = _lattice()
    costs = np.ones(values.size)
    plain = Sel.select_greedy(values, costs, 5, objective="value", centroids=centroids)
    spread = Sel.select_greedy(values, costs, 5, objective="value", centroids=centroids, radius=25)
    assert spread.spent == plain.spent == 5
    d = np.linalg.norm(centroids[spread.ids][:, None] - centroids[spread.ids][None], axis=-1)
    assert d[np.triu_indices(5, 1)].min() > 25
    assert centroids[plain.ids].max() <= 20 < centroids[spread.ids].max()
    assert spread.ids[0] == 0  # the best region is still picked first


def test_spatial_diversity_still_spends_the_whole_budget() -> None:
    centroids, values = _lattice(4)
    costs = np.ones(values.size)
    sel = Sel.select_greedy(values, costs, 16, objective="value", centroids=centroids, radius=1000)
    assert sel.spent == 16 and sorted(sel.ids.tolist()) == list(range(16))
    with pytest.raises(TrustmapError, match="centroids"):
        Sel.select_greedy(values, costs, 3, radius=5)


def test_random_baseline() -> None:
    costs = np.arange(1, 21, dtype=float)
    a = Sel.select_random(costs, 30, seed=4)
    np.testing.assert_array_equal(a.ids, Sel.select_random(costs, 30, seed=4).ids)
    assert a.spent <= 30 and len(set(a.ids.tolist())) == a.ids.size and np.isnan(a.scores).all()
    assert (costs[np.setdiff1d(np.arange(20), a.ids)] > 30 - a.spent).all()
    assert a.ids.tolist() != Sel.select_random(costs, 30, seed=5).ids.tolist()
    assert 3 not in Sel.select_random(costs, 200, reviewed=[3]).ids


def test_selection_errors() -> None:
    with pytest.raises(TrustmapError, match="positive"):
        Sel.select_greedy(np.ones(2), np.array([1.0, 0.0]), 3)
    with pytest.raises(TrustmapError, match="budget"):
        Sel.select_greedy(np.ones(2), np.ones(2), -1)
    with pytest.raises(TrustmapError, match="objective"):
        Sel.select_greedy(np.ones(2), np.ones(2), 1, objective="best")
    with pytest.raises(TrustmapError, match="weights"):
        Sel.select_greedy(np.ones(2), np.ones(2), 1, weights=np.ones(3))


# --- the net-gain look-ahead (refine.strategies.net_gain_rank) ------------------------------------------
def _net_gain(probs, labels, region_ids, relabel, cost=None):
    from types import SimpleNamespace

    from refine.config import RefineConfig
    from refine.regions import regions_from_labels
    from refine.strategies import net_gain_rank

    regions = regions_from_labels(region_ids, "grid", "pixels")
    if cost is not None:
        regions = regions.with_cost("dominant_clicks")
    cfg = RefineConfig().with_overrides(review={"relabel": relabel})
    ctx = SimpleNamespace(probs=lambda: probs, label_index=labels, regions=regions, config=cfg)
    return net_gain_rank(ctx)


def test_net_gain_counts_what_a_dominant_answer_would_break() -> None:
    # region 0: labels all 0, the model is sure every pixel is class 1 -> gain 4 of 4 px
    # region 1: half the pixels are class 0 and half class 1 (sure), labels all 0: a dominant
    #           answer can fix 2 and must break... nothing it did not already have: gain 0
    ids = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    labels = np.zeros((2, 4), np.int16)
    p1 = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], float)
    probs = np.stack([1 - p1, p1]).astype(np.float32)
    gain = _net_gain(probs, labels, ids, "dominant")
    np.testing.assert_allclose(gain, [1.0, 0.0])  # per pixel of cost
    # pixel-exact answers fix the 2 wrong pixels of region 1 too
    np.testing.assert_allclose(_net_gain(probs, labels, ids, "pixel"), [1.0, 0.5])


def test_net_gain_is_per_unit_cost_and_counts_unlabelled_pixels() -> None:
    ids = np.array([[0, 0, 1, 1]])
    labels = np.array([[-1, -1, 0, 0]], np.int16)  # region 0 unlabelled
    probs = np.array([[[0.9, 0.9, 0.9, 0.9]], [[0.1, 0.1, 0.1, 0.1]]], np.float32)
    gain = _net_gain(probs, labels, ids, "dominant", cost="clicks")
    np.testing.assert_allclose(gain, [1.8, 0.0], atol=1e-6)  # one click each
