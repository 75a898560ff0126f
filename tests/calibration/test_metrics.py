"""calibration.metrics and calibration.bootstrap: hand-computed values, and the peers
(netcal, uq-detr, pycocotools) on the same inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import uq_detr
from hypothesis import given, settings
from hypothesis import strategies as st
from netcal.metrics import ACE, ECE, MCE

from calibration import metrics as M
from calibration.bootstrap import bootstrap, replicates, resample_counts
from calibration.detections import AnnotationTable, Detections, GroundTruth, ImageTable
from calibration.matching import match
from tiles.errors import TrustmapError

CONF = np.array([0.1, 0.2, 0.35, 0.8, 0.9])
HIT = np.array([0, 1, 0, 1, 1])


# ---------------------------------------------------------------- hand-computed values


def test_ece_mce_ace_by_hand():
    # two equal-width bins: {.1,.2,.35} with 1 hit, {.8,.9} with 2 hits
    assert M.ece(CONF, HIT, bins=2) == pytest.approx((0.35 + 0.3) / 5)
    assert M.ece(CONF, HIT, bins=2, norm="l2") == pytest.approx(
        np.sqrt((3 * (0.35 / 3) ** 2 + 2 * 0.15**2) / 5)
    )
    assert M.mce(CONF, HIT, bins=2) == pytest.approx(0.15)
    # equal-mass bins: edges at 0, median .35, 1 -> {.1,.2} and {.35,.8,.9}, each weighted 1/2
    assert M.ace(CONF, HIT, bins=2) == pytest.approx((0.35 + 0.05 / 3) / 2)
    assert M.ace(CONF, HIT, bins=2, norm="l2") == pytest.approx(
        np.sqrt((0.35**2 + (0.05 / 3) ** 2) / 2)
    )
    # observed range (uq-detr's convention): bins over [.1, .9], edge at .5
    assert M.ece(CONF, HIT, bins=2, value_range=None) == pytest.approx(0.13)
    assert np.isnan(M.ece(np.zeros(0), np.zeros(0)))


def test_per_class_mean_by_hand():
    cls = np.array([1, 1, 1, 2, 2])
    e1, e2 = 0.35 / 3, 0.15
    assert M.calibration_error(CONF, HIT, classes=cls, bins=2) == pytest.approx((e1 + e2) / 2)
    assert M.calibration_error(CONF, HIT, classes=cls, bins=2, norm="l2") == pytest.approx(
        np.sqrt((e1**2 + e2**2) / 2)
    )


def test_reliability_table():
    r = M.reliability(CONF, HIT, bins=2)
    np.testing.assert_allclose(r["count"], [3, 2])
    np.testing.assert_allclose(r["confidence"], [0.65 / 3, 0.85])
    np.testing.assert_allclose(r["target"], [1 / 3, 1.0])


PROBS = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]])
TARGET = np.array([0, 0, 2, 2])  # column 2 = background


def test_top_label_and_classwise_by_hand():
    # top label: confidences .7 .6 .8 .5 all in the upper bin, 2 of 4 right
    assert M.top_label_statistic(PROBS, TARGET, bins=2).value() == pytest.approx(0.15)
    # classwise, two bins per column:
    #   col 0: p .3 .1 | .7 .5, y 1 0 | 1 0 -> (2 * .3 + 2 * .1) / 4 = .2
    #   col 1: p .2 .1 .4 | .6, y all 0   -> (.7 + .6) / 4 = .325
    #   col 2: p .1 .1 .1 | .8, y 0 0 1 | 1 -> (3 * 7/30 + .2) / 4 = .225
    assert M.classwise_statistic(PROBS, TARGET, bins=2, norm="l1").value() == pytest.approx(0.25)
    # L2: squared gaps weighted within each column, averaged over columns, then the root
    sq = [
        (2 * 0.3**2 + 2 * 0.1**2) / 4,
        (3 * (0.7 / 3) ** 2 + 0.6**2) / 4,
        (3 * (0.7 / 3) ** 2 + 0.2**2) / 4,
    ]
    assert M.classwise_statistic(PROBS, TARGET, bins=2, norm="l2").value() == pytest.approx(
        np.sqrt(np.mean(sq))
    )


def test_nll_and_brier_by_hand():
    assert M.nll(PROBS, TARGET, 2) == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.8, 0.1])))
    assert M.brier(PROBS, TARGET, 2) == pytest.approx((0.14 + 0.86 + 0.06 + 1.22) / 4)
    # sigmoid head: K binary predictors; a background target makes every class target 0
    sig, y = np.array([[0.7, 0.2], [0.3, 0.6]]), np.array([0, 2])
    assert M.nll(sig, y, 2) == pytest.approx(
        -(np.log(0.7) + np.log(0.8) + np.log(0.7) + np.log(0.4)) / 2
    )
    assert M.brier(sig, y, 2) == pytest.approx((0.09 + 0.04 + 0.09 + 0.36) / 2)
    with pytest.raises(TrustmapError, match="4 columns; expected 2"):
        M.nll(np.full((1, 4), 0.25), np.array([0]), 2)


def test_laece_and_laace_by_hand():
    score, iou, cls = np.array([0.9, 0.85, 0.3]), np.array([0.8, 0.0, 0.6]), np.array([1, 1, 2])
    # class 1: .9 and .85 in bins of their own (width .04): gaps .1 and .85; class 2: .3
    assert M.laece(score, iou, cls) == pytest.approx(((0.1 + 0.85) / 2 + 0.3) / 2)
    # same bin: mean score .905 against summed IoU / count = .4
    assert M.laece(np.array([0.9, 0.91]), np.array([0.8, 0.0]), np.array([1, 1])) == pytest.approx(
        0.505
    )
    # LaACE, one equal-mass bin per class here: (|.875 - .4| + |.3 - .6|) / 2
    assert M.laace(score, iou, cls, bins=1) == pytest.approx((0.475 + 0.3) / 2)


def test_dece_by_hand():
    X = np.array([[0.2, 0.1], [0.3, 0.9], [0.8, 0.1], [0.9, 0.9]])
    y = np.array([1, 0, 1, 1])
    assert M.dece(X, y, [2, 2]) == pytest.approx((0.8 + 0.3 + 0.2 + 0.1) / 4)
    assert M.dece(X[:, :1], y, 2) == pytest.approx((0.5 + 0.3) / 4)
    with pytest.raises(TrustmapError, match="3 bin counts given for 2 dimensions"):
        M.dece(X, y, [2, 2, 2])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.sampled_from(["width", "mass"]), st.integers(0, 10**6))
def test_bin_index_agrees_with_searchsorted_even_on_edges(bins, strategy, seed):
    rng = np.random.default_rng(seed)
    x = np.r_[rng.random(200), np.round(rng.random(50), 2), 0.0, 1.0]
    edges = M.bin_edges(x, bins, strategy)
    x = np.r_[x, edges]  # values sitting exactly on every edge
    ref = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
    np.testing.assert_array_equal(M.bin_index(x, edges), ref)


# ------------------------------------------------------------------------ netcal


@pytest.mark.parametrize(
    ("bins", "equal"),
    [
        (10, True),
        (10, False),
        ([10, 5, 5, 5, 5], True),
        ([7, 3, 4, 2, 6], True),
        ([6, 4, 4, 3, 3], False),
        ([20, 8], True),
        ([15], True),
    ],
)
def test_dece_equals_netcal(bins, equal):
    rng = np.random.default_rng(len(str(bins)) + equal)
    d = 5 if np.isscalar(bins) else len(bins)
    X = rng.random((4000, d))
    X[:40, 0] = 1.0  # values at the range ends
    X[40:80, 0] = 0.0
    X[80:200, 1:] = np.round(X[80:200, 1:], 1)  # values on interior edges
    y = (rng.random(4000) < X[:, 0] ** 1.5).astype(float)
    ours = M.dece(X, y, bins, "width" if equal else "mass")
    ref = ECE(bins, detection=True, equal_intervals=equal).measure(X, y)
    assert abs(ours - ref) < 1e-9


def test_dece_sample_threshold_equals_netcal():
    rng = np.random.default_rng(1)
    X, y = rng.random((500, 3)), (rng.random(500) < 0.5).astype(float)
    ref = ECE([5, 4, 4], detection=True, sample_threshold=4).measure(X, y)
    assert abs(M.dece(X, y, [5, 4, 4], min_count=4) - ref) < 1e-9


@pytest.mark.parametrize("equal", [True, False])
def test_ece_mce_ace_equal_netcal(equal):
    rng = np.random.default_rng(7)
    c = rng.random(3000)
    y = (rng.random(3000) < c**2).astype(float)
    strategy = "width" if equal else "mass"
    for ours, peer in ((M.ece, ECE), (M.mce, MCE), (M.ace, ACE)):
        ref = peer(15, detection=True, equal_intervals=equal).measure(c[:, None], y)
        assert abs(ours(c, y, bins=15, strategy=strategy) - ref) < 1e-9, ours.__name__


# -------------------------------------------------------------- detection-level data


def synthetic(n_images: int, per_image: int, seed: int, crowd: float = 0.05, k: int = 3):
    """Jittered ground-truth boxes plus false positives; scores rise with IoU, noisily."""
    rng = np.random.default_rng(seed)
    ngt = rng.integers(1, 9, n_images)
    m = int(ngt.sum())
    w, h = rng.uniform(8, 60, m), rng.uniform(8, 60, m)
    gb = np.column_stack([rng.uniform(0, 200 - w), rng.uniform(0, 200 - h), w, h])
    gimg = np.repeat(np.arange(n_images), ngt)
    gcat = rng.integers(1, k + 1, m)
    gt = GroundTruth(
        ImageTable(
            np.arange(1, n_images + 1),
            np.array(["x"] * n_images),
            np.full(n_images, 200.0),
            np.full(n_images, 200.0),
        ),
        AnnotationTable(
            np.arange(1, m + 1), gimg + 1, gb, gcat, rng.random(m) < crowd, np.zeros(m, bool), w * h
        ),
        {c: f"c{c}" for c in range(1, k + 1)},
    )
    n = n_images * per_image
    img = np.repeat(np.arange(n_images), per_image)
    src = np.r_[0, np.cumsum(ngt)[:-1]][img] + rng.integers(0, 1 << 20, n) % ngt[img]
    b = gb[src] + rng.normal(0, 0.2, (n, 4)) * np.c_[gb[src, 2:], gb[src, 2:]]
    rnd = rng.random(n) < 0.3
    b[rnd] = np.column_stack(
        [rng.uniform(0, 150, (rnd.sum(), 2)), rng.uniform(5, 50, (rnd.sum(), 2))]
    )
    b[:, :2] = np.clip(b[:, :2], 0, 190)
    b[:, 2:] = np.clip(b[:, 2:], 1.0, 200 - b[:, :2])
    cat = np.where(rng.random(n) < 0.8, gcat[src], rng.integers(1, k + 1, n))
    near = ~rnd
    score = 1 / (1 + np.exp(-(2.5 * near - 1.2 + rng.normal(0, 1, n))))
    logits = rng.normal(0, 1, (n, k + 1))
    logits[np.arange(n), np.searchsorted(np.arange(1, k + 1), cat)] += 2 * score
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return Detections(img + 1, b, cat, score, probs=probs), gt


def _without_regions(gt: GroundTruth) -> GroundTruth:
    an = gt.annotations
    keep = ~an.is_region
    return dataclasses.replace(
        gt,
        annotations=AnnotationTable(*(getattr(an, f.name)[keep] for f in dataclasses.fields(an))),
    )


def _uq(dets: Detections, gt: GroundTruth):
    an = gt.annotations
    D, G = [], []
    for iid in gt.images.id:
        s, g = dets.image_id == iid, an.image_id == iid
        D.append(
            uq_detr.Detections.from_xywh(dets.bbox[s], dets.score[s], labels=dets.category_id[s])
        )
        G.append(uq_detr.GroundTruth.from_xywh(an.bbox[g], an.category_id[g]))
    return D, G


@pytest.mark.parametrize(
    ("criterion", "mode", "tau"),
    [
        ("greedy", "greedy", 0.5),
        ("greedy", "greedy", 0.1),
        ("independent", "any", 0.0),
        ("independent", "any", 0.5),
    ],
)
def test_laece_and_confidence_dece_equal_uq_detr(criterion, mode, tau):
    dets, gt = synthetic(60, 20, seed=11)
    gt = _without_regions(gt)  # uq-detr has no crowd regions
    D, G = _uq(dets, gt)
    m = match(dets, gt, tau, mode)
    ours = M.laece(dets.score, m.iou[0], dets.category_id, 25, value_range=None)
    ref = uq_detr.laece(D, G, tp_criterion=criterion, iou_threshold=tau, n_bins=25).score
    assert abs(ours - ref) < 1e-9
    ours_d = M.ece(dets.score, m.tp[0], bins=25, value_range=None)
    assert (
        abs(ours_d - uq_detr.dece(D, G, tp_criterion=criterion, iou_threshold=tau, n_bins=25).score)
        < 1e-9
    )


def test_average_precision_equals_pycocotools():
    dets, gt = synthetic(50, 30, seed=2)
    m = match(dets, gt, M.COCO_IOU_THRESHOLDS, "greedy")
    table = M.average_precision(
        dets.score,
        m.tp,
        dets.category_id,
        m.n_gt,
        ignored=m.ignored,
        image_index=m.image_index,
        rank=m.rank,
        max_dets=10,
    )
    kw = {"ignored": m.ignored, "image_index": m.image_index, "rank": m.rank, "max_dets": 10}
    presorted = M.average_precision(dets.score, m.tp, dets.category_id, m.n_gt, order=m.order, **kw)
    np.testing.assert_array_equal(presorted, table)  # reusing the matcher's sort changes nothing
    # max_dets below the per-image count: truncation matters
    coco = M.coco_eval(dets, gt, max_dets=10)
    assert abs(np.nanmean(table) - coco["stats"]["AP"]) < 1e-12
    assert abs(np.nanmean(table[0]) - coco["stats"]["AP50"]) < 1e-12
    for j, c in enumerate(sorted(m.n_gt)):
        assert abs(np.nanmean(table[:, j]) - coco["per_category_ap"][c]) < 1e-12


def test_binned_ap_tracks_exact_ap():
    dets, gt = synthetic(60, 30, seed=4)
    m = match(dets, gt, M.COCO_IOU_THRESHOLDS, "greedy")
    exact = np.nanmean(
        M.average_precision(
            dets.score,
            m.tp,
            dets.category_id,
            m.n_gt,
            ignored=m.ignored,
            image_index=m.image_index,
            rank=m.rank,
        )
    )
    # a bin per detection: the binned curve is the exact one
    assert abs(M.ap_statistic(m, dets, gt, score_bins=len(dets)).value() - exact) < 1e-12
    assert abs(M.ap_statistic(m, dets, gt, score_bins=200).value() - exact) < 0.01


# ---------------------------------------------------------------------------- bootstrap


def test_replicates_equal_brute_force_resampling():
    """A replicate from per-image sums equals the metric recomputed on resampled images."""
    dets, gt = synthetic(25, 12, seed=9, crowd=0.0)
    m = match(dets, gt, 0.5, "greedy")
    grp = m.image_index
    feats = M.box_features(dets, gt)
    stats = {
        "ece": M.calibration_error_statistic(dets.score, m.tp[0], group=grp, bins=10),
        "cw": M.calibration_error_statistic(
            dets.score, m.tp[0], classes=dets.category_id, group=grp, norm="l2"
        ),
        "dece": M.dece_statistic(feats, m.tp[0], [4, 3, 3, 2, 2], group=grp),
        "ace": M.calibration_error_statistic(
            dets.score, m.tp[0], group=grp, kind="ace", strategy="mass"
        ),
        "nll": M.nll_brier_statistics(dets.probs, m.target_column(0.5, [1, 2, 3]), 3, group=grp)[0],
    }
    w = resample_counts(len(gt.images), 3, seed=5)
    reps = {name: replicates(st_, w) for name, st_ in stats.items()}  # all replicates in one batch
    for b in range(3):
        rows = np.concatenate([np.flatnonzero(grp == i).repeat(int(c)) for i, c in enumerate(w[b])])
        direct = {
            "ece": M.ece(dets.score[rows], m.tp[0, rows]),
            "cw": M.calibration_error(
                dets.score[rows], m.tp[0, rows], classes=dets.category_id[rows], norm="l2"
            ),
            "dece": M.dece(feats[rows], m.tp[0, rows], [4, 3, 3, 2, 2]),
            # equal-mass edges stay those of the full sample in a replicate
            "ace": _ace_fixed_edges(dets.score, m.tp[0], rows),
            "nll": M.nll(dets.probs[rows], m.target_column(0.5, [1, 2, 3])[rows], 3),
        }
        for name in stats:
            # the product runs in float32: agreement to ~1e-6 relative
            assert reps[name][b] == pytest.approx(direct[name], rel=2e-5, abs=1e-6), name


def _ace_fixed_edges(conf, hit, rows):
    edges = M.bin_edges(conf, 10, "mass")
    b = M.bin_index(conf[rows], edges)
    cnt = np.bincount(b, minlength=10)
    gap = np.abs(np.bincount(b, hit[rows], 10) - np.bincount(b, conf[rows], 10)) / np.maximum(
        cnt, 1
    )
    return gap[cnt > 0].mean()


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    dets, gt = synthetic(40, 15, seed=3)
    m = match(dets, gt, 0.5, "greedy")
    stat = M.nll_brier_statistics(
        dets.probs, m.target_column(0.5, [1, 2, 3]), 3, group=m.image_index
    )[1]
    a = bootstrap({"brier": stat}, len(gt.images), n_boot=200, seed=1)["brier"]
    b = bootstrap({"brier": stat}, len(gt.images), n_boot=200, seed=1)["brier"]
    c = bootstrap({"brier": stat}, len(gt.images), n_boot=200, seed=2)["brier"]
    assert (a.low, a.high) == (b.low, b.high) and (a.low, a.high) != (c.low, c.high)
    assert a.low < stat.value() < a.high and a.n_boot == 200 and a.std > 0
    assert bootstrap({"brier": stat}, len(gt.images), n_boot=0) == {}


# ------------------------------------------------------------------------- the audit


def test_compute_metrics_end_to_end():
    dets, gt = synthetic(40, 20, seed=8)
    out = M.compute_metrics(dets, gt, {"n_boot": 150, "seed": 3})
    mets = out["metrics"]
    m = match(dets, gt, [0.0, 0.5], "greedy")
    v = ~m.ignored[1]
    assert mets["ece"]["value"] == pytest.approx(M.ece(dets.score[v], m.tp[1, v]))
    ref = ECE([10, 5, 5, 5, 5], detection=True).measure(
        M.box_features(dets, gt)[v], m.tp[1, v].astype(float)
    )
    assert abs(mets["dece"]["value"] - ref) < 1e-9
    v0 = ~m.ignored[0]
    assert mets["laece"]["value"] == pytest.approx(
        M.laece(dets.score[v0], m.iou[0, v0], dets.category_id[v0])
    )
    # pycocotools' AP is the point estimate; ours agrees with it
    assert (
        mets["map"]["value"]
        == pytest.approx(out["coco"]["AP"])
        == pytest.approx(out["ap_trustmap"]["map"], abs=1e-12)
    )
    for name in (
        "ece",
        "mce",
        "ace",
        "dece",
        "laece",
        "laace",
        "nll",
        "brier",
        "top_label_ce",
        "classwise_ce",
        "map",
        "ap50",
    ):
        e = mets[name]
        assert e["ci_low"] <= e["value"] <= e["ci_high"] or name == "mce", name
    assert out["counts"]["detections"] == len(dets) and out["counts"]["ignored"] == int(
        m.ignored[1].sum()
    )
    assert set(out["per_category"]) == {1, 2, 3}
    fast = M.compute_metrics(dets, gt, {"n_boot": 0, "ap_backend": "trustmap", "match_mode": "any"})
    assert fast["coco"] is None and fast["metrics"]["map"]["ci_low"] is None
    assert fast["metrics"]["map"]["value"] == pytest.approx(out["coco"]["AP"], abs=1e-12)


def test_compute_metrics_without_probs_and_with_sigmoid_heads():
    dets, gt = synthetic(20, 10, seed=6)
    bare = dataclasses.replace(dets, probs=None)
    out = M.compute_metrics(bare, gt, {"n_boot": 0, "ap_backend": "trustmap"})
    assert out["metrics"]["nll"] == {
        "value": None,
        "skipped": "the detections carry no probability vectors (probs or logits)",
    }
    sig = dataclasses.replace(
        dets, probs=None, logits=np.random.default_rng(0).normal(size=(len(dets), 3))
    )
    out = M.compute_metrics(
        sig, gt, {"n_boot": 20, "ap_backend": "trustmap", "match_mode": "hungarian"}
    )
    assert out["metrics"]["nll"]["value"] > 0 and out["metrics"]["brier"]["ci_high"] is not None


def test_config_errors_are_one_line():
    with pytest.raises(
        TrustmapError, match="metrics config: bogus: Extra inputs are not permitted"
    ):
        M.load_config({"bogus": 1})
    with pytest.raises(
        TrustmapError, match="dece_bins needs one bin count per entry of dece_dims \\(5\\), got 2"
    ):
        M.load_config({"dece_bins": [10, 5]})
    with pytest.raises(TrustmapError, match="dece_dims must start with 'confidence'"):
        M.load_config({"dece_dims": ["cx"], "dece_bins": [4]})
    with pytest.raises(TrustmapError, match="iou_threshold"):
        M.load_config({"iou_threshold": 1.5})


def test_coco_eval_reports_what_summarize_prints():
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    dets, gt = synthetic(30, 40, seed=12)
    ours = M.coco_eval(dets, gt)["stats"]
    coco = gt.to_coco()
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(
            coco,
            coco.loadRes(np.column_stack([dets.image_id, dets.bbox, dets.score, dets.category_id])),
            "bbox",
        )
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    np.testing.assert_allclose(list(ours.values()), ev.stats, rtol=0, atol=1e-12)


def test_batched_replicates_equal_one_at_a_time():
    dets, gt = synthetic(30, 15, seed=21)
    m = match(dets, gt, M.COCO_IOU_THRESHOLDS, "greedy")
    w = resample_counts(len(gt.images), 4, seed=0)
    for st_ in (
        M.ap_statistic(m, dets, gt, score_bins=50),
        M.classwise_statistic(dets.probs, m.target_column(0.5, [1, 2, 3]), group=m.image_index),
    ):
        batch = replicates(st_, w)
        single = [replicates(st_, w[b : b + 1])[0] for b in range(4)]
        np.testing.assert_allclose(batch, single, rtol=1e-6)
        assert len(set(np.round(batch, 6))) > 1  # the replicates differ from one another


def test_average_precision_breaks_score_ties_as_pycocotools():
    dets, gt = synthetic(40, 25, seed=13)
    dets = dataclasses.replace(dets, score=np.round(dets.score, 1))  # many tied scores
    m = match(dets, gt, M.COCO_IOU_THRESHOLDS, "greedy")
    kw = {"ignored": m.ignored, "image_index": m.image_index, "rank": m.rank}
    for order in (None, m.order):
        table = M.average_precision(dets.score, m.tp, dets.category_id, m.n_gt, order=order, **kw)
        assert abs(np.nanmean(table) - M.coco_eval(dets, gt)["stats"]["AP"]) < 1e-12


# ------------------------------------------------------------- the audit's shared work


@pytest.mark.parametrize(
    "cfg",
    [
        {"bin_strategy": "width", "norm": "l1"},
        {"bin_strategy": "mass", "norm": "l2", "match_mode": "hungarian", "laece_tau": 0.5},
    ],
)
def test_shared_tables_equal_separate_calls(cfg):
    """compute_metrics reads ECE, MCE and the per-category numbers off shared tables and
    reuses a caller's matches; the numbers are those of separate calls."""
    dets, gt = synthetic(40, 20, seed=17)
    cfg = {**cfg, "n_boot": 0, "ap_backend": "trustmap"}
    mcfg = M.load_config(cfg)
    mm = M.audit_matches(dets, gt, mcfg)
    out = M.compute_metrics(dets, gt, cfg)
    again = M.compute_metrics(dets, gt, cfg, validate=False, matches=mm)
    assert again["metrics"] == out["metrics"] and again["per_category"] == out["per_category"]
    m = match(dets, gt, [mcfg.iou_threshold, mcfg.laece_tau], mcfg.match_mode)
    ti, tt = m.index(mcfg.iou_threshold), m.index(mcfg.laece_tau)
    v, vt = ~m.ignored[ti], ~m.ignored[tt]
    kw = {"bins": 10, "strategy": mcfg.bin_strategy, "norm": mcfg.norm}
    mets = out["metrics"]
    assert mets["ece"]["value"] == pytest.approx(M.ece(dets.score[v], m.tp[ti, v], **kw), abs=1e-12)
    assert mets["mce"]["value"] == pytest.approx(
        M.mce(dets.score[v], m.tp[ti, v], bins=10, strategy=mcfg.bin_strategy), abs=1e-12
    )
    for c, pc in out["per_category"].items():
        sel, selt = v & (dets.category_id == c), vt & (dets.category_id == c)
        assert pc["ece"] == pytest.approx(M.ece(dets.score[sel], m.tp[ti, sel], **kw), abs=1e-12)
        assert pc["laece"] == pytest.approx(
            M.calibration_error(dets.score[selt], m.iou[tt, selt], bins=25), abs=1e-12
        )
        assert pc["n_tp"] == int(m.tp[ti, sel].sum())
        assert pc["n_detections"] == int((dets.category_id == c).sum())


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 300), st.booleans())
def test_block_order_is_the_stable_lexsort(seed, n, ties):
    from calibration.matching import block_order, desc_rank

    rng = np.random.default_rng(seed)
    key = rng.integers(-1, 7, n)
    score = np.round(rng.random(n), 1) if ties else rng.random(n)
    np.testing.assert_array_equal(block_order(key, score), np.lexsort((-score, key)))
    tb = rng.permutation(n)
    np.testing.assert_array_equal(block_order(key, score, tb), np.lexsort((tb, -score, key)))
    r = desc_rank(score)
    assert (np.diff(r[np.argsort(-score, kind="stable")]) >= 0).all()
    assert (r == 0).sum() == (score == score.max()).sum()


def test_candidate_windows_change_nothing(monkeypatch):
    """Pairs restricted to ground truth whose x-extent can overlap give the same matches
    as every pair of the block, IoU ties between duplicated boxes included."""
    import calibration.matching as matching

    dets, gt = synthetic(30, 25, seed=23)
    an = gt.annotations
    k = len(an) // 3
    an.bbox[:k] = an.bbox[k : 2 * k]  # duplicates: equal IoUs with two objects
    an.image_id[:k], an.category_id[:k] = an.image_id[k : 2 * k], an.category_id[k : 2 * k]
    orig = matching._candidate_windows
    pairs = {}

    def counted(key, window):
        def run(*a):
            g_order, lo, hi = orig(*a[:-1], window)
            pairs[key] = int((hi - lo).sum())
            return g_order, lo, hi

        return run

    monkeypatch.setattr(matching, "WINDOW_MIN_PAIRS", 0)  # windows even for small blocks
    for mode in ("greedy", "any"):
        for aware in (True, False):
            res = {}
            for window in (True, False):
                monkeypatch.setattr(matching, "_candidate_windows", counted(window, window))
                res[window] = match(dets, gt, [0.0, 0.3, 0.7], mode, class_aware=aware)
            assert pairs[True] < pairs[False]  # the windows did prune
            for f in ("tp", "ignored", "iou", "gt_index", "max_iou", "rank", "order"):
                np.testing.assert_array_equal(getattr(res[True], f), getattr(res[False], f))
            assert res[True].tp.any() and res[True].ignored.any()


def test_ap_backend_auto_uses_pycocotools_on_small_sets_only(monkeypatch):
    dets, gt = synthetic(20, 15, seed=29)
    small = M.compute_metrics(dets, gt, {"n_boot": 0})
    assert small["ap_backend"] == "pycocotools" and small["coco"] is not None
    monkeypatch.setattr("calibration.metrics.compute.AP_AUTO_LIMIT", len(dets) - 1)
    large = M.compute_metrics(dets, gt, {"n_boot": 0})
    assert large["ap_backend"] == "trustmap" and large["coco"] is None
    for k in ("map", "ap50"):
        assert large["metrics"][k]["value"] == pytest.approx(
            small["metrics"][k]["value"], abs=1e-12
        )
