"""Speed and agreement of the calibration core against its peers, in one run.

A synthetic audit set (default 1M detections over 10k images: several objects per image,
detections jittered around them plus false positives, scores rising with IoU, a few
crowd regions, softmax probability vectors) is scored by

* our matching (greedy, COCO's 10 IoU thresholds) vs pycocotools ``COCOeval.evaluate()``
  doing the same work (same thresholds, one area range), and their TP flags compared;
* our D-ECE vs ``netcal.metrics.ECE(detection=True)`` on the same (X, matched);
* our LaECE (matching included) vs ``uq_detr.laece`` (matching included);
* the whole audit (``compute_metrics``: matching + every metric + bootstrap intervals,
  no figures) vs pycocotools' evaluate alone.

Writes docs/bench/calibration.json, docs/bench/calibration.png and the
``calibration`` section of docs/benchmarks.md.

    python scripts/bench_calibration.py            # 1M detections
    python scripts/bench_calibration.py --quick    # 50k detections
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchdoc  # noqa: E402

from calibration import metrics as M  # noqa: E402
from calibration.detections import AnnotationTable, Detections, GroundTruth, ImageTable  # noqa: E402
from calibration.matching import match, pairwise_iou  # noqa: E402

OUT = benchdoc.ROOT / "docs" / "bench"


def synthetic(
    n_images: int, per_image: int, seed: int = 0, k: int = 3
) -> tuple[Detections, GroundTruth]:
    """A detector's output on aerial-like tiles, with known ground truth.

    Objects: 1 + Poisson(8) per 800x600 image, lognormal sizes, imbalanced classes, 2 %
    crowd regions. Detections: 65 % are jittered copies of an object of their image
    (localisation noise varies per detection; 85 % keep the object's class), the rest
    random boxes. Scores follow the IoU with the source object through a noisy, tilted
    sigmoid, so the detector is over-confident on poor boxes and under-confident on
    good ones, as real detectors are. Softmax vectors over K classes + background
    put the score on the predicted class.
    """
    rng = np.random.default_rng(seed)
    W, H = 800.0, 600.0
    ngt = 1 + rng.poisson(8, n_images)
    m = int(ngt.sum())
    w = np.clip(rng.lognormal(3.4, 0.5, m), 6, 300)
    h = np.clip(w * rng.lognormal(0, 0.3, m), 6, 300)
    gb = np.column_stack([rng.uniform(0, W - w), rng.uniform(0, H - h), w, h])
    gimg = np.repeat(np.arange(n_images), ngt)
    gcat = rng.choice(
        np.arange(1, k + 1), m, p=np.r_[0.6, 0.3, 0.1][:k] / np.r_[0.6, 0.3, 0.1][:k].sum()
    )
    crowd = rng.random(m) < 0.02
    gt = GroundTruth(
        ImageTable(
            np.arange(1, n_images + 1),
            np.array([f"tile_{i:05d}.tif" for i in range(n_images)]),
            np.full(n_images, W),
            np.full(n_images, H),
        ),
        AnnotationTable(np.arange(1, m + 1), gimg + 1, gb, gcat, crowd, np.zeros(m, bool), w * h),
        {1: "tree", 2: "building", 3: "vehicle"}
        if k == 3
        else {c: f"class{c}" for c in range(1, k + 1)},
    )
    n = n_images * per_image
    img = np.repeat(np.arange(n_images), per_image)
    src = np.r_[0, np.cumsum(ngt)[:-1]][img] + rng.integers(0, 1 << 30, n) % ngt[img]
    near = rng.random(n) < 0.65
    sigma = rng.uniform(0.03, 0.35, n)[:, None]
    jit = rng.normal(0, 1, (n, 4)) * sigma
    bw, bh = gb[src, 2] * np.exp(jit[:, 2]), gb[src, 3] * np.exp(jit[:, 3])
    bx, by = gb[src, 0] + jit[:, 0] * gb[src, 2], gb[src, 1] + jit[:, 1] * gb[src, 3]
    rw = np.clip(rng.lognormal(3.4, 0.6, n), 4, 300)
    rh = np.clip(rw * rng.lognormal(0, 0.3, n), 4, 300)
    bx = np.where(near, bx, rng.uniform(0, W - rw))
    by = np.where(near, by, rng.uniform(0, H - rh))
    bw, bh = np.where(near, bw, rw), np.where(near, bh, rh)
    bx, by = np.clip(bx, 0, W - 2), np.clip(by, 0, H - 2)
    bw, bh = np.clip(bw, 1, W - bx), np.clip(bh, 1, H - by)
    box = np.column_stack([bx, by, bw, bh])
    cat = np.where(near & (rng.random(n) < 0.85), gcat[src], rng.integers(1, k + 1, n))
    iou = np.where(near, pairwise_iou(box, gb[src], np.zeros(n, bool)), 0.0)
    score = 1 / (1 + np.exp(-(4.0 * iou - 1.6 + rng.normal(0, 1.1, n))))
    # softmax vector: the score on the predicted class, background gets most of the rest
    share = rng.dirichlet(np.ones(k), n) * (1 - score)[:, None] * rng.uniform(0.1, 0.5, (n, 1))
    col = cat - 1
    share[np.arange(n), col] = 0
    probs = np.column_stack([share, np.zeros(n)])
    probs[np.arange(n), col] = score
    probs[:, k] = 1 - probs.sum(1)
    return Detections(img + 1, box, cat, score, probs=probs), gt


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, list[float], object]:
    """Median wall time over ``repeats`` calls, all times, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def cocoeval(dets: Detections, gt: GroundTruth, area_all_only: bool):
    """pycocotools on in-memory objects; returns (loadRes seconds, evaluate fn, COCOeval)."""
    from pycocotools.cocoeval import COCOeval

    coco = gt.to_coco()
    arr = np.column_stack([dets.image_id, dets.bbox, dets.score, dets.category_id])
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        res = coco.loadRes(arr)
    load_s = time.perf_counter() - t0
    ev = COCOeval(coco, res, "bbox")
    if area_all_only:
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]

    def run():
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
        return ev

    return load_s, run, ev


def coco_flags(ev, n: int) -> tuple[np.ndarray, np.ndarray]:
    t = len(ev.params.iouThrs)
    tp, ig = np.zeros((t, n), bool), np.zeros((t, n), bool)
    for e in ev.evalImgs:
        if e is None or not e["dtIds"]:
            continue
        ids = np.asarray(e["dtIds"]) - 1
        tp[:, ids] = (e["dtMatches"] > 0) & ~e["dtIgnore"].astype(bool)
        ig[:, ids] = e["dtIgnore"].astype(bool)
    return tp, ig


def uq_inputs(dets: Detections, gt: GroundTruth):
    import uq_detr

    an = gt.annotations
    d_order, g_order = (
        np.argsort(dets.image_id, kind="stable"),
        np.argsort(an.image_id, kind="stable"),
    )
    d_cut = np.searchsorted(dets.image_id[d_order], gt.images.id)
    g_cut = np.searchsorted(an.image_id[g_order], gt.images.id)
    D, G = [], []
    for i in range(len(gt.images)):
        ds = d_order[d_cut[i] : d_cut[i + 1] if i + 1 < len(d_cut) else None]
        gs = g_order[g_cut[i] : g_cut[i + 1] if i + 1 < len(g_cut) else None]
        D.append(
            uq_detr.Detections.from_xywh(dets.bbox[ds], dets.score[ds], labels=dets.category_id[ds])
        )
        G.append(uq_detr.GroundTruth.from_xywh(an.bbox[gs], an.category_id[gs]))
    return D, G


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="50k detections over 500 images")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    n_images, per_image = (500, 100) if args.quick else (10_000, 100)
    R = args.repeats
    t0 = time.perf_counter()
    dets, gt = synthetic(n_images, per_image)
    print(
        f"{len(dets):,} detections, {len(gt.annotations):,} annotations over {n_images:,} images "
        f"(made in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    res: dict = {
        "n_detections": len(dets),
        "n_images": n_images,
        "n_annotations": len(gt.annotations),
        "repeats": R,
    }
    thr = list(M.COCO_IOU_THRESHOLDS)

    # --- matching vs pycocotools evaluate (same thresholds, one area range) ---------------
    ours_s, ours_all, m = timed(lambda: match(dets, gt, thr, "greedy"), R)
    load_s, run, ev = cocoeval(dets, gt, area_all_only=True)
    coco_s, coco_all, _ = timed(run, 1)
    tp, ig = coco_flags(ev, len(dets))
    res["matching"] = {
        "ours_s": ours_s, "ours_all_s": ours_all, "pycocotools_evaluate_s": coco_s, "pycocotools_loadres_s": load_s,
        "speedup": coco_s / ours_s, "tp_disagreements": int((tp != m.tp).sum()), "ignored_disagreements": int((ig != m.ignored).sum()),
        "tp_rate_at_0.5": float(m.tp[0].mean()),
    }  # fmt: skip
    print("matching", res["matching"], flush=True)
    if args.quick:  # pycocotools' default evaluate also runs 3 area ranges more; too slow at 1M
        _, run4, _ = cocoeval(dets, gt, area_all_only=False)
        res["matching"]["pycocotools_evaluate_4_areas_s"] = timed(run4, 1)[0]

    # --- D-ECE vs netcal ----------------------------------------------------------------
    from netcal.metrics import ECE

    v = ~m.ignored[0]
    X = M.box_features(dets, gt)[v]
    y = m.tp[0, v].astype(np.float64)
    bins = [10, 5, 5, 5, 5]
    ours_d_s, ours_d_all, ours_d = timed(lambda: M.dece(X, y, bins), R)
    net_s, net_all, net_d = timed(lambda: ECE(bins, detection=True).measure(X, y), R)
    res["dece"] = {"bins": bins, "ours_s": ours_d_s, "netcal_s": net_s, "speedup": net_s / ours_d_s,
                   "ours": ours_d, "netcal": net_d, "abs_diff": abs(ours_d - net_d)}  # fmt: skip
    print("dece", res["dece"], flush=True)

    # --- LaECE vs uq-detr (matching included on both sides; uq-detr knows no crowds) -----
    import uq_detr

    an = gt.annotations
    keep = ~an.is_region
    gt_nr = dataclasses.replace(
        gt,
        annotations=AnnotationTable(*(getattr(an, f.name)[keep] for f in dataclasses.fields(an))),
    )
    D, G = uq_inputs(dets, gt_nr)
    res["laece"] = {}
    for crit, mode, tau in (("greedy", "greedy", 0.5), ("independent", "any", 0.0)):

        def ours_fn(mode=mode, tau=tau):
            mm = match(dets, gt_nr, tau, mode)
            return M.laece(dets.score, mm.iou[0], dets.category_id, 25, value_range=None)

        o_s, o_all, o_v = timed(ours_fn, R)
        u_s, u_all, u_v = timed(
            lambda crit=crit, tau=tau, D=D, G=G: (
                uq_detr.laece(D, G, tp_criterion=crit, iou_threshold=tau, n_bins=25).score
            ),
            1,
        )
        res["laece"][f"{crit}@{tau}"] = {
            "ours_s": o_s,
            "uq_detr_s": u_s,
            "speedup": u_s / o_s,
            "ours": o_v,
            "uq_detr": u_v,
            "abs_diff": abs(o_v - u_v),
        }
        print("laece", crit, tau, res["laece"][f"{crit}@{tau}"], flush=True)
    del D, G

    # --- the whole audit vs pycocotools evaluate alone --------------------------------------
    cfg = {"ap_backend": "trustmap", "n_boot": args.n_boot}
    audit_s, audit_all, out = timed(
        lambda: M.compute_metrics(dets, gt, cfg), R if args.quick else 1
    )
    nb_s, nb_all, _ = timed(
        lambda: M.compute_metrics(dets, gt, {**cfg, "n_boot": 0}), R if args.quick else 1
    )
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
        ev.summarize()
    res["audit"] = {
        "n_boot": args.n_boot, "ours_s": audit_s, "ours_without_bootstrap_s": nb_s,
        "speedup_vs_pycocotools_evaluate": coco_s / audit_s, "target": 5.0,
        "map_ours": out["metrics"]["map"]["value"], "map_pycocotools": float(ev.stats[0]),
        "ap50_ours": out["metrics"]["ap50"]["value"], "ap50_pycocotools": float(ev.stats[1]),
        "map_binned_ci_shift": out["metrics"]["map"].get("ci_shift"),
        "metrics": out["metrics"],
    }  # fmt: skip
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("audit", {k: v for k, v in res["audit"].items() if k != "metrics"}, flush=True)

    write(res, args)


def write(res: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mt, dc, la, au = res["matching"], res["dece"], res["laece"], res["audit"]
    rows = [
        (
            "matching, 10 IoU thr.",
            mt["ours_s"],
            mt["pycocotools_evaluate_s"],
            "pycocotools evaluate",
        ),
        ("D-ECE (5 dims)", dc["ours_s"], dc["netcal_s"], "netcal ECE"),
        (
            "LaECE greedy@0.5",
            la["greedy@0.5"]["ours_s"],
            la["greedy@0.5"]["uq_detr_s"],
            "uq-detr laece",
        ),
        (
            "LaECE any-overlap",
            la["independent@0.0"]["ours_s"],
            la["independent@0.0"]["uq_detr_s"],
            "uq-detr laece",
        ),
        ("whole audit", au["ours_s"], mt["pycocotools_evaluate_s"], "pycocotools evaluate"),
    ]
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    yy = np.arange(len(rows))
    ax.barh(yy + 0.2, [r[2] for r in rows], 0.4, label="peer", color="#bbbbbb")
    ax.barh(yy - 0.2, [r[1] for r in rows], 0.4, label="trustmap", color="#1f78b4")
    ax.set_yticks(yy, [r[0] for r in rows])
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log scale)")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    ax.set_title(f"{res['n_detections']:,} detections, {res['n_images']:,} images")
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "calibration.png", dpi=120)
    plt.close(fig)
    benchdoc.write_json(OUT / "calibration.json", res)

    lines = [
        f"Synthetic audit set: {res['n_detections']:,} detections over {res['n_images']:,} images "
        f"({res['n_annotations']:,} annotations, 2 % crowd regions, softmax vectors over 3 classes + background). "
        f"Wall-clock medians of {res['repeats']} runs for our side; the slow peers ran once. Peak RSS {res['peak_rss_gib']:.1f} GiB.",
        "",
        "| task | trustmap (s) | peer | peer (s) | speed-up | agreement |",
        "| --- | ---: | --- | ---: | ---: | --- |",
    ]
    agree = {
        0: f"TP flags differ on {mt['tp_disagreements']} of {res['n_detections'] * 10:,}; ignored flags on {mt['ignored_disagreements']}",
        1: f"|Δ| = {dc['abs_diff']:.1e} (D-ECE {dc['ours']:.4f})",
        2: f"|Δ| = {la['greedy@0.5']['abs_diff']:.1e} (LaECE {la['greedy@0.5']['ours']:.4f})",
        3: f"|Δ| = {la['independent@0.0']['abs_diff']:.1e} (LaECE {la['independent@0.0']['ours']:.4f})",
        4: f"mAP {au['map_ours']:.4f} vs {au['map_pycocotools']:.4f}, AP50 {au['ap50_ours']:.4f} vs {au['ap50_pycocotools']:.4f}",
    }
    for i, (name, o, p, peer) in enumerate(rows):
        lines.append(f"| {name} | {o:.2f} | {peer} | {p:.2f} | {p / o:.1f}x | {agree[i]} |")
    met = au["metrics"]
    lines += [
        "",
        f'The whole audit is `compute_metrics` with `ap_backend="trustmap"`: matching at COCO\'s 10 thresholds, '
        f"ECE/MCE/ACE, D-ECE, detection top-label and classwise CE, LaECE/LaACE, top-label and classwise CE, NLL, "
        f"Brier, AP50 and mAP, each with a {au['n_boot']}-replicate bootstrap interval over images "
        f"({au['ours_without_bootstrap_s']:.2f} s without the bootstrap). Target: >= {au['target']:.0f}x faster than "
        f"pycocotools' evaluate alone; measured {au['speedup_vs_pycocotools_evaluate']:.1f}x. pycocotools ran with one area "
        f"range (the same work as ours); its default four ranges cost about four times more"
        + (
            f" ({mt['pycocotools_evaluate_4_areas_s']:.1f} s here)."
            if "pycocotools_evaluate_4_areas_s" in mt
            else "."
        )
        + f" Its `loadRes` took another {mt['pycocotools_loadres_s']:.1f} s.",
        "",
        "| metric | value | 95 % interval |",
        "| --- | ---: | --- |",
    ]
    for name in ("ece", "mce", "ace", "dece", "detection_top_label_ce", "detection_classwise_ce", "laece", "laace",
                 "top_label_ce", "classwise_ce", "nll", "brier", "ap50", "map"):  # fmt: skip
        e = met[name]
        lines.append(f"| {name} | {e['value']:.4f} | [{e['ci_low']:.4f}, {e['ci_high']:.4f}] |")
    lines += ["", "![calibration timings](bench/calibration.png)"]
    if args.quick:
        lines.insert(0, "_Quick run (`--quick`), not the full-size benchmark._\n")
    benchdoc.update_section("calibration", "\n".join(lines))
    print(f"wrote {OUT / 'calibration.json'} and docs/benchmarks.md", flush=True)


if __name__ == "__main__":
    main()
