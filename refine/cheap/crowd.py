"""Cheap labels as crowd annotators draw them: errors at the object level, as a person makes
them. Whole polygons get a plausible wrong class, outlines are shifted, wobbly and biased, small
objects are missed; annotators differ in skill, some are spammers. Deterministic by seed and
calibrated to a target wrong-pixel rate."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import label as label_components

from refine.cheap.common import (
    DEFAULT_CONFUSABLE,
    SmoothFields,
    confusability,
    noise_rate,
    row_strips,
    to_codes,
    truth_index,
)
from tiles.classes import ClassSchema
from tiles.errors import TrustmapError

log = logging.getLogger(__name__)


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
    wobble: SmoothFields  # (2 fields) boundary displacement
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
    for r0, r1 in row_strips(height):
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
    idx = truth_index(truth, schema)
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
            wobble=SmoothFields(idx.shape, cfg.jitter_scale_px, 2, rng),
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
        out[a] = to_codes(lab, schema)
        log.info(
            "crowd annotator %d%s: target %.3f, achieved %.3f",
            a,
            " (spammer)" if spammer else "",
            target,
            noise_rate(out[a], truth, schema.ignore),
        )
    return out
