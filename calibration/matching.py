"""Which detections hit which ground-truth boxes: the step every metric stands on.

Three rules, all class-aware by default and all with COCO's crowd semantics:

* ``greedy``: COCO's rule. Within each (image, class), detections in descending score
  order (ties by input order) each take the unmatched ground truth with the highest IoU
  >= the threshold. Same TP flags as pycocotools' ``COCOeval.evaluateImg``.
* ``hungarian``: one-to-one assignment maximising the summed IoU over pairs >= the
  threshold (``scipy.optimize.linear_sum_assignment``); scores play no part, as in DETR.
* ``any``: non-exclusive, as in netcal's examples: a detection is a TP when its best IoU
  with any ground truth of its class is >= the threshold, however many others claim it.

Crowd and ``ignore`` annotations are regions, not objects: a detection that matches no
object but covers such a region (intersection over *detection* area >= the threshold)
is *ignored*, neither TP nor FP, and a region can absorb any number of detections.
A threshold of 0 means "any overlap": a pair needs IoU > 0 as well as IoU >= threshold.

The work is vectorised: detections are sorted once by (image, class, -score) (one
packed-integer sort, see :func:`block_order`), every same-block (detection, ground
truth) pair that can overlap is laid out flat and scored in cache-sized pieces (with
large blocks, only ground truth whose x-extent can reach the detection; see
``_candidate_windows``), and pairs below the lowest threshold are dropped before any
assignment (most pairs do not overlap). The greedy rule is sequential only *within* a
block, so it runs in rounds (round r settles the r-th detection with a candidate of
every block at once); the number of rounds is the most candidates in a block, not the
number of detections. The result keeps the matches sparse (:class:`Matches`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from calibration.detections import Detections, GroundTruth
from tiles.errors import TrustmapError

MatchMode = Literal["greedy", "hungarian", "any"]
MODES: tuple[str, ...] = ("greedy", "hungarian", "any")
#: Pairs materialised at once; blocks are processed in chunks beyond this (memory bound).
PAIR_CHUNK = 4_000_000
#: Pairs scored at once: small enough for the temporaries to stay in cache.
CACHE_PAIRS = 1 << 17
#: Candidate windows (see ``_candidate_windows``) pay for their searches once detections
#: average more than this many ground-truth boxes in their block (measured on 1M
#: detections: 3.2 per detection class-aware, full blocks 8 % faster; 9 class-agnostic,
#: windows 20 % faster).
WINDOW_MIN_PAIRS = 4


@dataclass(eq=False)
class Matches:
    """Per-detection outcome at each IoU threshold; rows follow the detections' order.

    The matches are kept sparse (one entry per matched (threshold, detection)); the dense
    ``(T, N)`` arrays ``tp``, ``ignored``, ``iou`` and ``gt_index`` are built on first
    use, and :meth:`row` gives one threshold's without building the others.
    """

    iou_thresholds: np.ndarray  # (T,)
    max_iou: np.ndarray  # (N,) best IoU with any object of the block, threshold-free
    rank: np.ndarray  # (N,) int64: position in its block (image, and class if class-aware) by score
    image_index: np.ndarray  # (N,) int64: row in gt.images (-1 if unknown)
    n_gt: dict[int, int]  # objects (not regions) per category id
    mode: str
    class_aware: bool
    annotation_category: np.ndarray  # (M,) category of each gt.annotations row
    order: np.ndarray  # (N,) detection rows sorted by (image, [class,] score desc, input row)
    score_rank: np.ndarray | None  # (N,) dense rank of the scores, 0 the highest (desc_rank)
    # the matches, sorted by flat index t * N + detection row
    flat: np.ndarray = field(repr=False)  # (P,) int64
    region: np.ndarray = field(repr=False)  # (P,) bool: matched a crowd/ignore region
    match_iou: np.ndarray = field(repr=False)  # (P,) IoU (IoA for regions)
    match_gt: np.ndarray = field(repr=False)  # (P,) int64 row in gt.annotations
    _dense: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.rank)

    def _slice(self, t: int) -> slice:
        n = len(self)
        a, b = np.searchsorted(self.flat, [t * n, (t + 1) * n])
        return slice(int(a), int(b))

    def matched(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Ascending rows that are TPs, and rows that are ignored, at threshold row ``t``."""
        s = self._slice(t)
        col, reg = self.flat[s] - t * len(self), self.region[s]
        return col[~reg], col[reg]

    def row(self, t: int) -> MatchRow:
        """Threshold row ``t`` (an index into ``iou_thresholds``), built alone."""
        n = len(self)
        s = self._slice(t)
        col, reg = self.flat[s] - t * n, self.region[s]
        tp, ign, iou = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n)
        gidx = np.full(n, -1, np.int64)
        tp[col], ign[col] = ~reg, reg
        iou[col] = np.where(reg, 0.0, self.match_iou[s])
        gidx[col] = self.match_gt[s]
        return MatchRow(tp, ign, iou, gidx, col[~reg], col[reg])

    def _full(self, name: str) -> np.ndarray:
        if name not in self._dense:
            shape = (len(self.iou_thresholds), len(self))
            f, reg = self.flat, self.region
            if name == "tp":
                a = np.zeros(shape, bool)
                a.ravel()[f[~reg]] = True
            elif name == "ignored":
                a = np.zeros(shape, bool)
                a.ravel()[f[reg]] = True
            elif name == "iou":
                a = np.zeros(shape)
                a.ravel()[f[~reg]] = self.match_iou[~reg]
            else:
                a = np.full(shape, -1, np.int64)
                a.ravel()[f] = self.match_gt
            self._dense[name] = a
        return self._dense[name]

    @property
    def tp(self) -> np.ndarray:
        """(T, N) bool: matched an object of its class."""
        return self._full("tp")

    @property
    def ignored(self) -> np.ndarray:
        """(T, N) bool: matched no object but lies in a crowd/ignore region."""
        return self._full("ignored")

    @property
    def iou(self) -> np.ndarray:
        """(T, N) IoU with the matched object (0 when unmatched)."""
        return self._full("iou")

    @property
    def gt_index(self) -> np.ndarray:
        """(T, N) int64: row in gt.annotations (object or region), -1 when none."""
        return self._full("gt_index")

    @property
    def gt_category(self) -> np.ndarray:
        """(T, N) category of the matched object, -1 when none (computed on demand)."""
        out = np.full(self.gt_index.shape, -1, np.int64)
        out[self.tp] = self.annotation_category[self.gt_index[self.tp]]
        return out

    def index(self, threshold: float) -> int:
        """Row of ``threshold`` in the per-threshold arrays."""
        hit = np.flatnonzero(np.isclose(self.iou_thresholds, threshold, rtol=0, atol=1e-9))
        if not hit.size:
            raise TrustmapError(
                f"matching was not run at IoU threshold {threshold} (ran at {self.iou_thresholds.tolist()})"
            )
        return int(hit[0])

    def target_column(self, threshold: float, category_ids: Sequence[int]) -> np.ndarray:
        """Class index per detection for K+1-way scores: the matched object's column, else K (background).

        ``category_ids`` are the categories of columns 0..K-1 of the probability vectors.
        Ignored detections also get K; callers drop them with ``ignored``.
        """
        r = self.row(self.index(threshold))
        cats = np.asarray(category_ids, dtype=np.int64)
        gcat = np.full(len(self), -1, np.int64)
        gcat[r.tp] = self.annotation_category[r.gt_index[r.tp]]
        order = np.argsort(cats)
        col = index_in(gcat, cats[order])
        return np.where(col >= 0, order[np.maximum(col, 0)] if len(cats) else 0, len(cats)).astype(
            np.int64
        )


class MatchRow(NamedTuple):
    """One threshold's outcome (see :class:`Matches`), with the matched rows listed."""

    tp: np.ndarray  # (N,) bool
    ignored: np.ndarray  # (N,) bool
    iou: np.ndarray  # (N,) float64
    gt_index: np.ndarray  # (N,) int64
    tp_rows: np.ndarray  # ascending rows with tp
    ignored_rows: np.ndarray  # ascending rows with ignored


def pairwise_iou(det_xywh: np.ndarray, gt_xywh: np.ndarray, region: np.ndarray) -> np.ndarray:
    """IoU of row-aligned box pairs; for regions, intersection over the detection's area.

    The region rule is COCO's crowd IoU: a detection wholly inside a crowd scores 1
    however large the crowd.
    """
    dx0, dy0, dw, dh = det_xywh.T
    gx0, gy0, gw, gh = gt_xywh.T
    return _iou_cols(dx0, dy0, dw, dh, gx0, gy0, gw, gh, region)


def _iou_cols(
    dx0: np.ndarray,
    dy0: np.ndarray,
    dw: np.ndarray,
    dh: np.ndarray,
    gx0: np.ndarray,
    gy0: np.ndarray,
    gw: np.ndarray,
    gh: np.ndarray,
    region: np.ndarray,
) -> np.ndarray:
    """Row-aligned IoU from box columns, in place where possible (memory traffic is the cost)."""
    inter = np.minimum(dx0 + dw, gx0 + gw)
    inter -= np.maximum(dx0, gx0)
    np.maximum(inter, 0.0, out=inter)
    ih = np.minimum(dy0 + dh, gy0 + gh)
    ih -= np.maximum(dy0, gy0)
    np.maximum(ih, 0.0, out=ih)
    inter *= ih
    darea = dw * dh
    union = gw * gh
    union += darea
    union -= inter
    np.copyto(union, darea, where=region)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def iou_matrix(a_xywh: np.ndarray, b_xywh: np.ndarray) -> np.ndarray:
    """Dense (len(a), len(b)) IoU matrix, for small sets and tests."""
    ia, ib = np.meshgrid(np.arange(len(a_xywh)), np.arange(len(b_xywh)), indexing="ij")
    out = pairwise_iou(a_xywh[ia.ravel()], b_xywh[ib.ravel()], np.zeros(ia.size, bool))
    return out.reshape(ia.shape)


def match(
    dets: Detections,
    gt: GroundTruth,
    iou_thresholds: float | Sequence[float] = 0.5,
    mode: MatchMode = "greedy",
    class_aware: bool = True,
    score_rank: np.ndarray | None = None,
) -> Matches:
    """Match detections to ground truth at one or more IoU thresholds (see module doc).

    ``score_rank``: ``desc_rank(dets.score)`` (``Matches.score_rank`` of an earlier
    matching of the same detections) saves a sort.
    """
    if mode not in MODES:
        raise TrustmapError(f"matching mode must be one of {MODES}, got {mode!r}")
    thr = np.atleast_1d(np.asarray(iou_thresholds, dtype=np.float64))
    if thr.size == 0 or np.any((thr < 0) | (thr > 1)) or not np.isfinite(thr).all():
        raise TrustmapError(f"IoU thresholds must lie in [0, 1], got {thr.tolist()}")
    n, T = len(dets), len(thr)
    an = gt.annotations
    cats = gt.category_ids
    region = an.is_region
    img = gt.images.index_of(dets.image_id)
    n_gt = {int(c): int(np.sum((an.category_id == c) & ~region)) for c in cats}

    # block keys: (image row, class) for dets and gts; unknown image/class never matches
    n_cat = max(len(cats), 1)
    d_cat = index_in(dets.category_id, cats) if class_aware else np.zeros(n, np.int64)
    g_cat = index_in(an.category_id, cats) if class_aware else np.zeros(len(an), np.int64)
    g_img = gt.images.index_of(an.image_id)
    d_key = np.where((img >= 0) & (d_cat >= 0), img * n_cat + d_cat, -1)
    g_key = np.where((g_img >= 0) & (g_cat >= 0), g_img * n_cat + g_cat, -2)

    # ties keep input order, as COCO's mergesort
    score = np.asarray(dets.score, np.float64)
    if score_rank is None:
        score_rank = desc_rank(score) if np.isfinite(score).all() else None
    order = block_order(d_key, score, rank=score_rank)
    key_s = d_key[order]
    new_block = np.r_[True, key_s[1:] != key_s[:-1]] if n else np.zeros(0, bool)
    block_start = np.flatnonzero(new_block)
    block_s = np.cumsum(new_block) - 1  # block number of each sorted position
    rank_s = np.arange(n) - block_start[block_s]
    dbox = dets.bbox[order]
    dcol = [np.ascontiguousarray(c) for c in dbox.T]

    # a detection's candidates: the ground truth of its block, and without the Hungarian
    # rule (which needs each block's full matrix) only those whose x-extent can overlap it
    window = mode != "hungarian"
    g_order, lo, hi = _candidate_windows(
        key_s[block_start], block_s, dcol[0], dcol[2], g_key, an.bbox, window
    )
    n_pairs = hi - lo

    out = _Out(T, n, order)
    max_iou = np.zeros(n)
    gcol = [np.ascontiguousarray(c) for c in an.bbox.T]

    def pairs(a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every candidate pair of sorted detections a..b-1: det position, gt row, region?, IoU."""
        cnt = n_pairs[a:b]
        det_p = np.repeat(np.arange(a, b), cnt)
        first = np.cumsum(cnt) - cnt
        gt_p = g_order[np.repeat(lo[a:b], cnt) + np.arange(len(det_p)) - np.repeat(first, cnt)]
        reg_p = region[gt_p]
        # det_p is sorted, so repeating is a streaming copy rather than a random gather
        dx0, dy0, dw, dh = (np.repeat(c[a:b], cnt) for c in dcol)
        gx0, gy0, gw, gh = (c[gt_p] for c in gcol)
        ious = _iou_cols(dx0, dy0, dw, dh, gx0, gy0, gw, gh, reg_p)
        if len(det_p):
            seg = _Segments(det_p)
            max_iou[seg.ids] = np.maximum(seg.max(np.where(reg_p, -1.0, ious)), 0.0)
        return det_p, gt_p, reg_p, ious

    lowest = thr.min()
    for a, b in _chunks(block_start, n_pairs, n):
        if mode == "hungarian":  # needs each block's full (detections x objects) matrix
            det_p, gt_p, reg_p, ious = pairs(a, b)
        else:
            # build, score and prune pairs in cache-sized pieces: most pairs overlap too little
            # for any threshold, and only the survivors go on to the assignment
            kept = []
            for a2, b2 in _spans(n_pairs, a, b, CACHE_PAIRS):
                p = pairs(a2, b2)
                keep = (p[3] >= lowest) & (p[3] > 0)
                kept.append([x[keep] for x in p])
            det_p, gt_p, reg_p, ious = (np.concatenate(x) for x in zip(*kept, strict=True))
            if window and len(det_p):
                # windows list ground truth by x; ties between equal IoUs go to the later
                # annotation row (COCO's rule), so restore row order within each detection
                o = np.argsort(det_p * max(len(an), 1) + gt_p)
                det_p, gt_p, reg_p, ious = det_p[o], gt_p[o], reg_p[o], ious[o]
        if len(det_p) == 0:
            continue
        seg = _Segments(det_p)
        if mode == "greedy":
            # one threshold at a time, each on its own candidates: a low threshold (LaECE's
            # "any overlap") has many more candidate pairs than COCO's 0.5..0.95
            for t, th in enumerate(thr):
                c = ious >= th
                if c.all():
                    _greedy(th, t, det_p, gt_p, reg_p, ious, block_s, len(an), out)
                elif c.any():
                    _greedy(th, t, det_p[c], gt_p[c], reg_p[c], ious[c], block_s, len(an), out)
        elif mode == "any":
            t_i, s_i, p_i = _pick(_keys(thr, ious, reg_p), seg.starts, seg.lengths)
            out.store(t_i, seg.ids[s_i], p_i, gt_p, reg_p, ious)
        else:
            _hungarian(thr, ious, seg, key_s, gt_p, reg_p, out)

    flat, reg, val, g = out.finish()
    inv = np.empty(n, np.int64)
    inv[order] = np.arange(n)
    return Matches(
        iou_thresholds=thr,
        max_iou=max_iou[inv],
        rank=rank_s[inv],
        image_index=img,
        n_gt=n_gt,
        mode=mode,
        class_aware=class_aware,
        annotation_category=an.category_id,
        order=order,
        score_rank=score_rank,
        flat=flat,
        region=reg,
        match_iou=val,
        match_gt=g,
    )


def block_order(
    key: np.ndarray,
    score: np.ndarray,
    tiebreak: np.ndarray | None = None,
    rank: np.ndarray | None = None,
) -> np.ndarray:
    """Rows sorted by (key, descending score, tiebreak), as ``np.lexsort((tiebreak, -score, key))``.

    ``tiebreak`` (distinct non-negative integers; default the row number, i.e. a stable
    sort) orders equal scores. Scores become dense descending ranks (one fast unstable
    sort; ties share a rank); (key, rank, tiebreak) then pack into one unique int64, and
    any sort of unique keys gives the one order. Several times faster than the stable
    multi-key lexsort on large inputs; falls back to it when the packed key would not fit.
    ``rank``: any integer ranks in the scores' descending order (ties equal), e.g. the
    dense ranks of a superset, to skip the ranking sort.
    """
    n = len(key)
    if n == 0:
        return np.zeros(0, np.int64)
    key = np.asarray(key, np.int64)
    score = np.asarray(score, np.float64)
    tb = np.arange(n) if tiebreak is None else np.asarray(tiebreak, np.int64)
    k0 = int(key.min())
    if not np.isfinite(score).all() or int(tb.min()) < 0:
        return np.lexsort((tb, -score, key))
    rank = desc_rank(score) if rank is None else np.asarray(rank, np.int64)
    bits_n = max(int(tb.max()).bit_length(), 1)
    bits_r = max(int(rank.max()).bit_length(), 1)
    bits_k = max((int(key.max()) - k0).bit_length(), 1)
    if bits_k + bits_r + bits_n > 62:
        return np.lexsort((tb, -score, key))
    packed = (key - k0) << (bits_r + bits_n)
    packed |= rank << bits_n
    packed |= tb
    return np.argsort(packed)


def desc_rank(score: np.ndarray) -> np.ndarray:
    """Dense rank of each value in descending order: 0 for the largest, ties share a rank."""
    score = np.asarray(score, np.float64)
    if score.size == 0:
        return np.zeros(0, np.int64)
    o = np.argsort(-score)
    s = score[o]
    r = np.empty(len(s), np.int64)
    r[0] = 0
    np.cumsum(s[1:] != s[:-1], out=r[1:])
    out = np.empty(len(s), np.int64)
    out[o] = r
    return out


def _candidate_windows(
    block_key: np.ndarray,
    block_s: np.ndarray,
    dx0: np.ndarray,
    dw: np.ndarray,
    g_key: np.ndarray,
    g_box: np.ndarray,
    window: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground-truth order and, per sorted detection, the [lo, hi) range of its candidates.

    ``block_key``: the key of each detection block, ``block_s``: each sorted detection's
    block. Without ``window``: all ground truth of the detection's block, by annotation row.
    With it (and more than ``WINDOW_MIN_PAIRS`` boxes per detection on average): ground
    truth sorted by (block, x0), and only those with
    ``x0 in [dx0 - w_max, dx0 + dw]`` (``w_max`` the block's widest box), a superset of
    those whose x-extent overlaps the detection's (the others have IoU 0). Found with one
    search over a packed ``block * span + x`` key, widened by a margin for rounding and
    clipped to the block, so the windows are exact supersets.
    """
    m = len(g_key)
    g_order = np.argsort(g_key, kind="stable")
    g_sorted = g_key[g_order]
    blo = np.searchsorted(g_sorted, block_key, "left")[block_s]
    bhi = np.searchsorted(g_sorted, block_key, "right")[block_s]
    gx0, gw = g_box[:, 0], g_box[:, 2]
    if (
        not window
        or (bhi - blo).sum() <= WINDOW_MIN_PAIRS * len(block_s)  # small blocks: not worth it
        or m == 0
        or len(block_s) == 0
        or not (np.isfinite(g_box).all() and np.isfinite(dx0).all() and np.isfinite(dw).all())
        or (gw < 0).any()
        or (dw < 0).any()
    ):
        return g_order, blo, bhi
    g_order = np.lexsort((gx0, g_key))
    g_sorted = g_key[g_order]
    new = np.r_[True, g_sorted[1:] != g_sorted[:-1]]
    block = np.cumsum(new) - 1  # block ordinal of each sorted gt
    wmax = np.maximum.reduceat(gw[g_order], np.flatnonzero(new))[block]
    has = bhi > blo
    at = np.minimum(blo, m - 1)
    d_block, d_wmax = block[at].astype(np.float64), np.where(has, wmax[at], 0.0)
    lo_x, hi_x = dx0 - d_wmax, dx0 + dw
    gx = gx0[g_order]
    base = min(float(gx.min()), float(lo_x.min()))
    span = 2.0 * (max(float(gx.max()), float(hi_x.max())) - base) + 1.0
    top = (block[-1] + 1) * span
    margin = 16 * np.spacing(top) + 1e-9 * span
    packed = block * span + (gx - base)
    lo = np.searchsorted(packed, d_block * span + (lo_x - base) - margin, "left")
    hi = np.searchsorted(packed, d_block * span + (hi_x - base) + margin, "right")
    lo = np.clip(lo, blo, bhi)
    hi = np.clip(hi, lo, bhi)
    return g_order, lo, hi


def index_in(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Index of each value in ``sorted_ids`` (-1 if absent)."""
    if len(sorted_ids) == 0:
        return np.full(len(values), -1, np.int64)
    pos = np.clip(np.searchsorted(sorted_ids, values), 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == values, pos, -1)


def _spans(n_pairs: np.ndarray, a: int, b: int, limit: int) -> Iterator[tuple[int, int]]:
    """Split detections a..b-1 into runs of at most ``limit`` pairs (a larger detection alone)."""
    cum = np.cumsum(n_pairs[a:b])
    start = a
    while start < b:
        base = cum[start - a - 1] if start > a else 0
        end = max(a + int(np.searchsorted(cum, base + limit, "right")), start + 1)
        yield start, min(end, b)
        start = end


def _chunks(block_start: np.ndarray, n_pairs: np.ndarray, n: int) -> Iterator[tuple[int, int]]:
    """Split sorted detections at block boundaries into runs of at most ~PAIR_CHUNK pairs.

    A single block larger than the limit still forms one run (it cannot be split).
    """
    if n == 0:
        return
    cum = np.r_[0, np.cumsum(n_pairs)]
    block_end = np.r_[block_start[1:], n]
    end_cum = cum[block_end]
    j0 = 0
    while j0 < len(block_start):
        a = block_start[j0]
        j = max(int(np.searchsorted(end_cum, cum[a] + PAIR_CHUNK, "right")), j0 + 1)
        yield int(a), int(block_end[j - 1])
        j0 = j


class _Out:
    """Collects matches during the rounds; ``finish`` lists them by flat index t * N + row.

    Writing each round straight into dense (T, N) arrays scatters small writes over a
    large table; the sorted list is what :class:`Matches` keeps, densified on demand.
    """

    def __init__(self, T: int, n: int, order: np.ndarray):
        self.T, self.n, self.order = T, n, order  # order: sorted position -> input row
        self.parts: list[tuple[np.ndarray, ...]] = []

    def store(
        self,
        t_i: int | np.ndarray,
        d_i: np.ndarray,
        p_i: np.ndarray,
        gt_p: np.ndarray,
        reg_p: np.ndarray,
        ious: np.ndarray,
    ) -> None:
        """Sorted detection ``d_i`` matched pair ``p_i`` at threshold row ``t_i`` (all arrays)."""
        self.parts.append(
            (np.asarray(t_i, np.int64) * self.n + self.order[d_i], reg_p[p_i], ious[p_i], gt_p[p_i])
        )

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(flat index, region?, IoU, gt row) of every match, by flat index (unique keys)."""
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0), np.zeros(0, np.int64)
        flat, reg, val, g = (np.concatenate(x) for x in zip(*self.parts, strict=True))
        o = np.argsort(flat)
        return flat[o], reg[o], val[o], g[o].astype(np.int64)


class _Segments:
    """Contiguous runs of equal detection index in a pair array (pairs are sorted by det)."""

    def __init__(self, det_p: np.ndarray):
        self.n = len(det_p)
        self.starts = (
            np.flatnonzero(np.r_[True, det_p[1:] != det_p[:-1]])
            if self.n
            else np.zeros(0, np.int64)
        )
        self.ids = det_p[self.starts]
        self.lengths = np.diff(np.r_[self.starts, self.n])

    def max(self, values: np.ndarray) -> np.ndarray:
        return np.maximum.reduceat(values, self.starts)


def _candidates(thr: np.ndarray, ious: np.ndarray) -> np.ndarray:
    """(T, P): IoU >= threshold and IoU > 0, so threshold 0 means any overlap."""
    return (ious[None, :] >= thr[:, None]) & (ious > 0)[None, :]


def _preference(ious: np.ndarray, reg_p: np.ndarray) -> np.ndarray:
    """Objects (IoU + 2) rank above regions (IoA), as COCO tries regions only when no object fits."""
    return np.where(reg_p, ious, ious + 2.0)


def _keys(thr: np.ndarray, ious: np.ndarray, reg_p: np.ndarray) -> np.ndarray:
    """(T, P) preference of each candidate pair, -1 for non-candidates."""
    return np.where(_candidates(thr, ious), _preference(ious, reg_p)[None, :], -1.0)


def _pick(
    key: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (threshold, segment): the best pair, the *last* on ties (COCO's rule).

    Returns threshold rows, segment numbers and pair positions of segments with a candidate.
    """
    m = np.maximum.reduceat(key, starts, axis=1)
    pos = np.where(key == np.repeat(m, lengths, axis=1), np.arange(key.shape[1]), -1)
    last = np.maximum.reduceat(pos, starts, axis=1)
    t_i, s_i = np.nonzero(m >= 0)
    return t_i, s_i, last[t_i, s_i]


#: Rounds that take no object before :func:`_greedy` compacts its pairs: at least this
#: many, or one per this many remaining pairs (a compaction costs a pass over the pairs,
#: a round a few numpy calls), so the total work stays linear in the pairs.
GREEDY_WASTE_MIN = 8
GREEDY_PAIRS_PER_ROUND = 1000


def _greedy(
    th: float,
    row: int,
    det_p: np.ndarray,
    gt_p: np.ndarray,
    reg_p: np.ndarray,
    ious: np.ndarray,
    block_s: np.ndarray,
    n_ann: int,
    out: _Out,
) -> None:
    """COCO greedy matching at threshold ``th`` (result row ``row``), one round per rank.

    Round r settles the r-th detection *with a candidate* of every block at once (those
    without one change nothing, so skipping them keeps the outcome and cuts the rounds
    from the largest block to its most candidates); pairs are reordered by that rank so
    that each round is a contiguous slice. Every pair given is a candidate, and pairs
    come grouped by ascending sorted detection position (``block_s``: its block).

    Duplicates: many detections on one object would each need a round (50k copies took
    17.8 s). Since taken objects stay taken, a detection whose object candidates are all
    taken can only fall into a region or stay unmatched, whatever comes before it. So
    after a run of rounds that took nothing, the pairs are compacted: pairs to taken
    objects are dropped, detections left with regions only are settled at once, and the
    rounds restart on what remains. Same result, linear work.
    """
    taken = np.zeros(n_ann, bool)
    while len(det_p):
        live = reg_p | ~taken[gt_p]
        if not live.all():
            det_p, gt_p, reg_p, ious = det_p[live], gt_p[live], reg_p[live], ious[live]
        if not len(det_p):
            return
        seg = _Segments(det_p)
        has_obj = np.add.reduceat((~reg_p).astype(np.int64), seg.starts) > 0
        if not has_obj.all():  # regions only: settled now (matching a region takes nothing)
            on_reg = np.repeat(~has_obj, seg.lengths)
            rs = _Segments(det_p[on_reg])
            _, s_i, p_i = _pick(_preference(ious, reg_p)[on_reg][None, :], rs.starts, rs.lengths)
            idx = np.flatnonzero(on_reg)[p_i]
            out.store(row, rs.ids[s_i], idx, gt_p, reg_p, ious)
            keep = ~on_reg
            det_p, gt_p, reg_p, ious = det_p[keep], gt_p[keep], reg_p[keep], ious[keep]
            if not len(det_p):
                return
            seg = _Segments(det_p)
        rest = _greedy_rounds(th, row, det_p, gt_p, reg_p, ious, seg, block_s, taken, out)
        if rest is None:
            return
        det_p, gt_p, reg_p, ious = rest


def _greedy_rounds(
    th: float,
    row: int,
    det_p: np.ndarray,
    gt_p: np.ndarray,
    reg_p: np.ndarray,
    ious: np.ndarray,
    seg: _Segments,
    block_s: np.ndarray,
    taken: np.ndarray,
    out: _Out,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The rounds of :func:`_greedy`; returns the unprocessed pairs (grouped by detection)
    when too many rounds in a row took no object, else None."""
    blk = block_s[seg.ids]
    head = np.flatnonzero(np.r_[True, blk[1:] != blk[:-1]])
    crank = np.arange(len(seg.ids)) - np.repeat(head, np.diff(np.r_[head, len(seg.ids)]))
    prank = np.repeat(crank, seg.lengths)
    by_rank = np.argsort(prank, kind="stable")  # within a rank, pairs stay grouped by det
    det_p, gt_p, reg_p, ious = det_p[by_rank], gt_p[by_rank], reg_p[by_rank], ious[by_rank]
    bounds = np.searchsorted(prank[by_rank], np.arange(prank.max() + 2))
    pref = _preference(ious, reg_p)
    budget = max(GREEDY_WASTE_MIN, len(det_p) // GREEDY_PAIRS_PER_ROUND)
    wasted = 0
    for r in range(len(bounds) - 1):
        s, e = bounds[r], bounds[r + 1]
        if s == e:
            continue
        g, reg = gt_p[s:e], reg_p[s:e]
        key = np.where(reg | ~taken[g], pref[s:e], -1.0)[None, :]
        sg = _Segments(det_p[s:e])
        _, s_i, p_i = _pick(key, sg.starts, sg.lengths)
        p_i = p_i + s
        out.store(row, sg.ids[s_i], p_i, gt_p, reg_p, ious)
        obj = ~reg_p[p_i]
        taken[gt_p[p_i[obj]]] = True
        wasted = 0 if obj.any() else wasted + 1
        if wasted >= budget and e < len(det_p):
            o = e + np.argsort(det_p[e:], kind="stable")  # back to grouped by detection
            return det_p[o], gt_p[o], reg_p[o], ious[o]
    return None


def _hungarian(
    thr: np.ndarray,
    ious: np.ndarray,
    seg: _Segments,
    key_s: np.ndarray,
    gt_p: np.ndarray,
    reg_p: np.ndarray,
    out: _Out,
) -> None:
    """Max-IoU assignment per (image, class) block and threshold; leftovers may fall into regions."""
    # in a block every detection has the same ground-truth list, so its pairs form a matrix
    width = seg.lengths
    bkey = key_s[seg.ids]
    bstart = np.flatnonzero(np.r_[True, bkey[1:] != bkey[:-1]])
    bend = np.r_[bstart[1:], len(seg.ids)]
    lowest = thr.min()
    for s, e in zip(bstart, bend, strict=True):
        p0, w = seg.starts[s], width[s]
        nd = e - s
        io = ious[p0 : p0 + nd * w].reshape(nd, w)
        if not ((io >= lowest) & (io > 0)).any():
            continue
        rg = reg_p[p0 : p0 + w]
        obj, regs = np.flatnonzero(~rg), np.flatnonzero(rg)
        for t, th in enumerate(thr):
            c = (io >= th) & (io > 0)
            matched = np.full(nd, -1, np.int64)
            if obj.size:
                wmat = np.where(c[:, obj], io[:, obj], 0.0)
                if wmat.any():
                    rows, cols = linear_sum_assignment(wmat, maximize=True)
                    keep = c[rows, obj[cols]]
                    matched[rows[keep]] = obj[cols[keep]]
            if regs.size:
                key = np.where(c[:, regs], io[:, regs], -1.0)
                best = key.shape[1] - 1 - np.argmax(key[:, ::-1], axis=1)  # last of ties
                hit = (matched < 0) & (key[np.arange(nd), best] >= 0)
                matched[hit] = regs[best[hit]]
            ok = np.flatnonzero(matched >= 0)
            if ok.size:
                p_i = p0 + ok * w + matched[ok]
                out.store(np.full(ok.size, t), seg.ids[s + ok], p_i, gt_p, reg_p, ious)
