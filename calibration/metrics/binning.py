"""Binning and the sums every binned metric is built from.

Bins are ``[e_i, e_{i+1})`` with the last bin closed, as ``np.histogram``/netcal; see
:mod:`calibration.metrics` for the conventions shared by every binned metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from calibration.bootstrap import Statistic
from tiles.errors import TrustmapError

BinStrategy = Literal["width", "mass"]
#: ``finalize`` of a :class:`Statistic`: totals ``(..., *cells)`` to values ``(...)``.
Finalize = Callable[[np.ndarray], np.ndarray]
Norm = Literal["l1", "l2"]
Kind = Literal["ece", "ace", "mce"]
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


def _class_bins(
    conf: np.ndarray,
    cls_idx: np.ndarray | None,
    n_cls: int,
    bins: int,
    strategy: BinStrategy,
    value_range: tuple[float, float] | None,
) -> np.ndarray:
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


def _class_mean(kind: Kind, p: int, min_count: int = 1) -> Finalize:
    """``finalize`` of a (class, bin) grid: per-class error, class mean, ``1/p`` root."""
    return lambda tot: _mean_over_classes(binned_error(tot, kind, p, min_count), p)


def _pooled(kind: Kind, p: int) -> Finalize:
    """``finalize`` of a (class, bin) grid read as one class: the classes' bins added up."""
    return lambda tot: _mean_over_classes(binned_error(tot.sum(axis=-3), kind, p)[..., None], p)


def per_class_errors(tot: np.ndarray, kind: Kind = "ece", p: int = 1) -> np.ndarray:
    """Each class's error (``1/p`` root taken) from a (class, bin, 3) total; NaN without samples."""
    return binned_error(tot, kind, p) ** (1.0 / p)


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
        self.table: np.ndarray | None = np.zeros((n_groups * self.nc, s)) if self.dense else None
        self.parts: list[Statistic] = []

    def add(
        self,
        group: np.ndarray | None,
        cell: np.ndarray,
        columns: Sequence[np.ndarray | None],
    ) -> None:
        cell = np.asarray(cell, np.int64)
        if self.table is not None:  # dense
            key = cell if group is None else np.asarray(group, np.int64) * self.nc + cell
            size = self.ng * self.nc
            for j, c in enumerate(columns):
                w = None if c is None else np.asarray(c, np.float64)
                self.table[:, j] += np.bincount(key, weights=w, minlength=size)
        else:
            grp = np.zeros(len(cell), np.int64) if group is None else group
            self.parts.append(Statistic.from_columns(grp, cell, columns, self.shape, _unset))

    def statistic(self, finalize: Finalize) -> Statistic:
        # dense: row g * nc + cell, column j = flat cell * s + j of image g
        if self.table is not None:
            e = np.zeros(0, np.int64)
            table = self.table.reshape(self.ng, self.nc * self.s)
            return Statistic(e, e, np.zeros(0), (*self.shape, self.s), finalize, table)
        if not self.parts:
            e = np.zeros(0, np.int64)
            return Statistic(e, e, np.zeros(0), (*self.shape, self.s), finalize)
        return Statistic.concat(self.parts, finalize)


def _n_groups(group: np.ndarray | None) -> int:
    return 1 if group is None or len(group) == 0 else int(np.max(group)) + 1


def _grouped(
    group: np.ndarray | None,
    cell: np.ndarray,
    columns: Sequence[np.ndarray | None],
    cell_shape: tuple[int, ...],
    finalize: Finalize,
) -> Statistic:
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
