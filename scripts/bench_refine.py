"""Benchmark label refinement on real aerial scenes with realistic cheap labels.

Every run is the real loop (``refine.simulation.run_simulation``) with trustmap's *default*
settings, except the budget (10 % of the area, over ``--rounds`` rounds) and what the
flags below change. Crossed:

* scenes: real RGB aerial scenes of Dubai with hand-drawn truth (``--data``, the
  ``dubai/`` folder; ``--scenes``); ``--heldout`` scenes are never trained on: the models'
  mIoU is measured there;
* cheap labels, two realistic noise models:
  ``edits`` (``refine.cheap.edits.simulate_edits``: class boundaries shifted by 1-3 px,
  small objects erased, whole segments swapped to the class around them, up to 20 % wrong)
  and ``model`` (the prediction of a model trained on the truth of another scene,
  ``--source-scene``, with the default network and training);
* seeds (model init, crops, tie-breaks, edit noise);
* strategies: ``net_gain`` (the look-ahead), ``self_confidence`` (the default it chose),
  ``random``, ``cleanlab`` (the peer:
  ``cleanlab.segmentation.filter.find_label_issues`` + ``rank.get_label_quality_scores`` on
  the same probabilities, pooled over the same regions) and ``oracle`` (regions ranked by
  their *true* net gain per pixel under the same relabel mode: wrong pixels the dominant
  answer fixes minus right pixels it breaks). Every strategy gets the same
  auto-correction of unreviewed pixels, calibrated on its own expert answers.

The round-1 model (trained on the cheap labels) is the same for every strategy of a job
(same labels, seeds and settings), so it is trained once and passed to every run
(``initial_model``). Reported per (noise, strategy), mean +- std over jobs: label error
before and after (relative to the cheap error), the expert's net fixes (fixed - broken by
review alone) against the oracle's, auto-correction precision and pixels, nAUBC of the
label-error reduction, and the held-out mIoU of the round-1 model (cheap labels), of a
control fine-tuned on the cheap labels for as many steps as the refined model, and of the
model trained on the refined labels.

    python scripts/bench_refine.py --data ../shared/data/dubai            # full
    python scripts/bench_refine.py --data ../shared/data/dubai --quick    # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import update_section, write_json  # noqa: E402

BENCH_DIR = ROOT / "docs" / "bench"
STRATEGIES = ("net_gain", "random", "cleanlab", "oracle", "self_confidence")
SCENES = ("t1_006", "t2_007", "t3_002", "t6_001")
HELDOUT = ("t3_008", "t1_001")
SOURCE_SCENE = "t5_004"
NOISES = ("edits", "model")
CLEANLAB_TIEBREAK = 1e-4
_TRUTH: dict[str, np.ndarray] = {}


# --- peers -----------------------------------------------------------------------------------------
def cleanlab_pixel_score(probs: np.ndarray, label_index: np.ndarray) -> np.ndarray:
    """cleanlab's pixel ranking as a score (higher = more likely wrong), NaN where unusable.

    cleanlab has no ignore index, so only labelled pixels with finite probabilities are given
    to it, as one (1, 1, M) image (its segmentation functions are pixel-wise at
    downsample=1). Score: the issue flag of ``find_label_issues`` plus a small multiple of
    (1 - quality) from ``get_label_quality_scores``.
    """
    from cleanlab.segmentation.filter import find_label_issues
    from cleanlab.segmentation.rank import get_label_quality_scores

    c = probs.shape[0]
    ok = (label_index >= 0) & np.isfinite(probs).all(axis=0)
    idx = np.flatnonzero(ok.ravel())
    labels = label_index.reshape(-1)[idx].astype(np.int64)[None, None, :]
    pp = np.ascontiguousarray(probs.reshape(c, -1)[:, idx])[None, :, None, :]
    issues = find_label_issues(labels, pp, verbose=False, n_jobs=1)
    _, quality = get_label_quality_scores(labels, pp, method="softmin", verbose=False, n_jobs=1)
    score = np.full(label_index.shape, np.nan, np.float32)
    score.reshape(-1)[idx] = issues.reshape(-1) + CLEANLAB_TIEBREAK * (1.0 - quality.reshape(-1))
    return score


def _cleanlab_rank(ctx) -> np.ndarray:
    return ctx.aggregate(cleanlab_pixel_score(ctx.probs(), ctx.label_index))


def _oracle_rank(ctx) -> np.ndarray:
    """True net gain per unit cost of reviewing each region, under the configured relabel."""
    truth = _TRUTH["truth"]
    lut = ctx.schema.code_to_index()
    t = lut[truth].astype(np.int64)
    y = ctx.label_index.astype(np.int64)
    rid = ctx.regions.labels
    n, c = ctx.regions.n, ctx.schema.num_classes
    on = (rid >= 0) & (t >= 0)
    r = rid[on]
    right = np.bincount(r, weights=(y[on] == t[on]), minlength=n)
    if ctx.config.review.relabel == "pixel":
        after = np.bincount(r, minlength=n).astype(np.float64)
    else:
        hist = np.bincount(r * c + t[on], minlength=n * c).reshape(n, c)
        after = hist.max(axis=1).astype(np.float64)
    return (after - right) / ctx.regions.cost


def register_peers(truth: np.ndarray) -> None:
    from refine.strategies import register_strategy

    register_strategy("cleanlab", _cleanlab_rank, description="cleanlab, pooled", replace=True)
    register_strategy(
        "oracle", _oracle_rank, description="true net gain per cost (upper bound)", replace=True
    )
    _TRUTH["truth"] = truth


# --- inputs --------------------------------------------------------------------------------------
def read(path: Path) -> tuple[np.ndarray, dict]:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile


def write_cheap(path: Path, codes: np.ndarray, profile: dict, schema) -> Path:
    from refine.inputs import label_profile, write_labels

    if not path.exists():
        write_labels(path, codes, label_profile(dict(profile), schema), schema, "cheap labels (bench)")
    return path


def model_noise(args, schema, work: Path) -> dict[str, Path]:
    """Cheap labels = argmax of a default model trained on another scene's truth."""
    from refine.config import RefineConfig
    from refine.model import SegmentationModel
    from tiles.raster import SceneImage

    out = {}
    ckpt = work / f"source_model_{args.source_scene}.pt"
    cfg = RefineConfig()
    model = None
    for name in (*args.scenes,):
        path = work / f"cheap_model_{name}.tif"
        out[name] = path
        if path.exists():
            continue
        if model is None:
            if ckpt.exists():
                model = SegmentationModel.load(ckpt, schema)
            else:
                src = SceneImage(args.data / f"{args.source_scene}_scene.tif")
                truth, _ = read(args.data / f"{args.source_scene}_truth.tif")
                model = SegmentationModel.create(cfg.model, schema, src, seed=1000)
                model.fit(src, truth, cfg.train, model.first_round_steps(truth, cfg.train), desc="source model")
                model.save(ckpt)
        probs = model.predict_proba(args.data / f"{name}_scene.tif")
        pred = np.asarray(schema.codes, np.uint8)[np.argmax(np.nan_to_num(probs, nan=-1), axis=0)]
        truth, profile = read(args.data / f"{name}_truth.tif")
        pred[truth == schema.ignore] = schema.ignore
        write_cheap(path, pred, profile, schema)
    return out


# --- one job ----------------------------------------------------------------------------------------
def heldout_miou(model_path: Path, args, schema) -> dict[str, float]:
    from refine.metrics import score_raster
    from refine.model import SegmentationModel

    model = SegmentationModel.load(model_path, schema, threads=1)
    out = {}
    for name in args.heldout:
        probs = model.predict_proba(args.data / f"{name}_scene.tif")
        tmp = model_path.parent / f".heldout_{name}.npy"
        truth, _ = read(args.data / f"{name}_truth.tif")
        pred = np.asarray(schema.codes, np.uint8)[np.argmax(np.nan_to_num(probs, nan=-1), axis=0)]
        from refine.metrics import score_labels

        out[name] = score_labels(pred, truth, schema).miou
        tmp.unlink(missing_ok=True)
    del score_raster
    out["mean"] = float(np.mean([out[n] for n in args.heldout]))
    return out


def run_job(payload: dict[str, Any]) -> dict[str, Any]:
    done = Path(payload["work"]) / f"{payload['scene']}_{payload['noise']}_s{payload['seed']}" / "result.json"
    if payload.get("summarise_only"):
        return json.loads(done.read_text()) if done.exists() else {"skipped": True, **payload}
    try:
        return _run_job(payload)
    except Exception:
        return {"error": traceback.format_exc(), **{k: payload[k] for k in ("scene", "noise", "seed")}}


def _run_job(payload: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(payload["threads"])
    from refine.cheap.common import noise_rate
    from refine.cheap.edits import EditNoise, simulate_edits
    from refine.config import RefineConfig
    from refine.inputs import SimulationInputs
    from refine.model import SegmentationModel
    from refine.simulation import run_simulation
    from tiles.classes import load_schema
    from tiles.raster import SceneImage

    data, work = Path(payload["data"]), Path(payload["work"])
    scene, noise, seed = payload["scene"], payload["noise"], payload["seed"]
    job = work / f"{scene}_{noise}_s{seed}"
    done = job / "result.json"
    cached = json.loads(done.read_text()) if done.exists() else None
    if cached is not None and all(k in cached["runs"] for k in payload["strategies"]):
        return cached
    job.mkdir(parents=True, exist_ok=True)
    schema = load_schema(data / "classes.yaml")
    truth, profile = read(data / f"{scene}_truth.tif")
    if noise == "edits":
        cheap_path = write_cheap(job / "cheap.tif", simulate_edits(truth, schema, EditNoise(noise=0.2, seed=seed)),
                                 profile, schema)  # fmt: skip
    else:
        cheap_path = Path(payload["model_cheap"])
    cheap, _ = read(cheap_path)
    register_peers(truth)
    cfg = RefineConfig(classes=data / "classes.yaml", seed=seed).with_overrides(
        select={"budget": 0.10, "rounds": payload["rounds"]}, **payload.get("overrides", {})
    )
    inputs = SimulationInputs(
        scene=data / f"{scene}_scene.tif", labels=(cheap_path,), truth=data / f"{scene}_truth.tif",
        heldout_scene=None, heldout_truth=None, classes=data / "classes.yaml",
    )  # fmt: skip
    # the shared round-1 model: trained once on the cheap labels with the defaults
    ckpt = job / "round1_model.pt"
    sc = SceneImage(inputs.scene)
    t0 = time.perf_counter()
    if not ckpt.exists():
        m = SegmentationModel.create(cfg.model, schema, sc, seed=cfg.seed, threads=payload["threads"])
        m.fit(sc, cheap, cfg.train, m.first_round_steps(cheap, cfg.train), seed=cfg.seed + 1, desc="train r1")
        m.save(ckpt)
    t_round1 = time.perf_counter() - t0
    result: dict[str, Any] = {
        "scene": scene, "noise": noise, "seed": seed, "cheap_error": noise_rate(cheap, truth, schema.ignore),
        "round1_seconds": t_round1, "runs": {},
    }  # fmt: skip
    with_model = set(payload["heldout_strategies"])
    if cached is not None:  # a strategy added later: run only what is missing
        result = {**cached, "runs": dict(cached["runs"])}
    for strategy in payload["strategies"]:
        if strategy in result["runs"]:
            continue
        out = job / strategy
        t0 = time.perf_counter()
        c = cfg.with_overrides(strategy={"score": strategy}, final_train=strategy in with_model)
        # a held-out pair makes the loop train the final model; the bench scores it on every
        # held-out scene itself
        held = (data / f"{payload['heldout'][0]}_scene.tif", data / f"{payload['heldout'][0]}_truth.tif")
        inp = SimulationInputs(inputs.scene, inputs.labels, inputs.truth,
                               *(held if strategy in with_model else (None, None)), inputs.classes)  # fmt: skip
        res = run_simulation(c, out, inp, resume=out.exists(), export=False, report=False,
                             initial_model=ckpt, evaluate_model=strategy in with_model)  # fmt: skip
        run: dict[str, Any] = {"seconds": time.perf_counter() - t0, "rounds": []}
        for rec in [res.setup, *res.rounds]:
            auto = rec.get("autocorrect") or {}
            run["rounds"].append({
                "spent": rec["budget"]["spent_fraction"],
                "error_rate": rec["labels"]["errors"]["error_rate"],
                "fixed": rec["labels"]["errors"]["fixed"],
                "introduced": rec["labels"]["errors"]["introduced"],
                "curated": auto.get("curated_labels"),
                "auto": {k: auto.get(k) for k in ("threshold", "pixels", "estimated_precision", "support")}
                | {"truth": auto.get("truth")},
                "model_on_reviewed": rec.get("model_on_reviewed"),
            })  # fmt: skip
        if strategy in with_model and (out / "state" / "final" / "model.pt").exists():
            run["heldout_refined"] = heldout_miou(out / "state" / "final" / "model.pt", args_like(payload), schema)
        result["runs"][strategy] = run
    # held-out: round-1 model (cheap labels) and a control fine-tuned on the cheap labels as
    # long as the refined model was (rounds - 1 fine-tunes plus the final one)
    if "heldout_round1" in result:
        done.write_text(json.dumps(result, default=float))
        return result
    result["heldout_round1"] = heldout_miou(ckpt, args_like(payload), schema)
    ctrl = job / "control_model.pt"
    if not ctrl.exists():
        m = SegmentationModel.load(ckpt, schema, threads=payload["threads"])
        for k in range(payload["rounds"]):
            m.fit(sc, cheap, cfg.train, cfg.train.finetune_steps, seed=cfg.seed + 2 + k, desc="control")
        m.save(ctrl)
    result["heldout_control"] = heldout_miou(ctrl, args_like(payload), schema)
    done.write_text(json.dumps(result, default=float))
    return result


def round1_accuracy(job: dict[str, Any], args, schema) -> dict[str, float]:
    """Pixel accuracy of the job's round-1 model on its own scene and on the held-out scenes,
    next to the cheap labels' accuracy on its own scene (the model must beat its labels)."""
    from refine.metrics import score_labels
    from refine.model import SegmentationModel

    d = args.work / f"{job['scene']}_{job['noise']}_s{job['seed']}"
    model = SegmentationModel.load(d / "round1_model.pt", schema, threads=2)
    out: dict[str, float] = {"cheap_own": 1.0 - job["cheap_error"]}
    for name, key in [(job["scene"], "model_own"), *[(h, f"model_{h}") for h in args.heldout]]:
        probs = model.predict_proba(args.data / f"{name}_scene.tif")
        pred = np.asarray(schema.codes, np.uint8)[np.argmax(np.nan_to_num(probs, nan=-1), axis=0)]
        truth, _ = read(args.data / f"{name}_truth.tif")
        out[key] = score_labels(pred, truth, schema).accuracy
    out["model_heldout"] = float(np.mean([out[f"model_{h}"] for h in args.heldout]))
    return out


class args_like:  # noqa: N801 - a tiny namespace for heldout_miou inside workers
    def __init__(self, payload: dict[str, Any]):
        self.data = Path(payload["data"])
        self.heldout = payload["heldout"]


# --- summary ---------------------------------------------------------------------------------------
def _ms(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    return (float(v.mean()), float(v.std())) if v.size else (float("nan"), float("nan"))


def _pm(v: tuple[float, float], digits: int = 3, pct: bool = False) -> str:
    m, s = v
    if not np.isfinite(m):
        return "n/a"
    return f"{100 * m:.1f} ± {100 * s:.1f} %" if pct else f"{m:.{digits}f} ± {s:.{digits}f}"


def _aubc(rounds: list[dict[str, Any]], e0: float) -> float:
    """Area under the relative error-reduction curve over the spent budget (trapezoids)."""
    x = np.asarray([r["spent"] for r in rounds])
    y = np.asarray([1.0 - r["error_rate"] / e0 for r in rounds])
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def summarise(jobs: list[dict[str, Any]], strategies: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for noise in sorted({j["noise"] for j in jobs}):
        js = [j for j in jobs if j["noise"] == noise and "runs" in j]
        row: dict[str, Any] = {"jobs": len(js), "cheap_error": _ms([j["cheap_error"] for j in js])}
        for s in strategies:
            rel, exp_net, auto_p, auto_px, aubc, nrm, thr = [], [], [], [], [], [], []
            for j in js:
                run = j["runs"].get(s)
                if run is None:
                    continue
                first, last = run["rounds"][0], run["rounds"][-1]
                e0 = first["error_rate"]
                rel.append(last["error_rate"] / e0)
                cur = last["curated"] or {"fixed": last["fixed"], "introduced": last["introduced"]}
                net = cur["fixed"] - cur["introduced"]
                o = j["runs"].get("oracle")
                if o is not None:
                    oc = o["rounds"][-1]["curated"] or o["rounds"][-1]
                    onet = oc["fixed"] - oc["introduced"]
                    exp_net.append(net / onet if onet > 0 else float("nan"))
                t = (last["auto"] or {}).get("truth") or {}
                auto_p.append(t.get("precision"))
                auto_px.append((last["auto"] or {}).get("pixels"))
                thr.append((last["auto"] or {}).get("threshold"))
                aubc.append(_aubc(run["rounds"], e0))
                r_ = j["runs"].get("random")
                if o is not None and r_ is not None:
                    a_o, a_r = _aubc(o["rounds"], e0), _aubc(r_["rounds"], e0)
                    nrm.append((aubc[-1] - a_r) / (a_o - a_r) if a_o != a_r else float("nan"))
            row[s] = {
                "relative_error": _ms(rel), "expert_net_vs_oracle": _ms(exp_net), "auto_precision": _ms(auto_p),
                "auto_pixels": _ms(auto_px), "aubc": _ms(aubc), "naubc": _ms(nrm), "threshold": _ms(thr),
                "auto_fired": int(sum(1 for t in thr if t is not None)), "jobs": len(rel),
                "final_error": _ms([j["runs"][s]["rounds"][-1]["error_rate"] for j in js if s in j["runs"]]),
            }  # fmt: skip
        row["heldout"] = {
            "round1_cheap": _ms([j["heldout_round1"]["mean"] for j in js]),
            "control_cheap": _ms([j["heldout_control"]["mean"] for j in js]),
            "refined": _ms([j["runs"][strategies[0]].get("heldout_refined", {}).get("mean") for j in js]),
            "refined_minus_control": _ms([
                j["runs"][strategies[0]].get("heldout_refined", {}).get("mean", np.nan) - j["heldout_control"]["mean"]
                for j in js
            ]),  # fmt: skip
        }
        acc = [j["round1_accuracy"] for j in js if "round1_accuracy" in j]
        row["accuracy"] = {k: _ms([a[k] for a in acc]) for k in ("cheap_own", "model_own", "model_heldout")}
        # round-1 model against the cheap labels on the scene itself (accuracy on reviewed px)
        row["model_on_reviewed_r1"] = _ms([
            (j["runs"][strategies[0]]["rounds"][1].get("model_on_reviewed") or {}).get("accuracy") for j in js
        ])  # fmt: skip
        out[noise] = row
    return out


def plot(jobs: list[dict[str, Any]], strategies: list[str], path: Path) -> Path:
    """Relative label error against the budget spent, mean ± std over jobs, one panel per noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noises = sorted({j["noise"] for j in jobs})
    fig, axes = plt.subplots(1, len(noises), figsize=(5.2 * len(noises), 4), squeeze=False)
    for ax, noise in zip(axes[0], noises, strict=True):
        for s in strategies:
            curves = [
                [(r["spent"], r["error_rate"] / j["runs"][s]["rounds"][0]["error_rate"]) for r in j["runs"][s]["rounds"]]
                for j in jobs if j["noise"] == noise and s in j.get("runs", {})
            ]  # fmt: skip
            if not curves:
                continue
            arr = np.asarray(curves)  # (jobs, rounds + 1, 2)
            x, y = 100 * arr[..., 0].mean(0), arr[..., 1]
            ax.plot(x, y.mean(0), marker="o", label=s)
            ax.fill_between(x, y.mean(0) - y.std(0), y.mean(0) + y.std(0), alpha=0.15)
        ax.set_title(f"{noise} noise ({len({(j['scene'], j['seed']) for j in jobs if j['noise'] == noise})} jobs)")
        ax.set_xlabel("area reviewed (% of the scene)")
        ax.set_ylabel("label error / cheap label error")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(summary: dict[str, Any], settings: dict[str, Any], strategies: list[str]) -> str:
    lines = [
        "## refine: real aerial scenes",
        "",
        f"Real RGB aerial scenes of Dubai (0.5 m, hand-drawn truth, 5 classes): {', '.join(settings['scenes'])}; "
        f"held out for the models' mIoU: {', '.join(settings['heldout'])}. {settings['seeds']} seeds per scene "
        f"and noise model; budget 10 % of the area over {settings['rounds']} rounds; every other setting is "
        "trustmap's default (pretrained EfficientNet-Lite0 U-Net, SLIC ~400 px at compactness 0.3, "
        "dominant relabelling, auto-correction at target precision 0.9). The default ranking, "
        "`self_confidence`, is the one this table chose (best label error and nAUBC on both noise models); "
        "the held-out model on refined labels below was trained on `net_gain`'s refined labels. "
        f"Run on {settings['where']}.",
        "",
        "Noise models: **edits** = boundaries shifted 1-3 px, small objects erased, segments swapped to "
        f"their surrounding class (20 % wrong); **model** = a default model trained on the truth of "
        f"{settings['source_scene']}, applied to each scene.",
        "",
        "| noise | strategy | label error after / before | expert net fixes / oracle's | auto-correction precision (jobs where a threshold was found) | auto-corrected px (mean over all jobs) | nAUBC |",
        "|---|---|---|---|---|---|---|",
    ]
    for noise, row in summary.items():
        for s in strategies:
            r = row[s]
            lines.append(
                f"| {noise} (cheap error {_pm(row['cheap_error'], pct=True)}) | `{s}` | {_pm(r['relative_error'])} | "
                f"{_pm(r['expert_net_vs_oracle'])} | {_pm(r['auto_precision'])} (in {r['auto_fired']} of {r['jobs']} jobs) | "
                f"{r['auto_pixels'][0]:.0f} | "
                f"{_pm(r['naubc'])} |"
            )
    lines += [
        "",
        "Held-out mIoU (mean over the held-out scenes; mean ± std over jobs):",
        "",
        "| noise | round-1 model (cheap labels) | control: cheap labels, same steps | model on refined labels (`"
        + strategies[0]
        + "`) | refined − control | round-1 model's accuracy on the reviewed pixels |",
        "|---|---|---|---|---|---|",
    ]
    for noise, row in summary.items():
        h = row["heldout"]
        lines.append(
            f"| {noise} | {_pm(h['round1_cheap'])} | {_pm(h['control_cheap'])} | {_pm(h['refined'])} | "
            f"{_pm(h['refined_minus_control'])} | {_pm(row['model_on_reviewed_r1'])} |"
        )
    lines += [
        "",
        "Pixel accuracy of the round-1 model (trained on the cheap labels) against the truth:",
        "",
        "| noise | cheap labels, own scene | round-1 model, own scene | round-1 model, held-out scenes |",
        "|---|---|---|---|",
    ]
    for noise, row in summary.items():
        a = row.get("accuracy", {})
        if a:
            lines.append(f"| {noise} | {_pm(a['cheap_own'], pct=True)} | {_pm(a['model_own'], pct=True)} | "
                         f"{_pm(a['model_heldout'], pct=True)} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the dubai/ folder of real scenes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/trustmap-bench-refine"))
    ap.add_argument("--scenes", nargs="+", default=list(SCENES))
    ap.add_argument("--heldout", nargs="+", default=list(HELDOUT))
    ap.add_argument("--source-scene", default=SOURCE_SCENE)
    ap.add_argument("--noises", nargs="+", default=list(NOISES), choices=NOISES)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--where", default="2 CPU cores")
    ap.add_argument("--quick", action="store_true", help="one scene, one seed, edits noise")
    ap.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument(
        "--summarise-only", action="store_true", help="only read the jobs already finished in --work"
    )
    args = ap.parse_args()
    if args.quick:
        args.scenes, args.seeds, args.noises = args.scenes[:1], 1, ["edits"]
    data = args.data.resolve()
    for name in (*args.scenes, *args.heldout, args.source_scene):
        for part in ("scene", "truth"):
            if not (data / f"{name}_{part}.tif").exists():
                sys.exit(f"{data / f'{name}_{part}.tif'}: not found (is --data the dubai/ folder?)")
    args.data = data
    args.work.mkdir(parents=True, exist_ok=True)
    from tiles.classes import load_schema

    schema = load_schema(data / "classes.yaml")
    t0 = time.perf_counter()
    cheap_model = model_noise(args, schema, args.work) if "model" in args.noises else {}
    threads = max(1, (os.cpu_count() or 2) // args.workers)
    payloads = [
        {"data": str(data), "work": str(args.work), "scene": s, "noise": n, "seed": k, "rounds": args.rounds,
         "strategies": args.strategies, "heldout": args.heldout, "threads": threads,
         "heldout_strategies": [args.strategies[0]], "model_cheap": str(cheap_model.get(s, "")),
         "summarise_only": args.summarise_only}
        for k in range(args.seeds) for n in args.noises for s in args.scenes
    ]  # fmt: skip  (seed-major: an interrupted bench has every scene and noise at fewer seeds)
    jobs = []
    # spawn, not fork: the parent has used torch (the source model), and forking a process
    # whose OpenMP pool is started leaves the children's torch ops crawling
    import multiprocessing as mp

    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        for res in pool.map(run_job, payloads):
            if res.get("skipped"):
                continue
            if "error" in res:
                print(f"job {res['scene']} {res['noise']} s{res['seed']} failed:\n{res['error']}", file=sys.stderr)
            else:
                print(f"job {res['scene']} {res['noise']} s{res['seed']} done", flush=True)
            jobs.append(res)
    ok = [j for j in jobs if "error" not in j]
    if args.summarise_only:
        ok = [j for j in ok if j.get("runs")]
    for j in ok:  # added after the first full run: computed from the cached round-1 models
        if "round1_accuracy" not in j:
            j["round1_accuracy"] = round1_accuracy(j, args, schema)
            path = args.work / f"{j['scene']}_{j['noise']}_s{j['seed']}" / "result.json"
            path.write_text(json.dumps(j, default=float))
    summary = summarise(ok, args.strategies)
    settings = {"scenes": args.scenes, "heldout": args.heldout, "seeds": args.seeds, "rounds": args.rounds,
                "source_scene": args.source_scene, "where": args.where, "minutes": (time.perf_counter() - t0) / 60}  # fmt: skip
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    write_json(BENCH_DIR / "refine.json", {"settings": settings, "summary": summary, "jobs": jobs})
    plot(ok, args.strategies, BENCH_DIR / "refine_real.png")
    md = markdown(summary, settings, args.strategies)
    md += "\n\n![relative label error against the budget, per noise model](bench/refine_real.png)"
    job_min = sum(j["round1_seconds"] + sum(r["seconds"] for r in j["runs"].values()) for j in ok) / 60
    md += (
        f"\n\n{len(ok)} of {len(jobs)} jobs; the jobs' own time adds up to {job_min:.0f} min "
        f"({args.workers} workers, one torch thread each)."
    )
    print(md)
    if not args.no_doc:
        update_section("refine", md)


if __name__ == "__main__":
    main()
