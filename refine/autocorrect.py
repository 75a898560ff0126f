"""Automatic correction of the pixels no expert looks at.

Reviewing 10 % of a real scene, even perfectly, leaves about half of its label errors: the
unreviewed pixels must be corrected too. After each round the model's prediction is used
where it disagrees with the label *and* it is confident enough, after A2LC (Jeon et al.,
AAAI 2026) and the label expansion of ALC (Kim et al., ICML 2024). How confident is
"enough" is not a constant: it is calibrated on the expert's own answers. Among the pixels
the expert has reviewed, those where the model disagreed with the cheap label tell how often
such a disagreement was right at each confidence; the threshold is the lowest confidence at
which at least ``precision`` of them were (:func:`choose_threshold`).

Everything here is a pure function of arrays of one window (probabilities, labels, masks),
so a scene can be processed row block by row block, or mapped over tiles by a scheduler;
:class:`ConfidenceTally` is additive across windows and rounds.

Auto-corrections are kept apart from the expert's: the loop holds the *curated* labels
(cheap + expert answers) and an *auto* layer (a code where a pixel is auto-corrected, the
ignore code elsewhere), recomputed from the curated labels every round. So an
auto-correction is undone as soon as the model stops supporting it, and it can never
override a pixel an expert answered (those are protected).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tiles.errors import TrustmapError

BINS = 100
"""Confidence bins of a tally (width 0.01)."""


@dataclass
class ConfidenceTally:
    """Reviewed pixels where the model disagreed with the label, by model confidence.

    ``total[b]``: such pixels whose max probability fell in bin ``b``; ``right[b]``: those
    where the expert's answer equals the model's class.
    """

    total: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    right: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))

    def __iadd__(self, other: ConfidenceTally) -> ConfidenceTally:
        self.total = self.total + other.total
        self.right = self.right + other.right
        return self

    @property
    def support(self) -> int:
        return int(self.total.sum())

    def precision_at(self, threshold: float) -> tuple[float, int]:
        """(share right, pixels) of the disagreements with confidence >= ``threshold``."""
        b = min(BINS, max(0, int(np.floor(threshold * BINS + 1e-9))))
        n = int(self.total[b:].sum())
        return (float(self.right[b:].sum()) / n if n else float("nan")), n

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total.tolist(), "right": self.right.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConfidenceTally:
        return cls(np.asarray(data["total"], np.int64), np.asarray(data["right"], np.int64))


def _argmax_conf(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class index int16, -1 on NaN pixels; max probability float32) of (C, h, w)."""
    finite = np.isfinite(probs[0])
    p = np.where(finite[None], probs, -1.0)
    pred = np.argmax(p, axis=0).astype(np.int16)
    conf = np.max(p, axis=0).astype(np.float32)
    pred[~finite] = -1
    conf[~finite] = 0.0
    return pred, conf


def tally_reviewed(
    probs: np.ndarray, before: np.ndarray, answers: np.ndarray, reviewed: np.ndarray
) -> ConfidenceTally:
    """Tally one window's reviewed pixels (class indices, -1 = unlabelled).

    ``probs`` (C, h, w) is the model's prediction made *before* the expert answered,
    ``before`` the labels it saw, ``answers`` the expert's labels for the same pixels.
    """
    pred, conf = _argmax_conf(probs)
    return tally_predictions(pred[reviewed], conf[reviewed], before[reviewed], answers[reviewed])


def tally_predictions(
    pred: np.ndarray, conf: np.ndarray, before: np.ndarray, answers: np.ndarray
) -> ConfidenceTally:
    """The tally of reviewed pixels given the model's class and confidence per pixel (what a
    workspace keeps of a round's prediction, instead of the whole probability raster)."""
    use = (before >= 0) & (answers >= 0) & (pred >= 0) & (pred != before)
    bins = np.minimum((conf[use] * BINS).astype(np.int64), BINS - 1)
    right = (pred[use] == answers[use]).astype(np.int64)
    return ConfidenceTally(
        np.bincount(bins, minlength=BINS).astype(np.int64),
        np.bincount(bins, weights=right, minlength=BINS).astype(np.int64),
    )


def choose_threshold(
    tally: ConfidenceTally, precision: float, min_support: int, min_confidence: float = 0.5
) -> tuple[float | None, dict[str, Any]]:
    """The lowest confidence whose disagreements were right at least ``precision`` of the
    time on at least ``min_support`` reviewed pixels; ``None`` if there is none.

    Also returns what was found (for the round's record): the threshold, its estimated
    precision and support, and the tally's total support.
    """
    if not 0.0 < precision < 1.0:
        raise TrustmapError(f"key 'autocorrect.precision': must be in (0, 1), got {precision}")
    right = np.cumsum(tally.right[::-1])[::-1]
    total = np.cumsum(tally.total[::-1])[::-1]
    lo = int(np.ceil(min_confidence * BINS - 1e-9))
    ok = (total >= min_support) & (right >= precision * np.maximum(total, 1))
    ok[:lo] = False
    info: dict[str, Any] = {"support_total": tally.support, "target_precision": precision}
    if not ok.any():
        info.update(threshold=None, estimated_precision=None, support=0)
        return None, info
    b = int(np.flatnonzero(ok)[0])
    info.update(
        threshold=b / BINS,
        estimated_precision=float(right[b] / total[b]),
        support=int(total[b]),
    )
    return b / BINS, info


def candidate_mask(probs: np.ndarray, labels: np.ndarray, min_confidence: float) -> np.ndarray:
    """(h, w) bool: labelled pixels where the model disagrees at >= ``min_confidence``."""
    pred, conf = _argmax_conf(probs)
    return (labels >= 0) & (pred >= 0) & (pred != labels) & (conf >= min_confidence)


def propose_corrections(
    probs: np.ndarray, labels: np.ndarray, protected: np.ndarray, threshold: float
) -> np.ndarray:
    """(h, w) int16 class index to auto-label each pixel with, -1 where the label stays.

    A pixel is auto-corrected where it is labelled, not ``protected`` (reviewed by the
    expert, or nodata), the model's class differs from its label, and the model's
    probability for that class is at least ``threshold``.
    """
    pred, conf = _argmax_conf(probs)
    take = (labels >= 0) & ~protected & (pred >= 0) & (pred != labels) & (conf >= threshold)
    return np.where(take, pred, -1).astype(np.int16)


def row_windows(height: int, width: int, channels: int, chunk_bytes: int = 1 << 26):
    """Row slices whose (C, rows, W) float32 block stays under ``chunk_bytes``."""
    rows = max(1, chunk_bytes // max(1, 4 * channels * width))
    for r0 in range(0, height, rows):
        yield slice(r0, min(height, r0 + rows))
