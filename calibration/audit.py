"""The calibration audit, end to end: detections -> matching -> metrics -> sweeps -> report.

Two ways in, one way out. :func:`audit_predictions` reads any detector's COCO results (or
``.npz``) next to a COCO annotations file; :func:`audit_model` runs a torchvision detector
(the sample detector by default) on a COCO set or on the synthetic sample set, generated into
the output folder. Both validate every input before anything is written, then build the whole
output (``audit.html``, ``audit.json``, ``audit.md``, ``figures/``) in a temporary sibling
folder that replaces ``out`` only when complete.

Besides the metrics with their bootstrap intervals, each perspective gets the breakdowns the
report's plain-words findings are drawn from (reliability bins, position and size grids,
image regions, box sizes, classes), so every sentence in the report has its numbers in
``audit.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calibration import figures as figs
from calibration.config import AuditConfig, PostprocessSection
from calibration.detections import Detections, GroundTruth
from calibration.metrics import (
    BOX_DIMS,
    MetricsConfig,
    audit_matches,
    bin_edges,
    bin_index,
    binned_error,
    box_features,
    compute_metrics,
    reliability,
)
from tiles.console import progress
from tiles.errors import TrustmapError
from tiles.io import atomic_dir, jsonable, write_text_atomic

if TYPE_CHECKING:
    from calibration.adapters.torchvision_models import Candidates
    from calibration.matching import MatchMode

FORMAT = "trustmap-calibration-audit-v1"
#: Numbers each sweep point keeps (the sweep figure plots D-ECE, ECE, LaECE and mAP).
SWEEP_KEYS = ("dece", "ece", "laece", "mce", "map", "ap50")
SWEEP_LABELS = {
    "score_threshold": "score threshold",
    "nms_iou": "NMS IoU",
    "topk": "top-k per image",
}
_PARAM = {"score_threshold": "score_thresh", "nms_iou": "nms_iou", "topk": "topk"}
PERSPECTIVE_TEXT = {
    "application": "after the detector's post-processing (score threshold, NMS, top-k): what users see",
    "modeling": "every proposal before threshold, NMS and top-k: the classifier's raw scores",
    "predictions": "the predictions file as given",
    "calibrated": "the same detections with the calibrator's scores",
}
#: Simulated draws per group for its chance and random-subset ECE (see ``GroupCalibration``).
CHANCE_DRAWS = 200
CHANCE_CHUNK = 5_000_000  # draws x detections simulated at once (memory bound)
HEATMAP_MIN_COUNT = 10  # heat-map cells with fewer detections are greyed out (noise, not signal)
SIZE_BINS = 5  # quantile bins per axis of the (w, h) grid
POSITION_BINS = 5  # default bins per axis of the (cx, cy) grid when D-ECE does not bin cx/cy
_VERSIONED = (
    "numpy",
    "scipy",
    "torch",
    "torchvision",
    "pycocotools",
    "netcal",
    "matplotlib",
    "pydantic",
)


@dataclass
class AuditResult:
    """What an audit wrote: the JSON document and the paths of the files."""

    data: dict[str, Any]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def findings(self) -> list[str]:
        return [f["text"] for f in self.data["findings"]]


# --------------------------------------------------------------------------- entry points


def audit_predictions(
    predictions: str | os.PathLike,
    annotations: str | os.PathLike,
    out: str | os.PathLike,
    config: AuditConfig | None = None,
    config_path: str | os.PathLike | None = None,
    modeling: str | os.PathLike | None = None,
) -> AuditResult:
    """Audit a predictions file (COCO results ``.json`` or ``.npz``) against COCO annotations.

    ``modeling``: a second file with the same detector's outputs *before* score threshold,
    NMS and top-k (every proposal, ideally with ``probs``). With it, the first file is the
    "application" perspective and this one the "modeling" perspective.
    """
    cfg = config or AuditConfig()
    if cfg.runs_model:
        raise TrustmapError(
            "the config describes a detector and data ('detector', 'data'); drop them to audit a predictions file",
            config_path,
        )
    _check_out(out)
    t0 = time.perf_counter()
    gt = GroundTruth.from_coco_json(annotations)
    dets = Detections.load(predictions)
    dets.validate(gt)
    perspectives = {"predictions": dets}
    inputs = {
        "mode": "predictions",
        "predictions": str(Path(predictions).resolve()),
        "annotations": str(Path(annotations).resolve()),
    }
    if modeling is not None:
        raw = Detections.load(modeling)
        raw.validate(gt)
        perspectives = {"application": dets, "modeling": raw}
        inputs["modeling_predictions"] = str(Path(modeling).resolve())
    timings = {"load": time.perf_counter() - t0}
    with atomic_dir(out) as tmp:
        return _finish(
            tmp,
            Path(out),
            cfg,
            gt,
            perspectives,
            TableSweeper(dets),
            inputs,
            config_path,
            timings,
        )


def audit_detections(
    perspectives: Mapping[str, Detections],
    gt: GroundTruth,
    out: str | os.PathLike,
    config: AuditConfig | None = None,
    inputs: dict[str, Any] | None = None,
    config_path: str | os.PathLike | None = None,
) -> AuditResult:
    """Audit detections already in memory (a scene run, or box files read onto a scene).

    The first perspective drives the post-processing sweeps (re-applied to its table).
    """
    cfg = config or AuditConfig()
    _check_out(out)
    t0 = time.perf_counter()
    for dets in perspectives.values():
        dets.validate(gt)
    first = next(iter(perspectives.values()))
    timings = {"load": time.perf_counter() - t0}
    with atomic_dir(out) as tmp:
        return _finish(
            tmp, Path(out), cfg, gt, dict(perspectives), TableSweeper(first), dict(inputs or {}),
            config_path, timings,
        )


def audit_scene_files(
    scene: str | os.PathLike,
    truth: str | os.PathLike,
    predictions: str | os.PathLike,
    out: str | os.PathLike,
    config: AuditConfig | None = None,
    score_column: str = "score",
    config_path: str | os.PathLike | None = None,
) -> AuditResult:
    """Audit scored box files on one georeferenced tile (``calibration audit --scene``).

    ``truth`` and ``predictions`` are CSVs in pixels (DeepForest's columns) or vector files
    in map units (any CRS, reprojected onto the tile). The classes are the sorted names
    found in both files; the tile is the audit's one image.
    """
    from calibration.boxfiles import (
        categories_for,
        ground_truth,
        read_scored_boxes,
        scene_truth,
        to_detections,
    )

    cfg = config or AuditConfig()
    _check_out(out)
    table = scene_truth(scene, truth)
    boxes = read_scored_boxes(scene, predictions, score_column=score_column)
    categories = categories_for(table.labels, boxes.labels)
    gt = ground_truth(table, categories, truth)
    dets = to_detections(boxes, categories, source=str(predictions))
    inputs = {
        "mode": "scene files",
        "scene": str(Path(scene).resolve()),
        "truth": str(Path(truth).resolve()),
        "predictions": str(Path(predictions).resolve()),
        "score_column": score_column,
    }
    return audit_detections({"predictions": dets}, gt, out, cfg, inputs, config_path)


def audit_model(
    config: AuditConfig,
    out: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    allow_outside: bool = False,
) -> AuditResult:
    """Run the configured detector on the configured data, then audit its detections.

    ``allow_outside``: COCO ``file_name`` entries may lead out of the images folder
    (``--allow-outside-paths``).
    """
    if not config.runs_model:
        raise TrustmapError(
            "the config has no 'detector' and 'data': give --predictions and --annotations",
            config_path,
        )
    from calibration.adapters import images_from_coco, load_detector

    _check_out(out)
    det_cfg, data = config.detector, config.data
    assert det_cfg is not None and data is not None  # config.runs_model
    t0 = time.perf_counter()
    detector = load_detector(
        det_cfg.model,
        det_cfg.weights,
        num_classes=det_cfg.num_classes,
        category_ids=det_cfg.category_ids,
        **det_cfg.options,
    )
    detector.min_score = det_cfg.min_score
    if data.coco is not None:  # checked before anything is written
        gt = GroundTruth.from_coco_json(data.coco.annotations)
        records = images_from_coco(data.coco.images, data.coco.annotations, allow_outside)
    timings = {"load": time.perf_counter() - t0}
    out = Path(out)
    with atomic_dir(out) as tmp:
        t0 = time.perf_counter()
        if data.sample is not None:
            from calibration.samples import make_split

            s = data.sample
            ann = make_split(
                tmp / "data", s.split, s.n_images, size=s.size, seed=s.seed, domain=s.domain
            )
            gt = GroundTruth.from_coco_json(ann)
            records = images_from_coco(tmp / "data", ann)
            shown = {
                "annotations": str(out.resolve() / "data" / ann.name),
                "images": str(out.resolve() / "data"),
                "sample": s.model_dump(mode="json"),
            }
            timings["generate_data"] = time.perf_counter() - t0
        else:
            assert data.coco is not None  # a DataSection holds one of sample and coco
            shown = {"annotations": str(data.coco.annotations), "images": str(data.coco.images)}
        t0 = time.perf_counter()
        candidates = detector.candidates(records, batch_size=det_cfg.batch_size)
        timings["detector"] = time.perf_counter() - t0
        post = config.postprocess
        perspectives: dict[str, Detections] = {}
        for name in config.perspectives:
            if name == "application":
                dets = candidates.postprocess(post.score_thresh, post.nms_iou, post.topk)
            else:
                dets = candidates.modeling(post.max_per_image)
            perspectives[name] = dets.with_source(f"{det_cfg.model} ({name})")
            perspectives[name].validate(gt)
        defaults = _model_defaults(candidates, post)
        inputs = {
            "mode": "model",
            **shown,
            "detector": {
                "model": det_cfg.model,
                "weights": str(det_cfg.weights) if det_cfg.weights else "packaged sample weights",
                "postprocess": defaults,
                "category_ids": list(candidates.prob_category_ids),
                "head": "softmax (K+1, background last)" if candidates.softmax else "sigmoid (K)",
            },
        }
        sweeper = CandidateSweeper(candidates, defaults)
        extras: dict[str, Any] = {}
        if config.shift is not None or config.ood is not None or config.repair is not None:
            from calibration.extras import run_extras

            t0 = time.perf_counter()
            app = perspectives.get("application")
            if app is None:
                app = candidates.postprocess(post.score_thresh, post.nms_iou, post.topk)
            extras = run_extras(detector, records, gt, app, config, tmp, allow_outside)
            timings["shift_ood_repair"] = time.perf_counter() - t0
        return _finish(
            tmp, out, config, gt, perspectives, sweeper, inputs, config_path, timings, extras
        )


# --------------------------------------------------------------------------- per perspective


def analyse(
    dets: Detections, gt: GroundTruth, mcfg: MetricsConfig, position_bins: int = POSITION_BINS
) -> dict[str, Any]:
    """Metrics with intervals plus the breakdowns behind the report's findings.

    Breakdowns use the detections that count for ECE: those not absorbed by crowd/ignore
    regions, correct when matched at ``mcfg.iou_threshold`` with ``mcfg.match_mode``.
    """
    mm = audit_matches(dets, gt, mcfg)  # matched once: the metrics and the breakdowns share it
    res = compute_metrics(dets, gt, mcfg, validate=False, matches=mm)
    valid, tp_all = mm.valid_and_tp(mcfg.iou_threshold)
    conf, tp = dets.score[valid], tp_all[valid]
    feats = box_features(dets, gt, BOX_DIMS)[valid]
    groups = GroupCalibration(conf, tp, mcfg)
    rel = reliability(conf, tp, bins=mcfg.bins, strategy=mcfg.bin_strategy)
    res["overall"] = groups.breakdown(np.zeros(len(conf), np.int64), ["all"], compare=False)["all"]
    res["matching_rules"] = matching_rules(dets, gt, mcfg, mm)
    res["reliability"] = {
        "edges": rel["edges"],
        "count": rel["count"],
        "confidence": rel["confidence"],
        "precision": rel["target"],
    }
    # position: equal-width bins over the image, as D-ECE bins cx and cy
    pos_edges = np.linspace(0.0, 1.0, position_bins + 1)
    res["position"] = _grid(feats[:, 1], feats[:, 2], conf, tp, pos_edges, pos_edges) | {
        "x_label": "box centre x / image width",
        "y_label": "box centre y / image height",
        "image_axes": True,
        "edge_format": ".1f",
        "min_count": HEATMAP_MIN_COUNT,
    }
    res["regions_band"] = 1.0 / position_bins
    res["regions"] = {}
    if position_bins >= 3:
        ix, iy = _bin(feats[:, 1], pos_edges), _bin(feats[:, 2], pos_edges)
        outer = ((ix == 0) | (ix == position_bins - 1)).astype(np.int64) + (
            (iy == 0) | (iy == position_bins - 1)
        )
        res["regions"] = groups.breakdown(
            outer, ["interior", "edges", "corners"]
        )  # 0, 1 or 2 outer axes
    # size: box width and height in pixels, equal-mass bins (aerial objects span a narrow range)
    row = gt.images.index_of(dets.image_id[valid])
    w_px, h_px = feats[:, 3] * gt.images.width[row], feats[:, 4] * gt.images.height[row]
    res["size"] = _grid(
        w_px, h_px, conf, tp, _quantile_edges(w_px, SIZE_BINS), _quantile_edges(h_px, SIZE_BINS)
    ) | {
        "x_label": "box width (pixels)",
        "y_label": "box height (pixels)",
        "image_axes": False,
        "edge_format": ".0f",
        "min_count": HEATMAP_MIN_COUNT,
    }
    res["sizes"] = _size_groups(np.sqrt(np.maximum(w_px * h_px, 0.0)), groups)
    cats = gt.category_ids
    by_class = groups.breakdown(
        np.searchsorted(cats, dets.category_id[valid]), [str(int(c)) for c in cats]
    )
    res["classes"] = {k: v | {"name": gt.categories[int(k)]} for k, v in by_class.items()}
    from calibration.report import false_positive_examples

    res["false_positives"] = false_positive_examples(dets, gt, valid, tp_all, mcfg.iou_threshold)
    return res


#: Matching rules every audit reports side by side (the verdict can flip between them).
COMPARED_RULES: tuple[MatchMode, ...] = ("greedy", "any")
RULE_TEXT = {
    "greedy": "greedy, one-to-one in score order (COCO's rule)",
    "hungarian": "Hungarian, one-to-one maximising total IoU",
    "any": "any, non-exclusive: a box is correct if it overlaps any object of its class (netcal's examples)",
}


def matching_rules(
    dets: Detections, gt: GroundTruth, mcfg: MetricsConfig, mm: Any | None = None
) -> dict[str, Any]:
    """ECE, D-ECE, precision and mean gap under each of :data:`COMPARED_RULES` (and the
    configured rule), so a report shows how much its verdict depends on the rule."""
    from calibration.matching import match
    from calibration.metrics import dece, ece

    thr = mcfg.iou_threshold
    rules: dict[str, dict[str, float | None]] = {}
    for mode in dict.fromkeys((mcfg.match_mode, *COMPARED_RULES)):
        if mm is not None and mode == mcfg.match_mode:
            valid, tp = mm.valid_and_tp(thr)
        else:
            r = match(dets, gt, [thr], mode).row(0)
            valid, tp = ~r.ignored, r.tp
        conf, t = dets.score[valid], tp[valid].astype(np.float64)
        if not len(conf):
            rules[mode] = {"n": 0, "ece": None, "dece": None, "precision": None, "gap": None}
            continue
        feats = box_features(dets.subset(np.flatnonzero(valid)), gt, mcfg.dece_dims)
        rules[mode] = {
            "n": int(len(conf)),
            "ece": ece(conf, t, bins=mcfg.bins, norm=mcfg.norm, strategy=mcfg.bin_strategy),
            "dece": dece(feats, t, mcfg.dece_bin_counts, mcfg.bin_strategy),
            "precision": float(t.mean()),
            "gap": float(conf.mean() - t.mean()),
        }
    return {"used": mcfg.match_mode, "iou": thr, "rules": rules}


class GroupCalibration:
    """Calibration of subsets of one perspective's detections, each judged against chance.

    Binned ECE is biased upwards on small samples: a perfectly calibrated set of 50
    detections shows an ECE near 0.1 from binning noise alone, so raw ECEs of groups of
    different sizes cannot be compared. Each group therefore gets two references:

    * ``ece_chance`` (and its 95th percentile): the ECE of the same scores if they were
      perfectly calibrated, labels drawn as Bernoulli(score) (Bröcker & Smith's
      consistency resampling). Above the 95th percentile, the group is miscalibrated.
    * ``ece_random`` ± ``ece_random_sd``: the ECE of random subsets of the same size drawn
      from all the detections (a permutation of the group labels), and ``z``, how many
      standard deviations the group's ECE lies above it. A large ``z`` says that *this*
      group is worse than the detector in general, which is what "worst in the corners"
      means.

    Groups are binned with the perspective's global bin edges (equal to per-group edges
    for equal-width bins), so a group's ECE is exactly the audit's ECE on that subset.
    """

    def __init__(
        self, conf: np.ndarray, tp: np.ndarray, mcfg: MetricsConfig, draws: int | None = None
    ):
        self.conf, self.tp = np.asarray(conf, np.float64), np.asarray(tp, np.float64)
        self.bins, self.p = mcfg.bins, 1 if mcfg.norm == "l1" else 2
        self.b = bin_index(
            self.conf, bin_edges(self.conf, self.bins, mcfg.bin_strategy, (0.0, 1.0))
        )
        self.seed = 0 if mcfg.seed is None else mcfg.seed
        self.draws = CHANCE_DRAWS if draws is None else draws

    def breakdown(
        self, labels: np.ndarray, names: list[str], compare: bool = True
    ) -> dict[str, dict[str, Any]]:
        """Statistics per group; ``labels[i]`` is detection i's group index (-1: in none)."""
        labels = np.asarray(labels, np.int64)
        g = len(names)
        n = np.bincount(labels[labels >= 0], minlength=g)
        obs = self._ece(labels[None], self.conf[None], self.tp[None], self.b[None], g)[0]
        chance = self._simulate(labels, g, "chance")
        rand = self._simulate(labels, g, "permute") if compare else None
        out: dict[str, dict[str, Any]] = {}
        for k, name in enumerate(names):
            sel = labels == k
            if n[k] == 0:
                out[name] = dict.fromkeys(
                    (
                        "confidence",
                        "precision",
                        "gap",
                        "gap_se",
                        "ece",
                        "ece_chance",
                        "ece_chance_p95",
                    ),
                    None,
                ) | {"n": 0}
                continue
            c, t = self.conf[sel], self.tp[sel]
            st: dict[str, Any] = {
                "n": int(n[k]),
                "confidence": float(c.mean()),
                "precision": float(t.mean()),
                "gap": float(c.mean() - t.mean()),
                "gap_se": float(np.sqrt(np.sum(c * (1.0 - c))) / n[k]),
                "ece": float(obs[k]),
                "ece_chance": float(chance[:, k].mean()),
                "ece_chance_p95": float(np.quantile(chance[:, k], 0.95)),
            }
            if rand is not None:
                mu, sd = float(rand[:, k].mean()), float(rand[:, k].std(ddof=1))
                st |= {
                    "ece_random": mu,
                    "ece_random_sd": sd,
                    "z": (st["ece"] - mu) / sd if sd > 0 else 0.0,
                }
            out[name] = st
        return out

    def _ece(
        self, labels: np.ndarray, conf: np.ndarray, target: np.ndarray, b: np.ndarray, g: int
    ) -> np.ndarray:
        """(k, g) ECE from k rows of (labels, conf, target, bin) over the same n detections."""
        k = labels.shape[0]
        ok = labels >= 0
        cell = ((np.arange(k)[:, None] * g + labels) * self.bins + b)[ok]
        size = k * g * self.bins
        tot = np.stack(
            [
                np.bincount(cell, minlength=size),
                np.bincount(cell, conf[ok], size),
                np.bincount(cell, target[ok], size),
            ],
            axis=-1,
        ).astype(np.float64)
        return binned_error(tot.reshape(k, g, self.bins, 3), "ece", self.p) ** (1.0 / self.p)

    def _simulate(self, labels: np.ndarray, g: int, kind: str) -> np.ndarray:
        """(draws, g) ECE under perfect calibration ("chance") or for random same-size groups ("permute")."""
        n = len(labels)
        rng = np.random.default_rng([self.seed, n, g, kind == "permute"])
        out = []
        step = max(1, CHANCE_CHUNK // max(n, 1))
        for a in range(0, self.draws, step):
            k = min(step, self.draws - a)
            if kind == "chance":
                conf, b = np.broadcast_to(self.conf, (k, n)), np.broadcast_to(self.b, (k, n))
                target = (rng.random((k, n)) < self.conf).astype(np.float64)
                lab = np.broadcast_to(labels, (k, n))
            else:
                lab = rng.permuted(np.broadcast_to(labels, (k, n)), axis=1)
                conf, target, b = (
                    np.broadcast_to(self.conf, (k, n)),
                    np.broadcast_to(self.tp, (k, n)),
                    np.broadcast_to(self.b, (k, n)),
                )
            out.append(self._ece(lab, conf, target, b, g))
        return np.concatenate(out) if out else np.zeros((0, g))


def _bin(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)


def _quantile_edges(x: np.ndarray, bins: int) -> np.ndarray:
    """Equal-mass edges, rounded to 0.1 and made strictly increasing (few distinct sizes)."""
    if x.size == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    e = np.unique(np.round(np.quantile(x, np.linspace(0, 1, bins + 1)), 1))
    if len(e) < 2:
        e = np.array([e[0] - 0.5, e[0] + 0.5])
    return e


def _grid(
    x: np.ndarray,
    y: np.ndarray,
    conf: np.ndarray,
    tp: np.ndarray,
    x_edges: np.ndarray,
    y_edges: np.ndarray,
) -> dict[str, Any]:
    """Per (y, x) cell: count, mean confidence and precision (None where empty)."""
    nx, ny = len(x_edges) - 1, len(y_edges) - 1
    cell = _bin(y, y_edges) * nx + _bin(x, x_edges)
    cnt = np.bincount(cell, minlength=nx * ny).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.bincount(cell, conf, nx * ny) / cnt
        p = np.bincount(cell, tp.astype(float), nx * ny) / cnt
    shape = (ny, nx)
    return {
        "x_edges": x_edges,
        "y_edges": y_edges,
        "count": cnt.reshape(shape),
        "confidence": c.reshape(shape),
        "precision": p.reshape(shape),
    }


def _size_groups(side: np.ndarray, groups: GroupCalibration) -> dict[str, Any]:
    """Thirds of the detections by box size (sqrt of area, pixels)."""
    if side.size < 3:
        return {}
    lo, hi = np.quantile(side, [1 / 3, 2 / 3])
    out = groups.breakdown(
        (side >= lo).astype(np.int64) + (side >= hi), ["small", "medium", "large"]
    )
    out["small"]["below_px"] = float(lo)
    out["medium"]["range_px"] = [float(lo), float(hi)]
    out["large"]["above_px"] = float(hi)
    return out


# --------------------------------------------------------------------------- sweeps


def postprocess_table(
    dets: Detections,
    score_thresh: float | None = None,
    nms_iou: float | None = None,
    topk: int | None = None,
) -> Detections:
    """torchvision's post-processing order on a detections table: ``score > t``, per (image,
    class) NMS, then the ``topk`` best per image. ``None`` skips a step.

    On a predictions file this can only tighten what the detector already did: boxes that
    its own threshold or NMS removed are gone.
    """
    keep = np.arange(len(dets))
    if score_thresh is not None:
        keep = keep[dets.score[keep] > score_thresh]
    if nms_iou is not None and keep.size:
        import torch
        from torchvision.ops import batched_nms

        groups = np.unique(
            np.column_stack([dets.image_id[keep], dets.category_id[keep]]),
            axis=0,
            return_inverse=True,
        )[1]
        k = batched_nms(
            torch.from_numpy(dets.bbox_xyxy[keep]),
            torch.from_numpy(dets.score[keep]),
            torch.from_numpy(groups.reshape(-1).astype(np.int64)),
            float(nms_iou),
        )
        keep = np.sort(keep[k.numpy()])
    if topk is not None and keep.size:
        order = np.lexsort((-dets.score[keep], dets.image_id[keep]))
        ids = dets.image_id[keep][order]
        start = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1]
        rank = np.arange(len(ids)) - np.repeat(start, np.diff(np.r_[start, len(ids)]))
        keep = np.sort(keep[order][rank < topk])
    return dets.subset(keep)


class TableSweeper:
    """Sweeps over a fixed detections table (a predictions file): only tightening is possible."""

    perspective = "predictions"
    note = (
        "re-applied to the predictions file: thresholds below its lowest score and NMS looser than the "
        "detector's own cannot be undone, so those points equal the file as given"
    )

    def __init__(self, dets: Detections):
        self.dets = dets
        self.defaults: dict[str, Any] = {"score_thresh": None, "nms_iou": None, "topk": None}
        self.floor = float(dets.score.min()) if len(dets) else 0.0

    def allowed(self, param: str, value: float) -> bool:
        return not (param == "score_threshold" and value < self.floor)

    def __call__(self, **params: Any) -> Detections:
        return postprocess_table(self.dets, **params)


class CandidateSweeper:
    """Sweeps that re-run the detector's own post-processing on stored candidates (no forward pass)."""

    perspective = "application"
    note = "re-applied to the detector's stored candidates: each point is what the detector would output"

    def __init__(self, candidates: Candidates, defaults: dict[str, Any]):
        self.candidates = candidates
        self.defaults = defaults

    def allowed(self, param: str, value: float) -> bool:
        return not (param == "score_threshold" and value < self.candidates.min_score)

    def __call__(self, **params: Any) -> Detections:
        return self.candidates.postprocess(**params)


def _model_defaults(candidates: Candidates, post: PostprocessSection) -> dict[str, Any]:
    return {
        "score_thresh": candidates.score_thresh if post.score_thresh is None else post.score_thresh,
        "nms_iou": candidates.nms_iou if post.nms_iou is None else post.nms_iou,
        "topk": candidates.topk if post.topk is None else post.topk,
    }


def run_sweeps(
    sweeper: TableSweeper | CandidateSweeper, gt: GroundTruth, cfg: AuditConfig
) -> dict[str, Any]:
    """Metrics (no intervals) along each configured post-processing sweep, one setting at a time.

    The audited setting is added as a point of every sweep, so each curve passes through
    the numbers of the main tables.
    """
    mcfg = cfg.metrics_config().model_copy(update={"n_boot": 0})
    defaults = dict(sweeper.defaults)
    todo = []
    for name in ("score_threshold", "nms_iou", "topk"):
        values = list(getattr(cfg.sweeps, name))
        if not values:
            continue
        d = defaults[_PARAM[name]]
        if d is not None and d not in values:
            values = sorted([*values, d])
        for v in values:
            if sweeper.allowed(name, v):
                todo.append((name, v))
    out: dict[str, Any] = {
        "perspective": sweeper.perspective,
        "note": sweeper.note,
        "defaults": defaults,
    }
    for name in ("score_threshold", "nms_iou", "topk"):
        if getattr(cfg.sweeps, name):
            out[name] = {
                "label": SWEEP_LABELS[name],
                "default": defaults[_PARAM[name]],
                "points": [],
            }
    for name, v in progress(todo, desc="post-processing sweeps", unit="setting"):
        params = defaults | {_PARAM[name]: v}
        dets = sweeper(**params)
        r = compute_metrics(dets, gt, mcfg, validate=False)
        out[name]["points"].append(
            {
                "value": v,
                "audited": v == defaults[_PARAM[name]],
                "detections": len(dets),
                "metrics": {k: r["metrics"][k]["value"] for k in SWEEP_KEYS},
            }
        )
    return out


# --------------------------------------------------------------------------- output


def build_document(
    cfg: AuditConfig,
    gt: GroundTruth,
    perspectives: Mapping[str, Detections],
    sweeper: TableSweeper | CandidateSweeper | None,
    inputs: Mapping[str, Any],
    config_path: str | os.PathLike | None = None,
    timings: dict[str, float] | None = None,
    extras: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The audit's JSON document: every number with its interval, the inputs, and the findings.

    ``extras``: the shift, OOD and repair sections (:func:`calibration.extras.run_extras`)."""
    from calibration import report

    timings = {} if timings is None else timings
    mcfg = cfg.metrics_config()
    pos_bins = _position_bins(mcfg)
    t0 = time.perf_counter()
    results = {}
    for name, dets in perspectives.items():
        results[name] = analyse(dets, gt, mcfg, pos_bins) | {"description": PERSPECTIVE_TEXT[name]}
    timings["metrics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    wanted = sweeper is not None and any(getattr(cfg.sweeps, k) for k in _PARAM)
    sweeps = run_sweeps(sweeper, gt, cfg) if sweeper is not None and wanted else {}
    timings["sweeps"] = time.perf_counter() - t0
    data: dict[str, Any] = {
        "format": FORMAT,
        "title": cfg.title or "Detector calibration audit",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "inputs": dict(inputs)
        | {
            "config_path": None if config_path is None else str(Path(config_path).resolve()),
            "config": cfg.model_dump(mode="json"),
            "metrics_config": mcfg.model_dump(mode="json"),
            "versions": versions(),
        },
        "dataset": {
            "images": len(gt.images),
            "objects": int((~gt.annotations.is_region).sum()),
            "categories": {str(k): v for k, v in sorted(gt.categories.items())},
        },
        "perspectives": results,
        "sweeps": sweeps,
        **dict(extras or {}),
    }
    data = jsonable(data)
    data["findings"] = report.findings(data)
    return data


def write_outputs(
    folder: Path, data: dict[str, Any], timings: dict[str, float] | None = None
) -> dict[str, Path]:
    """Draw the figures and write ``audit.{json,md,html}`` and ``figures/`` into ``folder``."""
    from calibration import report

    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    pngs = draw_figures(data, folder)
    (folder / "figures").mkdir(exist_ok=True)
    for name, png in pngs.items():
        (folder / "figures" / f"{name}.png").write_bytes(png)
    data["figures"] = {name: f"figures/{name}.png" for name in pngs}
    timings["figures"] = time.perf_counter() - t0
    data["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    files = {
        "html": folder / "audit.html",
        "json": folder / "audit.json",
        "md": folder / "audit.md",
    }
    write_text_atomic(files["json"], json.dumps(data, indent=1, allow_nan=False) + "\n")
    write_text_atomic(files["md"], report.render_markdown(data))
    write_text_atomic(files["html"], report.render_html(data, pngs))
    return files


def _finish(
    tmp: Path,
    out: Path,
    cfg: AuditConfig,
    gt: GroundTruth,
    perspectives: Mapping[str, Detections],
    sweeper: Any,
    inputs: dict[str, Any],
    config_path: str | os.PathLike | None,
    timings: dict[str, float],
    extras: Mapping[str, Any] | None = None,
) -> AuditResult:
    """Build everything into ``tmp`` (the caller's ``atomic_dir`` swaps it onto ``out``)."""
    data = build_document(cfg, gt, perspectives, sweeper, inputs, config_path, timings, extras)
    data["detections_files"] = save_detections(tmp, perspectives)
    files = write_outputs(tmp, data, timings)
    return AuditResult(data=data, out_dir=out, files={k: out / p.name for k, p in files.items()})


def save_detections(folder: Path, perspectives: Mapping[str, Detections]) -> dict[str, str]:
    """Each perspective's detections as COCO results (with ``probs`` where the detector gave
    them) under ``folder/detections/``, so they can be fitted, applied or re-audited."""
    (folder / "detections").mkdir(exist_ok=True)
    out = {}
    for name, dets in perspectives.items():
        rel = f"detections/{name}.json"
        dets.to_coco_json(folder / rel)
        out[name] = rel
    return out


def draw_figures(data: Mapping[str, Any], folder: Path | None = None) -> dict[str, bytes]:
    """Every figure of the report, by name, from the audit's JSON document.

    ``folder``: where the audit is being written (its generated sample images are there);
    the false-positive crops read the audit's images (``report.example_images``)."""
    from calibration import report

    out: dict[str, bytes] = {}
    for name, p in data["perspectives"].items():
        ece = p["metrics"]["ece"]["value"]
        out[f"reliability_{name}"] = figs.reliability_diagram(
            p["reliability"], f"Reliability, {name}", ece
        )
        dece = p["metrics"]["dece"]["value"]
        suffix = f" (D-ECE {dece:.3f})" if dece is not None else ""
        out[f"position_{name}"] = figs.gap_heatmap(
            p["position"],
            f"Gap by box position, {name}{suffix}",
            min_count=p["position"]["min_count"],
        )
        out[f"size_{name}"] = figs.gap_heatmap(
            p["size"], f"Gap by box size, {name}", min_count=p["size"]["min_count"]
        )
        out[f"classes_{name}"] = figs.per_class_bars(report.class_table(p), f"Per class, {name}")
    examples = data["perspectives"][report.primary_perspective(data)].get("false_positives")
    images, _ = report.example_images(data, folder)
    if examples and images:
        out["false_positives"] = figs.false_positive_crops(examples, images)
    if data.get("shift"):
        out["shift"] = figs.shift_heatmaps(
            data["shift"], f"Under corruption ({data['shift']['images']} test images)"
        )
    if data.get("ood"):
        out["ood"] = figs.ood_histograms(data["ood"], "In-distribution vs OOD detections")
    if data.get("repair"):
        out["repair"] = figs.repair_bars(data["repair"], "Repairs on the test split")
    sw = data.get("sweeps") or {}
    if any(isinstance(v, Mapping) and v.get("points") for v in sw.values()):
        out["sweeps"] = figs.sweep_curves(
            {k: v for k, v in sw.items() if k in _PARAM},
            f"Post-processing sweeps ({sw['perspective']} perspective)",
        )
    return out


def _position_bins(mcfg: MetricsConfig) -> int:
    """The D-ECE bin count of cx/cy when D-ECE bins them, else :data:`POSITION_BINS`."""
    dims = list(mcfg.dece_dims)
    for d in ("cx", "cy"):
        if d in dims:
            return max(int(mcfg.dece_bin_counts[dims.index(d)]), 1)
    return POSITION_BINS


def _check_out(out: str | os.PathLike) -> None:
    """Refuse to replace a folder that is not an earlier audit (``--out ~`` must not wipe home)."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise TrustmapError("output path exists and is not a directory", p)
    if p.is_dir() and any(p.iterdir()) and not (p / "audit.json").exists():
        raise TrustmapError(
            "output directory exists and is not an earlier audit; choose a new or empty folder", p
        )


def versions() -> dict[str, str]:
    """Versions of Python, trustmap and the libraries whose numbers the audit depends on."""
    out = {"python": platform.python_version()}
    for pkg in ("trustmap", *_VERSIONED):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
