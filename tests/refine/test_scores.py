"""Pixel scores against hand-computed values, and confident learning against cleanlab."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refine import scores as S
from tiles.errors import TrustmapError

NAN = float("nan")


def _probs(*pixels: list[float]) -> np.ndarray:
    """(C, 1, N) float32 from N per-pixel probability vectors."""
    return np.array(pixels, np.float32).T[:, None, :]


# Three pixels over three classes; the second has a tie for first place.
P3 = _probs([0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [0.1, 0.3, 0.6])


def _h(*p: float) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def test_predicted_class() -> None:
    got = S.predicted_class(P3, chunk_bytes=1)
    assert got.dtype == np.int16 and got.tolist() == [[0, 0, 2]]  # a tie goes to the lower index


def test_least_confidence() -> None:
    np.testing.assert_allclose(S.least_confidence(P3)[0], [0.3, 0.6, 0.4], atol=1e-6)


def test_margin_is_one_minus_top2_gap() -> None:
    np.testing.assert_allclose(S.margin(P3)[0], [0.5, 1.0, 0.7], atol=1e-6)


def test_margin_single_class_is_zero_uncertainty() -> None:
    np.testing.assert_allclose(S.margin(np.ones((1, 2, 2), np.float32)), 0.0)


def test_entropy_and_normalised_entropy() -> None:
    expected = [_h(0.7, 0.2, 0.1), _h(0.4, 0.4, 0.2), _h(0.1, 0.3, 0.6)]
    np.testing.assert_allclose(S.entropy(P3)[0], expected, rtol=1e-5)
    np.testing.assert_allclose(
        S.entropy(P3, normalize=True)[0], np.array(expected) / math.log(3), rtol=1e-5
    )
    # 0 log 0 = 0: a one-hot pixel has zero entropy, not NaN
    assert S.entropy(_probs([1.0, 0.0]))[0, 0] == 0.0


def test_bald_from_disagreeing_and_agreeing_passes() -> None:
    # pixel 0: the two passes are one-hot on different classes -> H[mean] = ln 2, mean H = 0
    # pixel 1: both passes say (0.5, 0.5) -> H[mean] = mean H = ln 2 -> BALD 0
    samples = np.array(
        [
            [[[1.0, 0.5]], [[0.0, 0.5]]],  # pass 1: (C=2, H=1, W=2)
            [[[0.0, 0.5]], [[1.0, 0.5]]],  # pass 2
        ],
        np.float32,
    )
    np.testing.assert_allclose(S.bald(samples)[0], [math.log(2), 0.0], atol=1e-6)
    # three passes, one pixel: p = (0.9, 0.1), (0.5, 0.5), (0.2, 0.8)
    passes = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]], np.float32)[:, :, None, None]
    mean = passes[:, :, 0, 0].mean(axis=0)
    expected = _h(*mean) - np.mean([_h(0.9, 0.1), _h(0.5, 0.5), _h(0.2, 0.8)])
    assert S.bald(passes)[0, 0] == pytest.approx(expected, abs=1e-6)


def test_disagreement_is_nan_on_ignore() -> None:
    y = np.array([[0, 2, -1]])
    np.testing.assert_allclose(S.disagreement(P3, y)[0], [0.3, 0.8, NAN], atol=1e-6)


def test_normalized_margin_sign_and_ties() -> None:
    # pixel 0 labelled 0: best other 0.2 -> 0.2 - 0.7 = -0.5 (model agrees)
    # pixel 1 labelled 0 while class 1 ties at 0.4 -> 0.0
    # pixel 2 labelled 0: best other 0.6 -> 0.6 - 0.1 = 0.5 (model prefers another class)
    np.testing.assert_allclose(
        S.normalized_margin(P3, np.array([[0, 0, 0]]))[0], [-0.5, 0.0, 0.5], atol=1e-6
    )
    # label = the runner-up class, and ignore
    np.testing.assert_allclose(
        S.normalized_margin(P3, np.array([[1, 2, -1]]))[0], [0.5, 0.2, NAN], atol=1e-6
    )


# Two classes, six pixels: labels 0,0,0,1,1,1 with p0 below (p1 = 1 - p0).
P2 = _probs(*[[a, 1 - a] for a in (0.9, 0.8, 0.1, 0.3, 0.2, 0.9)])
Y2 = np.array([[0, 0, 0, 1, 1, 1]])


def test_class_thresholds_are_mean_self_confidence() -> None:
    # t0 = mean(0.9, 0.8, 0.1) = 0.6, t1 = mean(0.7, 0.8, 0.1) = 0.5333
    t = S.class_thresholds(P2, Y2)
    np.testing.assert_allclose(t, [0.6, 1.6 / 3], atol=1e-6)
    # a class nobody labels can never be confidently counted
    y = np.array([[0, 0, 0, 0, -1, -1]])
    t = S.class_thresholds(P2, y)
    assert t[1] == np.inf and t[0] == pytest.approx(np.mean([0.9, 0.8, 0.1, 0.3]), abs=1e-6)


def test_self_confidence_is_threshold_minus_label_prob() -> None:
    expected = [0.6 - 0.9, 0.6 - 0.8, 0.6 - 0.1, 1.6 / 3 - 0.7, 1.6 / 3 - 0.8, 1.6 / 3 - 0.1]
    np.testing.assert_allclose(S.self_confidence(P2, Y2)[0], expected, atol=1e-6)
    given = S.self_confidence(P2, Y2, thresholds=np.array([0.5, 0.5]))
    np.testing.assert_allclose(given[0], [-0.4, -0.3, 0.4, -0.2, -0.3, 0.4], atol=1e-6)
    y = Y2.copy()
    y[0, 0] = -1
    assert np.isnan(S.self_confidence(P2, y)[0, 0])


def test_confident_joint_issues_by_hand() -> None:
    # pixel 2 (label 0, p1 = 0.9 >= t1) and pixel 5 (label 1, p0 = 0.9 >= t0) are off-diagonal
    np.testing.assert_array_equal(
        S.label_issues(P2, Y2)[0], [False, False, True, False, False, True]
    )


def test_confident_joint_keeps_pixels_predicted_as_their_label() -> None:
    # t0 = 0.7, t1 = 0.3, t2 = inf (class 2 never labelled)
    p = _probs([0.95, 0.03, 0.02], [0.45, 0.40, 0.15], [0.2, 0.3, 0.5])
    y = np.array([[0, 0, 1]])
    np.testing.assert_allclose(S.class_thresholds(p, y), [0.7, 0.3, np.inf], atol=1e-6)
    # pixel 1: only class 1 clears its threshold (j = 1 != y) but argmax is y -> not flagged;
    # pixel 2: its own class clears t1 (within the 1e-6 slack), class 2 never does -> j = y.
    assert not S.label_issues(p, y).any()
    # with a lower t0, pixel 1 is confidently its own class
    assert not S.label_issues(p, y, thresholds=np.array([0.4, 0.3, np.inf])).any()


def _noisy_field(seed: int, k: int = 4, h: int = 24, w: int = 32, flip_rate: float = 0.1):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, (h, w))
    p = 0.5 * rng.dirichlet(np.ones(k), size=(h, w)) + 0.5 * np.eye(k)[truth] * rng.random(
        (h, w, 1)
    )
    p = (p / p.sum(-1, keepdims=True)).transpose(2, 0, 1).astype(np.float32)
    y = truth.copy()
    flip = rng.random((h, w)) < flip_rate
    y[flip] = (y[flip] + rng.integers(1, k, flip.sum())) % k
    return p, y, flip


def test_matches_cleanlab_segmentation() -> None:
    from cleanlab.count import get_confident_thresholds
    from cleanlab.segmentation.filter import find_label_issues
    from cleanlab.segmentation.rank import get_label_quality_scores

    p, y, flip = _noisy_field(1)
    k = p.shape[0]
    t = S.class_thresholds(p, y)
    np.testing.assert_allclose(
        t, get_confident_thresholds(y.ravel(), p.reshape(k, -1).T), rtol=1e-6
    )
    # cleanlab's pixel score is p_y; ours is t_y - p_y (same order within a class)
    _, pixel = get_label_quality_scores(y[None], p[None], n_jobs=1, verbose=False)
    np.testing.assert_allclose(t[y] - S.self_confidence(p, y), pixel[0], atol=1e-6)
    # method="cleanlab" reproduces find_label_issues exactly
    theirs = find_label_issues(y[None], p[None], n_jobs=1, verbose=False)[0]
    np.testing.assert_array_equal(S.label_issues(p, y, method="cleanlab"), theirs)
    # the confident-joint mask is a different rule: both only flag pixels predicted as
    # another class, and both find most of the flipped labels on this input
    ours = S.label_issues(p, y)
    pred = p.argmax(axis=0)
    assert not (ours & (pred == y)).any() and not (theirs & (pred == y)).any()
    assert (ours & flip).sum() / flip.sum() > 0.5 and (theirs & flip).sum() / flip.sum() > 0.5


def test_cleanlab_comparison_with_ignore_pixels() -> None:
    """cleanlab has no ignore index: ours equals cleanlab run on the labelled pixels alone."""
    from cleanlab.segmentation.filter import find_label_issues

    p, y, _ = _noisy_field(2)
    y = y.copy()
    y[::3, ::2] = -1
    keep = y >= 0
    theirs = find_label_issues(
        y[keep][None, None], p[:, keep][None, :, None], n_jobs=1, verbose=False
    )
    ours = S.label_issues(p, y, method="cleanlab")
    np.testing.assert_array_equal(ours[keep], theirs[0, 0])
    assert not ours[~keep].any() and not S.label_issues(p, y)[~keep].any()
    assert np.isnan(S.self_confidence(p, y)[~keep]).all()


def test_annotator_disagreement_from_agreement_and_votes() -> None:
    agree = np.array([[1.0, 0.25, NAN]])
    np.testing.assert_allclose(S.annotator_disagreement(agreement=agree)[0], [0.0, 0.75, NAN])
    # per pixel: unanimous; 1-1 split (one source silent); three-way split; nobody voted
    votes = np.array([[[0, 0, 0, -1]], [[0, 1, 1, -1]], [[0, -1, 2, -1]]])
    got = S.annotator_disagreement(votes=votes, num_classes=3)[0]
    np.testing.assert_allclose(got, [0.0, math.log(2), math.log(3), NAN], atol=1e-6)
    got = S.annotator_disagreement(votes=votes, num_classes=3, normalize=True)[0]
    np.testing.assert_allclose(got, [0.0, math.log(2) / math.log(3), 1.0, NAN], atol=1e-6)
    with pytest.raises(TrustmapError):
        S.annotator_disagreement(agreement=np.array([[1.5]]))
    with pytest.raises(TrustmapError):
        S.annotator_disagreement()


@pytest.mark.parametrize("name", sorted(set(S.SCORES) - {"bald", "annotator_disagreement"}))
def test_row_chunking_does_not_change_results(name: str) -> None:
    p, y, _ = _noisy_field(3, h=17, w=9)
    y[0, :4] = -1
    whole = S.compute_score(name, p, y)
    one_row = S.compute_score(name, p, y, chunk_bytes=1)
    assert whole.dtype == np.float32 and whole.shape == y.shape
    np.testing.assert_array_equal(whole, one_row)
    if name in S.NEEDS_LABELS:
        assert np.isnan(whole[0, :4]).all() and np.isfinite(whole[1:]).all()


def test_chunked_label_issues_and_bald_match_whole() -> None:
    p, y, _ = _noisy_field(4, h=13, w=11)
    for method in ("confident_joint", "cleanlab"):
        np.testing.assert_array_equal(
            S.label_issues(p, y, method=method), S.label_issues(p, y, method=method, chunk_bytes=1)
        )
    samples = np.stack([p, np.roll(p, 1, axis=0)])
    np.testing.assert_array_equal(S.bald(samples), S.bald(samples, chunk_bytes=1))


def test_scores_are_higher_for_wrong_labels() -> None:
    p, y, flip = _noisy_field(5, h=40, w=40)
    for name in ("disagreement", "normalized_margin", "self_confidence"):
        s = S.compute_score(name, p, y)
        assert s[flip].mean() > s[~flip].mean(), name


def test_registry_errors() -> None:
    with pytest.raises(TrustmapError, match="unknown score"):
        S.compute_score("nope", P3)
    with pytest.raises(TrustmapError, match="needs the current labels"):
        S.compute_score("disagreement", P3)
    with pytest.raises(TrustmapError, match="-1..2"):
        S.disagreement(P3, np.array([[0, 3, 0]]))
    with pytest.raises(TrustmapError, match="shape"):
        S.disagreement(P3, np.zeros((2, 3), int))
    with pytest.raises(TrustmapError, match=r"\(C, H, W\)"):
        S.entropy(np.zeros((3, 3)))
    with pytest.raises(TrustmapError, match="method"):
        S.label_issues(P3, np.zeros((1, 3), int), method="bogus")
