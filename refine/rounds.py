"""One round's proposal: rank the regions, draw the audit sample, pick under the budget.

A round is two steps with a pause between them:

* **propose** (this module): from the current labels and the model's probabilities, rank
  the regions with a strategy, draw the audit regions that calibrate auto-correction, and
  pick what fits the round's budget. The result, a :class:`Proposal`, is committed before
  anyone answers it.
* **apply** (:func:`refine.oracle.apply_corrections`, the auto-correction in
  :mod:`refine.autocorrect`): fold the answers in and commit a new label version.

In a simulation the simulated expert answers at once, in the same process
(:class:`refine.loop.Refinement`); in a workspace (:mod:`refine.workspace`) the proposal
becomes the QGIS review queue and the answers arrive days later through ``refine import``.
Both go through the functions here, so they select the same regions from the same inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refine.autocorrect import candidate_mask, row_windows
from refine.config import RefineConfig
from refine.model import SceneImage
from refine.regions import Regions, build_regions
from refine.select import (
    Selection,
    class_balance_weights,
    class_histogram,
    fill_budget,
    select_greedy,
    select_random,
)
from refine.strategies import RoundContext, Strategy
from tiles.classes import ClassSchema
from tiles.errors import TrustmapError


@dataclass
class Proposal:
    """Regions put up for review in one round, in pick order, before any answer."""

    round: int
    selection: Selection
    """Main picks first, then the audit regions (their values are NaN)."""
    audit: np.ndarray
    """int64 ids of the audit regions (a subset of ``selection.ids``)."""
    budget: float
    context: RoundContext
    model_info: dict[str, Any] | None = None
    times: dict[str, float] = field(default_factory=dict)

    @property
    def ids(self) -> np.ndarray:
        return self.selection.ids


def scene_regions(
    config: RefineConfig,
    schema: ClassSchema,
    scene: SceneImage,
    valid: np.ndarray,
    start: np.ndarray,
) -> Regions:
    """The review regions of a scene, as ``config.regions`` asks (built once per scene)."""
    r = config.regions
    cost = {"cost": r.cost}
    if r.kind in ("slic", "felzenszwalb"):
        bands, _ = scene.arrays()
        return build_regions(
            r.kind, image=bands, valid=valid, region_size=r.size, compactness=r.compactness, **cost
        )
    side = max(2, round(math.sqrt(r.size)))
    if r.kind == "grid":
        return build_regions("grid", shape=scene.shape, valid=valid, cell=side, **cost)
    if r.kind == "components":
        idx = schema.code_to_index()[start]
        return build_regions(
            "components", labels=idx, valid=valid & (idx >= 0), split=side, **cost
        )
    return build_regions(
        "polygons", shape=scene.shape, valid=valid, polygons=r.polygons, transform=scene.transform,
        crs=scene.crs, **cost,
    )  # fmt: skip


def rank_regions(strategy: Strategy, ctx: RoundContext) -> np.ndarray | None:
    """(R,) float64 priorities of ``strategy`` (higher first, NaN never), None for random."""
    if strategy.random:
        return None
    values = np.asarray(strategy.rank(ctx), np.float64)
    if values.shape != (ctx.regions.n,):
        raise TrustmapError(
            f"strategy {strategy.name!r} returned {values.shape} values for {ctx.regions.n} regions"
        )
    return values


def audit_regions(
    ctx: RoundContext, labels: np.ndarray, budget: float, skip: np.ndarray
) -> np.ndarray:
    """Regions drawn at random, with probability proportional to their auto-correction
    candidates, for ``autocorrect.audit_share`` of the round's budget.

    A candidate is an unreviewed labelled pixel where the model disagrees with ``labels``
    at confidence >= ``autocorrect.min_confidence``. Sampling regions in proportion to
    their candidates gives every candidate pixel about the same chance to be audited, so
    the audited answers estimate the precision of the auto-corrections themselves
    (weighted sampling without replacement, Efraimidis and Spirakis 2006). ``skip``: (R,)
    bool of regions that cannot be drawn (reviewed, or already queued).
    """
    a = ctx.config.autocorrect
    if not a.enabled or ctx.probs_path is None or a.audit_share <= 0 or budget <= 0:
        return np.zeros(0, np.int64)
    regions, lut = ctx.regions, ctx.schema.code_to_index()
    probs = ctx.probs()
    counts = np.zeros(regions.n, np.float64)
    for rows in row_windows(*labels.shape, probs.shape[0]):
        cand = candidate_mask(probs[:, rows], lut[labels[rows]], a.min_confidence)
        rid = regions.labels[rows][cand]
        counts += np.bincount(rid[rid >= 0], minlength=regions.n)
    counts[skip] = 0.0
    pool = np.flatnonzero(counts > 0)
    if not pool.size:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng([ctx.config.seed, ctx.round, 0xA0D1])
    keys = np.log(rng.random(pool.size)) / counts[pool]
    order = pool[np.argsort(-keys)]
    return fill_budget(order, regions.cost, a.audit_share * budget)


def pick_regions(
    strategy: Strategy,
    ctx: RoundContext,
    values: np.ndarray | None,
    budget: float,
    skip: np.ndarray,
) -> Selection:
    """The strategy's picks under ``budget``: greedy by value (with Cai et al.'s class
    balancing from the labels, never the model's guesses) or the random baseline."""
    costs = ctx.regions.cost
    if strategy.random:
        return select_random(costs, budget, reviewed=skip, seed=ctx.seed)
    st = ctx.config.strategy
    weights = None
    if st.class_balance:
        hist = class_histogram(
            ctx.regions.labels, ctx.label_index, ctx.regions.n, ctx.schema.num_classes
        )
        weights = class_balance_weights(hist)
    return select_greedy(
        values, costs, budget, objective=st.objective, reviewed=skip, weights=weights,
        centroids=ctx.regions.centroid, radius=st.diversity_radius, seed=ctx.seed,
    )  # fmt: skip


def propose(
    strategy: Strategy,
    ctx: RoundContext,
    budget: float,
    skip: np.ndarray,
    audit_labels: np.ndarray | None = None,
) -> tuple[Selection, np.ndarray, dict[str, float]]:
    """Rank, audit and pick for one round: (selection incl. audit, audit ids, seconds).

    ``skip`` (R,) bool: regions that may not be picked (already reviewed or queued).
    ``audit_labels``: the labels the audit's candidates disagree with (default the
    context's labels).
    """
    import time

    t0 = time.perf_counter()
    values = rank_regions(strategy, ctx)
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    regions = ctx.regions
    audit = audit_regions(ctx, ctx.labels if audit_labels is None else audit_labels, budget, skip)
    if audit.size:
        skip = skip.copy()
        skip[audit] = True
        main = pick_regions(strategy, ctx, values, budget - float(regions.cost[audit].sum()), skip)
        ids = np.concatenate([main.ids, audit])
        selection = Selection(
            ids, regions.cost[ids], np.concatenate([main.scores, np.full(audit.size, np.nan)]),
            budget, float(regions.cost[ids].sum()),
        )  # fmt: skip
    else:
        selection = pick_regions(strategy, ctx, values, budget, skip)
    return selection, audit, {"score": t_score, "select": time.perf_counter() - t0}
