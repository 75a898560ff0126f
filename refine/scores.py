"""Pixel scores: how likely each pixel's current label is wrong, or how worth reviewing it is.

Conventions shared by every score here:

* ``probs`` is float (C, H, W): class probabilities in schema order (index 0..C-1), e.g. a
  softmax output or a ``np.memmap`` of one. BALD takes (T, C, H, W) samples instead.
* ``labels`` is the current label as class *indices* (H, W), int, with -1 for ignore
  (use ``ClassSchema.code_to_index()[codes]`` to get it from a code raster).
* The result is float32 (H, W) and **higher means more likely wrong / more worth
  reviewing**. Scores that need the label (``disagreement``, ``normalized_margin``,
  ``self_confidence``) are NaN on ignore pixels; label-free scores ignore ``labels``.
  NaN probabilities (e.g. nodata the model never saw) give NaN scores.

Every function works on blocks of rows (about ``chunk_bytes`` of probabilities at a time),
so an 8192 x 8192 x 6 float32 field (1.6 GB) never gets a full-size temporary: the only
full-size allocation is the float32 output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tiles.errors import TrustmapError

CHUNK_BYTES = 32 * 2**20
"""Default size of the probability block processed at once."""

FLOAT_TOLERANCE = 1e-6
"""Slack in ``p_k >= t_k`` comparisons, the same as cleanlab's ``FLOATING_POINT_COMPARISON``."""

ScoreFn = Callable[..., np.ndarray]


# --- helpers ---------------------------------------------------------------------------------
def row_chunks(height: int, bytes_per_row: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[slice]:
    """Row slices covering ``height`` rows, each about ``chunk_bytes`` of input."""
    step = max(1, int(chunk_bytes) // max(1, int(bytes_per_row)))
    for r0 in range(0, height, step):
        yield slice(r0, min(height, r0 + step))


def _probs(probs: np.ndarray, ndim: int = 3) -> np.ndarray:
    if not isinstance(probs, np.ndarray):
        probs = np.asarray(probs)
    if probs.ndim != ndim:
        shape = "(C, H, W)" if ndim == 3 else "(T, C, H, W)"
        raise TrustmapError(f"probabilities must be {shape}, got shape {probs.shape}")
    if probs.shape[-3] < 1:
        raise TrustmapError("probabilities have no classes")
    return probs


def _labels(labels: np.ndarray | None, shape: tuple[int, int], num_classes: int) -> np.ndarray:
    if labels is None:
        raise TrustmapError("this score needs the current labels")
    labels = np.asarray(labels)
    if labels.shape != shape:
        raise TrustmapError(f"labels have shape {labels.shape}, probabilities {shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TrustmapError(f"labels must be class indices (integers), got {labels.dtype}")
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < -1 or hi >= num_classes:
            raise TrustmapError(
                f"label indices must lie in -1..{num_classes - 1} (-1 = ignore), found {lo}..{hi}"
            )
    return labels


def _chunk_bytes(probs: np.ndarray) -> int:
    """Bytes in one row of the probability array, over all leading axes."""
    return int(np.prod(probs.shape[:-2])) * probs.shape[-1] * probs.dtype.itemsize


def _label_prob(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p_y for a (C, h, w) block, NaN where y = -1."""
    py = np.take_along_axis(p, np.maximum(y, 0).astype(np.intp)[None], axis=0)[0]
    py = py.astype(np.float32, copy=False)
    py[y < 0] = np.nan
    return py


def _top2(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest and second-largest probability per pixel of a (C, h, w) block.

    A running update over the (few) classes keeps two (h, w) buffers instead of sorting
    the whole block; with one class the runner-up is 0.
    """
    m1 = p[0].astype(np.float32, copy=True)
    m2 = np.zeros_like(m1)
    for k in range(1, p.shape[0]):
        np.maximum(m2, np.minimum(m1, p[k]), out=m2)
        np.maximum(m1, p[k], out=m1)
    return m1, m2


def _argmax0(p: np.ndarray) -> np.ndarray:
    """argmax over axis 0 of a (C, h, w) block as intp, ties to the lowest index.

    A running comparison over the (few) classes: numpy's argmax along a leading axis
    transposes the block first and is slower.
    """
    best = p[0].copy()
    idx = np.zeros(best.shape, np.intp)
    for k in range(1, p.shape[0]):
        better = p[k] > best
        idx[better] = k
        np.maximum(best, p[k], out=best)
    return idx


def _entropy(p: np.ndarray, axis: int = 0) -> np.ndarray:
    """Shannon entropy in nats, -sum p log p, with 0 log 0 = 0."""
    p = p.astype(np.float32, copy=False)
    return -np.sum(p * np.log(np.maximum(p, np.finfo(np.float32).tiny)), axis=axis)


def predicted_class(probs: np.ndarray, *, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """argmax_k p_k as int16 (H, W), row block by row block (numpy's argmax gives int64)."""
    probs = _probs(probs)
    out = np.empty(probs.shape[1:], np.int16)
    for rows in row_chunks(probs.shape[1], _chunk_bytes(probs), chunk_bytes):
        out[rows] = _argmax0(probs[:, rows])
    return out


# --- label-free uncertainty ------------------------------------------------------------------
def least_confidence(
    probs: np.ndarray, labels: np.ndarray | None = None, *, chunk_bytes: int = CHUNK_BYTES
) -> np.ndarray:
    """Least confidence, 1 - max_k p_k: the model is unsure whatever the label says."""
    probs = _probs(probs)
    out = np.empty(probs.shape[1:], np.float32)
    for rows in row_chunks(probs.shape[1], _chunk_bytes(probs), chunk_bytes):
        out[rows] = 1.0 - probs[:, rows].max(axis=0)
    return out


def margin(
    probs: np.ndarray, labels: np.ndarray | None = None, *, chunk_bytes: int = CHUNK_BYTES
) -> np.ndarray:
    """Margin score, 1 - (p_(1) - p_(2)) with p_(1) >= p_(2) the two largest probabilities.

    The margin itself is small when two classes compete; it is flipped so that higher
    means more uncertain, in [0, 1].
    """
    probs = _probs(probs)
    out = np.empty(probs.shape[1:], np.float32)
    for rows in row_chunks(probs.shape[1], _chunk_bytes(probs), chunk_bytes):
        m1, m2 = _top2(probs[:, rows])
        out[rows] = 1.0 - (m1 - m2)
    return out


def entropy(
    probs: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    normalize: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> np.ndarray:
    """Predictive entropy H[p] = -sum_k p_k log p_k in nats; ``normalize`` divides by log C."""
    probs = _probs(probs)
    scale = 1.0 / np.log(probs.shape[0]) if normalize and probs.shape[0] > 1 else 1.0
    out = np.empty(probs.shape[1:], np.float32)
    for rows in row_chunks(probs.shape[1], _chunk_bytes(probs), chunk_bytes):
        out[rows] = _entropy(probs[:, rows]) * scale
    return out


def bald(
    samples: np.ndarray, labels: np.ndarray | None = None, *, chunk_bytes: int = CHUNK_BYTES
) -> np.ndarray:
    """BALD mutual information from T stochastic passes (MC dropout or an ensemble).

    ``samples`` is (T, C, H, W). BALD = H[mean_t p_t] - mean_t H[p_t] (nats): the part of
    the predictive entropy that comes from disagreement between the passes (epistemic
    uncertainty). It is >= 0 by Jensen's inequality; float rounding below 0 is clipped.
    """
    samples = _probs(samples, ndim=4)
    out = np.empty(samples.shape[2:], np.float32)
    for rows in row_chunks(samples.shape[2], _chunk_bytes(samples), chunk_bytes):
        block = samples[:, :, rows].astype(np.float32, copy=False)
        total = _entropy(block.mean(axis=0), axis=0)
        expected = _entropy(block, axis=1).mean(axis=0)
        out[rows] = np.maximum(total - expected, 0.0)
    return out


# --- label-aware scores ----------------------------------------------------------------------
def disagreement(
    probs: np.ndarray, labels: np.ndarray | None = None, *, chunk_bytes: int = CHUNK_BYTES
) -> np.ndarray:
    """Disagreement with the current label, 1 - p_y (NaN on ignore)."""
    probs = _probs(probs)
    labels = _labels(labels, probs.shape[1:], probs.shape[0])
    out = np.empty(probs.shape[1:], np.float32)
    for rows in row_chunks(probs.shape[1], _chunk_bytes(probs), chunk_bytes):
        out[rows] = 1.0 - _label_prob(probs[:, rows], labels[rows])
    return out


def normalized_margin(
    probs: np.ndarray, labels: np.ndarray | None = None, *, chunk_bytes: int = CHUNK_BYTES
) -> np.ndarray:
    """Negated normalised margin, max_{k != y} p_k - p_y, in [-1, 1] (NaN on ignore).

    cleanlab's normalised margin is p_y - max_{k != y} p_k (low = suspicious); the sign is
    flipped here so that higher means more likely wrong, and > 0 exactly where the model
    prefers another class to the label.
    """
    probs = _probs(probs)
    labels = _labels(labels, probs.shape[1:], probs.shape[0])
    out = np.empty(probs.shape[1:], np.float32)
    for rows in row_chunks(probs.shape[1], _chunk_bytes(probs), chunk_bytes):
        p = probs[:, rows]
        py = _label_prob(p, labels[rows])
        m1, m2 = _top2(p)
        # The best other class is the runner-up when y holds the maximum, else the maximum.
        other = np.where(py >= m1, m2, m1)
        out[rows] = other - py
    return out


def class_thresholds(
    probs: np.ndarray, labels: np.ndarray, *, chunk_bytes: int = CHUNK_BYTES
) -> np.ndarray:
    """Per-class confident thresholds t_k = mean of p_k over the pixels labelled k.

    This is cleanlab's ``get_confident_thresholds`` (Northcutt et al. 2021): the average
    self-confidence of each class. A class with no labelled pixel gets +inf, so nothing is
    ever confidently counted as it (cleanlab uses a value above 1 for the same effect).
    Ignore pixels (-1) do not count. Returns float64 (C,).
    """
    probs = _probs(probs)
    num_classes = probs.shape[0]
    labels = _labels(labels, probs.shape[1:], num_classes)
    sums = np.zeros(num_classes)
    counts = np.zeros(num_classes)
    for rows in row_chunks(probs.shape[1], _chunk_bytes(probs), chunk_bytes):
        y = labels[rows]
        py = _label_prob(probs[:, rows], y)
        keep = (y >= 0) & np.isfinite(py)
        yk = y[keep].astype(np.intp)
        sums += np.bincount(yk, weights=py[keep].astype(np.float64), minlength=num_classes)
        counts += np.bincount(yk, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)


def self_confidence(
    probs: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    thresholds: np.ndarray | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> np.ndarray:
    """Confident-learning score t_y - p_y: how far the label's probability falls below
    what pixels of that class usually get (NaN on ignore).

    ``thresholds`` defaults to :func:`class_thresholds` of the same input. Within one class
    the order is exactly cleanlab's self-confidence ranking (p_y ascending); across classes
    it is normalised by each class's typical confidence, so a rare, hard class is not
    flooded out by pixels of easy classes (cleanlab's segmentation ranking uses raw p_y).
    Positive values are pixels below their class threshold.
    """
    probs = _probs(probs)
    labels = _labels(labels, probs.shape[1:], probs.shape[0])
    t = (
        class_thresholds(probs, labels, chunk_bytes=chunk_bytes)
        if thresholds is None
        else thresholds
    )
    t = np.asarray(t, np.float64)
    if t.shape != (probs.shape[0],):
        raise TrustmapError(f"need one threshold per class ({probs.shape[0]}), got {t.shape}")
    t32 = np.where(np.isfinite(t), t, np.nan).astype(np.float32)
    out = np.empty(probs.shape[1:], np.float32)
    for rows in row_chunks(probs.shape[1], _chunk_bytes(probs), chunk_bytes):
        y = labels[rows]
        out[rows] = t32[np.maximum(y, 0)] - _label_prob(probs[:, rows], y)
    return out


def label_issues(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    thresholds: np.ndarray | None = None,
    method: str = "confident_joint",
    chunk_bytes: int = CHUNK_BYTES,
) -> np.ndarray:
    """Boolean mask of pixels whose label is probably wrong, by confident learning.

    ``method="confident_joint"`` (default) flags the off-diagonal of the confident joint:
    with j = argmax_{k : p_k >= t_k} p_k (the most likely class among those the pixel is
    confidently in), flag the pixel when j exists, j != y, and the model's argmax is not y
    either (cleanlab never flags a pixel whose prediction equals its label).

    ``method="cleanlab"`` reproduces ``cleanlab.segmentation.filter.find_label_issues``:
    count n = #{argmax p != y and p_argmax >= t_argmax}, flag the n pixels with the lowest
    p_y over the whole scene, then unflag those whose argmax is y. It needs one global
    ranking (an extra float32 H x W array); ties at the n-th value may be broken
    differently from cleanlab.

    Unlike cleanlab, ignore pixels (-1) take no part: they are never flagged and do not
    enter the thresholds or the count. Thresholds compare with a 1e-6 slack, as cleanlab's.
    """
    probs = _probs(probs)
    num_classes = probs.shape[0]
    labels = _labels(labels, probs.shape[1:], num_classes)
    t = (
        class_thresholds(probs, labels, chunk_bytes=chunk_bytes)
        if thresholds is None
        else thresholds
    )
    t_adj = (np.asarray(t, np.float64) - FLOAT_TOLERANCE).astype(np.float32)[:, None, None]
    out = np.zeros(probs.shape[1:], bool)
    if method == "confident_joint":
        for rows in row_chunks(probs.shape[1], _chunk_bytes(probs), chunk_bytes):
            p, y = probs[:, rows], labels[rows]
            above = p >= t_adj
            j = _argmax0(np.where(above, p, -1.0))
            out[rows] = above.any(axis=0) & (j != y) & (_argmax0(p) != y) & (y >= 0)
        return out
    if method != "cleanlab":
        raise TrustmapError(
            f"unknown label-issue method {method!r}; use confident_joint or cleanlab"
        )
    py_all = np.full(probs.shape[1:], np.inf, np.float32)
    n_issues = 0
    for rows in row_chunks(probs.shape[1], _chunk_bytes(probs), chunk_bytes):
        p, y = probs[:, rows], labels[rows]
        pred = _argmax0(p)
        p_pred = np.take_along_axis(p, pred[None], axis=0)[0]
        n_issues += int(np.count_nonzero((pred != y) & (p_pred >= t_adj[pred, 0, 0]) & (y >= 0)))
        py = _label_prob(p, y)
        py_all[rows] = np.where(y >= 0, py, np.inf)
        out[rows] = pred != y  # provisional: "prediction differs", combined below
    if n_issues == 0:
        return np.zeros(probs.shape[1:], bool)
    flat = py_all.ravel()
    lowest = np.zeros(flat.size, bool)
    lowest[np.argpartition(flat, n_issues - 1)[:n_issues]] = True
    out &= lowest.reshape(out.shape) & (labels >= 0)
    return out


# --- several annotators ----------------------------------------------------------------------
def annotator_disagreement(
    probs: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    *,
    agreement: np.ndarray | None = None,
    votes: np.ndarray | None = None,
    num_classes: int | None = None,
    normalize: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> np.ndarray:
    """Disagreement between several cheap label sources (model probabilities are unused).

    Give either ``agreement`` (H, W) in [0, 1], scored 1 - agreement, or ``votes`` (A, H, W)
    of class indices (-1 = that source has no vote), scored by vote entropy
    -sum_c (n_c / n) log(n_c / n) in nats, n the number of votes at the pixel; NaN where
    nobody voted. ``normalize`` divides by log min(A, C), the largest possible value.
    """
    if (agreement is None) == (votes is None):
        raise TrustmapError("annotator disagreement needs exactly one of agreement or votes")
    if agreement is not None:
        a = np.asarray(agreement, np.float32)
        finite = a[np.isfinite(a)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise TrustmapError("agreement values must lie in [0, 1]")
        return (1.0 - a).astype(np.float32)
    v = np.asarray(votes)
    if v.ndim != 3 or not np.issubdtype(v.dtype, np.integer):
        raise TrustmapError(
            f"votes must be integer class indices (A, H, W), got {v.dtype} {v.shape}"
        )
    n_cls = int(num_classes) if num_classes is not None else int(v.max()) + 1
    n_cls = max(n_cls, 1)
    scale = 1.0
    if normalize:
        top = np.log(min(v.shape[0], n_cls))
        scale = 1.0 / top if top > 0 else 1.0
    out = np.empty(v.shape[1:], np.float32)
    for rows in row_chunks(v.shape[1], _chunk_bytes(v), chunk_bytes):
        block = v[:, rows]
        n = (block >= 0).sum(axis=0).astype(np.float32)
        h = np.zeros(n.shape, np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            for c in range(n_cls):
                f = (block == c).sum(axis=0) / n
                h -= np.where(f > 0, f * np.log(np.where(f > 0, f, 1.0)), 0.0).astype(np.float32)
        h[n == 0] = np.nan
        out[rows] = h * scale
    return out


# --- registry --------------------------------------------------------------------------------
SCORES: dict[str, ScoreFn] = {
    "least_confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
    "bald": bald,
    "disagreement": disagreement,
    "normalized_margin": normalized_margin,
    "self_confidence": self_confidence,
    "annotator_disagreement": annotator_disagreement,
}
"""Score name (as written in configs) -> function(probs, labels, **kw) -> float32 (H, W)."""

NEEDS_LABELS = frozenset({"disagreement", "normalized_margin", "self_confidence"})
"""Scores that are NaN on ignore pixels because they compare with the current label."""


def compute_score(
    name: str, probs: np.ndarray | None, labels: np.ndarray | None = None, **kw: Any
) -> np.ndarray:
    """Run the score ``name`` from :data:`SCORES`; errors list the known names."""
    try:
        fn = SCORES[name]
    except KeyError:
        raise TrustmapError(
            f"unknown score {name!r}; choose one of {', '.join(sorted(SCORES))}"
        ) from None
    if name in NEEDS_LABELS and labels is None:
        raise TrustmapError(f"score {name!r} needs the current labels")
    if probs is None and name != "annotator_disagreement":
        raise TrustmapError(f"score {name!r} needs model probabilities")
    return fn(probs, labels, **kw)
