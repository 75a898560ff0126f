"""Cheap-label simulators: what crowd annotators or a weak model would have drawn.

Benchmarks of label refinement need cheap labels whose errors look like real ones, at a known
wrong-pixel rate. Salt-and-pepper noise is useless for that: it is trivially removed by any
smoothing and tells nothing about how a method copes with a mislabelled field. So:

- ``simulate_crowd`` makes errors at the object level, as a person does: whole polygons get a
  plausible wrong class, outlines are shifted, wobbly and biased, small objects are missed.
- ``simulate_model`` makes the errors of a weak spectral classifier, majority-filtered:
  confusions between spectrally similar classes, in blobs.

Both are deterministic by seed and calibrate themselves to a target wrong-pixel rate
(``noise``); ``noise_rate`` measures the rate actually achieved. Ignore pixels of the truth
stay ignore in every cheap label. Smooth fields, warps and the model run in row strips, so
no float or per-class array of a whole scene is held; on 8192² scenes the peak is a few
full-scene integer label images.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import label as label_components

from tiles.classes import ClassSchema
from tiles.errors import TrustmapError

__all__ = [
    "DEFAULT_CONFUSABLE",
    "CrowdConfig",
    "ModelNoiseConfig",
    "confusability",
    "noise_rate",
    "simulate_crowd",
    "simulate_model",
]

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


def _strips(height: int, rows: int = _STRIP_ROWS) -> Iterator[tuple[int, int]]:
    for r0 in range(0, height, rows):
        yield r0, min(height, r0 + rows)


def _truth_index(truth: np.ndarray, schema: ClassSchema) -> np.ndarray:
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


def _to_codes(idx: np.ndarray, schema: ClassSchema) -> np.ndarray:
    lut = np.append(schema.index_to_code(), np.uint8(schema.ignore))  # index -1 -> ignore
    return lut[idx]


def _bspline_taps(n_pixels: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel, the first of its 4 coarse nodes and their cubic B-spline weights (4, n)."""
    t = np.arange(n_pixels) / step + 1.0
    first = np.floor(t).astype(np.intp) - 1
    d = np.abs(t[None, :] - (first[None, :] + np.arange(4)[:, None]))
    w = np.where(d < 1, 2 / 3 - d**2 + d**3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))
    return first, w.astype(np.float32)


class _SmoothFields:
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


# --- crowd ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrowdConfig:
    """Settings of the simulated crowd.

    ``noise`` is the mean wrong-pixel rate of the non-spammer annotators; annotator ``a``
    (best first) aims at ``noise * w_a`` with skill weights spanning a ``skill_spread`` ratio
    between the worst and the best. Spammers (the last ``n_spammers``) label every object at
    random and are not calibrated.
    """

    n_annotators: int = 3
    noise: float = 0.25
    skill_spread: float = 3.0
    n_spammers: int = 0
    boundary_px: float = 2.0  # outline sloppiness of an average annotator
    jitter_scale_px: float = 48.0  # width of the boundary wobble
    min_object_px: int = 64  # truth objects smaller than this may be missed...
    miss_prob: float = 0.3  # ...with this chance, for an average annotator
    parcel_px: int = 96  # areas over 2 parcel_px² are labelled as polygons about this wide...
    max_object_frac: float = 0.01  # ...narrower on small scenes, so no object exceeds this
    confusable: tuple[tuple[str, str, float], ...] = DEFAULT_CONFUSABLE
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_annotators < 1:
            raise TrustmapError("crowd: n_annotators must be at least 1")
        if not 0 <= self.n_spammers < self.n_annotators:
            raise TrustmapError("crowd: n_spammers must be in [0, n_annotators)")
        if not 0.0 <= self.noise < 1.0:
            raise TrustmapError(f"crowd: noise must be in [0, 1), got {self.noise}")
        if self.skill_spread < 1.0:
            raise TrustmapError("crowd: skill_spread must be >= 1 (worst/best error ratio)")
        if self.boundary_px < 0 or self.jitter_scale_px <= 0:
            raise TrustmapError("crowd: boundary_px must be >= 0 and jitter_scale_px > 0")
        if self.parcel_px < 4 or self.min_object_px < 0 or not 0 <= self.miss_prob <= 1:
            raise TrustmapError("crowd: need parcel_px >= 4, min_object_px >= 0, 0<=miss_prob<=1")
        if not 0 < self.max_object_frac <= 1:
            raise TrustmapError("crowd: max_object_frac must be in (0, 1]")

    def skill_weights(self) -> np.ndarray:
        """Relative error rate of each non-spammer annotator (best first), mean 1."""
        m = self.n_annotators - self.n_spammers
        w = self.skill_spread ** np.linspace(-0.5, 0.5, m) if m > 1 else np.ones(1)
        return w / w.mean()


@dataclass
class _Sloppiness:
    """One annotator's fixed random draws, so outlines can be re-rendered at any strength."""

    amplitude: float  # px
    miss_prob: float
    shift: np.ndarray  # (2,) in units of amplitude
    wobble: _SmoothFields  # (2 fields) boundary displacement
    class_bias: np.ndarray  # (C,) in [-1, 1]: grow (+) or shrink (-) each class
    class_order: np.ndarray  # (C,) order in which the biases are drawn
    rank: np.ndarray  # (C,) which neighbour wins when filling a hole
    miss_u: np.ndarray  # (n_components + 1,)


def _fill_from_neighbours(
    lab: np.ndarray, hole: np.ndarray, rank: np.ndarray, max_iter: int
) -> np.ndarray:
    """Paint ``hole`` pixels with a neighbouring label, one pixel layer per pass.

    Where neighbours compete the class of highest ``rank`` wins; a per-annotator random rank
    keeps the fill free of a bias toward any class code. Ignore pixels are never a source.
    Holes that cannot be reached keep their label. Only hole pixels and their 8 neighbours
    are touched, so the cost follows the holes, not the scene.
    """
    height, width = lab.shape
    r = np.where(lab >= 0, rank[np.maximum(lab, 0)] + 1, 0).astype(np.uint8).ravel()
    flat = np.flatnonzero(hole)
    r[flat] = 0
    ys, xs = np.divmod(flat, width)
    nbrs = np.stack(
        [
            np.clip(ys + dy, 0, height - 1) * width + np.clip(xs + dx, 0, width - 1)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if dy or dx
        ],
        axis=1,
    )  # out-of-image neighbours clip onto the pixel itself, still 0: no vote
    pending = np.arange(flat.size)
    for _ in range(max_iter):
        if pending.size == 0:
            break
        got = r[nbrs[pending]].max(axis=1)  # all from the previous layer, then assigned
        r[flat[pending]] = got
        pending = pending[got == 0]
    out = lab.copy().ravel()
    filled = flat[r[flat] > 0]
    out[filled] = np.argsort(rank)[r[filled].astype(np.intp) - 1]
    return out.reshape(lab.shape)


def _warp_nearest(lab: np.ndarray, s: _Sloppiness, amp: float) -> np.ndarray:
    """Shift the label by ``amp * s.shift`` and wobble it by a smooth displacement field."""
    height, width = lab.shape
    out = np.empty_like(lab)
    cols = np.arange(width)[None, :]
    for r0, r1 in _strips(height):
        rows = np.arange(r0, r1)[:, None]
        d = s.wobble.rows(r0, r1)
        src_r = np.clip(np.rint(rows + amp * (s.shift[0] + d[0])), 0, height - 1).astype(np.intp)
        src_c = np.clip(np.rint(cols + amp * (s.shift[1] + d[1])), 0, width - 1).astype(np.intp)
        out[r0:r1] = lab[src_r, src_c]
    return out


def _outline(
    idx: np.ndarray,
    valid: np.ndarray,
    comp: np.ndarray,
    small: np.ndarray,
    s: _Sloppiness,
    strength: float,
    cfg: CrowdConfig,
) -> np.ndarray:
    """The truth as this annotator would outline it (right classes, sloppy geometry)."""
    lab = idx.copy()
    p_miss = strength * s.miss_prob
    if p_miss > 0 and small.any():
        hole = (small & (s.miss_u < p_miss))[comp]
        if hole.any():
            lab = _fill_from_neighbours(lab, hole, s.rank, math.isqrt(cfg.min_object_px) + 2)
    amp = strength * s.amplitude
    for c in s.class_order:
        d = int(round(amp * s.class_bias[c]))
        if d == 0:
            continue
        mask = lab == c
        if not mask.any():
            continue
        if d > 0:  # drawn generously: the class spills over its neighbours
            lab[ndimage.binary_dilation(mask, iterations=d) & valid] = c
        else:  # drawn stingily: its rim goes to the neighbours
            rim = mask & ~ndimage.binary_erosion(mask, iterations=-d, border_value=1)
            lab = _fill_from_neighbours(lab, rim, s.rank, -d + 1)
    if amp > 0:
        warped = _warp_nearest(lab, s, amp)
        lab = np.where(valid & (warped < 0), lab, warped)
    lab[~valid] = -1
    return lab


def _parcels(shape: tuple[int, int], cell: int, rng: np.random.Generator) -> np.ndarray:
    """Voronoi cells of a jittered grid: the polygons a person splits a large area into.

    Seeds lie in the central half of their grid cell, so a pixel's nearest seed is always
    among the 3x3 cells around its own; one band of grid cells is solved at a time, with the
    candidate seeds of each column as broadcast vectors.
    """
    height, width = shape
    gh, gw = math.ceil(height / cell), math.ceil(width / cell)
    sy = (np.arange(gh)[:, None] + rng.uniform(0.25, 0.75, (gh, gw))) * cell
    sx = (np.arange(gw)[None, :] + rng.uniform(0.25, 0.75, (gh, gw))) * cell
    out = np.empty(shape, dtype=np.int32)
    cj = np.arange(width) // cell
    xs = np.arange(width)
    for ci in range(gh):
        r0, r1 = ci * cell, min(height, (ci + 1) * cell)
        ys = np.arange(r0, r1, dtype=np.float32)[:, None]
        best = np.full((r1 - r0, width), np.inf, dtype=np.float32)
        arg = np.zeros((r1 - r0, width), dtype=np.int32)
        for ni in range(max(ci - 1, 0), min(ci + 2, gh)):
            for dj in (-1, 0, 1):
                nj = np.clip(cj + dj, 0, gw - 1)
                dist = (ys - sy[ni, nj].astype(np.float32)) ** 2
                dist += ((xs - sx[ni, nj]) ** 2).astype(np.float32)
                closer = dist < best
                np.minimum(best, dist, out=best)
                arg[closer] = (ni * gw + nj)[np.nonzero(closer)[1]]
        out[r0:r1] = arg
    return out


def _objects(outline: np.ndarray, parcels: np.ndarray, n_cls: int, split_px: int) -> np.ndarray:
    """What a person labels in one go: connected regions of the outline, those of at least
    ``split_px`` pixels cut along the parcels (nobody labels a whole landscape as one polygon).
    Labels 1..n, 0 outside the truth's labelled pixels."""
    regions = label_components(outline, background=-1, connectivity=1)
    big = np.bincount(regions.ravel()) >= split_px
    big[0] = False
    key = np.where(big[regions], parcels.astype(np.int64) + 1, 0) * n_cls + outline
    key[outline < 0] = -1
    return label_components(key, background=-1, connectivity=1)


def _label_objects(
    outline: np.ndarray,
    idx: np.ndarray,
    valid: np.ndarray,
    obj: np.ndarray,
    target: float,
    affinity: np.ndarray | None,
    freq: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Give each drawn object one class.

    Non-spammers (``affinity`` given) relabel object o to a plausible wrong class when
    u_o < λ·s_c, s_c being how confusable its class is. The wrong-pixel count is a step
    function of λ that is exact from per-object tables, so λ is chosen by sorting the
    thresholds u_o / s_c rather than by re-rendering. Spammers draw every object's class from
    the class frequencies.
    """
    n_cls = freq.size
    n_obj = int(obj.max())
    ov, tv = obj[valid], idx[valid].astype(np.int64)
    cls = np.zeros(n_obj + 1, dtype=np.int64)
    cls[ov] = outline[valid]
    if affinity is None:
        new = rng.choice(n_cls, size=n_obj + 1, p=freq)
    else:
        hits = np.bincount(ov * n_cls + tv, minlength=(n_obj + 1) * n_cls).reshape(-1, n_cls)
        propensity = affinity.sum(axis=1)
        propensity = propensity / propensity.mean()
        cum = np.cumsum(affinity / affinity.sum(axis=1, keepdims=True), axis=1)[cls]
        new = np.minimum((rng.random(n_obj + 1)[:, None] > cum).sum(axis=1), n_cls - 1)
        with np.errstate(divide="ignore"):
            thresh = rng.random(n_obj + 1) / propensity[cls]
        thresh[0] = np.inf  # label 0 is the ignore background
        order = np.argsort(thresh, kind="stable")[: int(np.isfinite(thresh).sum())]
        objs = np.arange(n_obj + 1)
        delta = hits[objs, cls] - hits[objs, new]  # wrong pixels added by flipping o
        wrong = ov.size - hits[objs, cls].sum() + np.concatenate([[0], np.cumsum(delta[order])])
        m = int(np.argmin(np.abs(wrong - target * ov.size)))
        flipped = cls.copy()
        flipped[order[:m]] = new[order[:m]]
        new = flipped
    out = new[obj]
    out[~valid] = -1
    return out


def simulate_crowd(
    truth: np.ndarray, schema: ClassSchema, config: CrowdConfig | None = None
) -> np.ndarray:
    """Labels of ``config.n_annotators`` simulated crowd workers, (A, H, W) uint8 codes.

    Per annotator: small truth objects are missed (painted with a neighbouring label), outlines
    are biased per class (grown or shrunk), shifted and wobbled, then each drawn object gets a
    class from the annotator's own structured confusion. The outline sloppiness is fixed by
    ``boundary_px``/``miss_prob`` (scaled down only if it alone exceeds the target); object
    confusions fill the rest of the annotator's target wrong-pixel rate. The rate moves in
    steps of one object, so objects are capped at ``max_object_frac`` of the labelled pixels:
    on small scenes the parcels shrink below ``parcel_px``.
    """
    cfg = config or CrowdConfig()
    idx = _truth_index(truth, schema)
    valid = idx >= 0
    n_cls = schema.num_classes
    out = np.full((cfg.n_annotators, *idx.shape), schema.ignore, dtype=np.uint8)
    n_valid = int(np.count_nonzero(valid))
    if n_valid == 0:
        return out
    comp = label_components(idx, background=-1, connectivity=2)  # diagonal touches join
    small = np.bincount(comp.ravel()) < cfg.min_object_px
    small[0] = False
    freq = np.bincount(idx[valid], minlength=n_cls) / n_valid
    base_aff = confusability(schema, cfg.confusable)
    split_px = max(64, min(2 * cfg.parcel_px**2, int(cfg.max_object_frac * n_valid)))
    cell = max(4, min(cfg.parcel_px, math.isqrt(split_px // 2)))
    weights = cfg.skill_weights()
    n_good = weights.size
    streams = np.random.SeedSequence(cfg.seed).spawn(cfg.n_annotators)
    for a in range(cfg.n_annotators):
        rng = np.random.default_rng(streams[a])
        spammer = a >= n_good
        w = 2.0 * weights.max() if spammer else weights[a]
        angle = rng.uniform(0, 2 * np.pi)
        s = _Sloppiness(
            amplitude=cfg.boundary_px * math.sqrt(w),
            miss_prob=min(1.0, cfg.miss_prob * w),
            shift=rng.uniform(0.5, 1.0) * np.array([np.sin(angle), np.cos(angle)]),
            wobble=_SmoothFields(idx.shape, cfg.jitter_scale_px, 2, rng),
            class_bias=rng.uniform(-1.0, 1.0, n_cls),
            class_order=rng.permutation(n_cls),
            rank=rng.permutation(n_cls),
            miss_u=rng.random(small.size),
        )
        target = 1.0 if spammer else min(cfg.noise * w, 0.9)
        strength = 1.0
        outline = _outline(idx, valid, comp, small, s, strength, cfg)
        floor = np.count_nonzero((outline != idx) & valid) / n_valid
        if not spammer and floor > target:
            lo, hi = 0.0, 1.0  # outline errors alone overshoot: tone the sloppiness down
            for _ in range(5):
                strength = 0.5 * (lo + hi)
                outline = _outline(idx, valid, comp, small, s, strength, cfg)
                floor = np.count_nonzero((outline != idx) & valid) / n_valid
                lo, hi = (strength, hi) if floor <= target else (lo, strength)
            if floor > target:
                strength = lo
                outline = _outline(idx, valid, comp, small, s, strength, cfg)
        affinity = None
        if not spammer:
            affinity = base_aff * rng.lognormal(0.0, 0.5, base_aff.shape)  # its own habits
            affinity = 0.5 * (affinity + affinity.T)
        obj = _objects(outline, _parcels(idx.shape, cell, rng), n_cls, split_px)
        lab = _label_objects(outline, idx, valid, obj, target, affinity, freq, rng)
        out[a] = _to_codes(lab, schema)
        log.info(
            "crowd annotator %d%s: target %.3f, achieved %.3f",
            a,
            " (spammer)" if spammer else "",
            target,
            noise_rate(out[a], truth, schema.ignore),
        )
    return out


# --- weak model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelNoiseConfig:
    """Settings of the simulated weak model.

    A nearest-class-mean classifier on B, G, R, NIR and NDVI, trained on ``n_train_spectra``
    sampled pixels, its output cleaned by a ``2*smooth_px+1`` majority filter. One strength is
    calibrated so that it is wrong on about ``noise`` of the pixels: above the classifier's own
    error the model sees the scene through a smooth spectral shift (haze, illumination,
    phenology) of ``shift_scale_px`` wavelength; below it, the model is pulled toward the truth
    by a smoothly varying amount (what a better model would know).
    """

    noise: float = 0.25
    n_train_spectra: int = 300
    smooth_px: int = 3
    shift_scale_px: float = 96.0
    n_calibration: int = 20000  # pixels (with their neighbourhoods) used to calibrate
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise < 1.0:
            raise TrustmapError(f"model noise must be in [0, 1), got {self.noise}")
        if self.n_train_spectra < 2 or self.smooth_px < 0 or self.shift_scale_px <= 0:
            raise TrustmapError("model: need n_train_spectra >= 2, smooth_px >= 0, scale > 0")
        if self.n_calibration < 100:
            raise TrustmapError("model: n_calibration must be at least 100")


_N_FEATURES = 5


def _features(bands: np.ndarray) -> np.ndarray:
    """(4, ...) B, G, R, NIR -> (5, ...) float32 with NDVI appended."""
    b = bands.astype(np.float32)
    ndvi = (b[3] - b[2]) / np.maximum(b[3] + b[2], 1.0)
    return np.concatenate([b, ndvi[None]])


def _sample_valid(valid: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` distinct flat indices of valid pixels, uniformly, without a full index list
    unless the valid pixels are scarce."""
    flat = valid.ravel()
    cand = np.unique(rng.integers(0, flat.size, size=4 * n))
    cand = rng.permutation(cand[flat[cand]])
    if cand.size >= n:
        return cand[:n]
    pool = np.flatnonzero(flat)
    return rng.choice(pool, size=min(n, pool.size), replace=False)


@dataclass
class _NearestMean:
    classes: np.ndarray  # (K,) class indices the model knows
    means: np.ndarray  # (K, F) in scaled units
    scale: np.ndarray  # (F,) pooled within-class std

    def terms(self, feat: np.ndarray, pert: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(a, b), each (K, ...): the squared distance to mean k, up to a term equal for all k,
        is a_k + sigma * b_k when the spectra are seen through a shift ``sigma * pert``.
        Linear in sigma, so calibration re-evaluates only a sum and an argmin."""
        z = feat / self.scale.reshape(-1, *[1] * (feat.ndim - 1))
        sq = (self.means**2).sum(axis=1).reshape(-1, *[1] * (feat.ndim - 1))
        a = sq - 2.0 * np.tensordot(self.means, z, axes=(1, 0))
        b = -2.0 * np.tensordot(self.means, pert, axes=(1, 0))
        return a, b

    def position(self, idx: np.ndarray) -> np.ndarray:
        """Truth class index -> its position in ``classes`` (-1 if unknown or ignore)."""
        # One spare slot at the end, never assigned: ignore (-1) indexes it and gets -1.
        lut = np.full(max(int(self.classes.max()), int(idx.max())) + 2, -1, dtype=np.int8)
        lut[self.classes] = np.arange(self.classes.size)
        return lut[idx]

    @staticmethod
    def predict(
        a: np.ndarray, b: np.ndarray, truth: np.ndarray, know: np.ndarray, strength: float
    ) -> np.ndarray:
        """Position in ``classes`` of the nearest mean (ties: the first).

        ``strength`` > 0 shifts the spectra by ``strength * pert``; < 0 instead pulls each
        pixel toward its true class by ``-strength * know`` (squared std units), standing for
        what a better model would know. ``know`` varies smoothly in space, so the residual
        errors gather where the model knows least and the spectra mislead most.
        """
        sigma, bonus = np.float32(max(strength, 0.0)), np.float32(max(-strength, 0.0))
        best = arg = None
        for k in range(a.shape[0]):
            d = a[k] + sigma * b[k]
            if bonus:
                d -= bonus * know * (truth == k)
            if best is None:
                best, arg = d, np.zeros(d.shape, dtype=np.intp)
            else:
                closer = d < best
                np.minimum(best, d, out=best)
                arg[closer] = k
        return arg


def _train(
    idx: np.ndarray, valid: np.ndarray, bands: np.ndarray, n: int, rng: np.random.Generator
) -> _NearestMean:
    """Fit class means on a few hundred spectra, stratified so rare classes are seen too."""
    pos = _sample_valid(valid, 64 * n, rng)
    cls = idx.ravel()[pos]
    present = np.flatnonzero(np.bincount(idx[valid], minlength=idx.max() + 1))
    quota = max(2, n // present.size)
    picks, labels = [], []
    for c in present:
        got = pos[cls == c][:quota]
        if got.size < quota:
            pool = np.flatnonzero((idx == c).ravel())
            got = rng.choice(pool, size=min(quota, pool.size), replace=False)
        picks.append(got)
        labels.append(np.full(got.size, c))
    pick = np.concatenate(picks)
    lab = np.concatenate(labels)
    r, c = np.unravel_index(pick, idx.shape)
    x = _features(bands[:, r, c]).T.astype(np.float64)  # (n, F)
    means = np.stack([x[lab == k].mean(axis=0) for k in present])
    resid = x - means[np.searchsorted(present, lab)]
    scale = np.sqrt((resid**2).mean(axis=0)) + 1e-6
    return _NearestMean(present, (means / scale).astype(np.float32), scale.astype(np.float32))


def _majority(
    pred: np.ndarray, n_cls: int, radius: int, inside: np.ndarray | None = None
) -> np.ndarray:
    """Majority filter over a (2r+1)² box, counting only pixels inside the image.

    Integer counts make it exact and reproducible; ties go to the centre's own class, then to
    the lowest class. With ``inside`` given, ``pred`` is a stack of (N, k, k) patches and the
    result is the filtered value at their centres.
    """
    if radius == 0:
        return pred if inside is None else pred[:, radius, radius]
    ones = np.ones(2 * radius + 1)
    best = arg = None
    for k in range(n_cls):
        hit = pred == k
        if inside is None:
            votes = ndimage.correlate1d(hit.astype(np.uint16), ones, axis=0, mode="constant")
            votes = ndimage.correlate1d(votes, ones, axis=1, mode="constant").astype(np.int32)
            votes = 2 * votes + hit
        else:
            votes = 2 * (hit & inside).sum(axis=(1, 2)) + hit[:, radius, radius]
        if best is None:
            best, arg = votes, np.zeros(votes.shape, dtype=np.intp)
        else:
            more = votes > best
            best = np.where(more, votes, best)
            arg[more] = k
    return arg


def _calibrate(rate: Callable[[float], float], target: float) -> tuple[float, float]:
    """Strength whose wrong-pixel rate is closest to ``target``, and that rate.

    The rate rises with the strength (noisily); bracket the target by doubling away from 0 on
    the side it lies, then bisect. Every evaluated point is a candidate.
    """
    base = rate(0.0)
    cands = [(abs(base - target), 0.0, base)]
    if abs(base - target) < 5e-4:
        return 0.0, base
    side = 1.0 if base < target else -1.0
    lo, hi = 0.0, 0.25 * side
    while True:
        got = rate(hi)
        cands.append((abs(got - target), hi, got))
        if (got >= target) == (side > 0) or abs(hi) >= 4096:
            break
        lo, hi = hi, 2 * hi
    for _ in range(16):
        mid = 0.5 * (lo + hi)
        got = rate(mid)
        cands.append((abs(got - target), mid, got))
        if abs(got - target) < 5e-4:
            break
        lo, hi = (mid, hi) if (got < target) == (side > 0) else (lo, mid)
    _, strength, achieved = min(cands)
    return strength, achieved


def simulate_model(
    truth: np.ndarray,
    bands: np.ndarray,
    schema: ClassSchema,
    config: ModelNoiseConfig | None = None,
) -> np.ndarray:
    """Predictions of a weak spectral model, (H, W) uint8 codes, about ``noise`` wrong.

    Errors are systematic (between spectrally similar classes) and come in blobs. The strength
    is found by bisection; on large scenes it is evaluated on a uniform sample of pixels with
    their filter windows, so calibration costs the same on any scene size, and the scene is
    then rendered in strips with the same arithmetic. Warns if ``noise`` is out of reach.
    """
    cfg = config or ModelNoiseConfig()
    idx = _truth_index(truth, schema)
    bands = np.asarray(bands)
    if bands.ndim != 3 or bands.shape[0] != 4 or bands.shape[1:] != idx.shape:
        raise TrustmapError(
            f"bands must be (4, H, W) B, G, R, NIR matching truth {idx.shape}, got {bands.shape}"
        )
    valid = idx >= 0
    height, width = idx.shape
    if not valid.any():
        return np.full(idx.shape, schema.ignore, dtype=np.uint8)
    rng = np.random.default_rng(cfg.seed)
    model = _train(idx, valid, bands, cfg.n_train_spectra, rng)
    shift = _SmoothFields(idx.shape, cfg.shift_scale_px, _N_FEATURES, rng)
    know = _SmoothFields(idx.shape, cfg.shift_scale_px, 1, rng)
    r = cfg.smooth_px
    n_k = model.classes.size

    def render(
        a: np.ndarray, b: np.ndarray, y: np.ndarray, k: np.ndarray, strength: float
    ) -> np.ndarray:
        return model.classes[_majority(model.predict(a, b, y, k, strength), n_k, r)]

    small = idx.size <= cfg.n_calibration * (2 * r + 1) ** 2
    if small:
        # Small scene: the whole of it is cheaper than the patch sample, and exact.
        a_full, b_full = model.terms(_features(bands), shift.rows(0, height))
        y_full, k_full = model.position(idx), np.exp(know.rows(0, height)[0])

        def rate(strength: float) -> float:
            pred = render(a_full, b_full, y_full, k_full, strength)
            return float(np.mean(pred[valid] != idx[valid]))

    else:
        # Uniform sample of labelled pixels with their filter windows; rows or columns
        # outside the image are masked, as the full filter does at the scene border.
        cy, cx = np.unravel_index(_sample_valid(valid, cfg.n_calibration, rng), idx.shape)
        off = np.arange(-r, r + 1)
        ys, xs = cy[:, None] + off, cx[:, None] + off  # (N, k)
        inside = ((ys >= 0) & (ys < height))[:, :, None] & ((xs >= 0) & (xs < width))[:, None, :]
        ys, xs = np.clip(ys, 0, height - 1), np.clip(xs, 0, width - 1)
        a_pat, b_pat = model.terms(
            _features(bands[:, ys[:, :, None], xs[:, None, :]]), shift.patches(ys, xs)
        )
        y_pat = model.position(idx[ys[:, :, None], xs[:, None, :]])
        k_pat = np.exp(know.patches(ys, xs)[0])
        wanted = idx[cy, cx]

        def rate(strength: float) -> float:
            pred = model.predict(a_pat, b_pat, y_pat, k_pat, strength)
            pred = _majority(pred, n_k, r, inside)
            return float(np.mean(model.classes[pred] != wanted))

    strength, expected = _calibrate(rate, cfg.noise)
    if abs(expected - cfg.noise) > 0.02:
        warnings.warn(
            f"the weak model reaches {expected:.3f} wrong pixels at best; noise={cfg.noise} "
            "is out of its range",
            stacklevel=2,
        )
    to_code = schema.index_to_code()
    if small:
        out = to_code[render(a_full, b_full, y_full, k_full, strength)]
    else:
        codes = to_code[model.classes]
        out = np.empty(idx.shape, dtype=np.uint8)
        for r0, r1 in _strips(height):
            h0, h1 = max(0, r0 - r), min(height, r1 + r)  # halo rows complete every window
            a, b = model.terms(_features(bands[:, h0:h1]), shift.rows(h0, h1))
            k = np.exp(know.rows(h0, h1)[0])
            pred = model.predict(a, b, model.position(idx[h0:h1]), k, strength)
            out[r0:r1] = codes[_majority(pred, n_k, r)][r0 - h0 : r1 - h0]
    out[~valid] = schema.ignore
    log.info(
        "weak model: strength %.3f, target %.3f, achieved %.3f",
        strength,
        cfg.noise,
        noise_rate(out, truth, schema.ignore),
    )
    return out
