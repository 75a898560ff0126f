"""Average precision: COCO 101-point AP from match flags, its binned bootstrap form, pycocotools."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from calibration.bootstrap import Statistic
from calibration.detections import Detections, GroundTruth
from calibration.matching import Matches, block_order, index_in
from calibration.metrics.binning import _Sums, bin_edges, bin_index
from calibration.metrics.config import AP_AUTO_LIMIT  # noqa: F401  (re-exported)

COCO_IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)

# --------------------------------------------------------------------- average precision


def average_precision(
    score: np.ndarray,
    tp: np.ndarray,
    category: np.ndarray,
    n_gt: Mapping[int, int],
    *,
    ignored: np.ndarray | None = None,
    image_index: np.ndarray | None = None,
    rank: np.ndarray | None = None,
    max_dets: int | None = 100,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """COCO 101-point interpolated AP, ``(T, C)`` for ``tp`` of shape ``(T, N)`` (or ``(C,)`` for ``(N,)``).

    Columns follow ``sorted(n_gt)``. Follows pycocotools' ``accumulate`` on greedy match
    flags: ignored detections and those past ``max_dets`` per (image, class) drop out;
    detections are sorted by descending score (ties by image, then in-image rank, so
    tied scores break as in pycocotools); ``precision = TP / (TP + FP)``,
    ``recall = TP / n_gt``; precision is made monotone from the right and read at the
    first point with recall >= r for r in 0, 0.01, ..., 1 (0 past the curve's end).
    Classes without ground truth get NaN (pycocotools' -1) and drop out of means.
    ``order`` (``Matches.order``: rows by image, class, descending score) saves a sort.
    """
    tp2 = np.atleast_2d(np.asarray(tp, bool))
    ig2 = np.zeros_like(tp2) if ignored is None else np.atleast_2d(np.asarray(ignored, bool))
    table = ap_table(
        score,
        category,
        n_gt,
        [np.flatnonzero(t & ~i) for t, i in zip(tp2, ig2, strict=True)],
        [np.flatnonzero(i) for i in ig2],
        image_index=image_index,
        rank=rank,
        max_dets=max_dets,
        order=order,
    )
    return table[0] if np.ndim(tp) == 1 else table


def ap_table(
    score: np.ndarray,
    category: np.ndarray,
    n_gt: Mapping[int, int],
    tp_rows: Sequence[np.ndarray],
    ignored_rows: Sequence[np.ndarray],
    *,
    image_index: np.ndarray | None = None,
    rank: np.ndarray | None = None,
    max_dets: int | None = 100,
    order: np.ndarray | None = None,
    score_rank: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`average_precision` from the rows that are TPs (and ignored) at each threshold.

    One sort puts the kept detections in pycocotools' order (class, descending score,
    image, in-image rank). The PR curve then needs only its TP points: recall rises
    only at a TP, so the first point with recall >= r (r > 0) is a TP; precision falls
    at an FP and stays at an ignored detection, so its right-to-left maximum over all
    points equals that over the TP points (and for r = 0 the maximum over all of them).
    A TP's (TP, FP) counts follow from its position, its rank among the TPs and the
    ignored detections before it, so each threshold costs a sort of its TPs, not a pass
    over every detection; the numbers are the same floating-point operations as
    pycocotools' on the same counts. ``score_rank`` (``Matches.score_rank``) saves the
    ranking sort.
    """
    score = np.asarray(score, np.float64)
    n = len(score)
    cats = np.array(sorted(n_gt), dtype=np.int64)
    nc = len(cats)
    cat_row = index_in(np.asarray(category, np.int64), cats)
    keep = cat_row >= 0
    if rank is not None and max_dets is not None:
        keep &= np.asarray(rank) < max_dets
    # ties: by image, then in-image rank = position in the matcher's (image, class, score) order
    if order is None:
        img = np.zeros(n, np.int64) if image_index is None else np.asarray(image_index, np.int64)
        rk = np.zeros(n, np.int64) if rank is None else np.asarray(rank, np.int64)
        order = np.lexsort((rk, img))
    tiebreak = np.empty(n, np.int64)
    tiebreak[np.asarray(order)] = np.arange(n)
    sel = np.flatnonzero(keep)
    rk_s = None if score_rank is None else np.asarray(score_rank)[sel]
    ranked = sel[block_order(cat_row[sel], score[sel], tiebreak[sel], rank=rk_s)]
    pos = np.full(n, -1, np.int64)
    pos[ranked] = np.arange(len(ranked))
    ends = np.cumsum(np.bincount(cat_row[sel], minlength=nc))
    starts = ends - np.bincount(cat_row[sel], minlength=nc)
    ngt = np.array([n_gt[int(c)] for c in cats], dtype=np.float64)
    out = np.zeros((len(tp_rows), nc))
    for t, (tr, ir) in enumerate(zip(tp_rows, ignored_rows, strict=True)):
        p = np.sort(pos[tr][keep[tr]])
        q = np.sort(pos[ir][keep[ir]])
        cls = np.searchsorted(ends, p, "right")  # class row of each TP
        first = np.searchsorted(cls, np.arange(nc), "left")  # first TP of each class
        ctp = (np.arange(len(p)) - first[cls] + 1).astype(np.float64)
        before_ig = np.searchsorted(q, p) - np.searchsorted(q, starts[cls])
        cfp = (p - starts[cls] + 1 - before_ig).astype(np.float64) - ctp
        rc = ctp / np.maximum(ngt[cls], 1.0)
        pr = ctp / (ctp + cfp + np.spacing(1))
        last = np.r_[first[1:], len(p)]
        for c in range(nc):
            seg = slice(first[c], last[c])
            if first[c] == last[c]:
                continue
            env = np.maximum.accumulate(pr[seg][::-1])[::-1]
            at = np.searchsorted(rc[seg], COCO_RECALL_POINTS, "left")
            ok = at < len(env)
            out[t, c] = np.where(ok, env[np.minimum(at, len(env) - 1)], 0.0).mean()
    out[:, ngt == 0] = np.nan
    return out


def ap_statistic(
    matches: Matches,
    dets: Detections,
    gt: GroundTruth,
    thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    max_dets: int | None = 100,
    score_bins: int = 100,
) -> Statistic:
    """Mean AP over ``thresholds`` and classes, with scores binned, for the bootstrap.

    A bootstrap replicate cannot re-sort a million scores a thousand times; instead each
    class's scores are cut at ``score_bins`` quantiles (from the full sample) and the PR
    curve is rebuilt from per-bin counts (see :func:`_binned_map`). That reads a little
    low (about 1e-3 at 1000 bins); :func:`compute_metrics` moves the interval by the
    full-sample gap to the exact value. Cells: ``(T+1, C, bins, 2)``, holding (TP,
    ignored) per threshold and (count, n_gt) in the last slot, so a detection costs
    one entry plus one per threshold where it is a TP, not one per threshold.
    """
    cats = gt.category_ids
    nc, nt, nb = len(cats), len(thresholds), score_bins
    tix = [matches.index(t) for t in thresholds]
    cat_row = index_in(dets.category_id, cats)
    base = (cat_row >= 0) & (matches.image_index >= 0)
    if max_dets is not None:
        base &= matches.rank < max_dets
    sel = np.flatnonzero(base)
    # score bins per class, highest scores in bin 0 so cumulative sums run best-first
    cb = np.zeros(len(dets), np.int64)
    for c in range(nc):
        sc = sel[cat_row[sel] == c]
        if sc.size:
            neg = -dets.score[sc]
            b = bin_index(neg, bin_edges(neg, nb, "mass", (float(neg.min()), float(neg.max()))))
            cb[sc] = c * nb + b
    shape = (nt + 1, nc, nb)
    ng = max(len(gt.images), 1)
    img = matches.image_index
    sums = _Sums(ng, shape, 2, len(sel))
    sums.add(img[sel], nt * nc * nb + cb[sel], [None, np.zeros(len(sel))])
    for k, t in enumerate(tix):
        tp_rows, ig_rows = matches.matched(t)
        tp_rows, ig_rows = tp_rows[base[tp_rows]], ig_rows[base[ig_rows]]
        rows = np.concatenate([tp_rows, ig_rows])
        is_tp = np.r_[np.ones(len(tp_rows)), np.zeros(len(ig_rows))]
        sums.add(img[rows], k * nc * nb + cb[rows], [is_tp, 1.0 - is_tp])
    an = gt.annotations
    obj = ~an.is_region
    g_row = index_in(an.category_id[obj], cats)
    g_img = gt.images.index_of(an.image_id[obj])
    ok = (g_row >= 0) & (g_img >= 0)
    sums.add(g_img[ok], nt * nc * nb + g_row[ok] * nb, [np.zeros(ok.sum()), None])
    return sums.statistic(_binned_map)


def _binned_map(tot: np.ndarray) -> np.ndarray:
    """mAP from ``tot[..., T+1, C, bins, 2]`` (see :func:`ap_statistic`), bins best score first.

    The PR curve is known at bin ends; inside a bin, TPs and FPs are taken as evenly
    interleaved (a straight line in (TP, FP) space, along which precision is monotone).
    So COCO's interpolated precision at recall r is ``max(p_line(r), env(bin end))``,
    where ``env`` is the right-to-left running max over bin ends. Reading only bin ends
    would bias AP low by ~1.7 / bins; the line cuts that several-fold.
    """
    t_n = tot.shape[-4] - 1
    count = tot[..., t_n : t_n + 1, :, :, 0]
    ngt_c = tot[..., t_n, :, :, 1].sum(-1)  # (..., C)
    tpb = tot[..., :t_n, :, :, 0]
    fpb = count - tpb - tot[..., :t_n, :, :, 1]
    lead, nb = tpb.shape[:-1], tpb.shape[-1]
    rows = int(np.prod(lead))
    tpb, fpb = tpb.reshape(rows, nb), fpb.reshape(rows, nb)
    ngt = np.broadcast_to(ngt_c[..., None, :], lead).reshape(rows)
    ctp, cfp = np.cumsum(tpb, axis=1), np.cumsum(fpb, axis=1)
    rc = ctp / np.maximum(ngt, 1.0)[:, None]
    env = np.maximum.accumulate((ctp / (ctp + cfp + np.spacing(1)))[:, ::-1], axis=1)[:, ::-1]
    r = COCO_RECALL_POINTS
    nr = len(r)
    # first bin with recall >= r_j = number of bins with recall < r_j (recall rises along a
    # row): count, per row, the bins by how many recall points they reach
    # recall points are j / 100, so a bin reaches floor(100 rc) + 1 of them (a hair of slack
    # absorbs rounding in rc; the binned AP is an approximation for the bootstrap anyway)
    reach = np.minimum(np.floor(rc * (nr - 1) + 1e-9).astype(np.int64) + 1, nr)
    hist = np.bincount(
        (np.arange(rows)[:, None] * (nr + 1) + reach).ravel(), minlength=rows * (nr + 1)
    )
    pos = np.cumsum(hist.reshape(rows, nr + 1), axis=1)[:, :nr]
    flat = (np.arange(rows)[:, None] * nb + np.minimum(pos, nb - 1)).ravel()
    take = lambda a: a.ravel()[flat].reshape(rows, nr)  # noqa: E731
    t_b, f_b = take(tpb), take(fpb)
    prev_tp, prev_fp = take(ctp) - t_b, take(cfp) - f_b
    x = r[None, :] * ngt[:, None]
    fp_x = prev_fp + (x - prev_tp) * f_b / np.where(t_b > 0, t_b, 1.0)
    p_line = np.where(x > prev_tp, x / (x + fp_x + np.spacing(1)), 0.0)
    q = np.where(pos < nb, np.maximum(p_line, take(env)), 0.0)
    ap = q.mean(axis=1).reshape(lead)
    has = ngt.reshape(lead) > 0
    k = has.sum(axis=(-1, -2))
    return np.where(k > 0, np.where(has, ap, 0.0).sum(axis=(-1, -2)) / np.maximum(k, 1), np.nan)


COCO_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR",
    "ARs",
    "ARm",
    "ARl",
)


def coco_eval(dets: Detections, gt: GroundTruth, max_dets: int = 100) -> dict[str, Any]:
    """AP/AR through pycocotools' ``COCOeval`` on in-memory COCO objects (prints suppressed).

    Returns the 12 numbers of ``COCOeval.summarize()`` (``AR`` is AR@max_dets; -1 where
    undefined, as pycocotools) and per-category AP (IoU .50:.95, all areas,
    ``max_dets``; NaN for categories without ground truth).
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = gt.to_coco()
    cats = [int(c) for c in gt.category_ids]
    if len(dets) == 0:
        return {
            "stats": dict.fromkeys(COCO_STAT_NAMES, 0.0),
            "per_category_ap": dict.fromkeys(cats, float("nan")),
        }
    arr = np.column_stack([dets.image_id, dets.bbox, dets.score, dets.category_id]).astype(
        np.float64
    )
    max_list = sorted({1, 10, int(max_dets)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(arr)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = max_list
        ev.evaluate()
        ev.accumulate()
    # summarize() assumes exactly three distinct maxDets; read its numbers off the arrays
    prec, rec = ev.eval["precision"], ev.eval["recall"]  # (T, R, K, A, M), (T, K, A, M)
    thr = ev.params.iouThrs
    md = max_list.index(int(max_dets))

    def mean(v: np.ndarray) -> float:
        return float(v[v > -1].mean()) if (v > -1).any() else -1.0

    t50, t75 = int(np.argmin(np.abs(thr - 0.5))), int(np.argmin(np.abs(thr - 0.75)))
    vals = [
        mean(prec[..., 0, md]), mean(prec[t50, ..., 0, md]), mean(prec[t75, ..., 0, md]),
        mean(prec[..., 1, md]), mean(prec[..., 2, md]), mean(prec[..., 3, md]),
        mean(rec[..., 0, max_list.index(1)]), mean(rec[..., 0, max_list.index(10)]), mean(rec[..., 0, md]),
        mean(rec[..., 1, md]), mean(rec[..., 2, md]), mean(rec[..., 3, md]),
    ]  # fmt: skip
    per_cat = {}
    for k, c in enumerate(ev.params.catIds):
        v = prec[:, :, k, 0, md]
        per_cat[int(c)] = float(v[v > -1].mean()) if (v > -1).any() else float("nan")
    return {"stats": dict(zip(COCO_STAT_NAMES, vals, strict=True)), "per_category_ap": per_cat}
