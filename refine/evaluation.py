"""Scoring against the truth, which only simulations have: :class:`Evaluator` holds it and
returns numbers, never arrays, so nothing it holds can reach training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refine.metrics import Scores, review_precision, score_labels, score_raster, track_errors
from refine.model import SegmentationModel
from tiles.classes import ClassSchema
from tiles.errors import TrustmapError
from tiles.raster import SceneImage


class Evaluator:
    """Scores label versions and models against the truth; gives the loop numbers only."""

    def __init__(
        self,
        truth: np.ndarray,
        start: np.ndarray,
        schema: ClassSchema,
        heldout: tuple[SceneImage, np.ndarray] | None,
    ):
        self._truth = truth
        self._start = start
        self.schema = schema
        self._heldout = heldout

    @property
    def has_heldout(self) -> bool:
        return self._heldout is not None

    def labels(self, labels: np.ndarray) -> dict[str, Any]:
        scores: Scores = score_labels(labels, self._truth, self.schema)
        errors = track_errors(self._start, labels, self._truth, self.schema.ignore)
        return {"scores": scores.to_dict(), "errors": errors.to_dict()}

    def source(self, labels: np.ndarray) -> dict[str, Any]:
        return score_labels(labels, self._truth, self.schema).to_dict()

    def reviewed(self, before: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        return review_precision(before, self._truth, mask, self.schema.ignore)

    def auto(self, auto: np.ndarray, curated: np.ndarray) -> dict[str, Any]:
        """How the auto-corrections (``auto`` codes, ignore = none) did against the truth."""
        ig = self.schema.ignore
        on = (auto != ig) & (self._truth != ig)
        right_now = auto[on] == self._truth[on]
        right_before = curated[on] == self._truth[on]
        n = int(on.sum())
        return {
            "pixels_scored": n,
            "precision": float(right_now.mean()) if n else float("nan"),
            "fixed": int(np.count_nonzero(right_now & ~right_before)),
            "broken": int(np.count_nonzero(~right_now & right_before)),
        }

    def model(self, model: SegmentationModel, work: Path) -> dict[str, Any] | None:
        if self._heldout is None:
            return None
        scene, truth = self._heldout
        path = model.predict_proba(
            scene, work / "heldout_probs.tif", desc="predict held-out", compress="none"
        )
        return score_raster(path, truth, self.schema, probabilities=True).to_dict()


@dataclass
class SimulationResult:
    """What :func:`run_simulation` produced: the per-round records and the output files."""

    out_dir: Path
    setup: dict[str, Any]
    rounds: list[dict[str, Any]]
    final: dict[str, Any] | None
    report: dict[str, Any]
    refined: Path
    outputs: dict[str, Path]

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(budget spent, value) over rounds 0..R for ``label_miou``, ``error_recall``,
        ``label_accuracy`` or ``model_miou`` (the model at the budget it was trained on)."""
        return curve(self.setup, self.rounds, self.final, key)


def curve(
    setup: dict[str, Any], rounds: list[dict[str, Any]], final: dict[str, Any] | None, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """See :meth:`SimulationResult.curve`."""
    recs = [setup, *rounds]
    if key in ("label_miou", "label_accuracy", "error_recall"):
        field_ = {
            "label_miou": ("scores", "miou"),
            "label_accuracy": ("scores", "accuracy"),
            "error_recall": ("errors", "error_recall"),
        }[key]
        x = [r["budget"]["spent_total"] for r in recs]
        y = [r["labels"][field_[0]][field_[1]] for r in recs]
        return np.asarray(x, float), np.asarray(y, float)
    if key == "model_miou":
        pts = [(r["model"]["trained_on_spent"], r["model"]["heldout"]["miou"]) for r in [*rounds, *( [final] if final else [])]
               if r.get("model") and r["model"].get("heldout")]  # fmt: skip
        return np.asarray([p[0] for p in pts], float), np.asarray([p[1] for p in pts], float)
    raise TrustmapError(f"unknown curve {key!r}")

