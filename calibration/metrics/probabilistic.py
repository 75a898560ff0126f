"""K+1-way metrics of full probability vectors: top-label and classwise CE, NLL, Brier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from calibration.bootstrap import Statistic
from calibration.metrics.binning import (
    BinStrategy,
    Norm,
    _grouped,
    _mean_over_classes,
    _n_groups,
    _power,
    _Sums,
    bin_edges,
    bin_index,
    binned_error,
)
from calibration.metrics.ece import calibration_error_statistic
from tiles.errors import TrustmapError

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


def _classwise(
    cols: Sequence[np.ndarray],
    target: np.ndarray,
    group: np.ndarray | None,
    bins: int,
    norm: Norm,
    strategy: BinStrategy,
) -> Statistic:
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
