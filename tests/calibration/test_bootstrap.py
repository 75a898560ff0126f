"""calibration.bootstrap: resampling counts, the dense / sparse / split products, and
bias-corrected (BC) versus percentile intervals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

import calibration.bootstrap as B
from calibration import metrics as M
from calibration.bootstrap import Statistic, bootstrap, interval, replicates, resample_counts


def test_resample_counts_are_multinomial_draws():
    w = resample_counts(37, 50, seed=4)
    assert w.shape == (50, 37) and w.dtype == np.float32
    np.testing.assert_array_equal(w.sum(axis=1), 37)  # each replicate draws 37 images
    assert (w == np.round(w)).all() and (w >= 0).all()
    np.testing.assert_array_equal(w, resample_counts(37, 50, seed=4))
    assert not np.array_equal(w, resample_counts(37, 50, seed=5))
    # blocks of replicates: more replicates than one block holds give the same kind of rows
    big = resample_counts(3, 2_000_000, seed=1)
    assert (big.sum(axis=1) == 3).all() and abs(big.mean() - 1.0) < 0.01


def _binned_stat(seed: int, n_img: int = 60, per: int = 25) -> tuple[Statistic, int]:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_img), per)
    s = rng.random(len(g))
    y = rng.random(len(g)) < s * 0.8
    cols = [s, rng.random(len(g)), rng.random(len(g))]
    return M.dece_statistic(cols, y, (6, 4, 4), group=g), n_img


@pytest.mark.parametrize("mode", ["dense", "sparse", "split"])
def test_products_agree(monkeypatch, mode):
    """Dense BLAS, sparse, and the dense-columns / sparse-rest split give the same replicates."""
    stat, n_img = _binned_stat(0)
    stat = Statistic(*stat.entries(), stat.shape, stat.finalize)  # entries, no dense table
    w = resample_counts(n_img, 40, seed=2)
    # direct: per-image totals, weighted
    g, c, v = stat.entries()
    per_image = np.zeros((n_img, stat.size))
    np.add.at(per_image, (g, c), v)
    direct = stat.finalize((w.astype(np.float64) @ per_image).reshape(40, *stat.shape))
    if mode == "dense":
        monkeypatch.setattr(B, "DENSE_FILL", 1e-6)
    elif mode == "sparse":
        monkeypatch.setattr(B, "DENSE_MAX", 0)
    elif mode == "split":
        # the whole table is too empty for dense; the count cell (every image) is not
        monkeypatch.setattr(B, "DENSE_FILL", 0.3)
        monkeypatch.setattr(B, "SPARSE_BLOCK", 7)
    prod = B._Product(stat, n_img)
    assert (prod.Ssp is None) == (mode == "dense")
    assert (prod.D is not None and prod.Ssp is not None) == (mode == "split")
    np.testing.assert_allclose(replicates(stat, w), direct, rtol=1e-5)


def test_statistic_with_a_dense_table():
    ent = Statistic(
        np.array([0, 1]), np.array([1, 2]), np.array([2.0, 3.0]), (3,), lambda t: t[..., 0]
    )
    table = np.array([[1.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    both = Statistic(ent.group, ent.col, ent.val, (3,), lambda t: t[..., 0], table)
    np.testing.assert_array_equal(both.totals(), [1.0, 7.0, 3.0])
    np.testing.assert_array_equal(both.dense_per_group(2), [[1, 2, 0], [0, 5, 3]])
    np.testing.assert_array_equal(both.per_group(2).toarray(), [[1, 2, 0], [0, 5, 3]])
    merged = Statistic.concat([both, ent], lambda t: t)
    np.testing.assert_array_equal(merged.totals(), [1.0, 9.0, 6.0])


# ------------------------------------------------------------------------ BC intervals


def test_bc_equals_percentile_when_replicates_are_centred():
    rng = np.random.default_rng(0)
    half = rng.gamma(2.0, 0.01, 500)
    est = 0.3
    reps = np.r_[est - half, est + half[::-1] * 1.7]  # skewed, but half on each side
    bc, pct = interval(reps, est, 0.9, "bc"), interval(reps, est, 0.9, "percentile")
    assert bc.z0 == 0.0
    assert (bc.low, bc.high) == (pct.low, pct.high)
    assert bc.method == "bc" and pct.method == "percentile"


def test_bc_by_hand():
    reps = np.arange(1, 1001) / 1000.0  # uniform replicates 0.001 .. 1
    iv = interval(reps, 0.3001, 0.95, "bc")  # 300 of 1000 below the estimate
    z0 = norm.ppf(0.3)
    assert iv.z0 == pytest.approx(z0)
    lo, hi = np.quantile(reps, norm.cdf([2 * z0 - 1.959964, 2 * z0 + 1.959964]))
    assert (iv.low, iv.high) == pytest.approx((lo, hi), abs=1e-6)
    assert iv.low < 0.3001 < iv.high  # 30 % below: inside either way
    # all replicates above: z0 is clipped at 1/(2B), the interval pinned to the lowest replicate
    iv = interval(reps, 0.0, 0.95, "bc")
    assert iv.z0 == pytest.approx(norm.ppf(0.5 / 1000))
    assert iv.low == pytest.approx(0.001) and iv.high < 0.0011
    with pytest.raises(ValueError, match="'shifted', 'bc' or 'percentile'"):
        interval(reps, 0.5, 0.95, "bca")  # type: ignore[arg-type]
    assert np.isnan(interval(np.full(4, np.nan), 0.1).low)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 10**6), st.floats(-3.0, 3.0), st.floats(0.5, 0.99))
def test_bc_contains_the_estimate_exactly_when_percentile_does(seed, shift, level):
    """Both contain it iff (1-level)/2 <= share of replicates below it <= (1+level)/2, so BC
    moves an interval (below the estimate for upward-biased replicates) but cannot bring
    back an estimate that the percentile interval misses."""
    rng = np.random.default_rng(seed)
    reps = rng.gamma(3.0, 1.0, 400) + shift  # skewed, and off the estimate by `shift`
    est = 3.0
    bc, pct = interval(reps, est, level, "bc"), interval(reps, est, level, "percentile")
    p = (reps < est).mean()
    a = (1 - level) / 2
    clear = min(abs(p - a), abs(p - (1 - a))) > 5 / len(reps)  # away from the boundary's ties
    if clear:
        assert (bc.low <= est <= bc.high) == (pct.low <= est <= pct.high) == (a < p < 1 - a)
    if p < 0.5:  # replicates above the estimate: BC lies lower than the percentile interval
        assert bc.low <= pct.low and bc.high <= pct.high


def test_bc_on_an_upward_biased_binned_metric():
    """D-ECE of well-calibrated boxes: the replicates sit above the estimate, the more so
    the fewer boxes per cell.

    Moderate bias: both intervals contain the estimate, BC lower down. Strong bias: the
    percentile interval lies above the estimate, BC below it (an interval for the error
    without the binning's bias); neither contains it (see calibration.bootstrap.interval).
    Extreme bias (no replicate below the estimate): BC is pinned to the lowest replicate,
    with z0 at its cap to flag it.
    """

    def case(per_image: int, bins: tuple[int, int], seed: int):
        rng = np.random.default_rng(seed)
        g = np.repeat(np.arange(200), per_image)
        s = rng.beta(2, 2, len(g))
        y = rng.random(len(g)) < s
        st_ = M.dece_statistic([s, rng.random(len(g))], y, bins, group=g)
        bc = bootstrap({"d": st_}, 200, 400, seed=0, method="bc")["d"]
        pct = bootstrap({"d": st_}, 200, 400, seed=0, method="percentile")["d"]
        return st_.value(), bc, pct

    est, bc, pct = case(400, (10, 2), seed=1)
    assert -1.96 < bc.z0 < -0.3  # most replicates above the estimate
    assert bc.low < pct.low and bc.high < pct.high
    assert bc.low <= est <= bc.high and pct.low <= est <= pct.high

    est, bc, pct = case(3, (10, 5), seed=2)
    assert -3.0 < bc.z0 < -1.96
    assert est < pct.low and bc.high < est  # the percentile interval above, BC below

    est, bc, pct = case(10, (10, 10), seed=1)
    assert bc.z0 == pytest.approx(norm.ppf(0.5 / 400))  # every replicate above the estimate
    assert est < bc.low <= bc.high < pct.low  # pinned to the lowest replicate


def test_compute_metrics_reports_the_interval_method():
    from tests.calibration.test_metrics import synthetic

    dets, gt = synthetic(30, 12, seed=4)
    bc = M.compute_metrics(dets, gt, {"n_boot": 60, "ap_backend": "trustmap", "ci_method": "bc"})
    sh = M.compute_metrics(dets, gt, {"n_boot": 60, "ap_backend": "trustmap"})  # the default
    assert bc["config"]["ci_method"] == "bc" and sh["config"]["ci_method"] == "shifted"
    for name in ("ece", "dece", "nll", "map"):
        a, b = bc["metrics"][name], sh["metrics"][name]
        assert a["value"] == b["value"] and a["std"] == pytest.approx(b["std"])
        # the bias flag is computed whatever the method (it was always 0 for percentile)
        assert np.isfinite(a["ci_z0"]) and a["ci_z0"] == pytest.approx(b["ci_z0"])
        assert b["ci_low"] <= b["value"] <= b["ci_high"]
    with pytest.raises(Exception, match="ci_method"):
        M.load_config({"ci_method": "bca"})


def test_shifted_interval_contains_the_estimate_where_percentile_misses_it():
    """The demo's fault: "D-ECE 0.091 (95 % CI 0.095-0.117)". Strongly upward-biased
    replicates put the percentile interval above the estimate; the shifted interval keeps
    their spread and contains the estimate, and z0 flags the bias."""
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(200), 3)
    s = rng.beta(2, 2, len(g))
    y = rng.random(len(g)) < s
    st_ = M.dece_statistic([s, rng.random(len(g))], y, (10, 5), group=g)
    est = st_.value()
    pct = bootstrap({"d": st_}, 200, 400, seed=0, method="percentile")["d"]
    sh = bootstrap({"d": st_}, 200, 400, seed=0)["d"]
    assert est < pct.low  # the fault
    assert sh.method == "shifted" and sh.low <= est <= sh.high
    assert sh.high - sh.low == pytest.approx(pct.high - pct.low)
    assert sh.z0 < -1.96 and sh.bias > 0  # flagged: replicates above the estimate


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, 10**6), st.floats(-3.0, 3.0), st.floats(0.5, 0.99))
def test_shifted_interval_always_contains_the_estimate(seed, shift, level):
    rng = np.random.default_rng(seed)
    reps = rng.gamma(3.0, 1.0, 50) + shift
    iv = interval(reps, 3.0, level)
    assert iv.low <= 3.0 <= iv.high
