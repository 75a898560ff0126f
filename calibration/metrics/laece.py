"""Localisation-aware calibration error: LaECE and LaACE (Kuzucu et al., ECCV 2024)."""

from __future__ import annotations

import numpy as np

from calibration.metrics.ece import calibration_error

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
