"""Auto-correction: the calibrated threshold, the proposal, and additivity over windows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refine.autocorrect import (
    BINS,
    ConfidenceTally,
    choose_threshold,
    propose_corrections,
    row_windows,
    tally_reviewed,
)
from tiles.errors import TrustmapError


def _probs(pred: np.ndarray, conf: np.ndarray, c: int) -> np.ndarray:
    """(C, H, W) with ``conf`` on ``pred`` and the rest spread evenly."""
    p = np.repeat(((1.0 - conf) / (c - 1))[None], c, axis=0).astype(np.float32)
    np.put_along_axis(p, pred[None].astype(np.int64), conf[None].astype(np.float32), axis=0)
    return p


def test_threshold_is_the_lowest_confidence_reaching_the_target_precision():
    # disagreements at confidence 0.55 are right 50 % of the time, at 0.85 95 %
    tally = ConfidenceTally()
    tally.total[55], tally.right[55] = 1000, 500
    tally.total[85], tally.right[85] = 1000, 950
    t, info = choose_threshold(tally, precision=0.9, min_support=100, min_confidence=0.5)
    assert t == pytest.approx(0.56)  # above bin 55: only the 95 %-right bin is left
    assert info["estimated_precision"] == pytest.approx(0.95)
    assert info["support"] == 1000
    # a lower target takes both bins in
    t, info = choose_threshold(tally, precision=0.7, min_support=100, min_confidence=0.5)
    assert t == pytest.approx(0.5)
    assert info["estimated_precision"] == pytest.approx(0.725)


def test_no_threshold_without_enough_support_or_precision():
    tally = ConfidenceTally()
    tally.total[90], tally.right[90] = 50, 50
    assert choose_threshold(tally, 0.9, min_support=100)[0] is None
    tally.total[90], tally.right[90] = 1000, 500
    assert choose_threshold(tally, 0.9, min_support=100)[0] is None
    with pytest.raises(TrustmapError, match="autocorrect.precision"):
        choose_threshold(tally, 1.0, 10)


def test_tally_counts_only_reviewed_disagreements():
    c = 3
    pred = np.array([[0, 1, 2, 1]])
    conf = np.array([[0.9, 0.8, 0.7, 0.6]])
    probs = _probs(pred, conf, c)
    before = np.array([[0, 0, 0, 0]])  # the model disagrees at columns 1..3
    answers = np.array([[0, 1, 0, 1]])  # and is right at 1 and 3
    reviewed = np.array([[True, True, True, False]])
    t = tally_reviewed(probs, before, answers, reviewed)
    assert t.support == 2  # column 0 agrees, column 3 is not reviewed
    assert t.total[80] == 1 and t.right[80] == 1
    assert t.total[70] == 1 and t.right[70] == 0


def test_proposal_never_touches_protected_or_unlabelled_pixels():
    c = 3
    pred = np.array([[1, 1, 1, 1, 1]])
    conf = np.array([[0.95, 0.95, 0.95, 0.95, 0.4]])
    probs = _probs(pred, conf, c)
    labels = np.array([[0, 0, -1, 1, 0]])
    protected = np.array([[False, True, False, False, False]])
    out = propose_corrections(probs, labels, protected, threshold=0.9)
    assert out.tolist() == [[1, -1, -1, -1, -1]]


@settings(max_examples=25)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 30),
    seed=st.integers(0, 2**16),
    chunk=st.integers(1, 4000),
)
def test_tally_and_proposal_are_the_same_window_by_window(h, w, seed, chunk):
    """Pure functions of a window: any row split gives the whole-scene answer."""
    rng = np.random.default_rng(seed)
    c = 4
    probs = rng.dirichlet(np.ones(c), size=(h, w)).transpose(2, 0, 1).astype(np.float32)
    before = rng.integers(-1, c, (h, w))
    answers = rng.integers(-1, c, (h, w))
    reviewed = rng.random((h, w)) < 0.5
    whole = tally_reviewed(probs, before, answers, reviewed)
    parts = ConfidenceTally()
    proposal = np.empty((h, w), np.int16)
    for rows in row_windows(h, w, c, chunk_bytes=chunk):
        parts += tally_reviewed(probs[:, rows], before[rows], answers[rows], reviewed[rows])
        proposal[rows] = propose_corrections(probs[:, rows], before[rows], reviewed[rows], 0.3)
    assert np.array_equal(whole.total, parts.total) and np.array_equal(whole.right, parts.right)
    assert np.array_equal(proposal, propose_corrections(probs, before, reviewed, 0.3))
    assert whole.total.size == BINS


def test_tally_round_trips_through_json():
    t = ConfidenceTally()
    t.total[3], t.right[3] = 7, 2
    back = ConfidenceTally.from_dict(t.to_dict())
    assert np.array_equal(back.total, t.total) and np.array_equal(back.right, t.right)
