"""Calibration and accuracy metrics for object detectors, as plain functions of arrays.

Each binned metric is built as a :class:`~calibration.bootstrap.Statistic`: sums of
per-detection numbers over a grid of cells, then a closed-form ``finalize``. The plain
functions (``calibration_error``, ``dece``, ``laece``, ...) return its value; the
``*_statistic`` functions hand the same object to :func:`calibration.bootstrap.bootstrap`
for confidence intervals over images. :func:`compute_metrics` runs the whole audit.

Conventions shared by every binned metric:

* Bins are ``[e_i, e_{i+1})`` with the last bin closed, as ``np.histogram``/netcal;
  values outside the range fall into the end bins.
* ``strategy="width"``: equal-width edges over ``value_range`` (default [0, 1]; ``None``
  uses the observed min..max, uq-detr's convention). ``strategy="mass"``: edges at
  quantiles of the data with the outer edges pinned to the range (netcal's convention).
* ``norm="l1"`` or ``"l2"``: the gap in each bin enters as ``|acc - conf|^p`` and the
  result is taken to the power ``1/p`` (Kumar et al. 2019's ``l_p`` calibration error).
* Per-class ("classwise", "marginal") versions average the ``p``-th powers over classes
  that have at least one sample, then take the root (Kumar et al.); for ``p=1`` this is
  the plain mean of per-class errors.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from calibration.bootstrap import Statistic, bootstrap
from calibration.detections import Detections, GroundTruth
from calibration.matching import MODES, Matches, index_in, match
from tiles.errors import TrustmapError

BinStrategy = Literal["width", "mass"]
Norm = Literal["l1", "l2"]
Kind = Literal["ece", "ace", "mce"]
BOX_DIMS = ("confidence", "cx", "cy", "w", "h")
COCO_IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
_EPS = np.finfo(np.float64).eps


# --------------------------------------------------------------------------- binning


def bin_edges(
    x: np.ndarray,
    bins: int,
    strategy: BinStrategy = "width",
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> np.ndarray:
    """``bins + 1`` edges: equal width over the range, or equal mass (data quantiles)."""
    x = np.asarray(x, dtype=np.float64)
    if bins < 1:
        raise TrustmapError(f"number of bins must be >= 1, got {bins}")
    if value_range is None:
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
    else:
        lo, hi = value_range
    if strategy == "width":
        return np.linspace(lo, hi, bins + 1)
    if strategy != "mass":
        raise TrustmapError(f"bin strategy must be 'width' or 'mass', got {strategy!r}")
    edges = (
        np.quantile(x, np.linspace(0.0, 1.0, bins + 1)) if x.size else np.linspace(lo, hi, bins + 1)
    )
    edges[0], edges[-1] = lo, hi
    return edges


def bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value: ``i`` with ``edges[i] <= x < edges[i+1]``, last bin closed, clipped.

    The same rule as ``np.histogramdd`` (netcal's binning), so values on an edge land in
    the same bin. (An arithmetic ``floor`` with edge corrections measured no faster here.)
    """
    b = len(edges) - 1
    return np.clip(
        np.searchsorted(edges, np.asarray(x, dtype=np.float64), side="right") - 1, 0, b - 1
    )


# ------------------------------------------------------------------ calibration error core


def _power(norm: Norm) -> int:
    if norm not in ("l1", "l2"):
        raise TrustmapError(f"norm must be 'l1' or 'l2', got {norm!r}")
    return 1 if norm == "l1" else 2


def binned_error(tot: np.ndarray, kind: Kind, p: int, min_count: int = 1) -> np.ndarray:
    """Per-group error (``p``-th power) from bin sums ``tot[..., bin, (count, Σconf, Σtarget)]``.

    With ``n_b`` samples, mean confidence ``c_b`` and mean target ``a_b`` in bin ``b``
    and ``n = Σ_b n_b``, over bins with ``n_b >= min_count``:

    * ECE: ``Σ_b (n_b / n) |a_b - c_b|^p``
    * ACE: ``(1 / B') Σ_b |a_b - c_b|^p`` over the ``B'`` non-empty bins
    * MCE: ``max_b |a_b - c_b|^p``

    Groups without samples give NaN.
    """
    cnt, sc, st = tot[..., 0], tot[..., 1], tot[..., 2]
    n = cnt.sum(axis=-1)
    ok = (cnt >= min_count) & (cnt > 0)
    gap = np.abs(st - sc) / np.where(cnt > 0, cnt, 1.0)
    gp = gap**p
    with np.errstate(invalid="ignore", divide="ignore"):
        if kind == "ece":
            return np.where(
                n > 0, np.where(ok, cnt * gp, 0.0).sum(-1) / np.where(n > 0, n, 1.0), np.nan
            )
        if kind == "ace":
            k = ok.sum(-1)
            return np.where(k > 0, np.where(ok, gp, 0.0).sum(-1) / np.maximum(k, 1), np.nan)
        if kind == "mce":
            return np.where(ok.any(-1), np.where(ok, gp, -np.inf).max(-1), np.nan)
    raise TrustmapError(f"calibration error kind must be 'ece', 'ace' or 'mce', got {kind!r}")


def _mean_over_classes(e: np.ndarray, p: int) -> np.ndarray:
    """Mean over classes with samples (NaN entries), then the ``1/p`` root."""
    present = np.isfinite(e)
    k = present.sum(-1)
    m = np.where(present, e, 0.0).sum(-1) / np.maximum(k, 1)
    return np.where(k > 0, m ** (1.0 / p), np.nan)


def calibration_error_statistic(
    confidence: np.ndarray,
    target: np.ndarray,
    *,
    classes: np.ndarray | None = None,
    group: np.ndarray | None = None,
    bins: int = 10,
    strategy: BinStrategy = "width",
    norm: Norm = "l1",
    kind: Kind = "ece",
    value_range: tuple[float, float] | None = (0.0, 1.0),
    min_count: int = 1,
) -> Statistic:
    """The binned calibration error of :func:`calibration_error` as a bootstrap-ready statistic.

    With ``classes``, bins (and data-dependent edges) are per class and the result is
    the class mean (see module doc).
    """
    conf = np.asarray(confidence, dtype=np.float64)
    tgt = np.asarray(target, dtype=np.float64)
    n = len(conf)
    grp = np.zeros(n, np.int64) if group is None else np.asarray(group, np.int64)
    if classes is None:
        cls_idx, n_cls = np.zeros(n, np.int64), 1
    else:
        cls_idx, n_cls = _codes(np.asarray(classes))
    b = np.empty(n, np.int64)
    per_class_edges = strategy == "mass" or value_range is None
    if per_class_edges and classes is not None:
        for c in range(n_cls):
            sel = cls_idx == c
            b[sel] = bin_index(conf[sel], bin_edges(conf[sel], bins, strategy, value_range))
    else:
        b[:] = bin_index(conf, bin_edges(conf, bins, strategy, value_range))
    return _grouped(
        grp,
        cls_idx * bins + b,
        np.column_stack([np.ones(n), conf, tgt]),
        (n_cls, bins),
        _class_mean(kind, _power(norm), min_count),
    )


def _class_mean(kind: Kind, p: int, min_count: int = 1):
    """``finalize`` of a (class, bin) grid: per-class error, class mean, ``1/p`` root."""
    return lambda tot: _mean_over_classes(binned_error(tot, kind, p, min_count), p)


def calibration_error(confidence: np.ndarray, target: np.ndarray, **kwargs: Any) -> float:
    """Binned calibration error of ``confidence`` against ``target`` in [0, 1].

    ``target`` is 1/0 correctness (accuracy), TP/FP (precision, the detection variant),
    or an IoU (localisation-aware). Options as :func:`calibration_error_statistic`;
    formulas in :func:`binned_error` and the module doc. NaN without samples.
    """
    return calibration_error_statistic(confidence, target, **kwargs).value()


def ece(
    confidence: np.ndarray, target: np.ndarray, bins: int = 10, norm: Norm = "l1", **kw: Any
) -> float:
    """Expected calibration error, ``(Σ_b n_b/n |a_b - c_b|^p)^(1/p)``, equal-width bins by default."""
    return calibration_error(confidence, target, bins=bins, norm=norm, kind="ece", **kw)


def mce(confidence: np.ndarray, target: np.ndarray, bins: int = 10, **kw: Any) -> float:
    """Maximum calibration error, ``max_b |a_b - c_b|`` over non-empty bins."""
    return calibration_error(confidence, target, bins=bins, kind="mce", **kw)


def ace(
    confidence: np.ndarray, target: np.ndarray, bins: int = 10, norm: Norm = "l1", **kw: Any
) -> float:
    """Adaptive calibration error (Nixon et al. 2019): equal-mass bins, each bin weighted equally,
    ``((1/B') Σ_b |a_b - c_b|^p)^(1/p)``. Same as netcal's ``ACE(equal_intervals=False)``."""
    kw.setdefault("strategy", "mass")
    return calibration_error(confidence, target, bins=bins, norm=norm, kind="ace", **kw)


def reliability(
    confidence: np.ndarray,
    target: np.ndarray,
    bins: int = 10,
    strategy: BinStrategy = "width",
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> dict[str, np.ndarray]:
    """Per-bin count, mean confidence and mean target: the data of a reliability diagram."""
    conf = np.asarray(confidence, dtype=np.float64)
    edges = bin_edges(conf, bins, strategy, value_range)
    b = bin_index(conf, edges)
    cnt = np.bincount(b, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "edges": edges,
            "count": cnt,
            "confidence": np.bincount(b, conf, bins) / cnt,
            "target": np.bincount(b, np.asarray(target, np.float64), bins) / cnt,
        }


# ----------------------------------------------------------------------------- D-ECE


def box_features(dets: Detections, gt: GroundTruth, dims: Sequence[str] = BOX_DIMS) -> np.ndarray:
    """(N, len(dims)) features for D-ECE: score, box centre and size relative to the image.

    ``confidence`` is the score; ``cx, cy, w, h`` are divided by the image width/height,
    so they lie in [0, 1] for boxes inside the image (netcal's convention).
    """
    row = gt.images.index_of(dets.image_id)
    if len(row) and (row < 0).any():
        raise TrustmapError(
            f"detection {int(np.flatnonzero(row < 0)[0])}: image_id has no image", dets.source
        )
    iw, ih = gt.images.width[row], gt.images.height[row]
    x, y, w, h = dets.bbox.T
    table = {
        "confidence": dets.score,
        "cx": (x + w / 2) / iw,
        "cy": (y + h / 2) / ih,
        "w": w / iw,
        "h": h / ih,
    }
    unknown = [d for d in dims if d not in table]
    if unknown:
        raise TrustmapError(f"unknown D-ECE dimension(s) {unknown}; choose from {list(table)}")
    if not dims or dims[0] != "confidence":
        raise TrustmapError(f"D-ECE dimensions must start with 'confidence', got {list(dims)}")
    return np.column_stack([table[d] for d in dims]) if len(dets) else np.zeros((0, len(dims)))


def dece_statistic(
    features: np.ndarray,
    matched: np.ndarray,
    bins: int | Sequence[int] = 10,
    strategy: BinStrategy = "width",
    min_count: int = 1,
    group: np.ndarray | None = None,
) -> Statistic:
    """D-ECE (Küppers et al. 2020) as a bootstrap-ready statistic; see :func:`dece`."""
    cell, n_cells, conf = _dece_cells(features, bins, strategy)
    n = len(cell)
    grp = np.zeros(n, np.int64) if group is None else np.asarray(group, np.int64)
    return _grouped(
        grp,
        cell,
        np.column_stack([np.ones(n), conf, np.asarray(matched, np.float64)]),
        (n_cells,),
        lambda tot: binned_error(tot, "ece", 1, min_count),  # one grid, no class axis
    )


def _dece_cells(features: np.ndarray, bins: int | Sequence[int], strategy: BinStrategy):
    """Flat D-ECE cell of each row, the number of cells, and the confidence column.

    netcal clips features to [eps, 1 - eps] first; :func:`bin_index` already puts 0, 1
    and anything beyond into the end bins, and the clip moves a mean by at most 1e-16,
    so the copy is skipped.
    """
    X = np.asarray(features, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    n, d = X.shape
    nb = [int(bins)] * d if np.isscalar(bins) else [int(b) for b in bins]
    if len(nb) != d:
        raise TrustmapError(f"D-ECE: {len(nb)} bin counts given for {d} dimensions")
    if strategy == "mass":  # netcal's quantiles are of the clipped values
        cols = [np.clip(X[:, k], _EPS, 1.0 - _EPS) for k in range(d)]
    else:
        cols = [X[:, k] for k in range(d)]
    cell = np.zeros(n, np.int64)
    for k in range(d):  # row-major flat index, built in place
        cell *= nb[k]
        cell += bin_index(cols[k], bin_edges(cols[k], nb[k], strategy, (0.0, 1.0)))
    return cell, int(np.prod(nb)), X[:, 0]


def dece(
    features: np.ndarray,
    matched: np.ndarray,
    bins: int | Sequence[int] = 10,
    strategy: BinStrategy = "width",
    min_count: int = 1,
) -> float:
    """Detection ECE over confidence and box features, ``Σ_cells (n_c / n) |prec_c - conf_c|``.

    Cells are the product of per-dimension bins over ``features`` (column 0 the
    confidence; see :func:`box_features`); ``prec_c`` is the fraction of matched
    detections in the cell. Equals ``netcal.metrics.ECE(bins, detection=True,
    equal_intervals=(strategy == "width"), sample_threshold=min_count).measure(features,
    matched)``, computed with one ``bincount`` instead of ``binned_statistic_dd``.
    """
    cell, n_cells, conf = _dece_cells(features, bins, strategy)
    tot = np.column_stack(
        [
            np.bincount(cell, minlength=n_cells).astype(np.float64),
            np.bincount(cell, conf, n_cells),
            np.bincount(cell, np.asarray(matched, np.float64), n_cells),
        ]
    )
    return float(binned_error(tot, "ece", 1, min_count))


# ----------------------------------------------------------- classification-style metrics


def _head(probs: np.ndarray, k: int) -> Literal["softmax", "sigmoid"]:
    if probs.shape[1] == k + 1:
        return "softmax"
    if probs.shape[1] == k:
        return "sigmoid"
    raise TrustmapError(
        f"probability vectors have {probs.shape[1]} columns; expected {k} (sigmoid) or {k + 1} (softmax)"
    )


def top_label_statistic(
    probs: np.ndarray,
    target: np.ndarray,
    *,
    group: np.ndarray | None = None,
    bins: int = 10,
    norm: Norm = "l2",
    strategy: BinStrategy = "width",
) -> Statistic:
    """Top-label calibration error: confidence ``max_k p_k`` against ``1[argmax = target]``.

    ``target`` is a column index (K = background for softmax heads; with sigmoid heads a
    background target is never the argmax, so it always counts as wrong).
    """
    p = np.asarray(probs, dtype=np.float64)
    return calibration_error_statistic(
        p.max(axis=1),
        p.argmax(axis=1) == np.asarray(target),
        group=group,
        bins=bins,
        norm=norm,
        strategy=strategy,
    )


def classwise_statistic(
    probs: np.ndarray,
    target: np.ndarray,
    *,
    group: np.ndarray | None = None,
    bins: int = 10,
    norm: Norm = "l2",
    strategy: BinStrategy = "width",
) -> Statistic:
    """Classwise (marginal) calibration error over every column ``k`` (background included):
    ``p_k`` of every sample against ``1[target = k]``, then the class mean (Kumar et al.)."""
    p = np.asarray(probs, dtype=np.float64)
    n, k = p.shape
    tgt = np.asarray(target)
    grp = np.zeros(n, np.int64) if group is None else np.asarray(group, np.int64)
    ng = int(grp.max()) + 1 if n else 1
    parts = []
    for c in range(k):  # one class at a time keeps memory at O(N), not O(N K)
        pc = p[:, c]
        edges = bin_edges(pc, bins, strategy, (0.0, 1.0))
        parts.append(
            _aggregate(
                grp,
                c * bins + bin_index(pc, edges),
                np.column_stack([np.ones(n), pc, tgt == c]),
                ng,
                (k, bins),
            )
        )
    pw = _power(norm)
    return Statistic.concat(parts, lambda tot: _mean_over_classes(binned_error(tot, "ece", pw), pw))


def nll_brier_statistics(
    probs: np.ndarray, target: np.ndarray, n_classes: int, group: np.ndarray | None = None
) -> tuple[Statistic, Statistic]:
    """Mean negative log-likelihood and Brier score over K+1 outcomes (K classes + background).

    Softmax heads (K+1 columns, background last): ``NLL = -log p_{y}``,
    ``Brier = Σ_k (p_k - 1[y=k])^2`` over all K+1 columns.

    Sigmoid heads (K columns, no background column) are K independent binary
    predictors, so the reduction is per class and summed over classes:
    ``NLL = -Σ_k [y_k log p_k + (1-y_k) log(1-p_k)]`` and ``Brier = Σ_k (p_k - y_k)^2``
    with ``y_k = 1[y=k]``; a background target makes every ``y_k = 0``. Summing (not
    averaging) over classes keeps both scores comparable with the softmax ones, where
    the background mass plays the role of the all-zero target. Probabilities are
    clipped to [1e-12, 1 - 1e-12] inside the log.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(target, np.int64)
    n = len(p)
    head = _head(p, n_classes)
    onehot = np.zeros_like(p)
    inside = y < p.shape[1]
    onehot[np.flatnonzero(inside), y[inside]] = 1.0
    pc = np.clip(p, 1e-12, 1 - 1e-12)
    if head == "softmax":
        nll = -np.log(pc[np.arange(n), y])
    else:
        nll = -(onehot * np.log(pc) + (1 - onehot) * np.log1p(-pc)).sum(axis=1)
    brier = ((p - onehot) ** 2).sum(axis=1)
    grp = np.zeros(n, np.int64) if group is None else np.asarray(group, np.int64)

    def mean(tot: np.ndarray) -> np.ndarray:
        return np.where(tot[..., 0, 0] > 0, tot[..., 0, 1] / np.maximum(tot[..., 0, 0], 1), np.nan)

    one = np.ones(n)
    return (
        _grouped(grp, np.zeros(n, np.int64), np.column_stack([one, nll]), (1,), mean),
        _grouped(grp, np.zeros(n, np.int64), np.column_stack([one, brier]), (1,), mean),
    )


def nll(probs: np.ndarray, target: np.ndarray, n_classes: int) -> float:
    """Mean NLL over K+1 outcomes; see :func:`nll_brier_statistics` for the sigmoid rule."""
    return nll_brier_statistics(probs, target, n_classes)[0].value()


def brier(probs: np.ndarray, target: np.ndarray, n_classes: int) -> float:
    """Mean Brier score over K+1 outcomes; see :func:`nll_brier_statistics`."""
    return nll_brier_statistics(probs, target, n_classes)[1].value()


# --------------------------------------------------------------------- LaECE / LaACE


def laece(
    score: np.ndarray,
    iou: np.ndarray,
    category: np.ndarray,
    bins: int = 25,
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> float:
    """Localisation-aware ECE (Kuzucu et al., ECCV 2024; Oksuz et al., CVPR 2023).

    Per class ``c`` with ``n_c`` detections and 25 equal-width bins:
    ``LaECE_c = Σ_b (n_b / n_c) |mean score_b - (Σ_{TP in b} IoU) / n_b|``, and
    ``LaECE = mean_c LaECE_c``. ``iou`` is the IoU of each TP with its object and 0 for
    FPs; the TP rule (threshold tau, 0 = any overlap) is the matcher's.

    Differences from uq-detr 0.1.1's ``laece``: uq-detr spreads the bins over each class's
    observed score range (pass ``value_range=None`` to do the same) and puts values on an
    interior edge in the lower bin (here: the upper bin). With its ``"greedy"`` criterion
    at threshold 0 uq-detr also matches pairs with IoU 0 and of other classes; use its
    ``"independent"`` criterion (our ``mode="any"``) to compare at tau = 0.
    """
    return calibration_error(
        score, iou, classes=category, bins=bins, value_range=value_range, kind="ece"
    )


def laace(score: np.ndarray, iou: np.ndarray, category: np.ndarray, bins: int = 25) -> float:
    """Localisation-aware ACE: :func:`laece` with equal-mass bins per class, each bin weighted
    equally (the ACE rule), ``mean_c (1/B'_c) Σ_b |mean score_b - Σ IoU_b / n_b|``."""
    return calibration_error(score, iou, classes=category, bins=bins, strategy="mass", kind="ace")


# --------------------------------------------------------------------- average precision


def _coco_order(score, image_index, rank, category):
    """pycocotools' accumulation order: class, then score desc, then image, then in-image rank."""
    return np.lexsort((rank, image_index, -score, category))


def _ap_from_curves(
    rc: np.ndarray, pr: np.ndarray, row: np.ndarray, n_rows: int, recall_points: np.ndarray
) -> np.ndarray:
    """COCO interpolated AP per row from concatenated PR curves (rows contiguous, rc sorted).

    Precision is made monotone (right-to-left running max); for each recall point r the
    precision at the first curve point with recall >= r counts, 0 past the curve's end;
    AP is the mean over recall points.
    """
    ap = np.zeros(n_rows)
    starts = np.searchsorted(row, np.arange(n_rows), "left")
    ends = np.searchsorted(row, np.arange(n_rows), "right")
    for i in range(n_rows):  # a loop over classes keeps recall comparisons exact
        seg = slice(starts[i], ends[i])
        if starts[i] == ends[i]:
            continue
        env = np.maximum.accumulate(pr[seg][::-1])[::-1]
        pos = np.searchsorted(rc[seg], recall_points, "left")
        ok = pos < len(env)
        ap[i] = np.where(ok, env[np.minimum(pos, len(env) - 1)], 0.0).mean()
    return ap


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
    score = np.asarray(score, np.float64)
    tp2 = np.atleast_2d(np.asarray(tp, bool))
    n = len(score)
    ig2 = np.zeros_like(tp2) if ignored is None else np.atleast_2d(np.asarray(ignored, bool))
    cats = np.array(sorted(n_gt), dtype=np.int64)
    cat = np.asarray(category, np.int64)
    keep = np.isin(cat, cats)
    if rank is not None and max_dets is not None:
        keep &= np.asarray(rank) < max_dets
    img = np.zeros(n, np.int64) if image_index is None else np.asarray(image_index, np.int64)
    rk = np.zeros(n, np.int64) if rank is None else np.asarray(rank, np.int64)
    if order is not None:  # already by (image, rank): a stable sort by (class, -score) keeps that
        sel = np.asarray(order)[keep[order]]
        order = sel[np.lexsort((-score[sel], cat[sel]))]
    else:
        sel = np.flatnonzero(keep)
        order = sel[
            _coco_order(score[sel], img[sel], rk[sel], cat[sel])
        ]  # one sort, all thresholds
    row = np.searchsorted(cats, cat[order])
    starts = np.searchsorted(row, np.arange(len(cats)), "left")
    ngt = np.array([n_gt[int(c)] for c in cats], dtype=np.float64)
    out = np.empty((len(tp2), len(cats)))
    for t in range(len(tp2)):
        t_ok, ig = tp2[t, order], ig2[t, order]
        ctp = np.cumsum(t_ok & ~ig, dtype=np.float64)
        cfp = np.cumsum(~t_ok & ~ig, dtype=np.float64)
        ctp -= np.r_[0.0, ctp][starts][row]  # restart the sums at each class
        cfp -= np.r_[0.0, cfp][starts][row]
        rc = ctp / np.maximum(ngt[row], 1.0)
        pr = ctp / (ctp + cfp + np.spacing(1))
        out[t] = _ap_from_curves(rc, pr, row, len(cats), COCO_RECALL_POINTS)
    out[:, ngt == 0] = np.nan
    return out[0] if np.ndim(tp) == 1 else out


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
    sbin = np.zeros(len(dets), np.int64)
    for c in range(nc):
        sc = sel[cat_row[sel] == c]
        if sc.size:
            neg = -dets.score[sc]
            sbin[sc] = bin_index(
                neg, bin_edges(neg, nb, "mass", (float(neg.min()), float(neg.max())))
            )
    shape = (nt + 1, nc, nb)
    ng = max(len(gt.images), 1)
    img = matches.image_index[sel]
    cb = cat_row[sel] * nb + sbin[sel]
    parts = [
        _aggregate(
            img,
            nt * nc * nb + cb,
            np.column_stack([np.ones(sel.size), np.zeros(sel.size)]),
            ng,
            shape,
        )
    ]
    for k, t in enumerate(tix):
        tp_k, ig_k = matches.tp[t, sel], matches.ignored[t, sel]
        hit = np.flatnonzero(tp_k | ig_k)
        parts.append(
            _aggregate(
                img[hit], k * nc * nb + cb[hit], np.column_stack([tp_k[hit], ig_k[hit]]), ng, shape
            )
        )
    an = gt.annotations
    obj = ~an.is_region
    g_row = index_in(an.category_id[obj], cats)
    g_img = gt.images.index_of(an.image_id[obj])
    ok = (g_row >= 0) & (g_img >= 0)
    parts.append(
        _aggregate(
            g_img[ok],
            nt * nc * nb + g_row[ok] * nb,
            np.column_stack([np.zeros(ok.sum()), np.ones(ok.sum())]),
            ng,
            shape,
        )
    )
    return Statistic.concat(parts, _binned_map)


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


# -------------------------------------------------------------------------- the audit


class MetricsConfig(BaseModel):
    """Settings of :func:`compute_metrics` (validated; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    match_mode: Literal["greedy", "hungarian", "any"] = "greedy"
    iou_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="TP threshold for ECE, D-ECE, NLL, Brier."
    )
    bins: int = Field(
        10, ge=1, description="Bins of ECE/MCE/ACE and the top-label/classwise errors."
    )
    bin_strategy: Literal["width", "mass"] = "width"
    norm: Literal["l1", "l2"] = Field(
        "l1", description="Norm of ECE/ACE (top-label and classwise use classwise_norm)."
    )
    classwise_norm: Literal["l1", "l2"] = Field(
        "l2", description="Huseljic et al. use L2 with 10 bins."
    )
    dece_dims: tuple[str, ...] = BOX_DIMS
    dece_bins: tuple[int, ...] = (10, 5, 5, 5, 5)
    laece_bins: int = Field(25, ge=1)
    laece_tau: float = Field(
        0.0, ge=0.0, le=1.0, description="TP IoU threshold of LaECE/LaACE; 0 = any overlap."
    )
    ap_backend: Literal["pycocotools", "trustmap"] = "pycocotools"
    ap_max_dets: int = Field(100, ge=1)
    ap_score_bins: int = Field(100, ge=2, description="Score bins of the bootstrapped AP.")
    n_boot: int = Field(
        1000, ge=0, description="Bootstrap replicates over images; 0 = no intervals."
    )
    ci_level: float = Field(0.95, gt=0.0, lt=1.0)
    seed: int | None = 0

    @field_validator("dece_dims")
    @classmethod
    def _dims(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [d for d in v if d not in BOX_DIMS]
        if bad or not v or v[0] != "confidence":
            raise ValueError(
                f"must start with 'confidence' and use only {list(BOX_DIMS)}; got {list(v)}"
            )
        return v

    @model_validator(mode="after")
    def _bins_match_dims(self) -> MetricsConfig:
        if len(self.dece_bins) != len(self.dece_dims):
            raise ValueError(
                f"dece_bins has {len(self.dece_bins)} entries for {len(self.dece_dims)} dece_dims"
            )
        if any(b < 1 for b in self.dece_bins):
            raise ValueError("dece_bins must be >= 1")
        return self


def load_config(
    config: MetricsConfig | Mapping[str, Any] | None, source: str | None = None
) -> MetricsConfig:
    """Validate a config mapping, turning pydantic's errors into one TrustmapError line."""
    if isinstance(config, MetricsConfig):
        return config
    try:
        return MetricsConfig.model_validate(dict(config or {}))
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(x) for x in e["loc"]) or "config"
        raise TrustmapError(f"metrics config: {where}: {e['msg']}", source) from None


def compute_metrics(
    dets: Detections,
    gt: GroundTruth,
    config: MetricsConfig | Mapping[str, Any] | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """Every audit number with its bootstrap interval over images.

    Returns ``{"config", "counts", "metrics": {name: {"value", "ci_low", "ci_high",
    "std"} or {"value": None, "skipped": why}}, "per_category", "coco"}``. Detections
    matched to crowd/ignore regions are left out of every calibration metric, as COCO
    leaves them out of AP. The K+1-way metrics (top-label, classwise, NLL, Brier) need
    probability vectors; their targets come from class-agnostic matching at
    ``iou_threshold``, so a box on a car predicted as "truck" has target "car" (Huseljic
    et al.'s modelling perspective), and unmatched boxes have target background.
    """
    cfg = load_config(config)
    if validate:
        dets.validate(gt)
    thr, tau = cfg.iou_threshold, cfg.laece_tau
    main = sorted({thr, tau})
    if cfg.match_mode == "greedy":
        m = match(dets, gt, sorted({*main, *COCO_IOU_THRESHOLDS}), "greedy")
        m_ap = m
    else:
        m = match(dets, gt, main, cfg.match_mode)
        m_ap = match(dets, gt, COCO_IOU_THRESHOLDS, "greedy")
    ti, tt = m.index(thr), m.index(tau)
    # without intervals, one group: the statistics then skip the per-image tables
    group = m.image_index if cfg.n_boot > 0 else np.zeros(len(dets), np.int64)
    cats = gt.category_ids
    stats: dict[str, Statistic] = {}
    skipped: dict[str, str] = {}

    valid = ~m.ignored[ti]
    s, tp, g, cat = dets.score[valid], m.tp[ti, valid], group[valid], dets.category_id[valid]
    common = {"group": g, "bins": cfg.bins, "strategy": cfg.bin_strategy}
    stats["ece"] = calibration_error_statistic(s, tp, norm=cfg.norm, kind="ece", **common)
    # same cells, other read-outs: sharing the entries lets the bootstrap reuse one product
    stats["mce"] = replace(stats["ece"], finalize=_class_mean("mce", 1))
    stats["ace"] = calibration_error_statistic(
        s, tp, norm=cfg.norm, kind="ace", group=g, bins=cfg.bins, strategy="mass"
    )
    stats["dece"] = dece_statistic(
        box_features(dets, gt, cfg.dece_dims)[valid], tp, cfg.dece_bins, cfg.bin_strategy, group=g
    )
    pw = _power(cfg.classwise_norm)
    stats["detection_top_label_ce"] = replace(stats["ece"], finalize=_class_mean("ece", pw))
    stats["detection_classwise_ce"] = calibration_error_statistic(
        s, tp, classes=cat, norm=cfg.classwise_norm, **common
    )

    vt = ~m.ignored[tt]
    la = {"classes": dets.category_id[vt], "group": group[vt], "bins": cfg.laece_bins}
    stats["laece"] = calibration_error_statistic(dets.score[vt], m.iou[tt, vt], kind="ece", **la)
    stats["laace"] = calibration_error_statistic(
        dets.score[vt], m.iou[tt, vt], kind="ace", strategy="mass", **la
    )

    probs = dets.class_probabilities(cats)
    if probs is None:
        for name in ("top_label_ce", "classwise_ce", "nll", "brier"):
            skipped[name] = "the detections carry no probability vectors (probs or logits)"
    else:
        col_cats = dets.prob_category_ids or tuple(int(c) for c in cats)
        ma = match(dets, gt, thr, cfg.match_mode, class_aware=False)
        va = ~ma.ignored[0]
        target = ma.target_column(thr, col_cats)[va]
        pv, ga = probs[va], group[va]
        stats["top_label_ce"] = top_label_statistic(
            pv, target, group=ga, bins=cfg.bins, norm=cfg.classwise_norm, strategy=cfg.bin_strategy
        )
        stats["classwise_ce"] = classwise_statistic(
            pv, target, group=ga, bins=cfg.bins, norm=cfg.classwise_norm, strategy=cfg.bin_strategy
        )
        stats["nll"], stats["brier"] = nll_brier_statistics(pv, target, len(col_cats), group=ga)

    values = {k: v.value() for k, v in stats.items()}
    i50 = COCO_IOU_THRESHOLDS.index(0.5)
    if cfg.n_boot > 0:  # the binned AP exists for the bootstrap only
        n_t = len(COCO_IOU_THRESHOLDS)
        stats["map"] = ap_statistic(
            m_ap, dets, gt, COCO_IOU_THRESHOLDS, cfg.ap_max_dets, cfg.ap_score_bins
        )
        stats["ap50"] = replace(
            stats["map"], finalize=lambda tot: _binned_map(tot[..., [i50, n_t], :, :, :])
        )
    # exact AP for the point estimate (bins are for the bootstrap only)
    kk = [m_ap.index(t) for t in COCO_IOU_THRESHOLDS]
    table = average_precision(
        dets.score,
        m_ap.tp[kk],
        dets.category_id,
        m_ap.n_gt,
        ignored=m_ap.ignored[kk],
        image_index=m_ap.image_index,
        rank=m_ap.rank,
        max_dets=cfg.ap_max_dets,
        order=m_ap.order,
    )  # (T, C)
    ap_cats = [int(c) for c in sorted(m_ap.n_gt)]
    ours = {"map": _nanmean(table.ravel()), "ap50": _nanmean(table[i50])}
    ours_ap = {c: _nanmean(table[:, j]) for j, c in enumerate(ap_cats)}
    ours_ap50 = {c: float(table[i50, j]) for j, c in enumerate(ap_cats)}
    coco = None
    if cfg.ap_backend == "pycocotools":
        coco = coco_eval(dets, gt, cfg.ap_max_dets)
        values["map"], values["ap50"] = coco["stats"]["AP"], coco["stats"]["AP50"]
        ap_by_cat = coco["per_category_ap"]
    else:
        values["map"], values["ap50"] = ours["map"], ours["ap50"]
        ap_by_cat = ours_ap

    intervals = bootstrap(stats, len(gt.images), cfg.n_boot, cfg.seed, cfg.ci_level)
    # AP replicates are binned (see ap_statistic); move their interval by the binning's
    # full-sample offset so it sits around the exact value
    ci_shift = {}
    for name in ("map", "ap50"):
        if name in intervals and np.isfinite(values[name]):
            ci_shift[name] = values[name] - stats[name].value()
            iv = intervals[name]
            iv.low, iv.high = iv.low + ci_shift[name], iv.high + ci_shift[name]
    metrics: dict[str, Any] = {}
    for name, v in values.items():
        iv = intervals.get(name)
        metrics[name] = {
            "value": None if not np.isfinite(v) else float(v),
            "ci_low": iv.low if iv else None,
            "ci_high": iv.high if iv else None,
            "std": iv.std if iv else None,
        }
        if name in ci_shift:
            metrics[name]["ci_shift"] = ci_shift[name]
    for name, why in skipped.items():
        metrics[name] = {"value": None, "skipped": why}

    per_category = {}
    for c in cats:
        c = int(c)
        sel = valid & (dets.category_id == c)
        selt = vt & (dets.category_id == c)
        per_category[c] = {
            "name": gt.categories[c],
            "n_gt": m.n_gt[c],
            "n_detections": int((dets.category_id == c).sum()),
            "n_tp": int(m.tp[ti, sel].sum()),
            "ap": _none_if_nan(ap_by_cat.get(c, float("nan"))),
            "ap50": _none_if_nan(ours_ap50.get(c, float("nan"))),
            "ece": _none_if_nan(
                calibration_error(
                    dets.score[sel],
                    m.tp[ti, sel],
                    bins=cfg.bins,
                    strategy=cfg.bin_strategy,
                    norm=cfg.norm,
                )
            )
            if sel.any()
            else None,
            "laece": _none_if_nan(
                calibration_error(dets.score[selt], m.iou[tt, selt], bins=cfg.laece_bins)
            )
            if selt.any()
            else None,
        }
    return {
        "config": cfg.model_dump(mode="json"),
        "counts": {
            "images": len(gt.images),
            "ground_truth": int(sum(m.n_gt.values())),
            "regions": int(gt.annotations.is_region.sum()),
            "detections": len(dets),
            "tp": int(m.tp[ti].sum()),
            "ignored": int(m.ignored[ti].sum()),
        },
        "metrics": metrics,
        "per_category": per_category,
        "coco": coco["stats"] if coco else None,
        "ap_trustmap": ours,
    }


def _nanmean(v: Sequence[float] | np.ndarray) -> float:
    a = np.asarray(v, np.float64)
    return float(a[np.isfinite(a)].mean()) if np.isfinite(a).any() else float("nan")


def _none_if_nan(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


# --------------------------------------------------------------------------- helpers


def _aggregate(
    group: np.ndarray,
    cell: np.ndarray,
    values: np.ndarray,
    n_groups: int,
    cell_shape: tuple[int, ...],
) -> Statistic:
    """Entries of a statistic; rows sharing (group, cell) are summed first when the table is small."""
    n_cells = int(np.prod(cell_shape))
    s = values.shape[1]
    if len(group) == 0:
        return Statistic.from_rows(group, cell, values, cell_shape, _unset)
    if n_groups * n_cells > max(4 * len(group), 100_000):
        # large grids (D-ECE, AP): rows rarely share a cell within an image, so a dense
        # table would be mostly empty; the sparse conversion adds the few duplicates
        return Statistic.from_rows(group, cell, values, cell_shape, _unset)
    key = np.asarray(group, np.int64) * n_cells + np.asarray(cell, np.int64)
    size = n_groups * n_cells
    sums = np.column_stack(
        [np.bincount(key, weights=values[:, j], minlength=size) for j in range(s)]
    )
    used = np.flatnonzero(sums.any(axis=1))
    return Statistic.from_rows(used // n_cells, used % n_cells, sums[used], cell_shape, _unset)


def _codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense codes 0..k-1 of the distinct values (sorted), without sorting small-range ints."""
    if values.size and np.issubdtype(values.dtype, np.integer):
        lo, hi = int(values.min()), int(values.max())
        if hi - lo < 1_000_000:
            present = np.bincount(values - lo, minlength=hi - lo + 1) > 0
            lut = np.cumsum(present) - 1
            return lut[values - lo].astype(np.int64), max(int(present.sum()), 1)
    uniq, inv = np.unique(values, return_inverse=True)
    return inv.astype(np.int64), max(len(uniq), 1)


def _grouped(group, cell, values, cell_shape, finalize) -> Statistic:
    ng = int(np.max(group)) + 1 if len(group) else 1
    st = _aggregate(group, cell, values, ng, cell_shape)
    st.finalize = finalize
    return st


def _unset(tot: np.ndarray) -> np.ndarray:  # pragma: no cover - replaced before use
    raise RuntimeError("statistic without finalize")


__all__ = [
    "BOX_DIMS",
    "COCO_IOU_THRESHOLDS",
    "MODES",
    "MetricsConfig",
    "ace",
    "average_precision",
    "bin_edges",
    "bin_index",
    "box_features",
    "brier",
    "calibration_error",
    "coco_eval",
    "compute_metrics",
    "dece",
    "ece",
    "laace",
    "laece",
    "mce",
    "nll",
    "reliability",
]
