"""Cheap labels as a weak model draws them: a nearest-class-mean spectral classifier, its
output majority-filtered, so the errors are confusions between spectrally similar classes, in
blobs. Deterministic by seed and calibrated to a target wrong-pixel rate."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from refine.cheap.common import (
    SmoothFields,
    noise_rate,
    row_strips,
    truth_index,
)
from tiles.classes import ClassSchema
from tiles.errors import TrustmapError

log = logging.getLogger(__name__)


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
    idx = truth_index(truth, schema)
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
    shift = SmoothFields(idx.shape, cfg.shift_scale_px, _N_FEATURES, rng)
    know = SmoothFields(idx.shape, cfg.shift_scale_px, 1, rng)
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
        for r0, r1 in row_strips(height):
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
