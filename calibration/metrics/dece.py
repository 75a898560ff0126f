"""D-ECE (Küppers et al. 2020): calibration over confidence and box position/size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import SupportsInt, cast

import numpy as np

from calibration.bootstrap import Statistic
from calibration.detections import Detections, GroundTruth
from calibration.metrics.binning import (
    _EPS,
    BinStrategy,
    _grouped,
    _n_groups,
    _Sums,
    bin_edges,
    bin_index,
    binned_error,
)
from calibration.metrics.config import BOX_DIMS
from tiles.errors import TrustmapError

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
) -> tuple[np.ndarray, int, np.ndarray]:
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
    # np.isscalar, not isinstance(bins, int): numpy integers count as one bin count too
    if np.isscalar(bins):
        nb = [int(cast(SupportsInt, bins))] * d
    else:
        nb = [int(b) for b in cast(Sequence[int], bins)]
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
