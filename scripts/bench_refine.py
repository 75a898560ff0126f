"""Benchmark label refinement: which region-ranking strategy finds and fixes wrong labels best.

Every run is the real loop (``refine.loop.run_simulation``): train, predict, score, select,
review by the simulated expert, relabel, retrain, for 5 rounds of 2 % of the scene each
(10 % in all). Crossed:

* strategies: ``random``; ``entropy``, ``margin``, ``bald`` (MC dropout), ``disagreement``
  (1 - p_y), ``self_confidence`` (confident learning, t_y - p_y) and ``normalized_margin``
  (max_{k != y} p_k - p_y) from ``refine.scores``;
  ``cleanlab`` (the peer: ``cleanlab.segmentation.filter.find_label_issues`` and
  ``rank.get_label_quality_scores`` run by cleanlab on the same probabilities, its pixel
  ranking pooled over the same regions with the same aggregation and selection); ``oracle``
  (the upper bound: regions ranked by their true fraction of wrong pixels);
* region units: SLIC superpixels (~400 px) and a 20 x 20 px grid;
* cheap-label noise: a simulated crowd (3 annotators fused by Dawid-Skene) and a simulated
  weak model (25 % wrong);
* seeds (scene, noise, model, expert and tie-breaks all follow the job seed).

Reported per (noise, unit, strategy), mean +- std over seeds: label-error recall, refined-
label mIoU and the held-out model mIoU against % of the area reviewed; normalised area
under the budget curve (S - random) / (oracle - random); and per job, a reference model
trained on the cheap labels and one on clean labels with the loop's own training schedule.
Speed: one selection step against cleanlab on the same probabilities, on the bench scene
and on an 8192² scene (regions built once).

The round-1 model (trained from scratch on the cheap labels) is the same for every strategy
and region unit of a job (same labels, seeds and settings), so it is trained once per job
and loaded by every run: exact, not an approximation. Jobs run in worker processes with one
torch/BLAS thread each. Results are saved per run, so an interrupted bench resumes.

    python scripts/bench_refine.py            # full: 3 seeds, ~45 min on 2 cores
    python scripts/bench_refine.py --quick    # smoke: 1 seed, 4 strategies, small scene
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import update_section, write_json  # noqa: E402

BENCH_DIR = ROOT / "docs" / "bench"
ALL_STRATEGIES = (
    "random",
    "entropy",
    "margin",
    "bald",
    "disagreement",
    "self_confidence",
    "normalized_margin",
    "cleanlab",
    "oracle",
)
QUICK_STRATEGIES = ("random", "disagreement", "cleanlab", "oracle")
CANDIDATES = ("entropy", "margin", "bald", "disagreement", "self_confidence", "normalized_margin")
"""Strategies that may become the default (not the baseline, the peer or the oracle)."""
UNITS = {"superpixel": {"kind": "slic", "size": 400}, "grid": {"kind": "grid", "size": 400}}
NOISES = ("crowd", "model")
COMPACTNESS = 0.1
"""SLIC compactness of the superpixel unit (also pinned in the settings)."""
CLEANLAB_TIEBREAK = 1e-4
"""Weight of cleanlab's pixel quality (1 - p_y) under its issue flag in the cleanlab score."""


# --- settings -------------------------------------------------------------------------------------
def bench_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that changes the numbers; hashed into the cache folder name."""
    return {
        "size": args.size,
        "heldout_size": args.heldout_size,
        "seeds": list(args.seeds),
        "noises": list(args.noises),
        "units": list(args.units),
        "strategies": list(args.strategies),
        "noise": 0.25,
        "annotators": 3,
        "budget": 0.10,
        "rounds": 5,
        "crop": args.crop,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "finetune_steps": args.finetune_steps,
        "mc_samples": args.mc_samples,
        "aggregate": args.aggregate,
        "objective": args.objective,
        "relabel": args.relabel,
        "lr": args.lr,
        # every other setting pinned, so a change of refine's defaults cannot change the bench
        "model": {
            "arch": "Unet",
            "encoder": "tu-resnet10t",
            "encoder_depth": 4,
            "decoder_channels": [64, 32, 16, 8],
            "dropout": 0.1,
            "tile_size": 256,
            "overlap": 32,
            "predict_batch": 4,
        },
        "train_fixed": {
            "weight_decay": 1e-4,
            "min_labelled": 0.5,
            "class_weighting": "none",
            "augment": True,
            "warm_start": True,
        },
        "strategy_fixed": {
            "q": 0.1,
            "temperature": 0.1,
            "diversity_radius": 0.0,
            "class_balance": True,
        },
        "compactness": COMPACTNESS,
    }


def base_config(settings: dict[str, Any], noise: str, seed: int):
    """The job's RefineConfig (strategy and regions are set per run)."""
    from refine.config import parse_config

    return parse_config(
        {
            "seed": seed,
            "threads": 1,
            "final_train": True,
            "sample": {
                "size": settings["size"],
                "seed": seed,
                "heldout_size": settings["heldout_size"],
                "heldout_seed": 1000 + seed,
            },
            "cheap": {
                "source": noise,
                "noise": settings["noise"],
                "annotators": settings["annotators"],
                "seed": seed,
                "fusion": "dawid_skene",
            },
            "model": dict(settings["model"]),
            "train": {
                "crop": settings["crop"],
                "batch_size": settings["batch_size"],
                "steps": settings["steps"],
                "finetune_steps": settings["finetune_steps"],
                "lr": settings["lr"],
                **settings["train_fixed"],
            },
            "strategy": {
                "score": "disagreement",
                "aggregate": settings["aggregate"],
                "objective": settings["objective"],
                "mc_samples": settings["mc_samples"],
                **settings["strategy_fixed"],
            },
            "regions": {
                "kind": "slic",
                "size": 400,
                "cost": "pixels",
                "compactness": settings["compactness"],
            },
            "select": {
                "budget": settings["budget"],
                "unit": "fraction",
                "rounds": settings["rounds"],
            },
            "review": {"relabel": settings["relabel"], "expert_error": 0.0, "seed": seed},
        },
        source="bench_refine",
    )


def run_config(base, strategy: str, unit: str):
    """The per-run config: the oracle selects by its own value, without class weights."""
    oracle = strategy == "oracle"
    return base.with_overrides(
        strategy={
            "score": strategy,
            "class_balance": not oracle and base.strategy.class_balance,
            "objective": "value" if oracle else base.strategy.objective,
        },
        regions=UNITS[unit],
    )


# --- the peer and the oracle, registered as loop strategies --------------------------------------
_ORACLE: dict[str, Any] = {}


def cleanlab_pixel_score(probs: np.ndarray, label_index: np.ndarray) -> tuple[np.ndarray, dict]:
    """cleanlab's pixel ranking as a score (higher = more likely wrong), NaN where unusable.

    cleanlab has no ignore index, so only pixels with a label and finite probabilities are
    given to it, as one (1, 1, M) "image": its segmentation functions are pixel-wise (no
    spatial step at downsample=1), so this is exactly cleanlab on those pixels. The score is
    the issue flag of ``find_label_issues`` plus ``CLEANLAB_TIEBREAK`` * (1 - quality) with
    the pixel quality of ``get_label_quality_scores``: flagged pixels first, each group in
    cleanlab's own quality order.
    """
    from cleanlab.segmentation.filter import find_label_issues
    from cleanlab.segmentation.rank import get_label_quality_scores

    c = probs.shape[0]
    ok = (label_index >= 0) & np.isfinite(probs).all(axis=0)
    idx = np.flatnonzero(ok.ravel())
    labels = label_index.reshape(-1)[idx].astype(np.int64)[None, None, :]
    pp = np.ascontiguousarray(probs.reshape(c, -1)[:, idx])[None, :, None, :]
    t0 = time.perf_counter()
    issues = find_label_issues(labels, pp, verbose=False, n_jobs=1)
    t1 = time.perf_counter()
    _, quality = get_label_quality_scores(labels, pp, method="softmin", verbose=False, n_jobs=1)
    t2 = time.perf_counter()
    score = np.full(label_index.shape, np.nan, np.float32)
    flat = score.reshape(-1)
    flat[idx] = issues.reshape(-1) + CLEANLAB_TIEBREAK * (1.0 - quality.reshape(-1))
    info = {
        "find_label_issues_s": t1 - t0,
        "get_label_quality_scores_s": t2 - t1,
        "flagged": int(issues.sum()),
        "pixels": int(idx.size),
    }
    return score, info


def _cleanlab_rank(ctx) -> np.ndarray:
    score, _ = cleanlab_pixel_score(ctx.probs(), ctx.label_index)
    return ctx.aggregate(score)


def wrong_fraction(labels: np.ndarray, truth: np.ndarray, valid: np.ndarray, ignore: int):
    """1.0 where the label differs from a labelled truth pixel, 0.0 where equal, NaN elsewhere."""
    out = (labels != truth).astype(np.float32)
    out[(truth == ignore) | ~valid] = np.nan
    return out


def _oracle_rank(ctx) -> np.ndarray:
    from refine.select import aggregate

    wrong = wrong_fraction(ctx.labels, _ORACLE["truth"], ctx.valid, ctx.schema.ignore)
    return aggregate(wrong, ctx.regions.labels, ctx.regions.n, "mean")


def register_peers(truth: np.ndarray | None = None) -> None:
    from refine.loop import register_strategy

    register_strategy(
        "cleanlab",
        _cleanlab_rank,
        description="cleanlab find_label_issues + quality, pooled",
        replace=True,
    )
    register_strategy(
        "oracle",
        _oracle_rank,
        needs_model=False,
        description="true fraction of wrong pixels (upper bound)",
        replace=True,
    )
    if truth is not None:
        _ORACLE["truth"] = truth


# --- sharing the round-1 model between the runs of a job ------------------------------------------
_SHARED: dict[str, Any] = {}


def _install_shared_round1() -> None:
    """Make ``Refinement._train`` load the job's round-1 model instead of retraining it.

    Round 1 trains from scratch on the cheap labels with settings and seeds that every run
    of a job shares, so its result is bit-identical across strategies and region units.
    SegmentationModel.load restores the weights, the step and fit counters (which seed the
    later fine-tunes) and the normalisation, so the later rounds are unchanged too.
    """
    from refine import loop
    from refine.model import SegmentationModel

    if getattr(loop.Refinement._train, "_bench_shared", False):
        return
    original = loop.Refinement._train

    def _train(self, round_: int):
        ckpt = _SHARED.get("path")
        same = ckpt is not None and _SHARED.get("key") == _model_key(self.config)
        if self.model is None and round_ == 1 and same and self.config.train.warm_start:
            t0 = time.perf_counter()
            self.model = SegmentationModel.load(ckpt, self.schema, threads=self.config.threads)
            info = {
                "steps": self.config.train.steps,
                "warm_start": False,
                "final_loss": _SHARED["final_loss"],
                "steps_total": self.model.steps_trained,
                "trained_on_round": 0,
                "trained_on_spent": self.spent,
                "shared_round1": True,
            }
            return info, time.perf_counter() - t0
        return original(self, round_)

    _train._bench_shared = True
    loop.Refinement._train = _train


def _model_key(config) -> str:
    keep = {
        k: config.to_json_dict()[k]
        for k in ("seed", "threads", "model", "train", "sample", "cheap")
    }
    return json.dumps(keep, sort_keys=True)


# --- one job: one (noise, seed) -------------------------------------------------------------------
def _regions(job_dir: Path, unit: str, scene, valid: np.ndarray):
    """Regions as the loop would build them, cached per job."""
    from refine.regions import Regions, build_regions

    path = job_dir / f"regions_{unit}.npz"
    if path.exists():
        with np.load(path) as z:
            return Regions(
                z["labels"],
                z["area"],
                z["bbox"],
                z["centroid"],
                z["cost"],
                str(z["unit"]),
                str(z["kind"]),
            ), float(z["seconds"])
    spec = UNITS[unit]
    t0 = time.perf_counter()
    if spec["kind"] == "slic":
        bands, _ = scene.arrays()
        reg = build_regions(
            "slic",
            image=bands,
            valid=valid,
            region_size=spec["size"],
            compactness=COMPACTNESS,
            cost="pixels",
        )
    else:
        side = max(2, round(spec["size"] ** 0.5))
        reg = build_regions("grid", shape=scene.shape, valid=valid, cell=side, cost="pixels")
    seconds = time.perf_counter() - t0
    tmp = path.with_suffix(".part.npz")
    np.savez(tmp, labels=reg.labels, area=reg.area, bbox=reg.bbox, centroid=reg.centroid, cost=reg.cost,
             unit=reg.cost_unit, kind=reg.kind, seconds=seconds)  # fmt: skip
    tmp.replace(path)
    return reg, seconds


def _schedule(model, scene, labels, config, evaluator, work: Path, first_round: int) -> list[float]:
    """Held-out mIoU after each training of the loop's schedule, from ``first_round``.

    The loop trains in round r with ``seed = config.seed + r`` (r = 1: ``steps`` from
    scratch; r = 2..R and the final training: ``finetune_steps``); here on fixed labels.
    """
    out = []
    tr = config.train
    last = config.select.rounds + 1  # the final training
    for r in range(first_round, last + 1):
        steps = tr.steps if r == 1 else tr.finetune_steps
        model.fit(scene, labels, tr, steps, seed=config.seed + r, desc=f"reference r{r}")
        out.append(evaluator.model(model, work)["miou"])
    return out


def _time_step(probs, label_index, regions, num_classes: int, repeats: int = 3) -> dict[str, Any]:
    """Median seconds of one selection step per score vs cleanlab on the same probabilities."""
    from refine.scores import compute_score, predicted_class
    from refine.select import aggregate, class_balance_weights, class_histogram, select_greedy

    budget = 0.02 * float(regions.cost.sum())

    def ours(name: str) -> None:
        from refine.scores import NEEDS_LABELS

        score = compute_score(name, probs, label_index if name in NEEDS_LABELS else None)
        values = aggregate(score, regions.labels, regions.n, "mean")
        pred = predicted_class(probs)
        weights = class_balance_weights(
            class_histogram(regions.labels, pred, regions.n, num_classes)
        )
        select_greedy(values, regions.cost, budget, objective="value", weights=weights)

    out: dict[str, Any] = {}
    for name in ("entropy", "margin", "disagreement", "self_confidence"):
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ours(name)
            ts.append(time.perf_counter() - t0)
        out[name] = float(np.median(ts))
    fli, glqs, total = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        score, info = cleanlab_pixel_score(probs, label_index)
        aggregate(score, regions.labels, regions.n, "mean")
        total.append(time.perf_counter() - t0)
        fli.append(info["find_label_issues_s"])
        glqs.append(info["get_label_quality_scores_s"])
    out["cleanlab_find_label_issues"] = float(np.median(fli))
    out["cleanlab_get_label_quality_scores"] = float(np.median(glqs))
    out["cleanlab_strategy_total"] = float(np.median(total))
    return out


def _one_shot(probs, bald_map, label_index, start, truth, valid, regions, schema) -> dict[str, Any]:
    """Recall of a single 10 % selection from the round-1 model, per score x aggregation.

    No retraining: a cheap look at which pooling suits which score (the loop uses one).
    """
    from refine.scores import NEEDS_LABELS, compute_score, predicted_class
    from refine.select import (
        aggregate,
        class_balance_weights,
        class_histogram,
        select_greedy,
        select_random,
    )

    wrong = wrong_fraction(start, truth, valid, schema.ignore)
    w0 = np.nan_to_num(wrong, nan=0.0)
    total_wrong = float(w0.sum())
    budget = 0.10 * float(regions.cost.sum())
    pred = predicted_class(probs)
    weights = class_balance_weights(
        class_histogram(regions.labels, pred, regions.n, schema.num_classes)
    )
    per_region_wrong = np.bincount(
        np.maximum(regions.labels.ravel(), 0),
        weights=w0.ravel() * (regions.labels.ravel() >= 0),
        minlength=regions.n,
    )

    def recall(ids: np.ndarray) -> float:
        return float(per_region_wrong[ids].sum() / total_wrong)

    scores = {
        n: compute_score(n, probs, label_index if n in NEEDS_LABELS else None)
        for n in CANDIDATES
        if n != "bald"
    }
    if bald_map is not None:
        scores["bald"] = bald_map
    scores["cleanlab"] = cleanlab_pixel_score(probs, label_index)[0]
    out: dict[str, Any] = {}
    for name, s in scores.items():
        for how in ("mean", "max", "top_quantile", "softmax"):
            v = aggregate(s, regions.labels, regions.n, how)
            out[f"{name}/{how}/value"] = recall(
                select_greedy(v, regions.cost, budget, objective="value", weights=weights).ids
            )
        v = aggregate(s, regions.labels, regions.n, "mean")
        out[f"{name}/mean/ratio"] = recall(
            select_greedy(v, regions.cost, budget, objective="ratio", weights=weights).ids
        )
        out[f"{name}/mean/value-unweighted"] = recall(
            select_greedy(v, regions.cost, budget, objective="value").ids
        )
    v = aggregate(wrong, regions.labels, regions.n, "mean")
    out["oracle"] = recall(select_greedy(v, regions.cost, budget, objective="value").ids)
    out["random"] = float(
        np.mean([recall(select_random(regions.cost, budget, seed=k).ids) for k in range(5)])
    )
    return out


def _run_summary(res, capacity: float, seconds: float) -> dict[str, Any]:
    x, recall = res.curve("error_recall")
    _, miou = res.curve("label_miou")
    mx, mm = res.curve("model_miou")
    times = {
        k: [float(r["times"].get(k, 0.0)) for r in res.rounds]
        for k in ("train", "predict", "score", "select", "review", "evaluate", "write")
    }
    return {
        "spent": (x / capacity).tolist(),
        "error_recall": recall.tolist(),
        "label_miou": miou.tolist(),
        "model_spent": (mx / capacity).tolist(),
        "model_miou": mm.tolist(),
        "precision": [r["review"]["precision"] for r in res.rounds],
        "introduced": [r["labels"]["errors"]["introduced"] for r in res.rounds],
        "times": times,
        "seconds": seconds,
    }


# --- one version of the code for a whole session ---------------------------------------------------
CODE_PARTS = ("refine", "tiles", "configs", "scripts/time_refine_select.py")


def snapshot_code(work: Path) -> tuple[Path, str]:
    """Copy refine/, tiles/, configs/ and the speed helper into ``work/code/HASH``.

    Every worker imports from this copy, so edits made to the tree while the bench runs
    (a long run on a shared checkout) cannot mix two versions of the code into one table.
    """
    h = hashlib.sha1()
    files = []
    for part in CODE_PARTS:
        src = ROOT / part
        found = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        files += [
            p
            for p in found
            if "__pycache__" not in p.parts and p.suffix in (".py", ".yaml", ".yml")
        ]
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    digest = h.hexdigest()[:12]
    dest = work / "code" / digest
    if not dest.exists():
        tmp = work / "code" / f".{digest}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        for f in files:
            out = tmp / f.relative_to(ROOT)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out)
        tmp.replace(dest)
    return dest, digest


def use_code(code_dir: str | None) -> None:
    """Import refine/tiles from the session's snapshot (before anything imports them)."""
    if not code_dir:
        return
    if "refine" in sys.modules and not str(sys.modules["refine"].__file__).startswith(code_dir):
        raise RuntimeError("refine was imported before the code snapshot was put on sys.path")
    for p in (str(Path(code_dir) / "scripts"), code_dir):
        if p not in sys.path[:2]:
            sys.path.insert(0, p)


def run_job(payload: dict[str, Any]) -> dict[str, Any]:
    """All runs of one (noise, seed); every result is saved as soon as it exists."""
    try:
        use_code(payload.get("code"))
        return _run_job(payload)
    except Exception:
        return {"job": payload["name"], "error": traceback.format_exc()}


def _run_job(payload: dict[str, Any]) -> dict[str, Any]:
    import torch

    from refine.loop import Evaluator, fuse_sources, load_inputs, prepare_sample, run_simulation
    from refine.model import SegmentationModel
    from refine.noise import noise_rate
    from refine.scores import disagreement
    from tiles.classes import load_schema

    torch.set_num_threads(1)
    settings, noise, seed = payload["settings"], payload["noise"], payload["seed"]
    work, name = Path(payload["work"]), payload["name"]
    job_dir = work / "jobs" / name
    res_dir = work / "results" / name
    job_dir.mkdir(parents=True, exist_ok=True)
    res_dir.mkdir(parents=True, exist_ok=True)
    log = payload.get("log", True)

    def say(msg: str) -> None:
        if log:
            print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    t_job = time.perf_counter()
    base = base_config(settings, noise, seed)
    schema = load_schema(base.classes)
    inputs = prepare_sample(base, job_dir / "inputs")
    data = load_inputs(inputs, schema)
    start = fuse_sources(data.sources, schema, base.cheap.fusion)
    start[~data.valid] = schema.ignore
    truth, scene, valid = data.truth, data.scene, data.valid
    register_peers(truth)
    _install_shared_round1()
    evaluator = Evaluator(truth, start, schema, data.heldout)
    work_tmp = job_dir / "scratch"
    work_tmp.mkdir(exist_ok=True)

    # --- setup shared by every run: regions, the round-1 model, the references -----------------
    job_json = res_dir / "job.json"
    job = json.loads(job_json.read_text()) if job_json.exists() else None
    regions = {u: _regions(job_dir, u, scene, valid) for u in settings["units"]}
    ckpt = job_dir / "round1.pt"
    computed = job is None or not ckpt.exists()
    if computed:
        say("training the shared round-1 model and the references")
        job = {"noise": noise, "seed": seed}
        job["cheap_noise"] = [noise_rate(s, truth, schema.ignore) for s in data.sources]
        job["start_noise"] = noise_rate(start, truth, schema.ignore)
        job["regions"] = {
            u: {"count": r.n, "mean_area": float(r.area.mean()), "seconds": s}
            for u, (r, s) in regions.items()
        }
        t0 = time.perf_counter()
        model = SegmentationModel.create(
            base.model, schema, scene, seed=base.seed, threads=base.threads
        )
        fit = model.fit(
            scene, start, base.train, base.train.steps, seed=base.seed + 1, desc="train r1"
        )
        model.save(ckpt)
        job["round1_train_s"] = time.perf_counter() - t0
        job["model_params"] = int(sum(p.numel() for p in model.net.parameters()))
        job["round1_final_loss"] = fit.final_loss
        cheap = [evaluator.model(model, work_tmp)["miou"]]
        t0 = time.perf_counter()
        cheap += _schedule(model, scene, start, base, evaluator, work_tmp, first_round=2)
        clean_labels = truth.copy()
        clean_labels[~valid] = schema.ignore
        clean = SegmentationModel.create(
            base.model, schema, scene, seed=base.seed, threads=base.threads
        )
        job["reference_cheap_miou"] = cheap
        job["reference_clean_miou"] = _schedule(
            clean, scene, clean_labels, base, evaluator, work_tmp, first_round=1
        )
        job["reference_s"] = time.perf_counter() - t0
        # timings and the one-shot look, on the round-1 probabilities (shared by all strategies)
        r1 = SegmentationModel.load(ckpt, schema, threads=1)
        bald_path = work_tmp / "bald_r1.tif"
        probs = r1.predict_proba(scene, work_tmp / "probs_r1.tif", mc_samples=base.strategy.mc_samples,
                                 bald_path=bald_path, seed=base.seed + 1, compress="none")  # fmt: skip
        import rasterio

        with rasterio.open(probs) as ds:
            probs = ds.read()
        with rasterio.open(bald_path) as ds:
            bald_map = ds.read(1)
        label_index = schema.code_to_index()[start]
        label_index[~valid] = -1
        unit0 = settings["units"][0]
        job["step_seconds"] = _time_step(probs, label_index, regions[unit0][0], schema.num_classes)
        job["step_seconds"]["unit"] = unit0
        job["step_seconds"]["pixels"] = int(valid.sum())
        # cleanlab's pixel quality is p_y: check it against our disagreement (1 - p_y)
        _, q_info = cleanlab_pixel_score(probs, label_index)
        from cleanlab.segmentation.rank import get_label_quality_scores

        ok = (label_index >= 0) & np.isfinite(probs).all(axis=0)
        idx = np.flatnonzero(ok.ravel())
        pp = np.ascontiguousarray(probs.reshape(probs.shape[0], -1)[:, idx])[None, :, None, :]
        _, q = get_label_quality_scores(label_index.reshape(-1)[idx][None, None, :].astype(np.int64), pp,
                                        verbose=False, n_jobs=1)  # fmt: skip
        d = disagreement(probs, label_index).reshape(-1)[idx]
        job["cleanlab_quality_vs_disagreement_maxdiff"] = float(
            np.max(np.abs((1.0 - q.reshape(-1)) - d))
        )
        job["cleanlab_flagged_fraction"] = q_info["flagged"] / max(q_info["pixels"], 1)
        job["one_shot"] = {
            u: _one_shot(probs, bald_map, label_index, start, truth, valid, r, schema)
            for u, (r, _) in regions.items()
        }
        job["setup_s"] = time.perf_counter() - t_job
        job["code_hash"] = payload.get("code_hash")
        write_json_plain(job_json, job)
        say(f"setup done in {job['setup_s']:.0f} s: cheap {job['reference_cheap_miou'][-1]:.3f} "
            f"clean {job['reference_clean_miou'][-1]:.3f} held-out mIoU")  # fmt: skip
    fit_loss = job.get("round1_final_loss", float("nan"))
    _SHARED.update(path=ckpt, key=_model_key(base), final_loss=fit_loss)

    # --- the runs ----------------------------------------------------------------------------------
    runs: dict[str, Any] = {}
    for unit in settings["units"]:
        reg, _ = regions[unit]
        capacity = float(reg.cost.sum())
        for strategy in settings["strategies"]:
            key = f"{unit}/{strategy}"
            out = res_dir / f"{unit}_{strategy}.json"
            if out.exists():
                runs[key] = json.loads(out.read_text())
                continue
            computed = True
            cfg = run_config(base, strategy, unit)
            run_dir = job_dir / "runs" / f"{unit}_{strategy}"
            t0 = time.perf_counter()
            res = run_simulation(cfg, run_dir, inputs, resume=True, regions=reg, evaluate_model=True, export=False,
                                 report=False)  # fmt: skip
            summary = _run_summary(res, capacity, time.perf_counter() - t0)
            summary["code_hash"] = payload.get("code_hash")
            write_json_plain(out, summary)
            runs[key] = summary
            shutil.rmtree(run_dir, ignore_errors=True)
            say(f"{key}: recall@10% {summary['error_recall'][-1]:.3f}, label mIoU {summary['label_miou'][-1]:.3f}, "
                f"model mIoU {summary['model_miou'][-1]:.3f} ({summary['seconds']:.0f} s)")  # fmt: skip
    return {
        "job": name,
        "noise": noise,
        "seed": seed,
        "setup": job,
        "runs": runs,
        "seconds": time.perf_counter() - t_job,
        "computed": computed,
    }


def write_json_plain(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(data, indent=1, default=float), encoding="utf-8")
    tmp.replace(path)


# --- speed on a large scene -----------------------------------------------------------------------
def speed_job(payload: dict[str, Any]) -> dict[str, Any]:
    try:
        use_code(payload.get("code"))
        return _speed_job(payload)
    except Exception:
        return {"job": "speed", "error": traceback.format_exc()}


def _speed_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Regions once and one selection step on a size² scene (6 classes), vs cleanlab.

    The scene, probabilities and labels are those of ``scripts/time_refine_select.py``:
    the sample scene, softmax(3 onehot(truth) + 1.5 smooth noise), the truth with 5 % of
    64 px blocks and 1 % of pixels flipped. Model inference is not part of the step.
    """
    import resource

    from time_refine_select import noisy_labels, probability_field, sample_scene

    from refine import regions as Rg  # before time_refine_select, which puts the tree first
    from refine.scores import NEEDS_LABELS, compute_score, predicted_class
    from refine.select import aggregate, class_balance_weights, class_histogram, select_greedy

    out_path = Path(payload["work"]) / "results" / f"speed_{payload['size']}.json"
    if out_path.exists():
        return json.loads(out_path.read_text())
    size, seed = payload["size"], 0
    cache = Path(payload["work"]) / f"speed_scene_{size}.npz"
    if cache.exists():
        with np.load(cache) as z:
            bands, truth, valid = z["bands"], z["truth"], z["valid"]
    else:
        bands, truth, valid = sample_scene(size, seed)
        np.savez(cache, bands=bands, truth=truth, valid=valid)
    probs = probability_field(truth, seed)
    labels = noisy_labels(truth, seed)
    res: dict[str, Any] = {
        "size": size,
        "classes": int(probs.shape[0]),
        "probs_gib": probs.nbytes / 2**30,
    }
    t0, c0 = time.perf_counter(), time.process_time()
    regions = Rg.build_regions("slic", image=bands, valid=valid, region_size=400, compactness=0.1)
    res["regions_slic_s"] = time.perf_counter() - t0
    res["regions_slic_cpu_s"] = time.process_time() - c0
    res["regions"] = regions.n
    t0 = time.perf_counter()
    Rg.build_regions("grid", shape=truth.shape, valid=valid, cell=20)
    res["regions_grid_s"] = time.perf_counter() - t0
    del bands
    budget = 0.02 * float(regions.cost.sum())
    steps = {}
    for name in payload["scores"]:
        t0, c0 = time.perf_counter(), time.process_time()
        score = compute_score(name, probs, labels if name in NEEDS_LABELS else None)
        t1 = time.perf_counter()
        values = aggregate(score, regions.labels, regions.n, payload["aggregate"])
        t2 = time.perf_counter()
        weights = class_balance_weights(
            class_histogram(regions.labels, predicted_class(probs), regions.n, probs.shape[0])
        )
        select_greedy(values, regions.cost, budget, objective=payload["objective"], weights=weights)
        t3 = time.perf_counter()
        steps[name] = {"score": t1 - t0, "aggregate": t2 - t1, "select": t3 - t2, "total": t3 - t0,
                       "cpu": time.process_time() - c0}  # fmt: skip
        del score
    res["step"] = steps
    # cleanlab on the same probabilities; it has no ignore index, so ignore pixels get the
    # predicted class as label (which it never flags). No copy: (1, C, H, W) view.
    from cleanlab.segmentation.rank import get_label_quality_scores

    lab = labels.astype(np.int64)
    pred = predicted_class(probs)
    lab[lab < 0] = pred[lab < 0]
    del pred
    t0, c0 = time.perf_counter(), time.process_time()
    get_label_quality_scores(lab[None], probs[None], method="softmin", verbose=False, n_jobs=1)
    res["cleanlab_get_label_quality_scores_s"] = time.perf_counter() - t0
    res["cleanlab_get_label_quality_scores_cpu_s"] = time.process_time() - c0
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    res["code_hash"] = payload.get("code_hash")
    write_json_plain(out_path, res)
    return {**res, "computed": True}


# --- summaries ----------------------------------------------------------------------------------
def _area(x: list[float], y: list[float], total: float) -> float:
    """Area under y(x) over [0, total] (trapezoids), the last value held to ``total``."""
    from refine.metrics import normalised_area

    x, y = list(x), list(y)
    if x[-1] < total:
        x, y = [*x, total], [*y, y[-1]]
    return normalised_area(np.asarray(x), np.asarray(y), total)


def _ms(values: list[float]) -> tuple[float, float]:
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
    if not a.size:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def summarise(jobs: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    total = settings["budget"]
    out: dict[str, Any] = {}
    for noise in settings["noises"]:
        js = [j for j in jobs if j["noise"] == noise]
        if not js:
            continue
        per_noise: dict[str, Any] = {}
        cheap_ref = [j["setup"]["reference_cheap_miou"] for j in js]
        clean_ref = [j["setup"]["reference_clean_miou"] for j in js]
        for unit in settings["units"]:
            rows: dict[str, Any] = {}
            area = {}
            for s in settings["strategies"]:
                rs = [j["runs"][f"{unit}/{s}"] for j in js]
                area[s] = {
                    "recall": [_area(r["spent"], r["error_recall"], total) for r in rs],
                    "model": [_area(r["model_spent"], r["model_miou"], total) for r in rs],
                }
            for s in settings["strategies"]:
                rs = [j["runs"][f"{unit}/{s}"] for j in js]
                row: dict[str, Any] = {}
                for key in ("spent", "error_recall", "label_miou", "model_spent", "model_miou"):
                    arr = np.asarray([r[key] for r in rs], float)
                    row[key] = {
                        "mean": arr.mean(0).tolist(),
                        "std": (arr.std(0, ddof=1) if len(rs) > 1 else 0 * arr[0]).tolist(),
                    }
                # paired with the cheap-label reference of the same seed and training schedule
                delta = np.asarray([r["model_miou"] for r in rs], float) - np.asarray(
                    cheap_ref, float
                )
                row["model_delta"] = {
                    "mean": delta.mean(0).tolist(),
                    "std": (delta.std(0, ddof=1) if len(rs) > 1 else 0 * delta[0]).tolist(),
                }
                for kind in ("recall", "model"):
                    row[f"aubc_{kind}"] = _ms(area[s][kind])
                    if "random" in area:
                        paired = [
                            a - r for a, r in zip(area[s][kind], area["random"][kind], strict=True)
                        ]
                        row[f"aubc_{kind}_minus_random"] = _ms(paired)
                    if "random" in area and "oracle" in area:
                        norm = [
                            (a - r) / (o - r) if abs(o - r) > 1e-12 else float("nan")
                            for a, r, o in zip(
                                area[s][kind],
                                area["random"][kind],
                                area["oracle"][kind],
                                strict=True,
                            )
                        ]
                        row[f"naubc_{kind}"] = _ms(norm)
                        mean_norm = (np.mean(area[s][kind]) - np.mean(area["random"][kind])) / (
                            np.mean(area["oracle"][kind]) - np.mean(area["random"][kind])
                        )
                        row[f"naubc_{kind}_of_means"] = float(mean_norm)
                row["recall_10"] = _ms([r["error_recall"][-1] for r in rs])
                row["label_miou_10"] = _ms([r["label_miou"][-1] for r in rs])
                row["model_miou_10"] = _ms([r["model_miou"][-1] for r in rs])
                if "oracle" in settings["strategies"]:
                    orc = [j["runs"][f"{unit}/oracle"]["error_recall"][-1] for j in js]
                    row["of_oracle_10"] = _ms(
                        [r["error_recall"][-1] / o for r, o in zip(rs, orc, strict=True)]
                    )
                gap = [
                    (r["model_miou"][-1] - ch[-1]) / (cl[-1] - ch[-1])
                    for r, ch, cl in zip(rs, cheap_ref, clean_ref, strict=True)
                ]
                row["gap_closed_10"] = _ms(gap)
                ch_m = float(np.mean([c[-1] for c in cheap_ref]))
                cl_m = float(np.mean([c[-1] for c in clean_ref]))
                s_m = float(np.mean([r["model_miou"][-1] for r in rs]))
                row["gap_closed_10_of_means"] = (
                    (s_m - ch_m) / (cl_m - ch_m) if abs(cl_m - ch_m) > 1e-12 else float("nan")
                )
                row["seconds"] = _ms([r["seconds"] for r in rs])
                sel = [
                    np.mean(np.asarray(r["times"]["score"]) + np.asarray(r["times"]["select"]))
                    for r in rs
                ]
                row["score_select_s_per_round"] = _ms(sel)
                rows[s] = row
            per_noise[unit] = rows
        per_noise["reference"] = {
            "cheap_miou": _ms([c[-1] for c in cheap_ref]),
            "clean_miou": _ms([c[-1] for c in clean_ref]),
            "cheap_round1_miou": _ms([c[0] for c in cheap_ref]),
            "clean_curve": np.mean(clean_ref, 0).tolist(),
            "cheap_curve": np.mean(cheap_ref, 0).tolist(),
            "clean_delta": (np.asarray(clean_ref, float) - np.asarray(cheap_ref, float))
            .mean(0)
            .tolist(),
            "start_noise": _ms([j["setup"]["start_noise"] for j in js]),
        }
        out[noise] = per_noise
    return out


def choose_default(summary: dict[str, Any], settings: dict[str, Any]) -> str | None:
    """The candidate with the best mean normalised AUBC of error recall over noises and units."""
    cands = [s for s in settings["strategies"] if s in CANDIDATES]
    best, best_v = None, -np.inf
    for s in cands:
        vals = [
            summary[n][u][s].get("naubc_recall", (np.nan,))[0]
            for n in summary
            for u in settings["units"]
        ]
        v = float(np.nanmean(vals)) if vals else -np.inf
        if v > best_v:
            best, best_v = s, v
    return best


# --- plots --------------------------------------------------------------------------------------
COLOURS = {
    "random": "#7f7f7f",
    "entropy": "#1f77b4",
    "margin": "#17becf",
    "bald": "#9467bd",
    "disagreement": "#d62728",
    "self_confidence": "#ff7f0e",
    "normalized_margin": "#8c564b",
    "cleanlab": "#2ca02c",
    "oracle": "#000000",
}


def plot_curves(summary: dict[str, Any], settings: dict[str, Any], noise: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = settings["units"]
    fig, axes = plt.subplots(len(units), 3, figsize=(14, 3.8 * len(units) + 0.6), squeeze=False)
    panels = (("error_recall", "spent", "label-error recall"), ("label_miou", "spent", "refined-label mIoU"),
              ("model_delta", "model_spent", "held-out mIoU gain over cheap labels"))  # fmt: skip
    ref = summary[noise]["reference"]
    for i, unit in enumerate(units):
        for j, (key, xkey, title) in enumerate(panels):
            ax = axes[i][j]
            for s in settings["strategies"]:
                row = summary[noise][unit][s]
                x = 100 * np.asarray(row[xkey]["mean"])
                m, sd = np.asarray(row[key]["mean"]), np.asarray(row[key]["std"])
                style = "--" if s in ("oracle", "random") else "-"
                ax.plot(
                    x,
                    m,
                    style,
                    color=COLOURS.get(s),
                    label=s,
                    lw=1.6 if s != "random" else 1.2,
                    marker=".",
                )
                ax.fill_between(x, m - sd, m + sd, color=COLOURS.get(s), alpha=0.12, lw=0)
            if key == "model_delta":
                x = 100 * np.asarray(summary[noise][unit]["random"]["model_spent"]["mean"])
                ax.plot(x, ref["clean_delta"], ":", color="#444", lw=1.2, label="clean-label model")
                ax.axhline(0, color="#aaa", lw=1, label="cheap-label model")
            ax.set_title(f"{noise} noise, {unit}: {title}", fontsize=9)
            ax.set_xlabel("% of the area reviewed")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][2].get_legend_handles_labels()
    fig.legend(
        handles, labels, fontsize=8, loc="lower center", ncol=min(len(labels), 6), frameon=False
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_aubc(summary: dict[str, Any], settings: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(n, u) for n in summary for u in settings["units"]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    panels = (
        ("naubc_recall", [s for s in settings["strategies"] if s not in ("random", "oracle")],
         "error recall: normalised AUBC (0 = random, 1 = oracle), per seed"),
        ("aubc_model_minus_random", [s for s in settings["strategies"] if s != "random"],
         "held-out model mIoU: AUBC minus random's, paired per seed"),
    )  # fmt: skip
    for ax, (key, strategies, title) in zip(axes, panels, strict=True):
        width = 0.8 / max(len(strategies), 1)
        for k, s in enumerate(strategies):
            m = [summary[n][u][s][key][0] for n, u in groups]
            sd = [summary[n][u][s][key][1] for n, u in groups]
            xs = np.arange(len(groups)) + (k - (len(strategies) - 1) / 2) * width
            ax.bar(xs, m, width, yerr=sd, color=COLOURS.get(s), label=s, capsize=2)
        ax.axhline(0, color="#7f7f7f", lw=1)
        if key == "naubc_recall":
            ax.axhline(1, color="#000", lw=1, ls="--")
        ax.set_xticks(np.arange(len(groups)), [f"{n}\n{u}" for n, u in groups], fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the markdown section -----------------------------------------------------------------------
def _pm(v: tuple[float, float] | list, digits: int = 3, pct: bool = False) -> str:
    m, s = v
    if not np.isfinite(m):
        return "n/a"
    if pct:
        return f"{100 * m:.1f} ± {100 * s:.1f} %"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown(
    summary, settings, jobs, speed, default, wall: float, plots: dict[str, str], quick: bool
) -> str:
    n_seeds = len(settings["seeds"])
    m = settings["model"]
    counts = {j["setup"].get("model_params") for j in jobs}
    params = f"{counts.pop() / 1e6:.2f} M" if len(counts) == 1 and None not in counts else "n/a"
    lines = []
    lines.append(
        f"Label refinement, {settings['rounds']} rounds of {100 * settings['budget'] / settings['rounds']:.0f} % of the "
        f"scene each ({100 * settings['budget']:.0f} % in all), every run the real loop "
        f"(`refine.loop.run_simulation`). {settings['size']}² sample scene per seed, held-out "
        f"{settings['heldout_size']}² scene of seed 1000 + seed; mean ± std over {n_seeds} seed(s) "
        f"({', '.join(map(str, settings['seeds']))}). Full run: {wall / 60:.1f} min wall on this machine, summed over "
        "the bench sessions that computed results (a resumed or extended bench adds up); other jobs shared the "
        "machine during the run."
        + (" **Quick smoke run: not the benchmark's numbers.**" if quick else "")
    )
    lines.append("")
    lines.append("**Setup** (chosen so the whole cross fits in ~45 min on 2 cores, by design):")
    start = {n: summary[n]["reference"]["start_noise"] for n in summary}
    lines.append(
        f"- cheap labels: *crowd* = 3 simulated annotators at 25 % mean error, fused by Dawid-Skene "
        f"({_pm(start.get('crowd', (np.nan, np.nan)), pct=True)} wrong after fusion); *model* = simulated weak "
        f"spectral model ({_pm(start.get('model', (np.nan, np.nan)), pct=True)} wrong)."
    )
    lines.append(
        f"- regions: SLIC superpixels (400 px asked, compactness 0.1; {_mean_area(jobs, 'superpixel')} px on "
        f"average) or a 20 × 20 px grid ({_mean_area(jobs, 'grid')} px on average, cut by nodata), built once per "
        "scene; "
        f"cost = pixels (area reviewed). The simulated expert is never wrong and answers `review.relabel: "
        f"{settings['relabel']}`"
        + (
            " (pixel-exact: a reviewed region becomes right, so error recall measures how well a strategy finds "
            "errors, and the oracle is a true upper bound; with `dominant`, a whole region takes its majority class, "
            "which also destroys right minority pixels: in the smoke run `--quick --relabel dominant --strategies random "
            "disagreement oracle` (1 seed, 512², ~900 px superpixels) the oracle's crowd error recall at 10 % was "
            "9.6 % against 20.9 % with pixel-exact answers, it turned 7,358 right pixels wrong, and the refined-label "
            "mIoU fell from 0.781 to 0.750)."
            if settings["relabel"] == "pixel"
            else " (each region takes its dominant true class, Cai et al.)."
        )
    )
    lines.append(
        f"- model: {m['arch']}, timm ResNet-10t encoder ({m['encoder']}) cut to {m['encoder_depth']} levels, decoder "
        f"{'-'.join(map(str, m['decoder_channels']))} ({params} parameters), dropout {m['dropout']}; crops "
        f"{settings['crop']}², batch {settings['batch_size']}, AdamW + one-cycle to lr {settings['lr']:g}, class "
        f"weighting `{settings['train_fixed']['class_weighting']}`; "
        f"round 1 trains {settings['steps']} steps "
        f"from scratch, each later round and the final training warm-start for {settings['finetune_steps']} steps. "
        f"BALD: {settings['mc_samples']} MC-dropout passes of the head."
    )
    lines.append(
        "- the round-1 model (cheap labels, same seeds) is identical for every strategy and region unit of a "
        "(noise, seed) job, so it is trained once per job and loaded by each run (weights, step counters and "
        "normalisation restored: exact). The 6 jobs run in 2 worker processes with 1 torch/BLAS thread each; "
        "every run's results are saved as they finish, so an interrupted bench resumes."
    )
    lines.append(
        f"- selection: pixel score pooled by `{settings['aggregate']}` over each region, weighted by Cai et al.'s "
        f"class balance, greedy with objective `{settings['objective']}` (priority = pooled score x weight; with "
        "pixel costs, `ratio` would divide a per-pixel mean by the area a second time). The oracle ranks by the "
        "true fraction of wrong pixels, without class weights; random takes regions in a seeded random order."
    )
    lines.append(
        "- cleanlab (the peer): `cleanlab.segmentation.filter.find_label_issues` and `rank.get_label_quality_scores` "
        "run by cleanlab 2.9 on the same probabilities as every other strategy, over the labelled pixels (cleanlab "
        "has no ignore index; its segmentation functions are pixel-wise, so they get one 1 × M image). Pixel score "
        f"= issue flag + {CLEANLAB_TIEBREAK:g} × (1 − quality), pooled and selected exactly like ours. cleanlab's "
        "pixel quality *is* p_y (measured max |(1 − quality) − disagreement| = "
        f"{max(j['setup']['cleanlab_quality_vs_disagreement_maxdiff'] for j in jobs):.1e}), so the peer's own "
        "contribution is the confident-learning flag."
    )
    hashes = sorted(code_hashes(jobs))
    lines.append(
        f"- code: every worker imports refine/ and tiles/ from a snapshot taken when its session started "
        f"({', '.join(hashes) if hashes else 'n/a'}"
        + (
            "; MIXED: results come from more than one version of the code"
            if len(hashes) > 1
            else ""
        )
        + "), so edits to the tree during the run cannot leak in."
    )
    lines.append(
        "- references per (noise, seed): the loop's training schedule (round 1 + 4 fine-tunes + final) on the cheap "
        "labels unchanged, and the same schedule from scratch on clean labels. *Gap closed* = (model mIoU at 10 % − "
        "cheap) / (clean − cheap)."
    )
    lines.append("")
    for noise in summary:
        ref = summary[noise]["reference"]
        lines.append(
            f"**{noise} noise**: held-out mIoU of the reference models: cheap labels {_pm(ref['cheap_miou'])}, clean "
            f"labels {_pm(ref['clean_miou'])}."
        )
        lines.append("")
        lines.append(
            "| unit | strategy | error recall @10 % | of oracle's | nAUBC recall | label mIoU @10 % | model mIoU @10 % "
            "| gap closed | AUBC model mIoU | nAUBC model mIoU |"
        )
        lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for unit in settings["units"]:
            for s in settings["strategies"]:
                r = summary[noise][unit][s]
                name = f"**{s}**" if s == default else s
                lines.append(
                    f"| {unit} | {name} | {_pm(r['recall_10'], pct=True)} | {_pm(r.get('of_oracle_10', (np.nan, 0)), pct=True)} "
                    f"| {_pm(r.get('naubc_recall', (np.nan, 0)), 2)} | {_pm(r['label_miou_10'])} | {_pm(r['model_miou_10'])} "
                    f"| {r.get('gap_closed_10_of_means', np.nan):.2f} | {_pm(r['aubc_model'])} | {r.get('naubc_model_of_means', np.nan):.2f} |"
                )
        if "oracle" in settings["strategies"] and "random" in settings["strategies"]:
            dens = []
            js = [j for j in jobs if j["noise"] == noise]
            for unit in settings["units"]:
                diff = [
                    _area(
                        j["runs"][f"{unit}/oracle"]["model_spent"],
                        j["runs"][f"{unit}/oracle"]["model_miou"],
                        0.1,
                    )
                    - _area(
                        j["runs"][f"{unit}/random"]["model_spent"],
                        j["runs"][f"{unit}/random"]["model_miou"],
                        0.1,
                    )
                    for j in js
                ]
                m, sd = _ms(diff)
                verdict = "within the seed noise" if abs(m) < 2 * sd else "small but consistent"
                dens.append(f"{unit} {_pm((m, sd))} ({verdict})")
            lines.append("")
            lines.append(
                f"Model-mIoU AUBC, oracle − random, paired per seed: {'; '.join(dens)}. Where it is within the "
                "noise, the model-mIoU columns and their nAUBC do not separate the strategies at this budget."
            )
        lines.append("")
        lines.append(f"![{noise} noise: curves, mean ± std over seeds](bench/{plots[noise]})")
        lines.append("")
    lines.append(
        "nAUBC = (S − random) / (oracle − random) of the mean height of the curve over 0–10 % (0 = random, "
        "1 = oracle): for error recall per seed, then mean ± std; for model mIoU, whose oracle − random difference "
        "is within the seed noise, of the seed means (per-seed values are in the JSON). Label-error recall = share "
        "of the cheap labels' wrong pixels that are right now. *Gap closed* is also of the seed means (per seed, "
        "the clean − cheap difference can be ~0). Bold: the default."
    )
    lines.append("")
    if "aubc" in plots:
        lines.append(
            f"![normalised AUBC of error recall; model-mIoU AUBC gain over random](bench/{plots['aubc']})"
        )
        lines.append("")
    # targets
    if default is not None:
        lines.append(
            f"**Default: `{default}`** (best mean nAUBC of error recall over both noise models and both units among "
            f"{', '.join(s for s in settings['strategies'] if s in CANDIDATES)}). Mean nAUBC of error recall over "
            f"the {len(summary) * len(settings['units'])} (noise, unit) cells: {overall_line(summary, settings)}. "
            "Targets, superpixel regions:"
        )
        lines.append("")
        lines.append("| target | crowd | model | met? |")
        lines.append("| --- | --- | --- | --- |")
        unit = "superpixel" if "superpixel" in settings["units"] else settings["units"][0]
        tgt = targets(summary, default, unit)
        for t in tgt:
            lines.append(f"| {t['name']} | {t['crowd']} | {t['model']} | {t['met']} |")
        lines.append("")
    # speed
    lines.append(
        "**Speed.** One selection step (score, pooling, class weights, greedy selection; no inference), median of 3:"
    )
    lines.append("")
    lines.append(
        "| scene | ours: disagreement | ours: entropy | ours: self_confidence | cleanlab get_label_quality_scores | cleanlab find_label_issues | ratio (cleanlab quality / ours) |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    st = [j["setup"]["step_seconds"] for j in jobs]
    px = st[0]["pixels"]

    def med(k):
        return float(np.median([s[k] for s in st]))

    lines.append(
        f"| bench scene ({px:,} px, {st[0]['unit']}) | {med('disagreement'):.3f} s | {med('entropy'):.3f} s | "
        f"{med('self_confidence'):.3f} s | {med('cleanlab_get_label_quality_scores'):.3f} s | "
        f"{med('cleanlab_find_label_issues'):.3f} s | {med('cleanlab_get_label_quality_scores') / med('disagreement'):.2f}x |"
    )
    unit0 = settings["units"][0]
    loop_t = []
    for s_ in settings["strategies"]:
        vals = [summary[n][unit0][s_]["score_select_s_per_round"][0] for n in summary]
        loop_t.append(f"{s_} {np.mean(vals):.3f} s")
    loop_line = (
        f"Inside the loop ({unit0} regions, mean over jobs and rounds), score + selection per round, reading "
        f"the round's probability GeoTIFF included: {', '.join(loop_t)}."
    )
    if speed and "error" not in speed:
        sp = speed["step"]
        size = speed["size"]

        def tot(name):
            return f"{sp[name]['total']:.2f} s" if name in sp else "n/a"

        ref_name = "disagreement" if "disagreement" in sp else next(iter(sp))
        lines.append(
            f"| {size}² sample, 6 classes ({speed['regions']:,} SLIC regions) | {tot('disagreement')} | {tot('entropy')} | "
            f"{tot('self_confidence')} | {speed['cleanlab_get_label_quality_scores_s']:.2f} s | not timed | "
            f"{speed['cleanlab_get_label_quality_scores_s'] / sp[ref_name]['total']:.2f}x |"
        )
        lines.append("")
        lines.append(
            f"On the {size}² scene: regions built once in {speed['regions_slic_s']:.0f} s (SLIC, target ≤ 120 s: "
            f"{'met' if speed['regions_slic_s'] <= 120 else 'missed'}; the grid in {speed['regions_grid_s']:.1f} s); one "
            f"selection step with `{ref_name}` in {sp[ref_name]['total']:.2f} s (score {sp[ref_name]['score']:.2f}, pooling "
            f"{sp[ref_name]['aggregate']:.2f}, weights + selection {sp[ref_name]['select']:.2f}; target ≤ 10 s: "
            f"{'met' if sp[ref_name]['total'] <= 10 else 'missed'}); peak RSS {speed['peak_rss_gib']:.1f} GiB. "
            f"CPU seconds (one core; what an idle machine would take): SLIC {speed['regions_slic_cpu_s']:.0f} s, the "
            f"step {sp[ref_name]['cpu']:.1f} s, cleanlab's get_label_quality_scores "
            f"{speed.get('cleanlab_get_label_quality_scores_cpu_s', float('nan')):.1f} s. Wall times are on this "
            "shared 2-core machine. Scene, probabilities and labels as in `scripts/time_refine_select.py`."
        )
    elif speed:
        lines.append("")
        lines.append("The large-scene timing failed: see the JSON.")
    lines.append("")
    lines.append(loop_line)
    lines.append("")
    lines.append(
        "Also in `docs/bench/refine.json`: per-run curves, per-round step times, and a one-shot look (a single 10 % "
        "selection from the round-1 model, no retraining) at each score × pooling (mean, max, top-quantile, softmax) "
        "and at `ratio` vs `value`."
    )
    return "\n".join(lines)


def code_hashes(jobs: list[dict[str, Any]]) -> set[str]:
    """Code snapshots behind the numbers (jobs' setups and every run)."""
    out = set()
    for j in jobs:
        out.add(str(j["setup"].get("code_hash")))
        out.update(str(r.get("code_hash")) for r in j["runs"].values())
    return out


def _mean_area(jobs: list[dict[str, Any]], unit: str) -> str:
    vals = [j["setup"]["regions"][unit]["mean_area"] for j in jobs if unit in j["setup"]["regions"]]
    return f"{np.mean(vals):.0f}" if vals else "n/a"


def overall_line(summary: dict[str, Any], settings: dict[str, Any]) -> str:
    """Mean nAUBC of error recall over every (noise, unit) cell, best first."""
    vals = []
    for s in settings["strategies"]:
        if s in ("random", "oracle"):
            continue
        v = [
            summary[n][u][s].get("naubc_recall", (np.nan, 0))[0]
            for n in summary
            for u in settings["units"]
        ]
        vals.append((float(np.nanmean(v)), s))
    return ", ".join(f"{s} {v:.3f}" for v, s in sorted(vals, reverse=True))


def targets(summary: dict[str, Any], default: str, unit: str) -> list[dict[str, str]]:
    out = []
    noises = [n for n in ("crowd", "model") if n in summary]

    def fmt(d, key):
        return d.get(key, "n/a")

    # 1. beats random and cleanlab on nAUBC
    for kind, label in (("recall", "error recall"), ("model", "model mIoU")):
        res, ok_all = {}, True
        for n in noises:
            rows = summary[n][unit]
            key = "naubc_recall" if kind == "recall" else "naubc_model_of_means"
            d = np.asarray(rows[default].get(key, np.nan)).reshape(-1)[0]
            c = np.asarray(rows.get("cleanlab", {}).get(key, np.nan)).reshape(-1)[0]
            ok = d > 0 and d > c
            ok_all &= ok
            res[n] = f"{d:.3f} vs random 0, cleanlab {c:.3f}"
        out.append({"name": f"beats random and cleanlab, nAUBC {label}", "crowd": fmt(res, "crowd"), "model": fmt(res, "model"),
                    "met": "yes" if ok_all else "no"})  # fmt: skip
    # 2. share of the oracle's fixes at 10 %
    res, ok_all = {}, True
    for n, need in (("crowd", 0.7), ("model", 0.5)):
        if n not in summary:
            continue
        v = summary[n][unit][default].get("of_oracle_10", (np.nan, 0))
        ok_all &= v[0] >= need
        res[n] = f"{_pm(v, pct=True)} (need ≥ {100 * need:.0f} %)"
    out.append({"name": "fixes at 10 % vs the oracle", "crowd": fmt(res, "crowd"), "model": fmt(res, "model"),
                "met": "yes" if ok_all else "no"})  # fmt: skip
    # 3. gap closed
    res, ok_all = {}, True
    for n in noises:
        row = summary[n][unit][default]
        v = row.get("gap_closed_10_of_means", np.nan)
        ref = summary[n]["reference"]
        ok_all &= v >= 0.5
        res[n] = (
            f"{v:.2f} of means, {_pm(row['gap_closed_10'], 2)} per seed (need ≥ 0.50; clean − cheap = "
            f"{ref['clean_miou'][0] - ref['cheap_miou'][0]:.3f} mIoU)"
        )
    out.append({"name": "model mIoU gap closed at 10 %", "crowd": fmt(res, "crowd"), "model": fmt(res, "model"),
                "met": "yes" if ok_all else "no"})  # fmt: skip
    return out


# --- main ---------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 seed, 4 strategies, 512² scene, short training",
    )
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--strategies", nargs="+", choices=ALL_STRATEGIES)
    ap.add_argument("--noises", nargs="+", choices=NOISES, default=list(NOISES))
    ap.add_argument("--units", nargs="+", choices=tuple(UNITS), default=list(UNITS))
    ap.add_argument("--size", type=int, help="bench scene edge (default 768; quick 512)")
    ap.add_argument("--heldout-size", type=int, default=512)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, help="round-1 training steps (default 300; quick 60)")
    ap.add_argument(
        "--finetune-steps", type=int, help="steps of later rounds (default 24; quick 8)"
    )
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (train.lr)")
    ap.add_argument(
        "--relabel", default="pixel", choices=("pixel", "dominant"), help="review.relabel"
    )
    ap.add_argument("--mc-samples", type=int, default=8)
    ap.add_argument("--aggregate", default="mean")
    ap.add_argument("--objective", default="value", choices=("value", "ratio"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--speed-size",
        type=int,
        help="edge of the speed scene (default 8192; quick 2048; 0 = skip)",
    )
    ap.add_argument(
        "--work", type=Path, help="cache folder (default /tmp/trustmap-bench-refine[-quick])"
    )
    ap.add_argument(
        "--fresh", action="store_true", help="discard cached results of these settings first"
    )
    ap.add_argument(
        "--no-doc", action="store_true", help="do not write docs/ (JSON, plots, benchmarks.md)"
    )
    args = ap.parse_args()
    q = args.quick
    args.seeds = args.seeds or ([0] if q else [0, 1, 2])
    args.strategies = args.strategies or list(QUICK_STRATEGIES if q else ALL_STRATEGIES)
    args.size = args.size or (512 if q else 768)
    args.steps = args.steps or (60 if q else 300)
    args.finetune_steps = (
        args.finetune_steps if args.finetune_steps is not None else (8 if q else 24)
    )
    args.speed_size = args.speed_size if args.speed_size is not None else (2048 if q else 8192)
    for n, pct in ((args.steps, 0.15), (args.finetune_steps, 0.05)):
        if n and abs(pct * n - 1.0) < 1e-9:  # refine.model's OneCycleLR divides by zero there
            ap.error(f"{n} steps make OneCycleLR (pct_start {pct}) divide by zero; use {n + 1}")
    settings = bench_settings(args)
    # Seeds, noises, units and strategies only pick which jobs and runs to do (each is cached
    # under its own name), so adding one reuses everything already computed.
    fixed = {
        k: v for k, v in settings.items() if k not in ("seeds", "noises", "units", "strategies")
    }
    digest = hashlib.sha1(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:10]
    work = (
        args.work or Path("/tmp") / ("trustmap-bench-refine" + ("-quick" if q else ""))
    ) / digest
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"bench_refine: work folder {work}", flush=True)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    code_dir, code_hash = snapshot_code(work)
    use_code(str(code_dir))
    print(f"bench_refine: code snapshot {code_hash}", flush=True)

    payloads: list[tuple[str, dict[str, Any]]] = []
    if args.speed_size:
        payloads.append(("speed", {"work": str(work), "size": args.speed_size, "aggregate": args.aggregate,
                                   "code": str(code_dir), "code_hash": code_hash,
                                   "objective": args.objective,
                                   "scores": ["disagreement", "entropy", "margin", "self_confidence"]}))  # fmt: skip
    for seed in args.seeds:
        for noise in args.noises:
            payloads.append(("job", {"settings": settings, "noise": noise, "seed": seed, "work": str(work),
                                     "code": str(code_dir), "code_hash": code_hash,
                                     "name": f"{noise}_s{seed}"}))  # fmt: skip
    # the speed job first (it is long and memory-heavy), then the quality jobs
    t0 = time.perf_counter()
    jobs, speed = [], None
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(max(1, args.workers), maxtasksperchild=1) as pool:
        handles = [
            pool.apply_async(speed_job if kind == "speed" else run_job, (p,))
            for kind, p in payloads
        ]
        for (kind, _), h in zip(payloads, handles, strict=True):
            res = h.get()
            if "error" in res:
                print(f"{res['job']} failed:\n{res['error']}", flush=True)
                if kind == "job":
                    raise SystemExit(1)
            if kind == "speed":
                speed = res
                print(f"speed: {json.dumps(res)[:400]}", flush=True)
            else:
                jobs.append(res)
    wall = time.perf_counter() - t0
    # The bench's wall time is the sum over the sessions that computed something (a resumed
    # run adds its own); a session that only re-renders cached results keeps the stored sum.
    wall_file = work / "wall.json"
    stored = json.loads(wall_file.read_text()) if wall_file.exists() else None
    if stored is None and not q and (BENCH_DIR / "refine.json").exists():
        old = json.loads((BENCH_DIR / "refine.json").read_text())
        if old.get("settings") == settings:  # written by an earlier session of these settings
            stored = {"wall_s": float(old["wall_s"])}
    computed = any(j.get("computed", True) for j in jobs) or (speed or {}).get("computed", False)
    if computed or stored is None:
        wall += stored["wall_s"] if stored and computed else 0.0
        write_json_plain(wall_file, {"wall_s": wall})
    else:
        wall = float(stored["wall_s"])
    summary = summarise(jobs, settings)
    default = choose_default(summary, settings)
    print(f"done in {wall / 60:.1f} min; default strategy: {default}", flush=True)
    for noise in summary:
        for unit in settings["units"]:
            for s in settings["strategies"]:
                r = summary[noise][unit][s]
                print(f"{noise:5s} {unit:10s} {s:16s} recall@10 {_pm(r['recall_10'], pct=True):>16s}  "
                      f"nAUBC {_pm(r.get('naubc_recall', (np.nan, 0)), 2):>12s}  model {_pm(r['model_miou_10']):>14s}  "
                      f"nAUBC-m {_pm(r.get('naubc_model', (np.nan, 0)), 2):>12s}")  # fmt: skip
    if args.no_doc:
        return
    out_dir = work if q else BENCH_DIR  # a smoke run never overwrites the documented numbers
    plots = {}
    for noise in summary:
        name = f"refine_{noise}.png"
        plot_curves(summary, settings, noise, out_dir / name)
        plots[noise] = name
    if "random" in settings["strategies"] and "oracle" in settings["strategies"]:
        name = "refine_aubc.png"
        plot_aubc(summary, settings, out_dir / name)
        plots["aubc"] = name
    write_json(
        out_dir / "refine.json",
        {
            "settings": settings,
            "wall_s": wall,
            "default": default,
            "summary": summary,
            "speed": speed,
            "targets": targets(
                summary,
                default,
                "superpixel" if "superpixel" in settings["units"] else settings["units"][0],
            )
            if default
            else None,
            "jobs": jobs,
        },  # fmt: skip
    )
    if not q:
        update_section("refine", markdown(summary, settings, jobs, speed, default, wall, plots, q))
    print(f"wrote {out_dir / 'refine.json'} and the plots", flush=True)


if __name__ == "__main__":
    main()
