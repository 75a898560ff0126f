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

The work is vectorised: detections are sorted once by (image, class, -score), every
same-block (detection, ground truth) pair is laid out flat and scored in cache-sized
pieces, and pairs below the lowest threshold are dropped before any assignment (most
pairs do not overlap). The greedy rule is sequential only *within* a block, so it runs
in rounds over within-block rank (round r settles the r-th detection of every block at
once); the number of rounds is the largest block, not the number of detections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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


@dataclass
class Matches:
    """Per-detection outcome at each IoU threshold; rows follow the detections' order."""

    iou_thresholds: np.ndarray  # (T,)
    tp: np.ndarray  # (T, N) bool: matched an object of its class
    ignored: np.ndarray  # (T, N) bool: matched no object but lies in a crowd/ignore region
    iou: np.ndarray  # (T, N) IoU with the matched object (0 when unmatched)
    gt_index: np.ndarray  # (T, N) int64: row in gt.annotations (object or region), -1 when none
    max_iou: np.ndarray  # (N,) best IoU with any object of the block, threshold-free
    rank: np.ndarray  # (N,) int64: position in its block (image, and class if class-aware) by score
    image_index: np.ndarray  # (N,) int64: row in gt.images (-1 if unknown)
    n_gt: dict[int, int]  # objects (not regions) per category id
    mode: str
    class_aware: bool
    annotation_category: np.ndarray  # (M,) category of each gt.annotations row
    order: np.ndarray  # (N,) detection rows sorted by (image, [class,] score desc, input row)

    def __len__(self) -> int:
        return self.tp.shape[1]

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
        t = self.index(threshold)
        cats = np.asarray(category_ids, dtype=np.int64)
        gcat = np.full(len(self), -1, np.int64)
        gcat[self.tp[t]] = self.annotation_category[self.gt_index[t, self.tp[t]]]
        order = np.argsort(cats)
        col = index_in(gcat, cats[order])
        return np.where(col >= 0, order[np.maximum(col, 0)] if len(cats) else 0, len(cats)).astype(
            np.int64
        )


def pairwise_iou(det_xywh: np.ndarray, gt_xywh: np.ndarray, region: np.ndarray) -> np.ndarray:
    """IoU of row-aligned box pairs; for regions, intersection over the detection's area.

    The region rule is COCO's crowd IoU: a detection wholly inside a crowd scores 1
    however large the crowd.
    """
    return _iou_cols(*det_xywh.T, *gt_xywh.T, region)


def _iou_cols(dx0, dy0, dw, dh, gx0, gy0, gw, gh, region) -> np.ndarray:
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
) -> Matches:
    """Match detections to ground truth at one or more IoU thresholds (see module doc)."""
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

    order = np.lexsort((-dets.score, d_key))  # stable: ties keep input order, as COCO's mergesort
    key_s = d_key[order]
    new_block = np.r_[True, key_s[1:] != key_s[:-1]] if n else np.zeros(0, bool)
    block_start = np.flatnonzero(new_block)
    rank_s = np.arange(n) - np.repeat(block_start, np.diff(np.r_[block_start, n]))

    g_order = np.argsort(g_key, kind="stable")
    g_sorted = g_key[g_order]
    lo = np.searchsorted(g_sorted, key_s, "left")
    hi = np.searchsorted(g_sorted, key_s, "right")
    n_pairs = hi - lo

    out = _Out(T, n, order)
    max_iou = np.zeros(n)
    dcol = [np.ascontiguousarray(c) for c in dets.bbox[order].T]
    gcol = [np.ascontiguousarray(c) for c in an.bbox.T]

    def pairs(a: int, b: int):
        """Every same-block pair of sorted detections a..b-1: det position, gt row, region?, IoU."""
        cnt = n_pairs[a:b]
        det_p = np.repeat(np.arange(a, b), cnt)
        first = np.cumsum(cnt) - cnt
        gt_p = g_order[np.repeat(lo[a:b], cnt) + np.arange(len(det_p)) - np.repeat(first, cnt)]
        reg_p = region[gt_p]
        # det_p is sorted, so repeating is a streaming copy rather than a random gather
        ious = _iou_cols(*(np.repeat(c[a:b], cnt) for c in dcol), *(c[gt_p] for c in gcol), reg_p)
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
        if len(det_p) == 0:
            continue
        seg = _Segments(det_p)
        if mode == "greedy":
            # one threshold at a time, each on its own candidates: a low threshold (LaECE's
            # "any overlap") has many more candidate pairs than COCO's 0.5..0.95
            for t, th in enumerate(thr):
                c = ious >= th
                if c.all():
                    _greedy(th, t, det_p, gt_p, reg_p, ious, rank_s, len(an), out)
                elif c.any():
                    _greedy(th, t, det_p[c], gt_p[c], reg_p[c], ious[c], rank_s, len(an), out)
        elif mode == "any":
            t_i, s_i, p_i = _pick(_keys(thr, ious, reg_p), seg.starts, seg.lengths)
            out.store(t_i, seg.ids[s_i], p_i, gt_p, reg_p, ious)
        else:
            _hungarian(thr, ious, seg, key_s, gt_p, reg_p, out)

    tp, ign, iou_out, gidx = out.finish()
    inv = np.empty(n, np.int64)
    inv[order] = np.arange(n)
    max_iou = max_iou[inv]
    return Matches(
        iou_thresholds=thr,
        tp=tp,
        ignored=ign,
        iou=iou_out,
        gt_index=gidx,
        max_iou=max_iou,
        rank=rank_s[inv],
        image_index=img,
        n_gt=n_gt,
        mode=mode,
        class_aware=class_aware,
        annotation_category=an.category_id,
        order=order,
    )


def index_in(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Index of each value in ``sorted_ids`` (-1 if absent)."""
    if len(sorted_ids) == 0:
        return np.full(len(values), -1, np.int64)
    pos = np.clip(np.searchsorted(sorted_ids, values), 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == values, pos, -1)


def _spans(n_pairs: np.ndarray, a: int, b: int, limit: int):
    """Split detections a..b-1 into runs of at most ``limit`` pairs (a larger detection alone)."""
    cum = np.cumsum(n_pairs[a:b])
    start = a
    while start < b:
        base = cum[start - a - 1] if start > a else 0
        end = max(a + int(np.searchsorted(cum, base + limit, "right")), start + 1)
        yield start, min(end, b)
        start = end


def _chunks(block_start: np.ndarray, n_pairs: np.ndarray, n: int):
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
    """Collects matches during the rounds; ``finish`` writes them out in input order.

    Writing each round straight into the (T, N) arrays scatters small writes over a
    large table; collecting them and writing once, in address order, is several times
    faster.
    """

    def __init__(self, T: int, n: int, order: np.ndarray):
        self.T, self.n, self.order = T, n, order  # order: sorted position -> input row
        self.parts: list[tuple[np.ndarray, ...]] = []

    def store(self, t_i, d_i, p_i, gt_p, reg_p, ious) -> None:
        """Sorted detection ``d_i`` matched pair ``p_i`` at threshold row ``t_i`` (all arrays)."""
        self.parts.append(
            (np.asarray(t_i, np.int64) * self.n + self.order[d_i], reg_p[p_i], ious[p_i], gt_p[p_i])
        )

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        shape = (self.T, self.n)
        tp, ign, iou = np.zeros(shape, bool), np.zeros(shape, bool), np.zeros(shape)
        gidx = np.full(shape, -1, np.int64)
        if self.parts:
            flat, reg, val, g = (np.concatenate(x) for x in zip(*self.parts, strict=True))
            o = np.argsort(flat, kind="stable")
            flat, reg, val, g = flat[o], reg[o], val[o], g[o]
            tp.ravel()[flat] = ~reg
            ign.ravel()[flat] = reg
            iou.ravel()[flat] = np.where(reg, 0.0, val)
            gidx.ravel()[flat] = g
        return tp, ign, iou, gidx


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


def _pick(key: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
    """Per (threshold, segment): the best pair, the *last* on ties (COCO's rule).

    Returns threshold rows, segment numbers and pair positions of segments with a candidate.
    """
    m = np.maximum.reduceat(key, starts, axis=1)
    pos = np.where(key == np.repeat(m, lengths, axis=1), np.arange(key.shape[1]), -1)
    last = np.maximum.reduceat(pos, starts, axis=1)
    t_i, s_i = np.nonzero(m >= 0)
    return t_i, s_i, last[t_i, s_i]


def _greedy(th, row, det_p, gt_p, reg_p, ious, rank_s, n_ann, out: _Out) -> None:
    """COCO greedy matching at threshold ``th`` (result row ``row``), one round per rank.

    Round r settles the r-th detection of every block at once; pairs are reordered by
    rank so that each round is a contiguous slice. Every pair given is a candidate.
    """
    prank = rank_s[det_p]
    by_rank = np.argsort(prank, kind="stable")  # within a rank, pairs stay grouped by det
    det_p, gt_p, reg_p, ious = det_p[by_rank], gt_p[by_rank], reg_p[by_rank], ious[by_rank]
    bounds = np.searchsorted(prank[by_rank], np.arange(prank.max() + 2))
    pref = _preference(ious, reg_p)
    taken = np.zeros(n_ann, bool)
    for r in range(len(bounds) - 1):
        s, e = bounds[r], bounds[r + 1]
        if s == e:
            continue
        g, reg = gt_p[s:e], reg_p[s:e]
        key = np.where(reg | ~taken[g], pref[s:e], -1.0)[None, :]
        seg = _Segments(det_p[s:e])
        _, s_i, p_i = _pick(key, seg.starts, seg.lengths)
        p_i = p_i + s
        out.store(row, seg.ids[s_i], p_i, gt_p, reg_p, ious)
        obj = ~reg_p[p_i]
        taken[gt_p[p_i[obj]]] = True


def _hungarian(thr, ious, seg, key_s, gt_p, reg_p, out: _Out) -> None:
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
