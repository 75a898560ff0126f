"""From pixel scores to a batch of regions to review under an annotation budget.

Two steps, both vectorised over pixels and regions:

1. :func:`aggregate` pools a pixel score (H, W) over the regions of a scene into one value
   per region (mean, max, sum, top-quantile mean, softmax or softmin pooling), using
   ``np.bincount`` / ``ufunc.at`` over blocks of pixels, and one sort of (region, score)
   keys for the top-quantile.
2. :func:`select_greedy` picks regions by value (or value per unit cost) until the budget
   is spent, optionally weighted towards rare classes (Cai et al., CVPR 2021) and spread
   out by non-maximum suppression on centroids; :func:`select_random` is the baseline.

NaN pixel scores (ignore pixels, nodata) are left out of the pooling; a region with no
finite score gets NaN and is never picked by the greedy strategies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from tiles.errors import TrustmapError

AGGREGATIONS = ("mean", "max", "sum", "top_quantile", "softmax", "softmin")
CHUNK_PIXELS = 1 << 22


# --- aggregation ------------------------------------------------------------------------------
def _pixel_blocks(region_ids: np.ndarray, score: np.ndarray, chunk: int = CHUNK_PIXELS):
    """(region id intp, score float32) of the pixels that count, block by block."""
    rid = region_ids.reshape(-1)
    s = score.reshape(-1)
    for i in range(0, rid.size, chunk):
        r, v = rid[i : i + chunk], s[i : i + chunk].astype(np.float32, copy=False)
        keep = (r >= 0) & np.isfinite(v)
        yield r[keep].astype(np.intp), v[keep]


def _sortable_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint32 whose unsigned order is the float order (finite values)."""
    b = x.view(np.uint32)
    return np.where(b >> 31, ~b, b | np.uint32(0x80000000)).astype(np.uint32)


def _from_sortable_bits(b: np.ndarray) -> np.ndarray:
    b = b.astype(np.uint32)
    return np.where(b >> 31, b & np.uint32(0x7FFFFFFF), ~b).view(np.float32)


def _extreme(region_ids: np.ndarray, score: np.ndarray, n: int, op: np.ufunc) -> np.ndarray:
    fill = -np.inf if op is np.maximum else np.inf
    out = np.full(n, fill, np.float32)
    for r, v in _pixel_blocks(region_ids, score):
        op.at(out, r, v)
    return out


def _top_quantile(region_ids: np.ndarray, score: np.ndarray, n: int, q: float) -> np.ndarray:
    """Mean of the top k_r = ceil(q * n_r) scores of each region (at least one).

    The pixels are sorted once by the uint64 key (region << 32 | sortable score bits), so
    each region's scores end up contiguous and ascending and its top k_r are the last k_r
    of its run; only those sum(k_r) positions are gathered and summed with bincount.
    """
    key = np.empty(region_ids.size, np.uint64)
    count = np.zeros(n, np.int64)
    m = 0
    for r, v in _pixel_blocks(region_ids, score):
        key[m : m + r.size] = (r.astype(np.uint64) << np.uint64(32)) | _sortable_bits(v)
        count += np.bincount(r, minlength=n)
        m += r.size
    key = key[:m]
    key.sort()
    k = np.where(count > 0, np.maximum(1, np.ceil(q * count)), 0).astype(np.int64)
    end = np.cumsum(count)
    # positions end_r - k_r .. end_r - 1 for every region, without a loop over regions
    owner = np.repeat(np.arange(n), k)
    offset = np.arange(owner.size) - np.repeat(np.cumsum(k) - k, k)
    pos = np.repeat(end - k, k) + offset
    vals = _from_sortable_bits((key[pos] & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    total = np.bincount(owner, weights=vals.astype(np.float64), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(k, 1), np.nan)


def _pooled(
    region_ids: np.ndarray, score: np.ndarray, n: int, temperature: float, sign: float
) -> np.ndarray:
    """sum s * exp(sign * (s - m_r) / T) / sum exp(sign * (s - m_r) / T).

    sign = +1 is softmax pooling (a smooth max, tends to the max as T -> 0 and to the mean
    as T -> inf); sign = -1 is softmin pooling, cleanlab's image score. m_r is the region's
    max (softmax) or min (softmin), so every exponent is <= 0 and nothing overflows.
    """
    if temperature <= 0:
        raise TrustmapError(f"pooling temperature must be positive, got {temperature}")
    ref = _extreme(region_ids, score, n, np.maximum if sign > 0 else np.minimum).astype(np.float64)
    num = np.zeros(n)
    den = np.zeros(n)
    for r, v in _pixel_blocks(region_ids, score):
        v64 = v.astype(np.float64)
        e = np.exp(sign * (v64 - ref[r]) / temperature)
        num += np.bincount(r, weights=e * v64, minlength=n)
        den += np.bincount(r, weights=e, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def aggregate(
    score: np.ndarray,
    region_ids: np.ndarray,
    n_regions: int | None = None,
    how: str = "mean",
    *,
    q: float = 0.1,
    temperature: float = 0.1,
) -> np.ndarray:
    """Pool a pixel score over regions; returns float64 (R,), NaN for regions without a
    finite score.

    ``how``:
      * ``mean``: sum_i s_i / n_r; ``sum``: sum_i s_i (favours big regions);
      * ``max``: max_i s_i (one bad pixel is enough);
      * ``top_quantile``: mean of the top ``q`` fraction (ceil(q n_r), at least 1): between
        max (q -> 0) and mean (q = 1), robust to a single noisy pixel;
      * ``softmax``: sum_i s_i w_i / sum_i w_i with w_i = exp((s_i - max) / T), a smooth max;
      * ``softmin``: the same with w_i = exp(-(s_i - min) / T), cleanlab's softmin image score
        (T = 0.1 there): use it on quality-like scores where low = suspicious.
    """
    score = np.asarray(score)
    region_ids = np.asarray(region_ids)
    if score.shape != region_ids.shape:
        raise TrustmapError(f"score has shape {score.shape}, regions {region_ids.shape}")
    n = int(region_ids.max()) + 1 if n_regions is None else int(n_regions)
    n = max(n, 0)
    if how in ("mean", "sum"):
        total = np.zeros(n)
        count = np.zeros(n)
        for r, v in _pixel_blocks(region_ids, score):
            total += np.bincount(r, weights=v.astype(np.float64), minlength=n)
            count += np.bincount(r, minlength=n)
        if how == "sum":
            return np.where(count > 0, total, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)
    if how == "max":
        out = _extreme(region_ids, score, n, np.maximum).astype(np.float64)
        out[np.isneginf(out)] = np.nan
        return out
    if how == "top_quantile":
        if not 0 < q <= 1:
            raise TrustmapError(f"top-quantile fraction q must be in (0, 1], got {q}")
        return _top_quantile(region_ids, score, n, q)
    if how == "softmax":
        return _pooled(region_ids, score, n, temperature, +1.0)
    if how == "softmin":
        return _pooled(region_ids, score, n, temperature, -1.0)
    raise TrustmapError(f"unknown aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")


# --- class balance (Cai et al. 2021) ---------------------------------------------------------
def class_histogram(
    region_ids: np.ndarray, class_map: np.ndarray, n_regions: int, num_classes: int
) -> np.ndarray:
    """(R, C) pixel counts of each class index inside each region (-1 class = ignored)."""
    hist = np.zeros(n_regions * num_classes, np.int64)
    rid, cls = np.asarray(region_ids).reshape(-1), np.asarray(class_map).reshape(-1)
    for i in range(0, rid.size, CHUNK_PIXELS):
        r, c = rid[i : i + CHUNK_PIXELS], cls[i : i + CHUNK_PIXELS]
        keep = (r >= 0) & (c >= 0)
        hist += np.bincount(
            r[keep].astype(np.intp) * num_classes + c[keep].astype(np.intp),
            minlength=n_regions * num_classes,
        )
    return hist.reshape(n_regions, num_classes)


def dominant_class(hist: np.ndarray) -> np.ndarray:
    """Most frequent class per region from :func:`class_histogram` (-1 if none; ties -> lowest index)."""
    dom = np.argmax(hist, axis=1)
    return np.where(hist.sum(axis=1) > 0, dom, -1)


def class_balance_weights(hist: np.ndarray) -> np.ndarray:
    """Cai et al.'s weight w = exp(-p_c) for each region's dominant class c.

    p_c is class c's share of all counted pixels (predicted or current labels, whichever
    ``hist`` was built from), so regions of rare classes weigh up to e times more than
    those of a class that covers everything. Regions without a class get weight 1.
    """
    totals = hist.sum(axis=0).astype(np.float64)
    freq = totals / max(totals.sum(), 1.0)
    dom = dominant_class(hist)
    return np.where(dom >= 0, np.exp(-freq[np.maximum(dom, 0)]), 1.0)


# --- selection --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    """Regions picked for review, in pick order."""

    ids: np.ndarray
    """int64 region ids."""
    costs: np.ndarray
    """float64 cost of each picked region."""
    scores: np.ndarray
    """float64 value of each picked region (after class weighting; NaN for ``random``)."""
    budget: float
    spent: float


def _reviewed_mask(reviewed: Any, n: int) -> np.ndarray:
    if reviewed is None:
        return np.zeros(n, bool)
    arr = np.asarray(reviewed)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise TrustmapError(f"reviewed mask has {arr.size} entries for {n} regions")
        return arr
    mask = np.zeros(n, bool)
    mask[arr.astype(np.int64)] = True
    return mask


def _check_costs(costs: np.ndarray, budget: float) -> np.ndarray:
    costs = np.asarray(costs, np.float64)
    if costs.ndim != 1:
        raise TrustmapError("costs must be one value per region")
    if costs.size and not (np.isfinite(costs).all() and costs.min() > 0):
        raise TrustmapError("region costs must be positive and finite")
    if not np.isfinite(budget) or budget < 0:
        raise TrustmapError(f"budget must be a non-negative number, got {budget}")
    return costs


def fill_budget(order: np.ndarray, costs: np.ndarray, budget: float) -> np.ndarray:
    """Walk ``order`` and take every region that still fits; never exceed ``budget``.

    Equivalent to the loop "for i in order: if cost[i] <= left: take i", vectorised as
    repeated prefix sums: take the longest prefix that fits, drop the blocking region (it
    can never fit again, since what is left only shrinks) and everything now too expensive,
    and repeat on the rest. Returns the taken ids in walk order.
    """
    taken: list[np.ndarray] = []
    left = float(budget)
    rest = np.asarray(order, np.int64)
    while rest.size:
        rest = rest[costs[rest] <= left]
        if not rest.size:
            break
        cum = np.cumsum(costs[rest])
        k = int(np.searchsorted(cum, left, side="right"))
        if k:
            taken.append(rest[:k])
            left -= float(cum[k - 1])
        rest = rest[k + 1 :]
    return np.concatenate(taken) if taken else np.zeros(0, np.int64)


def _diverse(
    order: np.ndarray, costs: np.ndarray, budget: float, centroids: np.ndarray, radius: float
) -> np.ndarray:
    """Greedy walk with non-maximum suppression on centroids (cKDTree ball queries).

    A region within ``radius`` pixels of an already picked one is skipped. If the budget is
    not spent after a pass, the radius is halved and the walk repeated (picked regions
    still suppress), ending with radius 0, so the budget is used as fully as plain greedy.
    """
    pts = np.asarray(centroids, np.float64)[order]
    tree = cKDTree(pts)
    cost_o = costs[order].tolist()
    taken = np.zeros(order.size, bool)
    picks: list[int] = []
    left = float(budget)
    cheapest = float(costs[order].min()) if order.size else np.inf
    r = float(radius)
    while True:
        suppressed = np.zeros(order.size, bool)
        if picks and r > 0:
            for nb in tree.query_ball_point(pts[picks], r):
                suppressed[nb] = True
        sup = suppressed.tolist()
        tk = taken.tolist()
        for i in range(order.size):
            if left < cheapest:
                break
            if tk[i] or sup[i] or cost_o[i] > left:
                continue
            picks.append(i)
            taken[i] = tk[i] = True
            left -= cost_o[i]
            if r > 0:
                for j in tree.query_ball_point(pts[i], r):
                    sup[j] = True
        fits = (~taken) & (costs[order] <= left)
        if r == 0 or not fits.any():
            break
        r = r / 2 if r >= 2 else 0.0
    return order[np.asarray(picks, np.int64)]


def select_greedy(
    values: np.ndarray,
    costs: np.ndarray,
    budget: float,
    *,
    objective: str = "ratio",
    reviewed: Any = None,
    weights: np.ndarray | None = None,
    centroids: np.ndarray | None = None,
    radius: float = 0.0,
    seed: int = 0,
) -> Selection:
    """Pick regions in order of priority until no unreviewed region fits the budget.

    priority = v / cost (``objective="ratio"``, value per click or pixel) or v
    (``"value"``), with v = value * weight (``weights`` e.g. from
    :func:`class_balance_weights`). For the ratio, negative values are clipped to 0 (a
    region the model agrees with is worth nothing, whatever its size). Regions with NaN
    value or in ``reviewed`` (bool mask or ids) are skipped. Exact ties are broken by a
    seeded random key, so the result is deterministic by ``seed``. With ``radius > 0`` and
    ``centroids`` (R, 2), picks are spread out (see :func:`_diverse`).
    """
    values = np.asarray(values, np.float64)
    costs = _check_costs(costs, budget)
    n = values.size
    if costs.size != n:
        raise TrustmapError(f"{n} region values but {costs.size} costs")
    if weights is not None and np.shape(weights) != (n,):
        raise TrustmapError(f"{n} region values but {np.size(weights)} weights")
    v = values * (1.0 if weights is None else np.asarray(weights, np.float64))
    if objective == "ratio":
        priority = np.maximum(v, 0.0) / costs
    elif objective == "value":
        priority = v.copy()
    else:
        raise TrustmapError(f"unknown objective {objective!r}; use ratio or value")
    ok = np.isfinite(priority) & ~_reviewed_mask(reviewed, n)
    cand = np.flatnonzero(ok)
    jitter = np.random.default_rng(seed).random(n)[cand]
    order = cand[np.lexsort((jitter, -priority[cand]))]
    if radius > 0:
        if centroids is None:
            raise TrustmapError("spatial diversity (radius > 0) needs region centroids")
        ids = _diverse(order, costs, budget, centroids, radius)
    else:
        ids = fill_budget(order, costs, budget)
    spent = float(costs[ids].sum())
    return Selection(ids, costs[ids], v[ids], float(budget), spent)


def select_random(
    costs: np.ndarray, budget: float, *, reviewed: Any = None, seed: int = 0
) -> Selection:
    """Baseline: unreviewed regions in a seeded random order, each taken if it still fits."""
    costs = _check_costs(costs, budget)
    cand = np.flatnonzero(~_reviewed_mask(reviewed, costs.size))
    order = np.random.default_rng(seed).permutation(cand)
    ids = fill_budget(order, costs, budget)
    return Selection(
        ids, costs[ids], np.full(ids.size, np.nan), float(budget), float(costs[ids].sum())
    )
