"""Time refine's per-scene regions and one selection step on a large scene (8192² by default).

What is timed (model inference is not):
  * regions, once per scene: tile-wise SLIC superpixels on the 4-band image, plus the
    per-region table (area, bbox, centroid) and the annotation cost;
  * one selection step: a pixel score over (C, H, W) float32 probabilities, pooling it over
    the regions, Cai et al.'s class weights, and cost-aware greedy selection with spatial
    diversity under a budget.

The scene is the embedded sample (``tiles.samples.generate_scene_arrays``) or, with
``--scene synthetic``, smooth random class patches. Probabilities are "random but
structured": softmax(3 * onehot(truth) + 1.5 * smooth noise), so the model is mostly right,
unsure near boundaries and wrong in patches; the current labels are the truth with 5 % of
64-pixel blocks and 1 % of pixels flipped to another class.

    python scripts/time_refine_select.py [--size 8192] [--seed 0] [--score normalized_margin]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refine import regions as Rg  # noqa: E402
from refine import scores as S  # noqa: E402
from refine import select as Sel  # noqa: E402

N_CLASSES = 6


def timed(label: str, fn: Callable[[], Any], log: dict[str, tuple[float, float]]) -> Any:
    """Run ``fn``; print and log (wall, CPU) seconds. CPU time is the one-core cost even when
    other processes compete for the machine (numpy here is single-threaded)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    log[label] = (time.perf_counter() - t, time.process_time() - c)
    print(f"  {label:<34s} {log[label][0]:7.2f} s wall {log[label][1]:7.2f} s CPU", flush=True)
    return out


def synthetic_scene(size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth random class patches (uint8 index 0..5) and a 4-band uint16 image of them."""
    rng = np.random.default_rng(seed)
    low = rng.random((N_CLASSES, 33, 33)).astype(np.float32)
    truth = np.empty((size, size), np.uint8)
    best = np.full((size, size), -np.inf, np.float32)
    up = np.empty((size, size), np.float32)
    for k in range(N_CLASSES):
        ndi.zoom(low[k], size / 33, output=up, order=1, mode="nearest", grid_mode=True)
        better = up > best
        truth[better], best[better] = k, up[better]
    del best, up
    means = rng.uniform(500, 3000, (N_CLASSES, 4))
    bands = np.empty((4, size, size), np.uint16)
    for b in range(4):
        bands[b] = means[truth, b] + rng.normal(0, 80, (size, size)).astype(np.float32)
    return bands, truth, np.ones((size, size), bool)


def sample_scene(size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The embedded sample scene with its truth codes mapped to indices 0..5 (255 -> ignore)."""
    from tiles.samples import CLASS_CODES, generate_scene_arrays

    bands, codes, valid = generate_scene_arrays(size, seed)
    lut = np.full(256, 255, np.uint8)
    lut[list(CLASS_CODES)] = np.arange(len(CLASS_CODES))
    return bands, lut[codes], valid


def probability_field(truth: np.ndarray, seed: int, chunk_rows: int = 256) -> np.ndarray:
    """(C, H, W) float32 softmax(3 onehot(truth) + 1.5 smooth noise), filled in place."""
    rng = np.random.default_rng(seed + 1)
    h, w = truth.shape
    probs = np.empty((N_CLASSES, h, w), np.float32)
    cells = max(2, h // 128)
    for k in range(N_CLASSES):
        low = rng.normal(size=(cells, cells)).astype(np.float32)
        ndi.zoom(
            low, (h / cells, w / cells), output=probs[k], order=1, mode="nearest", grid_mode=True
        )
    for r0 in range(0, h, chunk_rows):
        rows = slice(r0, min(h, r0 + chunk_rows))
        logit = 1.5 * probs[:, rows]
        t = truth[rows]
        for k in range(N_CLASSES):
            logit[k] += 3.0 * (t == k)
        logit -= logit.max(axis=0)
        np.exp(logit, out=logit)
        logit /= logit.sum(axis=0)
        probs[:, rows] = logit
    return probs


def noisy_labels(truth: np.ndarray, seed: int, block: int = 64) -> np.ndarray:
    """int16 class indices: truth with 5 % of blocks and 1 % of pixels flipped; 255 -> -1."""
    rng = np.random.default_rng(seed + 2)
    h, w = truth.shape
    labels = truth.astype(np.int16)
    nb = (-(-h // block), -(-w // block))
    shift_blocks = (rng.random(nb) < 0.05) * rng.integers(1, N_CLASSES, nb)
    shift = np.repeat(np.repeat(shift_blocks, block, 0), block, 1)[:h, :w].astype(np.int16)
    for r0 in range(0, h, 1024):
        rows = slice(r0, min(h, r0 + 1024))
        px = (rng.random((rows.stop - r0, w)) < 0.01) * rng.integers(
            1, N_CLASSES, (rows.stop - r0, w)
        )
        labels[rows] = (labels[rows] + shift[rows] + px) % N_CLASSES
    labels[truth == 255] = -1
    return labels


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scene", choices=("sample", "synthetic"), default="sample")
    ap.add_argument(
        "--score",
        default="normalized_margin",
        choices=sorted(set(S.SCORES) - {"bald", "annotator_disagreement"}),
    )
    ap.add_argument("--aggregation", default="top_quantile", choices=Sel.AGGREGATIONS)
    ap.add_argument("--region-size", type=int, default=400, help="target SLIC superpixel area (px)")
    ap.add_argument(
        "--budget", type=float, default=0.01, help="fraction of the scene's pixels to review"
    )
    ap.add_argument("--radius", type=float, default=64.0, help="spatial-diversity radius (px)")
    ap.add_argument("--all", action="store_true", help="also time every score and aggregation")
    ap.add_argument("--cache", type=Path, help="keep the generated scene here (.npz) for reruns")
    args = ap.parse_args()

    log: dict[str, tuple[float, float]] = {}
    print(f"scene {args.size}² ({args.scene}), {N_CLASSES} classes, seed {args.seed}")
    print("setup (not timed as part of refine):")
    make = sample_scene if args.scene == "sample" else synthetic_scene
    cache = args.cache / f"{args.scene}-{args.size}-{args.seed}.npz" if args.cache else None
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            bands, truth, valid = z["bands"], z["truth"], z["valid"]
    else:
        bands, truth, valid = timed("scene", lambda: make(args.size, args.seed), log)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, bands=bands, truth=truth, valid=valid)
    probs = timed("probability field", lambda: probability_field(truth, args.seed), log)
    labels = timed("current labels", lambda: noisy_labels(truth, args.seed), log)
    print(f"  probabilities: {probs.nbytes / 2**30:.2f} GiB float32")

    print("regions, once per scene:")
    regions = timed(
        "slic superpixels + table",
        lambda: Rg.build_regions("slic", image=bands, valid=valid, region_size=args.region_size),
        log,
    )
    timed("polygon-click cost (perimeter)", lambda: regions.with_cost("polygon_clicks"), log)
    print(f"  {regions.n} regions, median area {np.median(regions.area):.0f} px")
    bands = None  # the image is only needed for the superpixels

    print("one selection step:")
    t0, c0 = time.perf_counter(), time.process_time()
    score = timed(f"score {args.score}", lambda: S.compute_score(args.score, probs, labels), log)
    values = timed(
        f"aggregate {args.aggregation}",
        lambda: Sel.aggregate(score, regions.labels, regions.n, args.aggregation),
        log,
    )
    hist = timed(
        "class histogram + weights",
        lambda: Sel.class_histogram(regions.labels, labels, regions.n, N_CLASSES),
        log,
    )
    weights = Sel.class_balance_weights(hist)
    budget = args.budget * float(regions.area.sum())
    sel = timed(
        f"greedy select (radius {args.radius:g})",
        lambda: Sel.select_greedy(
            values,
            regions.cost,
            budget,
            weights=weights,
            centroids=regions.centroid,
            radius=args.radius,
            seed=args.seed,
        ),
        log,
    )
    step, step_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"  {'= selection step':<34s} {step:7.2f} s wall {step_cpu:7.2f} s CPU")

    print("the default step (net_gain ranking + auto-correction proposal):")
    from types import SimpleNamespace

    from refine.autocorrect import candidate_mask, propose_corrections, row_windows
    from refine.config import RefineConfig
    from refine.strategies import net_gain_rank

    t1, c1 = time.perf_counter(), time.process_time()
    ctx = SimpleNamespace(probs=lambda: probs, label_index=labels, regions=regions, config=RefineConfig())
    gain = timed("rank net_gain", lambda: net_gain_rank(ctx), log)
    timed(
        "greedy select (value)",
        lambda: Sel.select_greedy(gain, regions.cost, budget, objective="value", weights=weights, seed=args.seed),
        log,
    )

    def _auto() -> int:
        n = 0
        protected = regions.mask(sel.ids)
        for rows in row_windows(*labels.shape, probs.shape[0]):
            cand = candidate_mask(probs[:, rows], labels[rows], 0.5)
            n += int(cand.sum())
            propose_corrections(probs[:, rows], labels[rows], protected[rows], 0.8)
        return n

    timed("auto-correction candidates + proposal", _auto, log)
    step2, step2_cpu = time.perf_counter() - t1 + log["class histogram + weights"][0], time.process_time() - c1
    print(f"  {'= default step (+ class weights)':<34s} {step2:7.2f} s wall {step2_cpu:7.2f} s CPU")
    print(f"  picked {sel.ids.size} regions, {sel.spent:.0f} of {budget:.0f} px")
    issue_rate = float(np.mean((labels != truth.astype(np.int16))[regions.mask(sel.ids)]))
    base_rate = float(np.mean((labels != truth.astype(np.int16))[valid]))
    print(f"  wrong-label share: selected {issue_rate:.1%}, scene {base_rate:.1%}")

    if args.all:
        print("every score and aggregation:")
        for name in sorted(set(S.SCORES) - {"bald", "annotator_disagreement"}):
            timed(f"score {name}", lambda name=name: S.compute_score(name, probs, labels), log)
        timed("label_issues confident_joint", lambda: S.label_issues(probs, labels), log)
        timed(
            "label_issues cleanlab", lambda: S.label_issues(probs, labels, method="cleanlab"), log
        )
        for how in Sel.AGGREGATIONS:
            timed(
                f"aggregate {how}",
                lambda how=how: Sel.aggregate(score, regions.labels, regions.n, how),
                log,
            )
        timed("region table only", lambda: Rg.region_stats(regions.labels, regions.n), log)
        timed(
            "greedy select, no diversity",
            lambda: Sel.select_greedy(values, regions.cost, budget, weights=weights),
            log,
        )
        timed("random select", lambda: Sel.select_random(regions.cost, budget, seed=args.seed), log)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
