"""Confidence intervals over images, by bootstrap on per-image sufficient statistics.

Every metric in :mod:`calibration.metrics` is written as ``finalize(sums)``: a function of
sums, over detections, of a few per-detection numbers in a grid of cells (e.g. count,
confidence and target per (class, bin)). Resampling images with replacement then only
re-weights per-image sums: one sparse (images x cells) matrix per metric, multiplied by
a (replicates x images) matrix of resampling counts. No detection is touched again, so
a thousand replicates over a million detections cost seconds, not a million re-sorts.

Data-dependent bin edges (equal-mass bins, AP's score bins) are fixed from the full
sample; only the weights are resampled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

#: Dense bootstrap sums are built this many floats at a time (memory bound, ~80 MB per array).
CHUNK_FLOATS = 10_000_000


@dataclass
class Statistic:
    """A metric as ``finalize(totals)``: sums of sparse per-row entries over a cell grid.

    ``group`` (the image of each entry), ``col`` (flat index into ``shape``) and ``val``
    are COO triplets; ``totals()`` sums them into an array of ``shape``; ``finalize``
    maps an array of shape ``(..., *shape)`` to ``(...)``, so it serves both the point
    estimate and a batch of bootstrap replicates.
    """

    group: np.ndarray  # (R,) int64 image row
    col: np.ndarray  # (R,) int64 flat cell index
    val: np.ndarray  # (R,) float64
    shape: tuple[int, ...]
    finalize: Callable[[np.ndarray], np.ndarray]

    @classmethod
    def from_rows(
        cls,
        group: np.ndarray,
        cell: np.ndarray,
        values: np.ndarray,
        cell_shape: tuple[int, ...],
        finalize: Callable[[np.ndarray], np.ndarray],
    ) -> Statistic:
        """Rows with a cell index and S values each; zero values are dropped."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
        s = values.shape[1]
        nz_r, nz_s = np.nonzero(values)
        return cls(
            group=np.asarray(group, np.int64)[nz_r],
            col=np.asarray(cell, np.int64)[nz_r] * s + nz_s,
            val=values[nz_r, nz_s],
            shape=(*cell_shape, s),
            finalize=finalize,
        )

    @staticmethod
    def concat(parts: list[Statistic], finalize: Callable[[np.ndarray], np.ndarray]) -> Statistic:
        """Entries of several statistics on the same grid (e.g. detections and ground truth)."""
        return Statistic(
            np.concatenate([p.group for p in parts]),
            np.concatenate([p.col for p in parts]),
            np.concatenate([p.val for p in parts]),
            parts[0].shape,
            finalize,
        )

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def totals(self) -> np.ndarray:
        return np.bincount(self.col, weights=self.val, minlength=self.size).reshape(self.shape)

    def value(self) -> float:
        return float(self.finalize(self.totals()))

    def per_group(self, n_groups: int) -> sp.csr_matrix:
        """(groups x cells) sparse sums; duplicates are added by the CSR conversion."""
        return sp.csr_matrix((self.val, (self.group, self.col)), shape=(n_groups, self.size))


@dataclass
class Interval:
    """A bootstrap percentile interval."""

    low: float
    high: float
    std: float
    n_boot: int


def resample_counts(n_groups: int, n_boot: int, seed: int | None) -> np.ndarray:
    """(n_boot, n_groups) times each image is drawn in each replicate (images with replacement)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, n_groups), dtype=np.float64)
    for b in range(n_boot):
        out[b] = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
    return out


def replicates(stat: Statistic, weights: np.ndarray) -> np.ndarray:
    """Metric value under each row of ``weights`` (n_boot, n_groups) of resampling counts."""
    wt = np.ascontiguousarray(np.asarray(weights).T, dtype=np.float32)
    return _replicates(stat, wt, _by_cell(stat, wt.shape[0]))


def _replicates(stat: Statistic, wt: np.ndarray, mat: sp.csr_matrix) -> np.ndarray:
    """``wt`` is (n_groups, n_boot) float32, ``mat`` the (cells, groups) sums.

    The product and ``finalize`` run in float32: counts stay exact (below 2^24) and
    sums carry ~1e-7 relative error, far below any interval width, for half the
    memory traffic of float64.
    """
    n_boot = wt.shape[1]
    step = max(1, CHUNK_FLOATS // max(stat.size, 1))
    out = np.empty(n_boot)
    for a in range(0, n_boot, step):
        w = wt if step >= n_boot else np.ascontiguousarray(wt[:, a : a + step])
        tot = mat @ w  # (cells, chunk), C order
        # replicate axis to the front as a view: no transposed copy of a large table
        out[a : a + w.shape[1]] = stat.finalize(
            np.moveaxis(tot.reshape(*stat.shape, w.shape[1]), -1, 0)
        )
    return out


def bootstrap(
    stats: Mapping[str, Statistic],
    n_groups: int,
    n_boot: int = 1000,
    seed: int | None = 0,
    level: float = 0.95,
) -> dict[str, Interval]:
    """Percentile intervals for every statistic, all from the same image resamples.

    Sharing the resamples keeps differences between metrics paired. A replicate where
    a metric is undefined (NaN, e.g. no detection drawn) is left out of its interval.
    """
    if n_boot <= 0 or not stats:
        return {}
    wt = np.ascontiguousarray(resample_counts(n_groups, n_boot, seed).T, dtype=np.float32)
    alpha = (1.0 - level) / 2.0
    out = {}
    cache: dict[tuple[int, int, int], sp.csr_matrix] = {}
    for name, stat in stats.items():
        key = (
            id(stat.group),
            id(stat.col),
            id(stat.val),
        )  # statistics sharing entries share the product
        if key not in cache:
            cache[key] = _by_cell(stat, n_groups)
        reps = _replicates(stat, wt, cache[key])
        ok = reps[np.isfinite(reps)]
        if ok.size == 0:
            out[name] = Interval(float("nan"), float("nan"), float("nan"), 0)
            continue
        lo, hi = np.quantile(ok, [alpha, 1.0 - alpha])
        out[name] = Interval(
            float(lo), float(hi), float(ok.std(ddof=1)) if ok.size > 1 else 0.0, int(ok.size)
        )
    return out


def _by_cell(stat: Statistic, n_groups: int) -> sp.csr_matrix:
    return stat.per_group(n_groups).T.tocsr().astype(np.float32)
