"""Confidence intervals over images, by bootstrap on per-image sufficient statistics.

Every metric in :mod:`calibration.metrics` is written as ``finalize(sums)``: a function of
sums, over detections, of a few per-detection numbers in a grid of cells (e.g. count,
confidence and target per (class, bin)). Resampling images with replacement then only
re-weights per-image sums: the replicate totals are ``W @ S``, with ``W`` the (replicates x
images) matrix of how often each image is drawn (multinomial counts, so the product is the
exact images-with-replacement bootstrap, not an approximation) and ``S`` the (images x
cells) per-image sums. No detection is touched again, so a thousand replicates over a
million detections cost a few matrix products, not a million re-sorts.

``S`` is dense for small grids (ECE's bins, NLL, LaECE's class x bin grid: one BLAS
``sgemm``) and sparse for large, mostly empty ones (D-ECE's box cells, the binned AP),
where a sparse product does less work. Statistics that share their entries (ECE and MCE
read the same bins) share the product.

Data-dependent bin edges (equal-mass bins, AP's score bins) are fixed from the full
sample; only the weights are resampled.

Intervals are shifted percentile intervals by default (they always contain the estimate),
plain or bias-corrected percentile intervals on request; :func:`interval` says why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import DTypeLike
from scipy.special import ndtr, ndtri

#: Replicate totals are built this many floats at a time (memory bound, ~40 MB per array).
CHUNK_FLOATS = 10_000_000
#: Replicate totals handed to ``finalize`` at a time (a cache-sized block).
FINALIZE_FLOATS = 1 << 18
#: Replicates per sparse product: a narrow block of weights stays in cache while the
#: product streams over the entries (measured ~30 % faster than all replicates at once).
SPARSE_BLOCK = 32
#: Per-image sums go dense when at least this fraction of the (images x cells) table is
#: filled: a BLAS product does ~20x more multiply-adds per second than a sparse one.
DENSE_FILL = 1 / 12
#: ... and the dense table stays below this many floats.
DENSE_MAX = 25_000_000

#: BLAS threads for the products (None: leave BLAS alone). The products are small (tens
#: of milliseconds each); on a shared machine OpenBLAS's spinning worker threads were
#: measured to burn 5-50x the CPU time of one thread for them.
BLAS_THREADS: int | None = 1

CIMethod = Literal["shifted", "bc", "percentile"]


def _blas_threads() -> contextlib.AbstractContextManager[object]:
    """Context limiting BLAS to ``BLAS_THREADS`` (threadpoolctl, installed with netcal's
    scikit-learn); a no-op without it."""
    if BLAS_THREADS is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - present with the declared dependencies
        return contextlib.nullcontext()
    return threadpool_limits(limits=BLAS_THREADS, user_api="blas")


@dataclass
class Statistic:
    """A metric as ``finalize(totals)``: sums of per-image entries over a cell grid.

    ``group`` (the image of each entry), ``col`` (flat index into ``shape``) and ``val``
    are COO triplets (repeated (group, col) pairs add up); ``table``, when given, holds
    further sums as a dense (images x cells) array (small grids are summed that way
    to begin with). ``totals()`` adds everything into an array of ``shape``;
    ``finalize`` maps an array of shape ``(..., *shape)`` to ``(...)``, so it serves
    both the point estimate and a batch of bootstrap replicates.
    """

    group: np.ndarray  # (R,) int64 image row
    col: np.ndarray  # (R,) int64 flat cell index
    val: np.ndarray  # (R,) float64
    shape: tuple[int, ...]
    finalize: Callable[[np.ndarray], np.ndarray]
    table: np.ndarray | None = None  # (n_groups, size) float64

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

    @classmethod
    def from_columns(
        cls,
        group: np.ndarray,
        cell: np.ndarray,
        columns: Sequence[np.ndarray | None],
        cell_shape: tuple[int, ...],
        finalize: Callable[[np.ndarray], np.ndarray],
    ) -> Statistic:
        """Like :meth:`from_rows` with the S values as separate columns; ``None`` is all ones."""
        group, cell = np.asarray(group, np.int64), np.asarray(cell, np.int64)
        s = len(columns)
        gs, cs, vs = [], [], []
        for j, c in enumerate(columns):
            if c is None:
                gs.append(group)
                cs.append(cell * s + j)
                vs.append(np.ones(len(cell)))
                continue
            c = np.asarray(c, np.float64)
            nz = np.flatnonzero(c)
            gs.append(group[nz])
            cs.append(cell[nz] * s + j)
            vs.append(c[nz])
        return cls(
            np.concatenate(gs), np.concatenate(cs), np.concatenate(vs), (*cell_shape, s), finalize
        )

    @staticmethod
    def concat(parts: list[Statistic], finalize: Callable[[np.ndarray], np.ndarray]) -> Statistic:
        """Entries of several statistics on the same grid (e.g. detections and ground truth)."""
        ent = [p.entries() for p in parts]
        return Statistic(
            np.concatenate([e[0] for e in ent]),
            np.concatenate([e[1] for e in ent]),
            np.concatenate([e[2] for e in ent]),
            parts[0].shape,
            finalize,
        )

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All sums as COO triplets (the table's non-zero cells included)."""
        if self.table is None:
            return self.group, self.col, self.val
        g, c = np.nonzero(self.table)
        return (
            np.concatenate([self.group, g]),
            np.concatenate([self.col, c]),
            np.concatenate([self.val, self.table[g, c]]),
        )

    def totals(self) -> np.ndarray:
        t = np.bincount(self.col, weights=self.val, minlength=self.size)
        if self.table is not None:
            t = t + self.table.sum(axis=0)
        return t.reshape(self.shape)

    def value(self) -> float:
        return float(self.finalize(self.totals()))

    def per_group(self, n_groups: int) -> sp.csr_matrix:
        """(groups x cells) sparse sums; duplicates are added by the CSR conversion."""
        g, c, v = self.entries()
        return sp.csr_matrix((v, (g, c)), shape=(n_groups, self.size))

    def dense_per_group(self, n_groups: int, dtype: DTypeLike = np.float32) -> np.ndarray:
        """(groups x cells) dense sums."""
        if self.table is not None and len(self.col) == 0 and len(self.table) == n_groups:
            return self.table.astype(dtype)
        flat = self.group * self.size + self.col
        counts = np.bincount(flat, weights=self.val, minlength=n_groups * self.size)
        out = counts.astype(np.float64, copy=False).reshape(n_groups, self.size)
        if self.table is not None:
            k = min(n_groups, len(self.table))
            out[:k] += self.table[:k]
        return out.astype(dtype, copy=False)


@dataclass
class Interval:
    """A bootstrap interval: ``method`` "bc" (bias-corrected percentile) or "percentile"."""

    low: float
    high: float
    std: float
    n_boot: int
    method: str = "shifted"
    z0: float = 0.0  # Φ⁻¹(share of replicates below the estimate): the bias flag
    bias: float = 0.0  # median replicate minus the estimate


def resample_counts(n_groups: int, n_boot: int, seed: int | None) -> np.ndarray:
    """(n_boot, n_groups) float32: times each image is drawn in each replicate.

    Each row is one multinomial draw of ``n_groups`` images with replacement (the counts
    of ``n_groups`` uniform picks), drawn in blocks of replicates.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, n_groups), dtype=np.float32)
    if n_groups == 0:
        return out
    step = max(1, 4_000_000 // n_groups)
    for a in range(0, n_boot, step):
        b = min(n_boot, a + step)
        picks = rng.integers(0, n_groups, (b - a, n_groups))
        picks += (np.arange(b - a) * n_groups)[:, None]
        out[a:b] = np.bincount(picks.ravel(), minlength=(b - a) * n_groups).reshape(b - a, n_groups)
    return out


def replicates(stat: Statistic, weights: np.ndarray) -> np.ndarray:
    """Metric value under each row of ``weights`` (n_boot, n_groups) of resampling counts."""
    w = np.ascontiguousarray(weights, dtype=np.float32)
    with _blas_threads():
        return _replicates(stat, w, _Product(stat, w.shape[1]))


class _Product:
    """``W @ S`` for one statistic's entries, dense BLAS where the sums are dense.

    A statistic summed as a dense table, or whose (images x cells) table is at least
    ``DENSE_FILL`` full, multiplies as one dense matrix. Otherwise the table is split
    by cell: cells filled in at least that share of the images (e.g. AP's per-bin
    counts) go to a dense block, the rest to a sparse one (D-ECE's box cells, AP's
    per-threshold TPs).
    """

    def __init__(self, stat: Statistic, n_groups: int):
        cells = n_groups * stat.size
        self.size = stat.size
        # dense (groups, k) block, sparse (cells - k, groups) block
        self.D: np.ndarray | None = None
        self.Ssp: sp.csr_matrix | None = None
        self.dense_cols: np.ndarray | None = None
        self.sparse_cols: np.ndarray | None = None
        self._cache: tuple[int, np.ndarray] | None = None
        if cells <= DENSE_MAX and (stat.table is not None or cells * DENSE_FILL <= len(stat.val)):
            self.D = stat.dense_per_group(n_groups)  # (groups, cells) float32
            return
        g, c, v = stat.entries()
        S = sp.csr_matrix((v.astype(np.float32), (c, g)), shape=(stat.size, n_groups))
        filled = np.diff(S.indptr)
        dense = filled >= DENSE_FILL * n_groups
        if dense.sum() * n_groups > DENSE_MAX:  # keep the largest-filled within the limit
            keep = np.argsort(-filled, kind="stable")[: DENSE_MAX // max(n_groups, 1)]
            dense = np.zeros(stat.size, bool)
            dense[keep] = filled[keep] >= DENSE_FILL * n_groups
        if dense.any():
            self.dense_cols, self.sparse_cols = np.flatnonzero(dense), np.flatnonzero(~dense)
            self.D = np.ascontiguousarray(S[self.dense_cols].toarray().T)
            self.Ssp = S[self.sparse_cols]
        else:
            self.Ssp = S

    @property
    def dense(self) -> bool:
        return self.Ssp is None

    def block(self, w: np.ndarray) -> np.ndarray:
        """(chunk, cells) totals for ``w`` (chunk, groups)."""
        if self.Ssp is None:
            assert self.D is not None  # no sparse block: all dense
            return w @ self.D
        sparse = (self.Ssp @ np.ascontiguousarray(w.T)).T
        if self.D is None:
            return sparse
        out = np.empty((w.shape[0], self.size), np.float32)
        out[:, self.dense_cols] = w @ self.D
        out[:, self.sparse_cols] = sparse
        return out

    def _all(self, w: np.ndarray) -> np.ndarray:
        """(n_boot, cells) totals: the dense part in one product, the sparse part in narrow
        blocks of replicates (a block of weights stays in cache while the product streams
        over the entries)."""
        if self.Ssp is None:
            assert self.D is not None  # no sparse block: all dense
            return w @ self.D
        if self.D is None:
            tot = np.empty((w.shape[0], self.size), np.float32)
            for a in range(0, w.shape[0], SPARSE_BLOCK):
                tot[a : a + SPARSE_BLOCK] = (
                    self.Ssp @ np.ascontiguousarray(w[a : a + SPARSE_BLOCK].T)
                ).T
            return tot
        tot = np.empty((w.shape[0], self.size), np.float32)
        tot[:, self.dense_cols] = w @ self.D
        assert self.sparse_cols is not None  # set with the dense block
        sp_tot = np.empty((w.shape[0], len(self.sparse_cols)), np.float32)
        for a in range(0, w.shape[0], SPARSE_BLOCK):
            sp_tot[a : a + SPARSE_BLOCK] = (
                self.Ssp @ np.ascontiguousarray(w[a : a + SPARSE_BLOCK].T)
            ).T
        tot[:, self.sparse_cols] = sp_tot
        return tot

    def blocks(self, w: np.ndarray, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(start, totals) for ``w`` in blocks of at most ``rows`` replicates.

        When all replicates' totals fit in ``CHUNK_FLOATS`` they are kept, so statistics
        sharing these entries (ECE and MCE, mAP and AP50) reuse one product.
        """
        n_boot = w.shape[0]
        tot: np.ndarray | None
        if self._cache is not None and self._cache[0] == id(w):
            tot = self._cache[1]
        elif n_boot * self.size <= CHUNK_FLOATS:
            tot = self._all(w)
            self._cache = (id(w), tot)
        else:
            tot = None
        for a in range(0, n_boot, rows):
            yield a, tot[a : a + rows] if tot is not None else self.block(w[a : a + rows])


def _replicates(stat: Statistic, w: np.ndarray, prod: _Product) -> np.ndarray:
    """``w`` is (n_boot, n_groups) float32.

    The product and ``finalize`` run in float32: counts stay exact (below 2^24) and
    sums carry ~1e-7 relative error, far below any interval width, for half the
    memory traffic of float64. ``finalize`` sees ``FINALIZE_FLOATS`` of totals at a
    time, so its temporaries stay in cache (the binned AP's read-out ran 2x faster).
    """
    rows = max(1, FINALIZE_FLOATS // max(stat.size, 1))
    out = np.empty(w.shape[0])
    for a, tot in prod.blocks(w, rows):
        out[a : a + tot.shape[0]] = stat.finalize(tot.reshape(tot.shape[0], *stat.shape))
    return out


def interval(
    reps: np.ndarray, estimate: float, level: float = 0.95, method: CIMethod = "shifted"
) -> Interval:
    """A bootstrap interval from replicate values (NaN replicates are left out).

    ``"shifted"`` (the default): the spread of the replicates around their median, placed
    at the estimate, ``[est - (median - q_lo), est + (q_hi - median)]`` with ``q_lo, q_hi``
    the ``(1 -/+ level) / 2`` quantiles. It always contains the estimate. Binned
    calibration errors (ECE, D-ECE, LaECE) are biased upwards, and resampling adds the
    bias once more, so the replicates sit above the estimate and a plain percentile
    interval can miss it altogether ("D-ECE 0.091 (CI 0.095-0.117)"). Shifting treats that
    offset as a bias of location and keeps the resampling spread, the only thing the
    bootstrap measures well here. The offset itself is reported as ``z0`` and ``bias``.

    ``"percentile"``: the quantiles themselves. ``"bc"`` (Efron's bias-corrected
    percentile): with ``z0 = Φ⁻¹(p)``, ``p`` the share of replicates below the estimate
    (ties counted half, clipped to [1/(2B), 1 - 1/(2B)]), the quantiles at
    ``Φ(2 z0 ± z_{(1+level)/2})``. BC contains the estimate exactly when the percentile
    interval does, and collapses onto the outermost replicate when ``|z0|`` is large.

    ``z0`` is computed for every method: ``|z0| > ~2`` flags a bias larger than the
    resampling spread.
    """
    reps = np.asarray(reps, np.float64)
    ok = reps[np.isfinite(reps)]
    if ok.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, method)
    if method not in ("shifted", "bc", "percentile"):
        raise ValueError(f"interval method must be 'shifted', 'bc' or 'percentile', got {method!r}")
    alpha = (1.0 - level) / 2.0
    std = float(ok.std(ddof=1)) if ok.size > 1 else 0.0
    b = ok.size
    if not np.isfinite(estimate):
        lo, hi = np.quantile(ok, [alpha, 1.0 - alpha])
        return Interval(float(lo), float(hi), std, int(b), "percentile")
    p = (np.count_nonzero(ok < estimate) + 0.5 * np.count_nonzero(ok == estimate)) / b
    z0 = float(ndtri(np.clip(p, 0.5 / b, 1.0 - 0.5 / b)))
    if method == "percentile":
        lo, hi = np.quantile(ok, [alpha, 1.0 - alpha])
    elif method == "shifted":
        q_lo, med, q_hi = np.quantile(ok, [alpha, 0.5, 1.0 - alpha])
        lo, hi = estimate - (med - q_lo), estimate + (q_hi - med)
    else:
        za = float(ndtri(1.0 - alpha))
        q = ndtr([2.0 * z0 - za, 2.0 * z0 + za])
        lo, hi = np.quantile(ok, q)
    return Interval(float(lo), float(hi), std, int(b), method, z0, float(np.median(ok) - estimate))


def bootstrap(
    stats: Mapping[str, Statistic],
    n_groups: int,
    n_boot: int = 1000,
    seed: int | None = 0,
    level: float = 0.95,
    method: CIMethod = "shifted",
    estimates: Mapping[str, float] | None = None,
) -> dict[str, Interval]:
    """Intervals for every statistic (see :func:`interval`), all from the same image resamples.

    Sharing the resamples keeps differences between metrics paired. A replicate where
    a metric is undefined (NaN, e.g. no detection drawn) is left out of its interval.
    ``estimates`` (default: each statistic's full-sample value) anchor the BC correction;
    they must be the statistic's own value, as replicates are of the statistic.
    """
    if n_boot <= 0 or not stats:
        return {}
    w = resample_counts(n_groups, n_boot, seed)
    out = {}
    cache: dict[tuple[int, ...], _Product] = {}
    with _blas_threads():
        for name, stat in stats.items():
            # statistics sharing entries share the product
            key = (id(stat.group), id(stat.col), id(stat.val), id(stat.table))
            if key not in cache:
                cache[key] = _Product(stat, n_groups)
            reps = _replicates(stat, w, cache[key])
            est = estimates[name] if estimates and name in estimates else stat.value()
            out[name] = interval(reps, est, level, method)
    return out
