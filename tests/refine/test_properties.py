"""Invariants of the per-pixel and per-region steps, checked by hypothesis on random inputs:
scores stay in their ranges and do not depend on how the scene is chunked; regions cover
every valid pixel exactly once."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refine.regions import build_regions
from refine.scores import NEEDS_LABELS, SCORES

RANGES = {
    "least_confidence": (0.0, 1.0),
    "margin": (0.0, 1.0),
    "entropy": (0.0, None),  # nats: [0, log C]
    "disagreement": (0.0, 1.0),
    "normalized_margin": (-1.0, 1.0),
    "self_confidence": (-1.0, 1.0),
}


@st.composite
def probabilities(draw) -> tuple[np.ndarray, np.ndarray]:
    c, h, w = draw(st.integers(2, 5)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    logits = draw(hnp.arrays(np.float32, (c, h, w), elements=st.floats(-6, 6, width=32)))
    p = np.exp(logits - logits.max(axis=0, keepdims=True))
    p = (p / p.sum(axis=0, keepdims=True)).astype(np.float32)
    labels = draw(hnp.arrays(np.int16, (h, w), elements=st.integers(-1, c - 1)))
    return p, labels


@settings(max_examples=60, deadline=None)
@given(data=probabilities(), name=st.sampled_from(sorted(RANGES)), chunk=st.integers(1, 400))
def test_scores_stay_in_range_and_ignore_chunking(data, name: str, chunk: int) -> None:
    probs, labels = data
    fn = SCORES[name]
    whole = fn(probs, labels)
    chunked = fn(probs, labels, chunk_bytes=chunk)  # as little as one row per chunk
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6, equal_nan=True)
    lo, hi = RANGES[name]
    hi = np.log(probs.shape[0]) if hi is None else hi
    finite = np.isfinite(whole)
    assert ((whole[finite] >= lo - 1e-5) & (whole[finite] <= hi + 1e-5)).all()
    if name in NEEDS_LABELS:  # NaN exactly where there is no label to compare with
        np.testing.assert_array_equal(~finite, labels < 0)
    else:
        assert finite.all()


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(8, 60), st.integers(8, 60)),
    kind=st.sampled_from(["slic", "grid", "components"]),
    seed=st.integers(0, 2**16),
    size=st.integers(16, 200),
)
def test_regions_cover_each_valid_pixel_exactly_once(shape, kind: str, seed: int, size: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (3, *shape), dtype=np.uint8)
    valid = rng.random(shape) > 0.2
    labels = rng.integers(0, 4, shape).astype(np.int16)
    kw = {"image": image} if kind == "slic" else {"shape": shape}
    if kind == "slic":
        kw.update(region_size=size, tile_size=32, show_progress=False)
    elif kind == "grid":
        kw.update(cell=max(2, int(size**0.5)))
    else:
        kw = {"labels": labels, "split": max(2, int(size**0.5))}
    r = build_regions(kind, valid=valid, **kw)
    np.testing.assert_array_equal(r.labels >= 0, valid)  # every valid pixel in a region, no other
    ids = r.labels[valid]
    assert set(np.unique(ids).tolist()) == set(range(r.n))  # ids 0..R-1, each used
    np.testing.assert_array_equal(np.bincount(ids, minlength=r.n), r.area)  # one region per pixel
