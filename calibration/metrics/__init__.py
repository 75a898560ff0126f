"""Calibration and accuracy metrics for object detectors, as plain functions of arrays.

One concept per module:

* :mod:`~calibration.metrics.binning`: bin edges and indices, binned errors, the sums tables;
* :mod:`~calibration.metrics.ece`: ECE, MCE, ACE, the debiased ECE, reliability data;
* :mod:`~calibration.metrics.dece`: box features and D-ECE;
* :mod:`~calibration.metrics.probabilistic`: top-label and classwise CE, NLL, Brier (K+1);
* :mod:`~calibration.metrics.laece`: LaECE and LaACE;
* :mod:`~calibration.metrics.ap`: AP/mAP (own and pycocotools), the binned bootstrap AP;
* :mod:`~calibration.metrics.config`: :class:`MetricsConfig`, the one settings object;
* :mod:`~calibration.metrics.compute`: :func:`compute_metrics`, the whole audit's numbers.

Each binned metric is built as a :class:`~calibration.bootstrap.Statistic`: sums of
per-detection numbers over a grid of cells, then a closed-form ``finalize``. The plain
functions (``calibration_error``, ``dece``, ``laece``, ...) return its value; the
``*_statistic`` functions hand the same object to :func:`calibration.bootstrap.bootstrap`
for confidence intervals over images.

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

from calibration.matching import MODES
from calibration.metrics.ap import (
    AP_AUTO_LIMIT,
    COCO_IOU_THRESHOLDS,
    COCO_RECALL_POINTS,
    COCO_STAT_NAMES,
    ap_statistic,
    ap_table,
    average_precision,
    coco_eval,
)
from calibration.metrics.binning import bin_edges, bin_index, binned_error, per_class_errors
from calibration.metrics.compute import AuditMatches, audit_matches, compute_metrics
from calibration.metrics.config import BOX_DIMS, BinningConfig, MetricsConfig, load_config
from calibration.metrics.dece import box_features, dece, dece_statistic
from calibration.metrics.ece import (
    ace,
    calibration_error,
    calibration_error_statistic,
    debiased_ece,
    ece,
    mce,
    reliability,
)
from calibration.metrics.laece import laace, laece
from calibration.metrics.probabilistic import (
    brier,
    classwise_statistic,
    nll,
    nll_brier_statistics,
    top_label_statistic,
)

__all__ = [
    "AP_AUTO_LIMIT",
    "BOX_DIMS",
    "COCO_IOU_THRESHOLDS",
    "COCO_RECALL_POINTS",
    "COCO_STAT_NAMES",
    "MODES",
    "AuditMatches",
    "BinningConfig",
    "MetricsConfig",
    "ace",
    "ap_statistic",
    "ap_table",
    "audit_matches",
    "average_precision",
    "bin_edges",
    "bin_index",
    "binned_error",
    "box_features",
    "brier",
    "calibration_error",
    "calibration_error_statistic",
    "classwise_statistic",
    "coco_eval",
    "compute_metrics",
    "debiased_ece",
    "dece",
    "dece_statistic",
    "ece",
    "laace",
    "laece",
    "load_config",
    "mce",
    "nll",
    "nll_brier_statistics",
    "per_class_errors",
    "reliability",
    "top_label_statistic",
]
