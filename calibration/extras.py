"""The audit's runs beyond the test split: corruptions, OOD images, and repairs.

:func:`run_extras` is called by :func:`calibration.audit.audit_model` with the detector, the
test split and its application-perspective detections. It returns the ``shift``, ``ood`` and
``repair`` sections of ``audit.json`` and writes the repairs (calibrator JSON files and the
fine-tuned checkpoint) into the output folder. Every number is a point estimate except the
repairs' in-domain metrics, which carry bootstrap intervals like the main tables.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from calibration.config import AuditConfig, DataSection
from calibration.detections import Detections, GroundTruth
from calibration.metrics import MetricsConfig, compute_metrics
from tiles.console import progress

if TYPE_CHECKING:
    from calibration.adapters.torchvision_models import (
        Candidates,
        ImageRecord,
        TorchvisionDetector,
    )

#: Metrics kept per (corruption, severity) cell and per repair.
SHIFT_KEYS = ("dece", "ece", "laece", "nll", "brier", "map", "ap50")
REPAIR_KEYS = ("dece", "ece", "ece_debiased", "laece", "nll", "brier", "map", "ap50")


class Shifted(TypedDict):
    """What :func:`run_shift` hands on to the repairs: the corrupted test images and their
    detections per (corruption, severity)."""

    dets: dict[tuple[str, int], Detections]
    gt: GroundTruth
    clean: Detections
    images: list[np.ndarray]
    ids: list[int]


def _values(
    dets: Detections, gt: GroundTruth, mcfg: MetricsConfig, keys: Sequence[str] = SHIFT_KEYS
) -> dict[str, Any]:
    r = compute_metrics(dets, gt, mcfg, validate=False)
    return {k: r["metrics"][k].get("value") for k in keys if k in r["metrics"]} | {
        "detections": len(dets)
    }


def _intervals(dets: Detections, gt: GroundTruth, mcfg: MetricsConfig) -> dict[str, Any]:
    r = compute_metrics(dets, gt, mcfg, validate=False)
    return {k: r["metrics"][k] for k in REPAIR_KEYS if k in r["metrics"]} | {
        "detections": len(dets)
    }


def _post(cands: Candidates, cfg: AuditConfig) -> Detections:
    p = cfg.postprocess
    return cands.postprocess(p.score_thresh, p.nms_iou, p.topk)


def _load_split(
    data: DataSection, folder: Path, default_split: str, allow_outside: bool = False
) -> tuple[GroundTruth, list[ImageRecord]]:
    """(ground truth, image records) of a data section; sample data is generated into ``folder``."""
    from calibration.adapters import images_from_coco

    if data.sample is not None:
        from calibration.samples import make_split

        s = data.sample
        ann = make_split(folder, s.split, s.n_images, size=s.size, seed=s.seed, domain=s.domain)
        return GroundTruth.from_coco_json(ann), images_from_coco(folder, ann)
    coco = data.coco
    assert coco is not None  # DataSection holds exactly one of sample and coco
    return GroundTruth.from_coco_json(coco.annotations), images_from_coco(
        coco.images, coco.annotations, allow_outside
    )


def run_shift(
    detector: TorchvisionDetector,
    records: Sequence[ImageRecord],
    gt: GroundTruth,
    app: Detections,
    cfg: AuditConfig,
) -> tuple[dict[str, Any], Shifted]:
    """Every configured corruption at every severity on the first ``n_images`` test images."""
    from calibration.shift import SHORT, check_corruptions, load_uint8, shifted_candidates

    sh, det_cfg = cfg.shift, cfg.detector
    assert sh is not None and det_cfg is not None  # run_extras runs it for a 'shift' section
    names = check_corruptions(sh.corruptions)
    recs = records[: sh.n_images] if sh.n_images else list(records)
    ids = [r.image_id for r in recs]
    sub = gt.subset_images(ids)
    mcfg = cfg.metrics_config().model_copy(update={"n_boot": 0})
    clean = app.subset(np.flatnonzero(np.isin(app.image_id, ids)))
    images = load_uint8(recs)
    grid: dict[str, dict[str, Any]] = {}
    dets: dict[tuple[str, int], Detections] = {}
    todo = [(n, s) for n in names for s in sh.severities]
    t0 = time.perf_counter()
    for name, sev in progress(todo, desc="corruptions", unit="setting"):
        cands = shifted_candidates(
            detector, images, ids, name, sev, sh.seed, det_cfg.batch_size
        )
        d = _post(cands, cfg)
        dets[(name, sev)] = d
        grid.setdefault(name, {})[str(sev)] = _values(d, sub, mcfg)
    return {
        "images": len(ids),
        "image_ids": ids,
        "corruptions": names,
        "short": {n: SHORT[n] for n in names},
        "severities": list(sh.severities),
        "seed": sh.seed,
        "clean": _values(clean, sub, mcfg),
        "grid": grid,
        "mean_by_severity": {
            k: {str(s): _mean([grid[n][str(s)][k] for n in names]) for s in sh.severities}
            for k in SHIFT_KEYS
        },
        "seconds": time.perf_counter() - t0,
    }, {"dets": dets, "gt": sub, "clean": clean, "images": images, "ids": ids}


def _mean(v: Sequence[float | None]) -> float | None:
    kept = [x for x in v if x is not None]
    return float(np.mean(kept)) if kept else None


def run_ood(
    detector: TorchvisionDetector,
    app: Detections,
    cfg: AuditConfig,
    folder: Path,
    allow_outside: bool = False,
) -> dict[str, Any]:
    from calibration.shift import ood_measures

    o, det_cfg = cfg.ood, cfg.detector
    assert o is not None and det_cfg is not None  # run_extras runs it for an 'ood' section
    gt_o, recs = _load_split(DataSection(sample=o.sample, coco=o.coco), folder, "test", allow_outside)
    cands = detector.candidates(recs, batch_size=det_cfg.batch_size)
    d = _post(cands, cfg)
    known = set(int(c) for c in detector.prob_category_ids)
    n_known = int(np.isin(gt_o.annotations.category_id, list(known)).sum())
    out = ood_measures(app, d, len(recs), o.threshold, detector.prob_category_ids)
    source: dict[str, Any] | str
    if o.sample is not None:
        source = o.sample.model_dump(mode="json")
    else:
        assert o.coco is not None  # OODSection holds one of sample and coco
        source = str(o.coco.annotations)
    out |= {"source": source, "known_class_objects": n_known}
    return out


def run_repair(
    detector: TorchvisionDetector,
    records: Sequence[ImageRecord],
    gt: GroundTruth,
    app: Detections,
    cfg: AuditConfig,
    folder: Path,
    shifted: Shifted | None,
    allow_outside: bool = False,
) -> dict[str, Any]:
    """Fit every calibrator (and fine-tune the last layer) on the calibration split; judge all
    on the test split with intervals, and on the corrupted test images."""
    from calibration import calibrators as C

    rp, det_cfg = cfg.repair, cfg.detector
    assert rp is not None and det_cfg is not None  # run_extras runs it for a 'repair' section
    mcfg = cfg.metrics_config()
    m0 = mcfg.model_copy(update={"n_boot": 0})
    gt_c, recs_c = _load_split(rp.calibration, folder / "data", "cal", allow_outside)
    cands_c = detector.candidates(recs_c, batch_size=det_cfg.batch_size)
    cal_dets = _post(cands_c, cfg)
    data = C.fit_data(cal_dets, gt_c, mcfg.iou_threshold, mcfg.match_mode)
    out: dict[str, Any] = {
        "calibration_split": {
            "images": len(recs_c),
            "detections": len(cal_dets),
            "source": rp.calibration.model_dump(mode="json"),
        },
        "mode": rp.mode,
        "repairs": {},
    }
    (folder / "repair").mkdir(exist_ok=True)

    def judge(
        name: str,
        test_dets: Detections,
        shift_dets: dict[tuple[str, int], Detections] | None,
        extra: dict[str, Any],
    ) -> None:
        entry: dict[str, Any] = {"test": _intervals(test_dets, gt, mcfg)} | extra
        if shifted is not None and shift_dets is not None:
            g: dict[str, dict[str, dict[str, Any]]] = {}
            for (cname, sev), d in shift_dets.items():
                g.setdefault(cname, {})[str(sev)] = _values(
                    d, shifted["gt"], m0, ("dece", "ece", "map")
                )
            entry["shift"] = g
            entry["shift_mean_by_severity"] = {
                k: {
                    str(s): _mean([g[c][str(s)][k] for c in g if str(s) in g[c]])
                    for s in sorted({int(s) for c in g for s in g[c]})
                }
                for k in ("dece", "ece", "map")
            }
        out["repairs"][name] = entry

    judge("original", app, shifted["dets"] if shifted else None, {"kind": "none"})
    for method in progress(rp.methods, desc="calibrators", unit="method"):
        cv = C.cross_validate(
            data, method, rp.mode, rp.cv_folds, 0, rp.shrinkage, m0, gt_c.categories
        )
        cal = C.fit(
            cal_dets, gt_c, method, rp.mode, rp.shrinkage, mcfg.iou_threshold, mcfg.match_mode
        )
        cal.cv = {method: cv}
        path = cal.save(folder / "repair" / f"calibrator_{method}.json")
        sd = (
            {k: cal.apply(d, shifted["gt"]) for k, d in shifted["dets"].items()}
            if shifted
            else None
        )
        judge(
            method,
            cal.apply(app, gt),
            sd,
            {"kind": "post-hoc", "cv": cv, "file": f"repair/{path.name}"},
        )
    if rp.finetune is not None:
        from calibration.adapters.torchvision_models import read_image
        from calibration.finetune import FinetuneSettings, finetune, save_checkpoint
        from calibration.shift import shifted_candidates

        ims = [read_image(r.path) for r in recs_c]
        res = finetune(
            detector,
            ims,
            [r.image_id for r in recs_c],
            gt_c,
            FinetuneSettings.from_section(rp.finetune),
            m0,
        )
        tuned = res.detector
        test_t = _post(tuned.candidates(records, batch_size=det_cfg.batch_size), cfg)
        sd = None
        if shifted is not None:
            sh = cfg.shift
            assert sh is not None  # shifted comes from run_shift
            images, sids = shifted["images"], shifted["ids"]
            sd = {
                (n, s): _post(
                    shifted_candidates(
                        tuned, images, sids, n, s, sh.seed, det_cfg.batch_size
                    ),
                    cfg,
                )
                for (n, s) in progress(
                    list(shifted["dets"]), desc="corruptions (fine-tuned)", unit="setting"
                )
            }
        cats = [
            {"id": int(c), "name": gt.categories.get(int(c), str(c))}
            for c in tuned.prob_category_ids
        ]
        save_checkpoint(res, folder / "repair" / "finetuned.pt", det_cfg.model, cats)
        judge(
            "finetune",
            test_t,
            sd,
            {
                "kind": "last-layer fine-tuning",
                "trained": res.trained,
                "best_epoch": res.best_epoch,
                "history": res.history,
                "settings": res.settings,
                "seconds": res.seconds,
                "file": "repair/finetuned.pt",
            },
        )
    out["recommendation"] = recommend(out["repairs"])
    return out


def recommend(repairs: dict[str, Any], max_map_drop: float = 0.01) -> dict[str, Any]:
    """The repair to ship: the lowest in-domain test D-ECE among repairs that keep mAP within
    ``max_map_drop`` of the original, with the reasons in numbers."""
    base = repairs["original"]["test"]
    b_d, b_m = base["dece"]["value"], base["map"]["value"] or 0.0
    cand = {}
    for name, r in repairs.items():
        if name == "original":
            continue
        d, m = r["test"]["dece"]["value"], r["test"]["map"]["value"] or 0.0
        if d is None:
            continue
        cand[name] = {
            "dece": d,
            "map": m,
            "ok_map": m >= b_m - max_map_drop,
            "ci_high": r["test"]["dece"].get("ci_high"),
        }
    ok = {k: v for k, v in cand.items() if v["ok_map"]}
    if not ok or b_d is None:
        return {
            "ship": None,
            "reason": "no repair keeps mAP within 1 point of the original",
            "candidates": cand,
        }
    best = min(ok, key=lambda k: ok[k]["dece"])
    if ok[best]["dece"] >= b_d:
        return {
            "ship": None,
            "reason": "no repair lowers D-ECE on the test split",
            "candidates": cand,
        }
    return {
        "ship": best,
        "dece_before": b_d,
        "dece_after": ok[best]["dece"],
        "cut": 1.0 - ok[best]["dece"] / b_d if b_d else None,
        "map_before": b_m,
        "map_after": ok[best]["map"],
        "candidates": cand,
        "reason": "lowest test-split D-ECE among repairs that keep mAP within 1 point",
    }


def run_extras(
    detector: TorchvisionDetector,
    records: Sequence[ImageRecord],
    gt: GroundTruth,
    app: Detections,
    cfg: AuditConfig,
    folder: Path,
    allow_outside: bool = False,
) -> dict[str, Any]:
    """The shift, OOD and repair sections the config asks for (each optional)."""
    out: dict[str, Any] = {}
    shifted: Shifted | None = None
    if cfg.shift is not None:
        out["shift"], shifted = run_shift(detector, records, gt, app, cfg)
    if cfg.ood is not None:
        out["ood"] = run_ood(detector, app, cfg, folder / "data_ood", allow_outside)
    if cfg.repair is not None:
        out["repair"] = run_repair(detector, records, gt, app, cfg, folder, shifted, allow_outside)
    return out
