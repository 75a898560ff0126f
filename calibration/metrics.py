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
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from calibration.bootstrap import Statistic, bootstrap
from calibration.detections import Detections, GroundTruth
from calibration.matching import MODES, Matches, block_order, index_in, match
from tiles.errors import TrustmapError

BinStrategy = Literal["width", "mass"]
Norm = Literal["l1", "l2"]
Kind = Literal["ece", "ace", "mce"]
BOX_DIMS = ("confidence", "cx", "cy", "w", "h")
COCO_IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: ``ap_backend="auto"`` asks pycocotools (the reference) up to this many detections and
#: uses trustmap's own, proven-equal AP above, where pycocotools' evaluate alone takes
#: ~10 CPU seconds per million detections (plus its loadRes).
AP_AUTO_LIMIT = 50_000
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
    # quantiles of the sorted copy: the same numbers, several times faster (partitioning
    # sorted data is cheap, and the vectorised sort cheaper than partitioning unsorted data)
    edges = (
        np.quantile(np.sort(x), np.linspace(0.0, 1.0, bins + 1))
        if x.size
        else np.linspace(lo, hi, bins + 1)
    )
    edges[0], edges[-1] = lo, hi
    return edges


def bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value: ``i`` with ``edges[i] <= x < edges[i+1]``, last bin closed, clipped.

    The same rule as ``np.histogramdd`` (netcal's binning), so values on an edge land in
    the same bin. Equal-width edges (``np.linspace``) take an arithmetic guess, exact up
    to one bin, checked against the edges themselves: the same bins as ``searchsorted``,
    about twice as fast from 10 bins on. Other edges use ``searchsorted``.
    """
    x = np.asarray(x, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    b = len(edges) - 1
    lo, hi = float(edges[0]), float(edges[-1])
    if (
        b >= 4
        and hi > lo
        and np.array_equal(edges, np.linspace(lo, hi, b + 1))
        and np.isfinite(x).all()
    ):
        i = ((x - lo) * (b / (hi - lo))).astype(np.int64)
        np.clip(i, 0, b - 1, out=i)
        i -= x < edges[i]
        i += (x >= edges[i + 1]) & (i < b - 1)
        return np.clip(i, 0, b - 1, out=i)
    return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, b - 1)


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
    if classes is None:
        cls_idx, n_cls = None, 1
    else:
        cls_idx, n_cls, _ = _codes(np.asarray(classes))
    b = _class_bins(conf, cls_idx, n_cls, bins, strategy, value_range)
    cell = b if cls_idx is None else cls_idx * bins + b
    return _grouped(
        group,
        cell,
        [None, conf, target],
        (n_cls, bins),
        _class_mean(kind, _power(norm), min_count),
    )


def _class_bins(conf, cls_idx, n_cls, bins, strategy, value_range) -> np.ndarray:
    """Bin of each value; data-dependent edges (equal mass, observed range) per class."""
    per_class_edges = strategy == "mass" or value_range is None
    if not per_class_edges or cls_idx is None:
        return bin_index(conf, bin_edges(conf, bins, strategy, value_range))
    b = np.empty(len(conf), np.int64)
    for c in range(n_cls):
        rows = np.flatnonzero(cls_idx == c)
        xc = conf[rows]
        b[rows] = bin_index(xc, bin_edges(xc, bins, strategy, value_range))
    return b


def _class_mean(kind: Kind, p: int, min_count: int = 1):
    """``finalize`` of a (class, bin) grid: per-class error, class mean, ``1/p`` root."""
    return lambda tot: _mean_over_classes(binned_error(tot, kind, p, min_count), p)


def _pooled(kind: Kind, p: int):
    """``finalize`` of a (class, bin) grid read as one class: the classes' bins added up."""
    return lambda tot: _mean_over_classes(binned_error(tot.sum(axis=-3), kind, p)[..., None], p)


def per_class_errors(tot: np.ndarray, kind: Kind = "ece", p: int = 1) -> np.ndarray:
    """Each class's error (``1/p`` root taken) from a (class, bin, 3) total; NaN without samples."""
    return binned_error(tot, kind, p) ** (1.0 / p)


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
    cols = _box_columns(dets, gt, dims)
    return np.column_stack(cols) if len(dets) else np.zeros((0, len(dims)))


def _box_columns(
    dets: Detections,
    gt: GroundTruth,
    dims: Sequence[str],
    rows: np.ndarray | None = None,
    image_row: np.ndarray | None = None,
) -> list[np.ndarray]:
    """The columns of :func:`box_features`, for ``rows`` only (default all); ``image_row``
    (each detection's row in ``gt.images``) saves looking the images up again."""
    unknown = [d for d in dims if d not in BOX_DIMS]
    if unknown:
        raise TrustmapError(f"unknown D-ECE dimension(s) {unknown}; choose from {list(BOX_DIMS)}")
    if not dims or dims[0] != "confidence":
        raise TrustmapError(f"D-ECE dimensions must start with 'confidence', got {list(dims)}")
    row = gt.images.index_of(dets.image_id) if image_row is None else image_row
    if len(row) and (row < 0).any():
        raise TrustmapError(
            f"detection {int(np.flatnonzero(row < 0)[0])}: image_id has no image", dets.source
        )
    box, score = dets.bbox, dets.score
    if rows is not None:
        row, box, score = row[rows], box[rows], score[rows]
    iw, ih = gt.images.width[row], gt.images.height[row]
    x, y, w, h = box.T
    make = {
        "confidence": lambda: score,
        "cx": lambda: (x + w / 2) / iw,
        "cy": lambda: (y + h / 2) / ih,
        "w": lambda: w / iw,
        "h": lambda: h / ih,
    }
    return [np.asarray(make[d](), np.float64) for d in dims]


def dece_statistic(
    features: np.ndarray | Sequence[np.ndarray],
    matched: np.ndarray,
    bins: int | Sequence[int] = 10,
    strategy: BinStrategy = "width",
    min_count: int = 1,
    group: np.ndarray | None = None,
) -> Statistic:
    """D-ECE (Küppers et al. 2020) as a bootstrap-ready statistic; see :func:`dece`.

    ``features``: the (N, D) array, or its D columns. With ``min_count <= 1`` the
    statistic keeps one number per cell, ``Σ (matched - confidence)``, and the count
    in one extra cell: ``Σ_c (n_c/n) |prec_c - conf_c| = Σ_c |Σ_{i in c} (m_i - s_i)| / n``,
    a third of the entries (and of the bootstrap's work) of (count, Σconf, Σmatched).
    """
    cell, n_cells, conf = _dece_cells(features, bins, strategy)
    if min_count > 1:
        return _grouped(
            group,
            cell,
            [None, conf, matched],
            (n_cells,),
            lambda tot: binned_error(tot, "ece", 1, min_count),
        )
    ng = _n_groups(group)
    sums = _Sums(ng, (n_cells + 1,), 1, len(cell))
    sums.add(group, cell, [np.asarray(matched, np.float64) - conf])
    count = np.bincount(np.zeros(len(cell), np.int64) if group is None else group, minlength=ng)
    sums.add(None if group is None else np.arange(ng), np.full(ng, n_cells), [count])
    return sums.statistic(_dece_from_gaps)


def _dece_from_gaps(tot: np.ndarray) -> np.ndarray:
    """D-ECE from ``tot[..., cells + 1, 1]``: per-cell Σ(matched - conf), then the count."""
    t = tot[..., 0]
    n = t[..., -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.abs(t[..., :-1]).sum(-1) / np.where(n > 0, n, 1.0), np.nan)


def _dece_cells(
    features: np.ndarray | Sequence[np.ndarray], bins: int | Sequence[int], strategy: BinStrategy
):
    """Flat D-ECE cell of each row, the number of cells, and the confidence column.

    netcal clips features to [eps, 1 - eps] first; :func:`bin_index` already puts 0, 1
    and anything beyond into the end bins, and the clip moves a mean by at most 1e-16,
    so the copy is skipped.
    """
    if isinstance(features, list | tuple):
        cols = [np.asarray(c, np.float64) for c in features]
    else:
        X = np.asarray(features, dtype=np.float64)
        if X.ndim == 1:
            X = X[:, None]
        cols = [X[:, k] for k in range(X.shape[1])]
    d = len(cols)
    n = len(cols[0]) if d else 0
    nb = [int(bins)] * d if np.isscalar(bins) else [int(b) for b in bins]
    if len(nb) != d:
        raise TrustmapError(f"D-ECE: {len(nb)} bin counts given for {d} dimensions")
    conf = cols[0]
    if strategy == "mass":  # netcal's quantiles are of the clipped values
        cols = [np.clip(c, _EPS, 1.0 - _EPS) for c in cols]
    cell = np.zeros(n, np.int64)
    for k in range(d):  # row-major flat index, built in place
        cell *= nb[k]
        cell += bin_index(cols[k], bin_edges(cols[k], nb[k], strategy, (0.0, 1.0)))
    return cell, int(np.prod(nb)), conf


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
    conf, top = _top_label(probs)
    return calibration_error_statistic(
        conf, top == np.asarray(target), group=group, bins=bins, norm=norm, strategy=strategy
    )


def _top_label(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row max and argmax (first on ties), a column at a time: several times faster than
    ``max(axis=1)`` / ``argmax(axis=1)`` over a handful of columns."""
    p = np.asarray(probs, dtype=np.float64)
    n, k = p.shape
    if k == 0:
        return np.zeros(n), np.zeros(n, np.int64)
    conf = p[:, 0].copy()
    top = np.zeros(n, np.int64)
    for c in range(1, k):
        col = p[:, c]
        up = col > conf
        top[up] = c
        np.maximum(conf, col, out=conf)
    return conf, top


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
    return _classwise([p[:, c] for c in range(p.shape[1])], target, group, bins, norm, strategy)


def _classwise(cols, target, group, bins, norm, strategy) -> Statistic:
    """:func:`classwise_statistic` from the probability columns."""
    k = len(cols)
    tgt = np.asarray(target)
    sums = _Sums(_n_groups(group), (k, bins), 3, len(tgt))
    for c, pc in enumerate(cols):  # one class at a time keeps memory at O(N), not O(N K)
        b = bin_index(pc, bin_edges(pc, bins, strategy, (0.0, 1.0)))
        sums.add(group, c * bins + b, [None, pc, tgt == c])
    pw = _power(norm)
    return sums.statistic(lambda tot: _mean_over_classes(binned_error(tot, "ece", pw), pw))


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

    Brier is computed as ``Σ_k p_k^2 - 2 p_y + 1`` (``y`` a column) or ``Σ_k p_k^2`` (a
    sigmoid head's background target), without a one-hot matrix.
    """
    nll, brier = _nll_brier_rows(probs, target, n_classes)
    cell = np.zeros(len(nll), np.int64)
    return (
        _grouped(group, cell, [None, nll], (1,), _mean_of_second),
        _grouped(group, cell, [None, brier], (1,), _mean_of_second),
    )


def _mean_of_second(tot: np.ndarray) -> np.ndarray:
    """``finalize`` of a (1, (count, sum)) grid: the mean, NaN without samples."""
    return np.where(tot[..., 0, 0] > 0, tot[..., 0, 1] / np.maximum(tot[..., 0, 0], 1), np.nan)


def _nll_brier_rows(
    probs: np.ndarray, target: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row NLL and Brier score of :func:`nll_brier_statistics`."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(target, np.int64)
    n = len(p)
    head = _head(p, n_classes)
    inside = y < p.shape[1]
    p_y = np.where(inside, p[np.arange(n), np.minimum(y, p.shape[1] - 1)], 0.0)
    if head == "softmax":
        nll = -np.log(np.clip(p_y, 1e-12, 1 - 1e-12))
    else:
        pc = np.clip(p, 1e-12, 1 - 1e-12)
        nll = -np.log1p(-pc).sum(axis=1)
        pyc = np.clip(p_y, 1e-12, 1 - 1e-12)
        nll -= np.where(inside, np.log(pyc) - np.log1p(-pyc), 0.0)
    brier = np.einsum("ij,ij->i", p, p) + np.where(inside, 1.0 - 2.0 * p_y, 0.0)
    return nll, brier


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
    ap_backend: Literal["auto", "pycocotools", "trustmap"] = Field(
        "auto",
        description="Who computes AP/AP50: pycocotools (also its 12 summary numbers), "
        "trustmap's own AP (equal to pycocotools' to 1e-12, without its evaluate), or auto: "
        f"pycocotools up to {AP_AUTO_LIMIT:,} detections, trustmap above.",
    )
    ap_max_dets: int = Field(100, ge=1)
    ap_score_bins: int = Field(100, ge=2, description="Score bins of the bootstrapped AP.")
    n_boot: int = Field(
        1000, ge=0, description="Bootstrap replicates over images; 0 = no intervals."
    )
    ci_level: float = Field(0.95, gt=0.0, lt=1.0)
    ci_method: Literal["bc", "percentile"] = Field(
        "percentile",
        description="Plain percentile (default) or bias-corrected percentile intervals; "
        "see calibration.bootstrap.interval. BC cannot bring back an estimate that the "
        "percentile interval misses, and collapses onto the lowest replicate when every "
        "replicate lies above the estimate (binned ECEs are biased upward on resamples), "
        "so the honest default is the plain interval plus ci_z0 as the bias flag.",
    )
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


@dataclass
class AuditMatches:
    """The matchings behind one :func:`compute_metrics` run (see :func:`audit_matches`)."""

    main: Matches  # config's mode at iou_threshold and laece_tau (greedy: plus COCO's thresholds)
    ap: Matches  # greedy at COCO's thresholds; the same object as ``main`` for greedy
    agnostic: Matches | None  # class-agnostic at iou_threshold (K+1 targets); None without probs

    def valid_and_tp(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(not ignored, TP) per detection at ``threshold`` of the main matching."""
        r = self.main.row(self.main.index(threshold))
        return ~r.ignored, r.tp


def audit_matches(
    dets: Detections, gt: GroundTruth, config: MetricsConfig | Mapping[str, Any] | None = None
) -> AuditMatches:
    """Every matching :func:`compute_metrics` needs, each done once.

    Greedy: one call at {iou_threshold, laece_tau} and COCO's ten thresholds serves every
    class-aware metric and AP. Other modes: the mode at {iou_threshold, laece_tau} plus
    greedy at COCO's thresholds for AP. Plus one class-agnostic matching at
    iou_threshold when the detections carry probability vectors. Callers that need the
    matches themselves (the audit's breakdowns) pass the result to
    :func:`compute_metrics` instead of matching again.
    """
    cfg = load_config(config)
    main = sorted({cfg.iou_threshold, cfg.laece_tau})
    if cfg.match_mode == "greedy":
        m = match(dets, gt, sorted({*main, *COCO_IOU_THRESHOLDS}), "greedy")
        m_ap = m
    else:
        m = match(dets, gt, main, cfg.match_mode)
        m_ap = match(dets, gt, COCO_IOU_THRESHOLDS, "greedy", score_rank=m.score_rank)
    agn = None
    if dets.probs is not None or dets.logits is not None:
        agn = match(
            dets, gt, cfg.iou_threshold, cfg.match_mode, class_aware=False, score_rank=m.score_rank
        )
    return AuditMatches(m, m_ap, agn)


def compute_metrics(
    dets: Detections,
    gt: GroundTruth,
    config: MetricsConfig | Mapping[str, Any] | None = None,
    validate: bool = True,
    matches: AuditMatches | None = None,
) -> dict[str, Any]:
    """Every audit number with its bootstrap interval over images.

    Returns ``{"config", "counts", "metrics": {name: {"value", "ci_low", "ci_high",
    "std", "ci_z0"} or {"value": None, "skipped": why}}, "per_category", "coco"}``;
    intervals are ``config.ci_method`` intervals (plain percentile by default,
    see :func:`calibration.bootstrap.interval`), ``ci_z0`` their bias correction. Detections
    matched to crowd/ignore regions are left out of every calibration metric, as COCO
    leaves them out of AP. The K+1-way metrics (top-label, classwise, NLL, Brier) need
    probability vectors; their targets come from class-agnostic matching at
    ``iou_threshold``, so a box on a car predicted as "truck" has target "car" (Huseljic
    et al.'s modelling perspective), and unmatched boxes have target background.

    ``matches``: the result of :func:`audit_matches` for these detections and config,
    when the caller has it already. Each matching is done once and every metric reads
    it; metrics that bin the same values share one table of sums (ECE, MCE and the
    detection top-label error are read-outs of the detection classwise table), the
    per-category numbers are read off those tables, and AP comes from the TP lists.
    Without intervals (``n_boot=0``) the sums are not split by image.
    """
    cfg = load_config(config)
    if validate:
        dets.validate(gt)
    mm = matches if matches is not None else audit_matches(dets, gt, cfg)
    m, m_ap = mm.main, mm.ap
    thr, tau = cfg.iou_threshold, cfg.laece_tau
    ti, tt = m.index(thr), m.index(tau)
    boot = cfg.n_boot > 0
    group = m.image_index if boot else None  # without intervals, one group: no per-image tables
    sub = (lambda g, rows: g[rows]) if boot else (lambda g, rows: None)  # noqa: E731
    cats = gt.category_ids
    stats: dict[str, Statistic] = {}
    skipped: dict[str, str] = {}

    r_main = m.row(ti)
    valid = ~r_main.ignored
    s, tp, cat = dets.score[valid], r_main.tp[valid], dets.category_id[valid]
    g = sub(group, valid)
    cls_idx, n_cls, cls_vals = _codes(cat)
    p, pw = _power(cfg.norm), _power(cfg.classwise_norm)
    # detection classwise table: (class, bin) sums of (count, score, TP)
    b = _class_bins(s, cls_idx, n_cls, cfg.bins, cfg.bin_strategy, (0.0, 1.0))
    cw = _grouped(g, cls_idx * cfg.bins + b, [None, s, tp], (n_cls, cfg.bins), _unset)
    stats["detection_classwise_ce"] = replace(cw, finalize=_class_mean("ece", pw))
    if cfg.bin_strategy == "width":
        # the same edges for every class: the pooled bins are the class bins added up
        stats["ece"] = replace(cw, finalize=_pooled("ece", p))
        stats["mce"] = replace(cw, finalize=_pooled("mce", 1))
        stats["detection_top_label_ce"] = replace(cw, finalize=_pooled("ece", pw))
    else:
        pooled = calibration_error_statistic(s, tp, group=g, bins=cfg.bins, strategy="mass")
        stats["ece"] = replace(pooled, finalize=_class_mean("ece", p))
        stats["mce"] = replace(pooled, finalize=_class_mean("mce", 1))
        stats["detection_top_label_ce"] = replace(pooled, finalize=_class_mean("ece", pw))
    stats["ace"] = calibration_error_statistic(
        s, tp, norm=cfg.norm, kind="ace", group=g, bins=cfg.bins, strategy="mass"
    )
    feats = _box_columns(dets, gt, cfg.dece_dims, valid, m.image_index)
    stats["dece"] = dece_statistic(feats, tp, cfg.dece_bins, cfg.bin_strategy, group=g)
    del feats

    r_tau = r_main if tt == ti else m.row(tt)
    vt = ~r_tau.ignored
    st, it, ct = dets.score[vt], r_tau.iou[vt], dets.category_id[vt]
    gt_ = sub(group, vt)
    la_idx, la_n, la_vals = _codes(ct)
    la_b = _class_bins(st, la_idx, la_n, cfg.laece_bins, "width", (0.0, 1.0))
    la_shape = (la_n, cfg.laece_bins)
    stats["laece"] = _grouped(
        gt_, la_idx * cfg.laece_bins + la_b, [None, st, it], la_shape, _class_mean("ece", 1)
    )
    stats["laace"] = calibration_error_statistic(
        st, it, classes=ct, group=gt_, bins=cfg.laece_bins, kind="ace", strategy="mass"
    )

    probs = dets.class_probabilities(cats)
    if probs is None or mm.agnostic is None:
        for name in ("top_label_ce", "classwise_ce", "nll", "brier"):
            skipped[name] = "the detections carry no probability vectors (probs or logits)"
    else:
        col_cats = dets.prob_category_ids or tuple(int(c) for c in cats)
        _head(probs, len(col_cats))  # the column count fits the categories
        ma = mm.agnostic
        va = ~ma.row(ma.index(thr)).ignored
        target_all = ma.target_column(thr, col_cats)
        target = target_all[va]
        ga = sub(group, va)
        kw = {"bins": cfg.bins, "norm": cfg.classwise_norm, "strategy": cfg.bin_strategy}
        # row-wise numbers over all rows, then the valid ones: no copy of the (N, K+1) matrix
        top_conf, top = _top_label(probs)
        stats["top_label_ce"] = calibration_error_statistic(
            top_conf[va], top[va] == target, group=ga, **kw
        )
        del top_conf, top
        cols = [probs[:, c][va] for c in range(probs.shape[1])]
        stats["classwise_ce"] = _classwise(
            cols, target, ga, cfg.bins, cfg.classwise_norm, cfg.bin_strategy
        )
        del cols
        nll_r, brier_r = _nll_brier_rows(probs, target_all, len(col_cats))
        cell0 = np.zeros(int(va.sum()), np.int64)
        stats["nll"] = _grouped(ga, cell0, [None, nll_r[va]], (1,), _mean_of_second)
        stats["brier"] = _grouped(ga, cell0, [None, brier_r[va]], (1,), _mean_of_second)

    stats = {k: stats[k] for k in _METRIC_ORDER if k in stats}
    values = {k: v.value() for k, v in stats.items()}
    i50 = COCO_IOU_THRESHOLDS.index(0.5)
    if boot:  # the binned AP exists for the bootstrap only
        n_t = len(COCO_IOU_THRESHOLDS)
        stats["map"] = ap_statistic(
            m_ap, dets, gt, COCO_IOU_THRESHOLDS, cfg.ap_max_dets, cfg.ap_score_bins
        )
        stats["ap50"] = replace(
            stats["map"], finalize=lambda tot: _binned_map(tot[..., [i50, n_t], :, :, :])
        )
    # exact AP for the point estimate (bins are for the bootstrap only)
    hits = [m_ap.matched(m_ap.index(t)) for t in COCO_IOU_THRESHOLDS]
    table = ap_table(
        dets.score,
        dets.category_id,
        m_ap.n_gt,
        [h[0] for h in hits],
        [h[1] for h in hits],
        rank=m_ap.rank,
        max_dets=cfg.ap_max_dets,
        order=m_ap.order,
        score_rank=m_ap.score_rank,
    )  # (T, C)
    ap_cats = [int(c) for c in sorted(m_ap.n_gt)]
    ours = {"map": _nanmean(table.ravel()), "ap50": _nanmean(table[i50])}
    ours_ap = {c: _nanmean(table[:, j]) for j, c in enumerate(ap_cats)}
    ours_ap50 = {c: float(table[i50, j]) for j, c in enumerate(ap_cats)}
    coco = None
    backend = cfg.ap_backend
    if backend == "auto":
        backend = "pycocotools" if len(dets) <= AP_AUTO_LIMIT else "trustmap"
    if backend == "pycocotools":
        coco = coco_eval(dets, gt, cfg.ap_max_dets)
        values["map"], values["ap50"] = coco["stats"]["AP"], coco["stats"]["AP50"]
        ap_by_cat = coco["per_category_ap"]
    else:
        values["map"], values["ap50"] = ours["map"], ours["ap50"]
        ap_by_cat = ours_ap

    # the binned AP's replicates are anchored at its own full-sample value
    estimates = {k: v for k, v in values.items() if k not in ("map", "ap50")}
    intervals = bootstrap(
        stats, len(gt.images), cfg.n_boot, cfg.seed, cfg.ci_level, cfg.ci_method, estimates
    )
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
        if iv:  # BC's correction: |z0| > ~2 flags a bias larger than the resampling spread
            metrics[name]["ci_z0"] = iv.z0
        if name in ci_shift:
            metrics[name]["ci_shift"] = ci_shift[name]
    for name, why in skipped.items():
        metrics[name] = {"value": None, "skipped": why}

    # per category: read off the class tables (same bins as a per-category call)
    cw_err = dict(zip(cls_vals.tolist(), per_class_errors(cw.totals(), "ece", p), strict=True))
    la_err = dict(
        zip(la_vals.tolist(), per_class_errors(stats["laece"].totals(), "ece", 1), strict=True)
    )
    crow = index_in(dets.category_id, cats)
    n_det = np.bincount(crow[crow >= 0], minlength=len(cats))
    tp_row = crow[r_main.tp_rows]
    n_tp = np.bincount(tp_row[tp_row >= 0], minlength=len(cats))
    per_category = {}
    for j, c in enumerate(cats):
        c = int(c)
        per_category[c] = {
            "name": gt.categories[c],
            "n_gt": m.n_gt[c],
            "n_detections": int(n_det[j]),
            "n_tp": int(n_tp[j]),
            "ap": _none_if_nan(ap_by_cat.get(c, float("nan"))),
            "ap50": _none_if_nan(ours_ap50.get(c, float("nan"))),
            "ece": _none_if_nan(cw_err[c]) if c in cw_err else None,
            "laece": _none_if_nan(la_err[c]) if c in la_err else None,
        }
    return {
        "config": cfg.model_dump(mode="json"),
        "counts": {
            "images": len(gt.images),
            "ground_truth": int(sum(m.n_gt.values())),
            "regions": int(gt.annotations.is_region.sum()),
            "detections": len(dets),
            "tp": len(r_main.tp_rows),
            "ignored": len(r_main.ignored_rows),
        },
        "metrics": metrics,
        "per_category": per_category,
        "coco": coco["stats"] if coco else None,
        "ap_backend": backend,
        "ap_trustmap": ours,
    }


_METRIC_ORDER = (
    "ece",
    "mce",
    "ace",
    "dece",
    "detection_top_label_ce",
    "detection_classwise_ce",
    "laece",
    "laace",
    "top_label_ce",
    "classwise_ce",
    "nll",
    "brier",
)


def _nanmean(v: Sequence[float] | np.ndarray) -> float:
    a = np.asarray(v, np.float64)
    return float(a[np.isfinite(a)].mean()) if np.isfinite(a).any() else float("nan")


def _none_if_nan(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


# --------------------------------------------------------------------------- helpers


class _Sums:
    """Per-(group, cell) sums of S value columns, added part by part, as a :class:`Statistic`.

    Small tables (groups x cells at most ~4 per row) are summed densely with ``bincount``,
    so the statistic holds one entry per used (group, cell); large grids (D-ECE, AP, where
    rows rarely share a cell within an image) keep the rows and let the sparse
    conversion add the few duplicates. ``group`` None means one group.
    """

    def __init__(self, n_groups: int, cell_shape: tuple[int, ...], s: int, n_rows: int):
        self.ng, self.shape, self.s = n_groups, tuple(cell_shape), s
        self.nc = int(np.prod(cell_shape))
        self.dense = n_groups * self.nc <= max(4 * n_rows, 100_000)
        self.table = np.zeros((n_groups * self.nc, s)) if self.dense else None
        self.parts: list[Statistic] = []

    def add(self, group, cell, columns: list) -> None:
        cell = np.asarray(cell, np.int64)
        if self.dense:
            key = cell if group is None else np.asarray(group, np.int64) * self.nc + cell
            size = self.ng * self.nc
            for j, c in enumerate(columns):
                w = None if c is None else np.asarray(c, np.float64)
                self.table[:, j] += np.bincount(key, weights=w, minlength=size)
        else:
            grp = np.zeros(len(cell), np.int64) if group is None else group
            self.parts.append(Statistic.from_columns(grp, cell, columns, self.shape, _unset))

    def statistic(self, finalize) -> Statistic:
        if self.dense:  # row g * nc + cell, column j = flat cell * s + j of image g
            e = np.zeros(0, np.int64)
            table = self.table.reshape(self.ng, self.nc * self.s)
            return Statistic(e, e, np.zeros(0), (*self.shape, self.s), finalize, table)
        if not self.parts:
            e = np.zeros(0, np.int64)
            return Statistic(e, e, np.zeros(0), (*self.shape, self.s), finalize)
        return Statistic.concat(self.parts, finalize)


def _n_groups(group: np.ndarray | None) -> int:
    return 1 if group is None or len(group) == 0 else int(np.max(group)) + 1


def _grouped(group, cell, columns, cell_shape, finalize) -> Statistic:
    """One :class:`_Sums` part: ``columns`` (None = count) summed per (group, cell)."""
    sums = _Sums(_n_groups(group), cell_shape, len(columns), len(cell))
    sums.add(group, cell, columns)
    return sums.statistic(finalize)


def _codes(values: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Dense codes 0..k-1 of the distinct values (sorted), without sorting small-range ints;
    also the distinct values."""
    if values.size and np.issubdtype(values.dtype, np.integer):
        lo, hi = int(values.min()), int(values.max())
        if hi - lo < 1_000_000:
            present = np.bincount(values - lo, minlength=hi - lo + 1) > 0
            lut = np.cumsum(present) - 1
            uniq = lo + np.flatnonzero(present)
            return lut[values - lo].astype(np.int64), max(int(present.sum()), 1), uniq
    uniq, inv = np.unique(values, return_inverse=True)
    return inv.astype(np.int64).ravel(), max(len(uniq), 1), uniq


def _unset(tot: np.ndarray) -> np.ndarray:  # pragma: no cover - replaced before use
    raise RuntimeError("statistic without finalize")


__all__ = [
    "BOX_DIMS",
    "COCO_IOU_THRESHOLDS",
    "MODES",
    "AuditMatches",
    "MetricsConfig",
    "ace",
    "ap_table",
    "audit_matches",
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
