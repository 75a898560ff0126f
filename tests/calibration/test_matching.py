"""calibration.matching: hand-checked cases, pycocotools as the reference, invariants."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools.cocoeval import COCOeval

import calibration.matching as matching
from calibration.detections import AnnotationTable, Detections, GroundTruth, ImageTable
from calibration.matching import iou_matrix, match
from tiles.errors import TrustmapError


def _gt(
    boxes, cats, image_ids=None, crowd=None, ignore=None, n_images=1, size=200.0
) -> GroundTruth:
    m = len(boxes)
    b = np.asarray(boxes, float).reshape(m, 4)
    return GroundTruth(
        ImageTable(
            np.arange(1, n_images + 1),
            np.array([f"{i}.png" for i in range(n_images)]),
            np.full(n_images, size),
            np.full(n_images, size),
        ),
        AnnotationTable(
            np.arange(1, m + 1),
            np.asarray(image_ids if image_ids is not None else [1] * m),
            b,
            np.asarray(cats),
            np.asarray(crowd if crowd is not None else [False] * m, bool),
            np.asarray(ignore if ignore is not None else [False] * m, bool),
            b[:, 2] * b[:, 3],
        ),
        {1: "a", 2: "b"},
    )


def _dets(boxes, scores, cats, image_ids=None) -> Detections:
    n = len(boxes)
    return Detections(image_ids if image_ids is not None else [1] * n, boxes, cats, scores)


# g1 = [0,0,10,10], g2 = [8,0,10,10]; d1 = [3,0,10,10] (IoU .538 with g1, .333 with g2),
# d2 = [0,0,10,10] (IoU 1 with g1, .111 with g2), d1 scores higher.
G2 = _gt([[0, 0, 10, 10], [8, 0, 10, 10]], [1, 1])
D2 = _dets([[3, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])


def test_iou_matrix_hand_values():
    np.testing.assert_allclose(
        iou_matrix(D2.bbox, G2.annotations.bbox), [[70 / 130, 50 / 150], [1.0, 20 / 180]]
    )


def test_greedy_hungarian_and_any_differ_as_expected():
    g = match(D2, G2, [0.3, 0.5], "greedy")
    h = match(D2, G2, [0.3, 0.5], "hungarian")
    a = match(D2, G2, [0.3, 0.5], "any")
    # greedy: d1 (higher score) takes g1; d2 is left with g2 at IoU .111 -> FP
    np.testing.assert_array_equal(g.tp, [[True, False], [True, False]])
    np.testing.assert_array_equal(g.gt_index, [[0, -1], [0, -1]])
    np.testing.assert_allclose(g.iou[0], [70 / 130, 0.0])
    # hungarian at .3: d1->g2 (.333) + d2->g1 (1.0) beats d1->g1 alone; at .5 only d2->g1
    np.testing.assert_array_equal(h.tp, [[True, True], [False, True]])
    np.testing.assert_array_equal(h.gt_index, [[1, 0], [-1, 0]])
    # any: both see g1
    np.testing.assert_array_equal(a.tp, [[True, True], [True, True]])
    np.testing.assert_array_equal(a.gt_index, [[0, 0], [0, 0]])
    np.testing.assert_allclose(a.max_iou, [70 / 130, 1.0])
    np.testing.assert_array_equal(g.rank, [0, 1])
    assert g.n_gt == {1: 2, 2: 0}


def test_crowd_and_ignore_regions_absorb_detections():
    gt = _gt(
        [[50, 50, 40, 40], [0, 0, 20, 20], [120, 120, 30, 30]],
        [1, 1, 1],
        crowd=[True, False, False],
        ignore=[False, False, True],
    )
    dets = _dets(
        [
            [55, 55, 10, 10],
            [85, 85, 10, 10],
            [0, 0, 20, 20],
            [1, 1, 20, 20],
            [125, 125, 5, 5],
            [160, 160, 10, 10],
        ],
        [0.7, 0.6, 0.95, 0.5, 0.4, 0.3],
        [1, 1, 1, 1, 1, 1],
    )
    m = match(dets, gt, [0.2, 0.5], "greedy")
    # inside the crowd (IoA 1): ignored; a quarter inside: ignored at .2, FP at .5
    # exact hit: TP; a duplicate of it: its object is taken -> FP; inside the ignore box: ignored
    np.testing.assert_array_equal(m.tp[1], [False, False, True, False, False, False])
    np.testing.assert_array_equal(m.ignored[1], [True, False, False, False, True, False])
    np.testing.assert_array_equal(m.ignored[0], [True, True, False, False, True, False])
    np.testing.assert_array_equal(m.gt_index[1], [0, -1, 1, -1, 2, -1])
    assert m.n_gt[1] == 1  # regions are not objects
    # a region absorbs any number of detections, in every mode
    for mode in ("hungarian", "any"):
        mm = match(dets, gt, [0.2, 0.5], mode)
        np.testing.assert_array_equal(mm.ignored, m.ignored)


def test_object_is_preferred_to_a_region_and_regions_are_reused():
    gt = _gt([[0, 0, 100, 100], [10, 10, 20, 20]], [1, 1], crowd=[True, False])
    dets = _dets([[10, 10, 20, 20], [11, 11, 20, 20], [12, 12, 20, 20]], [0.9, 0.8, 0.7], [1, 1, 1])
    m = match(dets, gt, 0.5, "greedy")
    np.testing.assert_array_equal(m.tp[0], [True, False, False])
    np.testing.assert_array_equal(m.ignored[0], [False, True, True])


def test_threshold_zero_means_any_overlap_and_classes_matter():
    gt = _gt([[0, 0, 10, 10]], [1])
    dets = _dets([[9, 9, 10, 10], [10, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8, 0.7], [1, 1, 2])
    m = match(dets, gt, 0.0, "any")
    np.testing.assert_array_equal(m.tp[0], [True, False, False])  # touching edges is no overlap
    np.testing.assert_allclose(m.iou[0], [1 / 199, 0, 0])
    agn = match(dets, gt, 0.5, "greedy", class_aware=False)
    np.testing.assert_array_equal(agn.tp[0], [False, False, True])
    np.testing.assert_array_equal(agn.gt_category[0], [-1, -1, 1])
    # K+1 targets: the object's column, else background (K)
    np.testing.assert_array_equal(agn.target_column(0.5, [1, 2]), [2, 2, 0])
    with pytest.raises(TrustmapError, match="not run at IoU threshold 0.75"):
        agn.index(0.75)


def test_bad_arguments():
    with pytest.raises(TrustmapError, match="matching mode"):
        match(D2, G2, 0.5, "best")
    with pytest.raises(TrustmapError, match=r"lie in \[0, 1\]"):
        match(D2, G2, [0.5, 1.5])


def test_empty_inputs():
    m = match(Detections.empty(), G2, [0.5, 0.75])
    assert m.tp.shape == (2, 0)
    none = _gt(np.zeros((0, 4)), [])
    m = match(D2, none, 0.5)
    assert not m.tp.any() and (m.gt_index == -1).all()


# ------------------------------------------------------------------ pycocotools as reference


def synthetic(
    n_images: int, per_image: int, seed: int, ties: bool = False
) -> tuple[Detections, GroundTruth]:
    """Jittered copies of ground-truth boxes plus random false positives; a few crowds."""
    rng = np.random.default_rng(seed)
    ngt = rng.integers(1, 8, n_images)
    m = int(ngt.sum())
    w, h = rng.uniform(8, 60, m), rng.uniform(8, 60, m)
    gb = np.column_stack([rng.uniform(0, 200 - w), rng.uniform(0, 200 - h), w, h])
    gimg = np.repeat(np.arange(n_images), ngt)
    gt = _gt(
        gb, rng.integers(1, 3, m), gimg + 1, rng.random(m) < 0.05, rng.random(m) < 0.03, n_images
    )
    n = n_images * per_image
    img = np.repeat(np.arange(n_images), per_image)
    src = np.r_[0, np.cumsum(ngt)[:-1]][img] + rng.integers(0, 1 << 20, n) % ngt[img]
    jit = rng.normal(0, 0.2, (n, 4))
    b = gb[src] + jit * np.c_[gb[src, 2:], gb[src, 2:]]
    rnd = rng.random(n) < 0.3
    b[rnd] = np.column_stack(
        [rng.uniform(0, 150, (rnd.sum(), 2)), rng.uniform(5, 50, (rnd.sum(), 2))]
    )
    b[:, 2:] = np.maximum(b[:, 2:], 1.0)
    b[:, :2] = np.clip(b[:, :2], 0, 190)
    b[:, 2:] = np.minimum(b[:, 2:], 200 - b[:, :2])
    cat = np.where(rng.random(n) < 0.8, gt.annotations.category_id[src], rng.integers(1, 3, n))
    score = rng.random(n)
    if ties:
        score = np.round(score, 1)
    return Detections(img + 1, b, cat, score), gt


def coco_flags(
    dets: Detections, gt: GroundTruth, thresholds
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, ignored and matched annotation id per detection, from COCOeval.evaluate()."""
    coco = gt.to_coco()
    arr = np.column_stack([dets.image_id, dets.bbox, dets.score, dets.category_id])
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(arr), "bbox")
        ev.params.iouThrs = np.asarray(thresholds)
        ev.params.maxDets = [1, 10, 10**6]
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]
        ev.evaluate()
    t = len(thresholds)
    tp, ig, mid = (
        np.zeros((t, len(dets)), bool),
        np.zeros((t, len(dets)), bool),
        np.zeros((t, len(dets)), int),
    )
    for e in ev.evalImgs:
        if e is None or not e["dtIds"]:
            continue
        ids = np.array(e["dtIds"]) - 1  # loadRes numbers results 1..N in input order
        tp[:, ids] = (e["dtMatches"] > 0) & ~e["dtIgnore"].astype(bool)
        ig[:, ids] = e["dtIgnore"].astype(bool)
        mid[:, ids] = e["dtMatches"]
    return tp, ig, mid


@pytest.mark.parametrize("ties", [False, True])
def test_greedy_equals_pycocotools(ties):
    dets, gt = synthetic(40, 25, seed=3, ties=ties)
    thr = [0.1, 0.5, 0.75, 0.9]
    m = match(dets, gt, thr, "greedy")
    tp, ig, mid = coco_flags(dets, gt, thr)
    np.testing.assert_array_equal(m.tp, tp)
    np.testing.assert_array_equal(m.ignored, ig)
    ours_id = np.where(m.gt_index >= 0, gt.annotations.id[np.maximum(m.gt_index, 0)], 0)
    np.testing.assert_array_equal(ours_id, mid)


def test_chunked_pairs_give_the_same_result(monkeypatch):
    dets, gt = synthetic(30, 20, seed=5)
    for mode in ("greedy", "hungarian", "any"):
        whole = match(dets, gt, [0.3, 0.6], mode)
        monkeypatch.setattr(matching, "PAIR_CHUNK", 37)
        monkeypatch.setattr(matching, "CACHE_PAIRS", 5)
        parts = match(dets, gt, [0.3, 0.6], mode)
        monkeypatch.undo()
        for f in ("tp", "ignored", "iou", "gt_index", "max_iou", "rank"):
            np.testing.assert_array_equal(getattr(parts, f), getattr(whole, f))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 6), st.integers(1, 12), st.floats(0.05, 0.9))
def test_invariants(seed, n_images, per_image, thr):
    dets, gt = synthetic(n_images, per_image, seed)
    an = gt.annotations
    res = {mode: match(dets, gt, thr, mode) for mode in ("greedy", "hungarian", "any")}
    for mode, m in res.items():
        tp = m.tp[0]
        assert not (tp & m.ignored[0]).any()
        assert (m.iou[0][tp] >= thr).all() and (m.iou[0][~tp] == 0).all()
        assert (an.category_id[m.gt_index[0][tp]] == dets.category_id[tp]).all()
        if mode != "any":  # one-to-one: an object is matched at most once
            used = m.gt_index[0][tp]
            assert len(np.unique(used)) == len(used)
            assert not an.is_region[used].any()
    g, h, a = res["greedy"].tp[0], res["hungarian"].tp[0], res["any"].tp[0]
    assert not (g & ~a).any() and not (h & ~a).any()  # any TP rule is the loosest
    # hungarian maximises the summed IoU over one-to-one assignments; greedy's is one of them
    assert res["hungarian"].iou[0].sum() >= res["greedy"].iou[0].sum() - 1e-9
    # greedy depends on the order of scores, not on the order of rows (scores are distinct)
    perm = np.random.default_rng(seed).permutation(len(dets))
    mp = match(dets.subset(perm), gt, thr, "greedy")
    np.testing.assert_array_equal(mp.tp[0], g[perm])
    np.testing.assert_array_equal(mp.gt_index[0], res["greedy"].gt_index[0][perm])
