"""Fuse several cheap label sources into one label, and say where they disagree.

With several sources (crowd workers, models), refinement starts from a fused label, and the
sources' disagreement is itself a score of where that label is likely wrong.

Both fusions depend on a pixel only through its *vote pattern* (the tuple of labels the A
sources gave it), and a scene has few distinct patterns (at most (C+1)^A, in practice a few
hundred). So patterns are counted once with ``np.bincount``, the majority vote and the
Dawid–Skene EM run over patterns weighted by their pixel counts, and the result is mapped back
to pixels with one lookup. That makes EM on an 8192² scene as cheap as on a tile.

The agreement map is the input of ``refine.scores.annotator_disagreement`` (which also
scores vote entropy from the votes themselves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tiles.classes import ClassSchema
from tiles.errors import TrustmapError

__all__ = [
    "DawidSkeneResult",
    "agreement_map",
    "dawid_skene",
    "majority_vote",
]

_BINCOUNT_MAX = 1 << 22  # pattern codes up to this are counted with bincount, beyond by sorting


@dataclass(frozen=True)
class _Patterns:
    """The distinct vote patterns of a stack and where they occur."""

    ids: np.ndarray  # (H, W) index into votes
    votes: np.ndarray  # (P, A) class index 0..C-1, or -1 for no label
    counts: np.ndarray  # (P,) pixels per pattern
    n_classes: int

    def one_hot(self) -> np.ndarray:
        """(P, A, C) float64: 1 where annotator a voted class c."""
        return (self.votes[:, :, None] == np.arange(self.n_classes)).astype(np.float64)

    def to_pixels(self, per_pattern: np.ndarray) -> np.ndarray:
        """Map a per-pattern array (P,) or (P, K) to pixels (H, W) or (K, H, W)."""
        if per_pattern.ndim == 1:
            return per_pattern[self.ids]
        return np.take(np.ascontiguousarray(per_pattern.T), self.ids, axis=1)


def _vote_patterns(stack: np.ndarray, schema: ClassSchema) -> _Patterns:
    """Encode each pixel's votes as one mixed-radix integer and count the distinct ones."""
    stack = np.asarray(stack)
    if stack.ndim != 3 or stack.shape[0] < 1:
        raise TrustmapError(f"label stack must be (A, H, W) with A >= 1, got shape {stack.shape}")
    if stack.dtype != np.uint8:
        if not np.issubdtype(stack.dtype, np.integer) or stack.min() < 0 or stack.max() > 255:
            raise TrustmapError("label stack must hold uint8 class codes")
        stack = stack.astype(np.uint8)
    n_src = stack.shape[0]
    n_cls = schema.num_classes
    idx = schema.code_to_index()[stack]
    bad = (idx < 0) & (stack != schema.ignore)
    if bad.any():
        codes = np.unique(stack[bad])[:10].tolist()
        raise TrustmapError(
            f"label stack holds unknown class code(s) {codes}; the schema allows "
            f"{sorted(schema.codes)} and ignore={schema.ignore}"
        )
    base = n_cls + 1
    if base**n_src >= 2**62:  # too many sources for an int64 code: sort the rows instead
        rows, inverse, counts = np.unique(
            idx.reshape(n_src, -1).T, axis=0, return_inverse=True, return_counts=True
        )
        return _Patterns(inverse.reshape(stack.shape[1:]), rows.astype(np.int16), counts, n_cls)
    dtype = np.int32 if base**n_src < 2**31 else np.int64
    code = np.zeros(stack.shape[1:], dtype=dtype)
    for a in range(n_src - 1, -1, -1):
        code *= base
        code += idx[a] + 1
    if base**n_src <= _BINCOUNT_MAX:
        counts_all = np.bincount(code.ravel(), minlength=base**n_src)
        present = np.flatnonzero(counts_all)
        remap = np.zeros(base**n_src, dtype=np.int32)
        remap[present] = np.arange(present.size, dtype=np.int32)
        ids, counts = remap[code], counts_all[present]
    else:
        present, inverse, counts = np.unique(code, return_inverse=True, return_counts=True)
        ids = inverse.reshape(code.shape)
    votes = (present[:, None] // base ** np.arange(n_src, dtype=np.int64)) % base - 1
    return _Patterns(ids, votes.astype(np.int16), counts.astype(np.int64), n_cls)


def _fused_codes(winner: np.ndarray, has_vote: np.ndarray, schema: ClassSchema) -> np.ndarray:
    codes = schema.index_to_code()[winner]
    codes[~has_vote] = schema.ignore
    return codes


def majority_vote(stack: np.ndarray, schema: ClassSchema) -> np.ndarray:
    """The most voted class per pixel, (H, W) uint8 codes; ignore where nobody labelled.

    Ties go to the class with more votes over the whole scene (the better prior guess), then
    to the class listed first in the schema: deterministic, and independent of source order.
    """
    pat = _vote_patterns(stack, schema)
    n_cls = schema.num_classes
    votes = pat.one_hot().sum(axis=1).astype(np.int64)  # (P, C)
    totals = (votes * pat.counts[:, None]).sum(axis=0)
    rank = np.empty(n_cls, dtype=np.int64)
    rank[np.lexsort((-np.arange(n_cls), totals))] = np.arange(n_cls)  # more votes -> higher
    winner = np.argmax(votes * n_cls + rank, axis=1)
    return pat.to_pixels(_fused_codes(winner, votes.sum(axis=1) > 0, schema))


@dataclass(frozen=True)
class DawidSkeneResult:
    """Dawid–Skene fusion.

    ``confusion[a, c, k]`` is P(annotator a says k | true class c) (rows sum to 1);
    ``posterior`` is P(true class | votes), zero for every class where nobody labelled;
    ``log_likelihood`` is the EM objective per iteration (the data log-likelihood plus the
    log of the Dirichlet prior), which never decreases.
    """

    labels: np.ndarray  # (H, W) uint8 codes
    posterior: np.ndarray  # (C, H, W) float32
    confusion: np.ndarray  # (A, C, C)
    priors: np.ndarray  # (C,)
    log_likelihood: list[float]
    converged: bool


def dawid_skene(
    stack: np.ndarray,
    schema: ClassSchema,
    max_iter: int = 50,
    tol: float = 1e-6,
    smoothing: float = 0.01,
    diagonal_prior: float = 0.05,
) -> DawidSkeneResult:
    """Fuse sources by Dawid & Skene's EM (1979): learn each source's confusion matrix.

    Unlike the majority vote it learns whom to trust and for which classes, so a spammer or a
    source that always calls crops trees stops outvoting the reliable ones. EM starts from the
    soft majority vote (which fixes the class identities) and stops when the objective's
    relative gain falls below ``tol``. Sources that left a pixel unlabelled do not vote there.

    The confusions get a Dirichlet prior: ``smoothing`` pseudo-counts on every entry (unseen
    pairs keep some probability) plus, on the diagonal, ``diagonal_prior`` times the class's
    majority-vote pixel count. DS treats pixels as independent votes, but a mislabelled field
    is one decision repeated over thousands of pixels; EM can then over-fit such clumps and
    turn a rare class into a label for some disagreement pattern (seen on simulated crowds of
    the sample scene: worse than the majority vote). The mild default guards against that
    and costs well under a point where pixels are truly independent. With
    ``diagonal_prior=0`` this is classical maximum-likelihood Dawid–Skene.
    """
    if max_iter < 1 or smoothing <= 0 or diagonal_prior < 0:
        raise TrustmapError(
            "dawid_skene: need max_iter >= 1, smoothing > 0 and diagonal_prior >= 0"
        )
    pat = _vote_patterns(stack, schema)
    onehot = pat.one_hot()  # (P, A, C)
    n_votes = onehot.sum(axis=(1, 2))
    has_vote = n_votes > 0
    weight = np.where(has_vote, pat.counts, 0).astype(np.float64)
    post = onehot.sum(axis=1) / np.maximum(n_votes, 1)[:, None]  # soft majority vote

    n_cls = schema.num_classes
    alpha = np.full((pat.votes.shape[1], n_cls, n_cls), smoothing)
    diag = np.arange(n_cls)
    alpha[:, diag, diag] += diagonal_prior * (post * weight[:, None]).sum(axis=0)
    trace: list[float] = []
    converged = False
    for _ in range(max_iter):
        # M-step: MAP priors and confusions under the Dirichlet prior.
        soft = post * weight[:, None]
        priors = soft.sum(axis=0) + smoothing
        priors /= priors.sum()
        conf = np.einsum("pc,pak->ack", soft, onehot) + alpha
        conf /= conf.sum(axis=2, keepdims=True)
        # E-step: log P(c, votes) per pattern, then normalise.
        joint = np.log(priors) + np.einsum("pak,ack->pc", onehot, np.log(conf))
        top = joint.max(axis=1, keepdims=True)
        log_evidence = top[:, 0] + np.log(np.exp(joint - top).sum(axis=1))
        post = np.exp(joint - log_evidence[:, None])
        objective = float(
            (weight * log_evidence).sum()
            + (alpha * np.log(conf)).sum()
            + smoothing * np.log(priors).sum()
        )
        trace.append(objective)
        if len(trace) > 1 and abs(trace[-1] - trace[-2]) <= tol * abs(trace[-2]):
            converged = True
            break

    post[~has_vote] = 0.0
    winner = np.argmax(post, axis=1)
    return DawidSkeneResult(
        labels=pat.to_pixels(_fused_codes(winner, has_vote, schema)),
        posterior=pat.to_pixels(post.astype(np.float32)),
        confusion=conf,
        priors=priors,
        log_likelihood=trace,
        converged=converged,
    )


def agreement_map(stack: np.ndarray, fused: np.ndarray, ignore: int) -> np.ndarray:
    """Fraction of the sources that labelled a pixel and agree with ``fused`` there, float32.

    1 means unanimous; low values mark pixels worth an expert's look. Sources that left the
    pixel unlabelled (``ignore``) do not count; where none labelled it the map is NaN, the
    "no score" of ``refine.scores``.
    """
    stack, fused = np.asarray(stack), np.asarray(fused)
    if stack.ndim != 3 or stack.shape[1:] != fused.shape:
        raise TrustmapError(
            f"agreement_map: stack {stack.shape} and fused label {fused.shape} do not match"
        )
    labelled = (stack != ignore).sum(axis=0)
    agree = ((stack == fused) & (stack != ignore)).sum(axis=0)
    out = np.full(fused.shape, np.nan, dtype=np.float32)
    np.divide(agree, labelled, out=out, where=labelled > 0, casting="unsafe")
    return out
