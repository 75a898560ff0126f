"""What the cheap-label simulators share: which classes people confuse, how wrong a label is,
and the strip-wise smooth random fields the simulators draw their errors from."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np

from tiles.classes import ClassSchema
from tiles.errors import TrustmapError

log = logging.getLogger(__name__)

_STRIP_ROWS = 256

#: Class pairs a person plausibly mixes up in aerial imagery, with a relative weight. Names are
#: matched case-insensitively against the schema; pairs naming absent classes are skipped.
DEFAULT_CONFUSABLE: tuple[tuple[str, str, float], ...] = (
    ("tree", "grass/crop", 1.0),
    ("built-up", "bare soil", 0.8),
    ("road", "built-up", 0.8),
    ("road", "bare soil", 0.6),
    ("grass/crop", "bare soil", 0.5),
    ("water", "tree", 0.15),
    ("water", "road", 0.1),
)


def confusability(
    schema: ClassSchema,
    pairs: tuple[tuple[str, str, float], ...] = DEFAULT_CONFUSABLE,
    floor: float = 0.03,
) -> np.ndarray:
    """Symmetric (C, C) affinity of class pairs, zero on the diagonal.

    Every pair gets at least ``floor`` so that any confusion stays possible; a schema whose
    names match no pair gets uniform (unstructured) confusions.
    """
    n = schema.num_classes
    aff = np.full((n, n), float(floor))
    np.fill_diagonal(aff, 0.0)
    index = {name.lower(): i for i, name in enumerate(schema.names)}
    for a, b, weight in pairs:
        i, j = index.get(a.lower()), index.get(b.lower())
        if i is not None and j is not None and i != j:
            aff[i, j] = aff[j, i] = float(weight)
    return aff


def noise_rate(cheap: np.ndarray, truth: np.ndarray, ignore: int) -> float:
    """Fraction of the truth's labelled pixels where ``cheap`` differs from it.

    A cheap label that is ``ignore`` where the truth has a class counts as wrong.
    """
    cheap, truth = np.asarray(cheap), np.asarray(truth)
    if cheap.shape != truth.shape:
        raise TrustmapError(f"cheap label shape {cheap.shape} differs from truth {truth.shape}")
    valid = truth != ignore
    n = int(np.count_nonzero(valid))
    if n == 0:
        return 0.0
    return float(np.count_nonzero((cheap != truth) & valid)) / n


# --- shared helpers ---------------------------------------------------------------------------


def row_strips(height: int, rows: int = _STRIP_ROWS) -> Iterator[tuple[int, int]]:
    for r0 in range(0, height, rows):
        yield r0, min(height, r0 + rows)


def truth_index(truth: np.ndarray, schema: ClassSchema) -> np.ndarray:
    """Class index 0..C-1 per pixel, -1 for ignore; unknown codes are a user error."""
    truth = np.asarray(truth)
    if truth.ndim != 2:
        raise TrustmapError(f"truth must be a 2-D label raster, got shape {truth.shape}")
    if truth.dtype != np.uint8:
        if not np.issubdtype(truth.dtype, np.integer) or truth.min() < 0 or truth.max() > 255:
            raise TrustmapError("truth must hold uint8 class codes")
        truth = truth.astype(np.uint8)
    idx = schema.code_to_index()[truth]
    bad = (idx < 0) & (truth != schema.ignore)
    if bad.any():
        codes = np.unique(truth[bad])[:10].tolist()
        raise TrustmapError(
            f"truth holds unknown class code(s) {codes}; the schema allows "
            f"{sorted(schema.codes)} and ignore={schema.ignore}"
        )
    return idx


def to_codes(idx: np.ndarray, schema: ClassSchema) -> np.ndarray:
    lut = np.append(schema.index_to_code(), np.uint8(schema.ignore))  # index -1 -> ignore
    return lut[idx]


def _bspline_taps(n_pixels: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel, the first of its 4 coarse nodes and their cubic B-spline weights (4, n)."""
    t = np.arange(n_pixels) / step + 1.0
    first = np.floor(t).astype(np.intp) - 1
    d = np.abs(t[None, :] - (first[None, :] + np.arange(4)[:, None]))
    w = np.where(d < 1, 2 / 3 - d**2 + d**3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))
    return first, w.astype(np.float32)


class SmoothFields:
    """``n`` smooth random fields of about unit variance with features ``step`` pixels wide.

    Cubic B-splines over a white-noise grid: the low-frequency part of drawing errors, or of
    haze. Separable with 4 taps per axis, so a strip or a set of patches is evaluated without
    any full-scene array (and without BLAS, whose threads thrash on busy machines).
    """

    def __init__(self, shape: tuple[int, int], step: float, n: int, rng: np.random.Generator):
        gh, gw = math.ceil(shape[0] / step) + 4, math.ceil(shape[1] / step) + 4
        # 2x: the 2-D B-spline sum of unit white noise has variance 1/4 at the nodes.
        self.coeffs = (2.0 * rng.standard_normal((n, gh, gw))).astype(np.float32)
        self.y0, self.wy = _bspline_taps(shape[0], step)
        self.x0, self.wx = _bspline_taps(shape[1], step)

    def _along_y(self, ys: np.ndarray) -> np.ndarray:
        """Interpolate the coarse grids to image rows ``ys`` -> (n, *ys.shape, gw)."""
        return sum(self.wy[t][ys][..., None] * self.coeffs[:, self.y0[ys] + t] for t in range(4))

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """The fields on image rows r0:r1 -> (n, r1 - r0, W)."""
        part = self._along_y(np.arange(r0, r1))
        return sum(self.wx[t] * part[:, :, self.x0 + t] for t in range(4))

    def patches(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """The fields on patches with rows ``ys`` (N, k) and columns ``xs`` (N, k) -> (n, N, k, k)."""
        part = self._along_y(ys)  # (n, N, k, gw)
        out = 0.0
        for t in range(4):
            cols = np.broadcast_to(
                (self.x0[xs] + t)[None, :, None, :], (*part.shape[:3], xs.shape[1])
            )
            out = out + self.wx[t][xs][None, :, None, :] * np.take_along_axis(part, cols, axis=3)
        return out
