"""The ECE family (ECE, MCE, ACE) and reliability-diagram data, plus the debiased ECE."""

from __future__ import annotations

from typing import Any

import numpy as np

from calibration.bootstrap import Statistic
from calibration.metrics.binning import (
    BinStrategy,
    Kind,
    Norm,
    _class_bins,
    _class_mean,
    _codes,
    _grouped,
    _power,
    bin_edges,
    bin_index,
)


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


def debiased_ece_from_sums(tot: np.ndarray) -> np.ndarray:
    """Kumar et al. (2019)'s debiased L2 calibration error from bin sums
    ``tot[..., bin, (count, Σconf, Σtarget)]`` with 0/1 targets.

    The plug-in ``Σ_b (n_b/n) (a_b - c_b)^2`` overstates the squared error by the sampling
    variance of each bin's accuracy, ``a_b (1 - a_b) / (n_b - 1)``; subtracting it gives an
    estimate whose expectation is the squared error (bins with one sample keep the plug-in
    term). The root of the result, clipped at 0, is returned: a calibrated detector reads
    near 0 even on few detections, where the plug-in ECE reads high.
    """
    cnt, sc, st = tot[..., 0], tot[..., 1], tot[..., 2]
    n = cnt.sum(axis=-1)
    safe = np.where(cnt > 0, cnt, 1.0)
    a, c = st / safe, sc / safe
    var = np.where(cnt > 1, a * (1.0 - a) / np.where(cnt > 1, cnt - 1.0, 1.0), 0.0)
    sq = np.where(cnt > 0, cnt * ((a - c) ** 2 - var), 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.sqrt(np.maximum(sq / np.where(n > 0, n, 1.0), 0.0)), np.nan)


def debiased_ece(confidence: np.ndarray, target: np.ndarray, bins: int = 10) -> float:
    """Debiased L2 ECE (Kumar et al. 2019) with equal-width bins; see :func:`debiased_ece_from_sums`."""
    conf = np.asarray(confidence, np.float64)
    b = bin_index(conf, bin_edges(conf, bins))
    tot = np.column_stack(
        [
            np.bincount(b, minlength=bins).astype(np.float64),
            np.bincount(b, conf, bins),
            np.bincount(b, np.asarray(target, np.float64), bins),
        ]
    )
    return float(debiased_ece_from_sums(tot))
