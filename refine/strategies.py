"""Region-ranking strategies: what a round may look at (:class:`RoundContext`) and how it
turns that into one priority per region.

A strategy is a pixel score from :mod:`refine.scores` pooled over regions
(:func:`refine.select.aggregate`), or any function registered with
:func:`register_strategy` (the benchmark adds cleanlab and an oracle ranking this way).
The context never holds the truth.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio

from refine.config import RefineConfig, config_error
from refine.model import SegmentationModel
from refine.regions import Regions
from tiles.classes import ClassSchema
from tiles.errors import TrustmapError
from tiles.raster import SceneImage


@dataclass
class RoundContext:
    """What a region-ranking strategy may look at in one round (never the truth)."""

    round: int
    config: RefineConfig
    schema: ClassSchema
    scene: SceneImage
    regions: Regions
    labels: np.ndarray
    """(H, W) uint8 codes of the current label version."""
    valid: np.ndarray
    reviewed: np.ndarray
    """(R,) bool: regions reviewed in earlier rounds (the selection skips them anyway)."""
    votes: np.ndarray | None = None
    """(A, H, W) uint8 codes of the cheap sources, when there are several."""
    model: SegmentationModel | None = None
    probs_path: Path | None = None
    bald_path: Path | None = None
    seed: int = 0
    _probs: np.ndarray | None = field(default=None, repr=False)

    @property
    def label_index(self) -> np.ndarray:
        """(H, W) int16 class indices, -1 for ignore and nodata."""
        idx = self.schema.code_to_index()[self.labels]
        idx[~self.valid] = -1
        return idx

    def probs(self) -> np.ndarray:
        """(C, H, W) float32 model probabilities of this round (NaN on nodata)."""
        if self._probs is None:
            if self.probs_path is None:
                raise TrustmapError(
                    f"strategy {self.config.strategy.score!r} needs model probabilities"
                )
            with rasterio.open(self.probs_path) as ds:
                self._probs = ds.read()
        return self._probs

    def predicted_index(self) -> np.ndarray:
        """(H, W) argmax class index of the model, -1 on nodata."""
        p = self.probs()
        idx = np.argmax(np.nan_to_num(p, nan=-1.0), axis=0).astype(np.int16)
        idx[~np.isfinite(p[0])] = -1
        return idx

    def bald(self) -> np.ndarray:
        if self.bald_path is None:
            raise TrustmapError("BALD needs MC-dropout samples (strategy.mc_samples)")
        with rasterio.open(self.bald_path) as ds:
            return ds.read(1)

    def aggregate(self, score: np.ndarray) -> np.ndarray:
        """Pool a pixel score (H, W) over the regions as configured (strategy.aggregate)."""
        from refine.select import aggregate

        s = self.config.strategy
        return aggregate(
            score,
            self.regions.labels,
            self.regions.n,
            s.aggregate,
            q=s.q,
            temperature=s.temperature,
        )


RankFn = Callable[[RoundContext], np.ndarray]


@dataclass(frozen=True)
class Strategy:
    """A way to rank regions: ``rank(ctx)`` -> (R,) priority, higher first, NaN = never."""

    name: str
    rank: RankFn | None
    needs_model: bool = True
    needs_mc: bool = False
    random: bool = False
    description: str = ""


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(
    name: str,
    rank: RankFn | None,
    *,
    needs_model: bool = True,
    needs_mc: bool = False,
    random: bool = False,
    description: str = "",
    replace: bool = False,
) -> Strategy:
    """Add a region-ranking strategy usable as ``strategy.score: NAME`` in configs.

    ``rank(ctx)`` returns one priority per region (higher = review first; NaN = never).
    ``needs_model`` makes the loop train and predict before ranking; ``needs_mc`` asks for
    MC-dropout BALD maps (``ctx.bald()``).
    """
    if name in STRATEGIES and not replace:
        raise TrustmapError(f"strategy {name!r} is already registered (pass replace=True)")
    if rank is None and not random:
        raise TrustmapError(f"strategy {name!r} needs a rank function")
    STRATEGIES[name] = Strategy(name, rank, needs_model, needs_mc, random, description)
    return STRATEGIES[name]


def get_strategy(name: str, source: str | os.PathLike | None = None) -> Strategy:
    if name not in STRATEGIES:
        raise config_error(
            "strategy.score",
            f"unknown strategy {name!r}; choose one of {', '.join(sorted(STRATEGIES))}",
            source,
        )
    return STRATEGIES[name]


def _pixel_score_rank(name: str) -> RankFn:
    def rank(ctx: RoundContext) -> np.ndarray:
        from refine.scores import NEEDS_LABELS, compute_score

        labels = ctx.label_index if name in NEEDS_LABELS else None
        return ctx.aggregate(compute_score(name, ctx.probs(), labels))

    return rank


def _bald_rank(ctx: RoundContext) -> np.ndarray:
    return ctx.aggregate(ctx.bald())


def _annotator_rank(ctx: RoundContext) -> np.ndarray:
    from refine.scores import annotator_disagreement

    if ctx.votes is None or ctx.votes.shape[0] < 2:
        raise config_error(
            "strategy.score", "annotator_disagreement needs at least two cheap label sources", None
        )
    votes = ctx.schema.code_to_index()[ctx.votes]
    score = annotator_disagreement(votes=votes, num_classes=ctx.schema.num_classes, normalize=True)
    score[~ctx.valid] = np.nan
    return ctx.aggregate(score)


def net_gain_rank(ctx: RoundContext) -> np.ndarray:
    """Expected net pixels fixed by reviewing each region, per unit of its cost.

    A look-ahead at what the answer will do, as in ALC (Kim et al. 2024), with the model's
    probabilities standing in for the truth: a pixel-exact answer fixes every wrong pixel,
    expected sum(1 - p_y); a dominant answer gives the whole region one class d, which fixes
    the pixels of class d and breaks the right pixels of other classes, expected
    sum p_d - sum p_y with d the class of largest expected area. So a mixed region whose
    dominant relabel would break as much as it fixes is worth nothing. Unlabelled pixels
    count p_y = 0 (any answer labels them).
    """
    p = ctx.probs()
    y = ctx.label_index
    n, c = ctx.regions.n, p.shape[0]
    rid = ctx.regions.labels
    gain = np.zeros(n, np.float64)
    per_class = np.zeros((n, c), np.float64)
    from refine.autocorrect import row_windows

    for rows in row_windows(*rid.shape, c):
        r = rid[rows].reshape(-1)
        pw = p[:, rows].reshape(c, -1)
        yw = y[rows].reshape(-1)
        keep = (r >= 0) & np.isfinite(pw[0])
        r, pw, yw = r[keep], pw[:, keep], yw[keep]
        p_y = np.where(yw >= 0, pw[np.maximum(yw, 0), np.arange(yw.size)], 0.0)
        gain -= np.bincount(r, weights=p_y, minlength=n)
        for k in range(c):
            per_class[:, k] += np.bincount(r, weights=pw[k], minlength=n)
    if ctx.config.review.relabel == "pixel":
        gain += ctx.regions.area.astype(np.float64)
    else:
        gain += per_class.max(axis=1)
    return gain / ctx.regions.cost


def _register_builtins() -> None:
    from refine.scores import SCORES

    for name in SCORES:
        if name in ("bald", "annotator_disagreement"):
            continue
        register_strategy(
            name, _pixel_score_rank(name), description=f"mean {name} of the model", replace=True
        )
    register_strategy(
        "bald", _bald_rank, needs_mc=True, description="BALD by MC dropout", replace=True
    )
    register_strategy(
        "annotator_disagreement", _annotator_rank, needs_model=False, description="vote entropy of the cheap sources",
        replace=True,
    )  # fmt: skip
    register_strategy(
        "random", None, needs_model=False, random=True, description="random baseline", replace=True
    )
    register_strategy(
        "net_gain", net_gain_rank,
        description="expected net pixels fixed per unit cost (look-ahead at the relabel)", replace=True,
    )  # fmt: skip


_register_builtins()
