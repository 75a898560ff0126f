"""Annotator fusion: majority vote and agreement by hand, Dawid–Skene on data from known confusions."""

from __future__ import annotations

import numpy as np
import pytest

from refine.fusion import agreement_map, dawid_skene, majority_vote
from tiles.classes import load_schema
from tiles.errors import TrustmapError

SCHEMA = load_schema("configs/classes/landcover6.yaml")  # codes 1..6 -> indices 0..5
IGN = SCHEMA.ignore

# Three annotators on a 2x4 scene. Scene-wide vote totals per code:
# 1:3  2:5  3:3  4:2  5:5  6:2  (the tie-break order after the pixel's own votes).
STACK = np.array(
    [
        [[1, 2, 3, IGN], [4, 2, IGN, 6]],
        [[1, 3, 4, 2], [5, 2, IGN, 5]],
        [[2, 3, 5, 5], [5, 1, IGN, 6]],
    ],
    dtype=np.uint8,
)
# (0,2): 3/4/5 tie -> 5 has most votes overall. (0,3): 2/5 tie, equal totals -> 2, listed
# first in the schema. (1,2): nobody labelled -> ignore.
MV = np.array([[1, 3, 5, 2], [5, 2, IGN, 6]], dtype=np.uint8)


def test_majority_vote_by_hand():
    np.testing.assert_array_equal(majority_vote(STACK, SCHEMA), MV)


def test_majority_vote_does_not_depend_on_source_order():
    for perm in ([2, 0, 1], [1, 2, 0], [2, 1, 0]):
        np.testing.assert_array_equal(majority_vote(STACK[perm], SCHEMA), MV)


def test_agreement_by_hand():
    got = agreement_map(STACK, MV, IGN)
    want = np.array([[2 / 3, 2 / 3, 1 / 3, 1 / 2], [2 / 3, 2 / 3, np.nan, 2 / 3]], np.float32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.isnan(got[1, 2])


def _brute_majority(stack: np.ndarray) -> np.ndarray:
    """Per-pixel Python version of the documented rule, for the many-source code paths."""
    lut = SCHEMA.code_to_index()
    idx = lut[stack]
    totals = np.array([(idx == c).sum() for c in range(6)])
    out = np.full(stack.shape[1:], IGN, np.uint8)
    for i in range(stack.shape[1]):
        for j in range(stack.shape[2]):
            votes = [(idx[:, i, j] == c).sum() for c in range(6)]
            if max(votes) == 0:
                continue
            tied = [c for c in range(6) if votes[c] == max(votes)]
            best = max(tied, key=lambda c: (totals[c], -c))
            out[i, j] = SCHEMA.codes[best]
    return out


@pytest.mark.parametrize("n_sources", [9, 23])  # 7^9 > 2^22: sorted codes; 7^23 > 2^62: rows
def test_majority_vote_many_sources(n_sources):
    rng = np.random.default_rng(n_sources)
    stack = rng.choice(np.array([1, 2, 3, 4, 5, 6, IGN], np.uint8), size=(n_sources, 7, 9))
    stack[:, 0, 0] = IGN
    np.testing.assert_array_equal(majority_vote(stack, SCHEMA), _brute_majority(stack))


def _confusion(acc: float, rng: np.random.Generator) -> np.ndarray:
    """A row-stochastic (6, 6) matrix with ``acc`` on the diagonal and random structure off it."""
    off = rng.dirichlet(np.full(6, 0.5), size=6)
    np.fill_diagonal(off, 0.0)
    m = off / off.sum(axis=1, keepdims=True) * (1 - acc)
    np.fill_diagonal(m, acc)
    return m


PRIORS = np.array([0.1, 0.25, 0.35, 0.1, 0.1, 0.1])


def _iid_crowd(confusions: list[np.ndarray], size: int, seed: int):
    """Truth drawn from PRIORS and each annotator's labels drawn from its confusion rows."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(6, size=(size, size), p=PRIORS)
    labels = [
        (np.cumsum(m, axis=1)[truth] < rng.random((size, size))[..., None]).sum(-1)
        for m in confusions
    ]
    codes = SCHEMA.index_to_code()
    return codes[np.stack(labels)], codes[truth]


def _wrong(labels: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(labels != truth))


def test_dawid_skene_recovers_known_confusions():
    rng = np.random.default_rng(7)
    true_conf = np.stack(
        [_confusion(0.9, rng), _confusion(0.75, rng), _confusion(0.6, rng), np.tile(PRIORS, (6, 1))]
    )
    stack, truth = _iid_crowd(list(true_conf), 256, seed=1)
    res = dawid_skene(stack, SCHEMA, diagonal_prior=0.0)  # classical maximum likelihood

    assert res.converged
    assert np.abs(res.confusion - true_conf).max() < 0.04
    assert np.abs(res.priors - PRIORS).max() < 0.01
    trace = np.array(res.log_likelihood)
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[:-1]))  # EM never goes down
    assert _wrong(res.labels, truth) < _wrong(majority_vote(stack, SCHEMA), truth) - 0.03


def test_dawid_skene_beats_majority_with_spammers():
    rng = np.random.default_rng(0)
    spam = np.full((6, 6), 1 / 6)
    confs = [_confusion(0.8, rng), _confusion(0.7, rng), _confusion(0.6, rng), spam, spam]
    stack, truth = _iid_crowd(confs, 160, seed=0)
    # The best any fusion can do: the posterior under the true confusions and priors.
    idx = SCHEMA.code_to_index()[stack]
    log_post = np.log(PRIORS)[:, None, None] + sum(
        np.log(m)[:, idx[a]] for a, m in enumerate(confs)
    )
    bayes = _wrong(SCHEMA.index_to_code()[log_post.argmax(axis=0)], truth)

    mv = _wrong(majority_vote(stack, SCHEMA), truth)
    classical = _wrong(dawid_skene(stack, SCHEMA, diagonal_prior=0.0).labels, truth)
    res = dawid_skene(stack, SCHEMA)  # default settings, with the diagonal prior
    assert classical < bayes + 0.01, (classical, bayes)
    assert _wrong(res.labels, truth) < mv - 0.1, (_wrong(res.labels, truth), mv)
    # It has learnt that the last two sources are the unreliable ones.
    acc = np.einsum("acc,c->a", res.confusion, res.priors)
    assert set(np.argsort(acc)[:2]) == {3, 4}


def test_dawid_skene_posterior_and_ignore():
    res = dawid_skene(STACK, SCHEMA)
    assert res.posterior.shape == (6, 2, 4) and res.posterior.dtype == np.float32
    sums = res.posterior.sum(axis=0)
    np.testing.assert_allclose(sums[MV != IGN], 1.0, atol=1e-5)
    assert sums[1, 2] == 0.0 and res.labels[1, 2] == IGN
    labelled = res.labels != IGN
    codes = SCHEMA.index_to_code()[res.posterior.argmax(axis=0)]
    np.testing.assert_array_equal(res.labels[labelled], codes[labelled])
    np.testing.assert_allclose(res.confusion.sum(axis=2), 1.0)
    # Unanimous pixels stay unanimous.
    unanimous = np.all(STACK[0] == STACK, axis=0) & (STACK[0] != IGN)
    np.testing.assert_array_equal(res.labels[unanimous], STACK[0][unanimous])


def test_bad_inputs_are_user_errors():
    with pytest.raises(TrustmapError, match="unknown class code"):
        majority_vote(np.full((2, 3, 3), 9, np.uint8), SCHEMA)
    with pytest.raises(TrustmapError, match="must be"):
        dawid_skene(np.ones((3, 3), np.uint8), SCHEMA)
    with pytest.raises(TrustmapError, match="do not match"):
        agreement_map(STACK, MV[:, :2], IGN)
