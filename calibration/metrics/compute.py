"""compute_metrics: every audit number with its bootstrap interval, from one set of matchings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from calibration.bootstrap import Statistic, bootstrap
from calibration.detections import Detections, GroundTruth
from calibration.matching import Matches, index_in, match
from calibration.metrics.ap import (
    COCO_IOU_THRESHOLDS,
    _binned_map,
    ap_statistic,
    ap_table,
    coco_eval,
)
from calibration.metrics.binning import (
    _class_bins,
    _class_mean,
    _codes,
    _grouped,
    _pooled,
    _power,
    _unset,
    per_class_errors,
)
from calibration.metrics.config import AP_AUTO_LIMIT, MetricsConfig, load_config
from calibration.metrics.dece import _box_columns, dece_statistic
from calibration.metrics.ece import calibration_error_statistic, debiased_ece_from_sums
from calibration.metrics.probabilistic import (
    _classwise,
    _head,
    _mean_of_second,
    _nll_brier_rows,
    _top_label,
)


@dataclass
class AuditMatches:
    """The matchings behind one :func:`compute_metrics` run (see :func:`audit_matches`)."""

    main: Matches  # config's mode at iou_threshold and laece_tau (greedy: plus COCO's thresholds)
    ap: Matches  # greedy at COCO's thresholds; the same object as ``main`` for greedy
    agnostic: Matches | None  # class-agnostic at iou_threshold (K+1 targets); None without probs

    def valid_and_tp(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(not ignored, TP) per detection at ``threshold`` of the main matching."""
        r = self.main.row(self.main.index(threshold))
        return ~r.ignored, r.tp


def audit_matches(
    dets: Detections, gt: GroundTruth, config: MetricsConfig | Mapping[str, Any] | None = None
) -> AuditMatches:
    """Every matching :func:`compute_metrics` needs, each done once.

    Greedy: one call at {iou_threshold, laece_tau} and COCO's ten thresholds serves every
    class-aware metric and AP. Other modes: the mode at {iou_threshold, laece_tau} plus
    greedy at COCO's thresholds for AP. Plus one class-agnostic matching at
    iou_threshold when the detections carry probability vectors. Callers that need the
    matches themselves (the audit's breakdowns) pass the result to
    :func:`compute_metrics` instead of matching again.
    """
    cfg = load_config(config)
    main = sorted({cfg.iou_threshold, cfg.laece_tau})
    if cfg.match_mode == "greedy":
        m = match(dets, gt, sorted({*main, *COCO_IOU_THRESHOLDS}), "greedy")
        m_ap = m
    else:
        m = match(dets, gt, main, cfg.match_mode)
        m_ap = match(dets, gt, COCO_IOU_THRESHOLDS, "greedy", score_rank=m.score_rank)
    agn = None
    if dets.probs is not None or dets.logits is not None:
        agn = match(
            dets, gt, cfg.iou_threshold, cfg.match_mode, class_aware=False, score_rank=m.score_rank
        )
    return AuditMatches(m, m_ap, agn)


def compute_metrics(
    dets: Detections,
    gt: GroundTruth,
    config: MetricsConfig | Mapping[str, Any] | None = None,
    validate: bool = True,
    matches: AuditMatches | None = None,
) -> dict[str, Any]:
    """Every audit number with its bootstrap interval over images.

    Returns ``{"config", "counts", "metrics": {name: {"value", "ci_low", "ci_high",
    "std", "ci_z0"} or {"value": None, "skipped": why}}, "per_category", "coco"}``;
    intervals are ``config.ci_method`` intervals (plain percentile by default,
    see :func:`calibration.bootstrap.interval`), ``ci_z0`` their bias correction. Detections
    matched to crowd/ignore regions are left out of every calibration metric, as COCO
    leaves them out of AP. The K+1-way metrics (top-label, classwise, NLL, Brier) need
    probability vectors; their targets come from class-agnostic matching at
    ``iou_threshold``, so a box on a car predicted as "truck" has target "car" (Huseljic
    et al.'s modelling perspective), and unmatched boxes have target background.

    ``matches``: the result of :func:`audit_matches` for these detections and config,
    when the caller has it already. Each matching is done once and every metric reads
    it; metrics that bin the same values share one table of sums (ECE, MCE and the
    detection top-label error are read-outs of the detection classwise table), the
    per-category numbers are read off those tables, and AP comes from the TP lists.
    Without intervals (``n_boot=0``) the sums are not split by image.
    """
    cfg = load_config(config)
    if validate:
        dets.validate(gt)
    mm = matches if matches is not None else audit_matches(dets, gt, cfg)
    m, m_ap = mm.main, mm.ap
    thr, tau = cfg.iou_threshold, cfg.laece_tau
    ti, tt = m.index(thr), m.index(tau)
    n_images = len(gt.images)
    few_images = n_images < cfg.min_images
    boot = cfg.n_boot > 0 and not few_images
    group = m.image_index if boot else None  # without intervals, one group: no per-image tables
    sub = (lambda g, rows: g[rows]) if boot else (lambda g, rows: None)  # noqa: E731
    cats = gt.category_ids
    stats: dict[str, Statistic] = {}
    skipped: dict[str, str] = {}

    r_main = m.row(ti)
    valid = ~r_main.ignored
    s, tp, cat = dets.score[valid], r_main.tp[valid], dets.category_id[valid]
    g = sub(group, valid)
    cls_idx, n_cls, cls_vals = _codes(cat)
    p, pw = _power(cfg.norm), _power(cfg.classwise_norm)
    # detection classwise table: (class, bin) sums of (count, score, TP)
    b = _class_bins(s, cls_idx, n_cls, cfg.bins, cfg.bin_strategy, (0.0, 1.0))
    cw = _grouped(g, cls_idx * cfg.bins + b, [None, s, tp], (n_cls, cfg.bins), _unset)
    stats["detection_classwise_ce"] = replace(cw, finalize=_class_mean("ece", pw))
    if cfg.bin_strategy == "width":
        # the same edges for every class: the pooled bins are the class bins added up
        stats["ece"] = replace(cw, finalize=_pooled("ece", p))
        stats["mce"] = replace(cw, finalize=_pooled("mce", 1))
        stats["detection_top_label_ce"] = replace(cw, finalize=_pooled("ece", pw))
        stats["ece_debiased"] = replace(
            cw, finalize=lambda tot: debiased_ece_from_sums(tot.sum(axis=-3))
        )
    else:
        pooled = calibration_error_statistic(s, tp, group=g, bins=cfg.bins, strategy="mass")
        stats["ece"] = replace(pooled, finalize=_class_mean("ece", p))
        stats["mce"] = replace(pooled, finalize=_class_mean("mce", 1))
        stats["detection_top_label_ce"] = replace(pooled, finalize=_class_mean("ece", pw))
        stats["ece_debiased"] = replace(
            pooled, finalize=lambda tot: debiased_ece_from_sums(tot[..., 0, :, :])
        )
    stats["ace"] = calibration_error_statistic(
        s, tp, norm=cfg.norm, kind="ace", group=g, bins=cfg.bins, strategy="mass"
    )
    feats = _box_columns(dets, gt, cfg.dece_dims, valid, m.image_index)
    stats["dece"] = dece_statistic(feats, tp, cfg.dece_bin_counts, cfg.bin_strategy, group=g)
    del feats

    r_tau = r_main if tt == ti else m.row(tt)
    vt = ~r_tau.ignored
    st, it, ct = dets.score[vt], r_tau.iou[vt], dets.category_id[vt]
    gt_ = sub(group, vt)
    la_idx, la_n, la_vals = _codes(ct)
    la_b = _class_bins(st, la_idx, la_n, cfg.laece_bins, "width", (0.0, 1.0))
    la_shape = (la_n, cfg.laece_bins)
    stats["laece"] = _grouped(
        gt_, la_idx * cfg.laece_bins + la_b, [None, st, it], la_shape, _class_mean("ece", 1)
    )
    stats["laace"] = calibration_error_statistic(
        st, it, classes=ct, group=gt_, bins=cfg.laece_bins, kind="ace", strategy="mass"
    )

    probs = dets.class_probabilities(cats)
    if probs is None or mm.agnostic is None:
        for name in ("top_label_ce", "classwise_ce", "nll", "brier"):
            skipped[name] = "the detections carry no probability vectors (probs or logits)"
    else:
        col_cats = dets.prob_category_ids or tuple(int(c) for c in cats)
        _head(probs, len(col_cats))  # the column count fits the categories
        ma = mm.agnostic
        va = ~ma.row(ma.index(thr)).ignored
        target_all = ma.target_column(thr, col_cats)
        target = target_all[va]
        ga = sub(group, va)
        # row-wise numbers over all rows, then the valid ones: no copy of the (N, K+1) matrix
        top_conf, top = _top_label(probs)
        stats["top_label_ce"] = calibration_error_statistic(
            top_conf[va],
            top[va] == target,
            group=ga,
            bins=cfg.bins,
            norm=cfg.classwise_norm,
            strategy=cfg.bin_strategy,
        )
        del top_conf, top
        cols = [probs[:, c][va] for c in range(probs.shape[1])]
        stats["classwise_ce"] = _classwise(
            cols, target, ga, cfg.bins, cfg.classwise_norm, cfg.bin_strategy
        )
        del cols
        nll_r, brier_r = _nll_brier_rows(probs, target_all, len(col_cats))
        cell0 = np.zeros(int(va.sum()), np.int64)
        stats["nll"] = _grouped(ga, cell0, [None, nll_r[va]], (1,), _mean_of_second)
        stats["brier"] = _grouped(ga, cell0, [None, brier_r[va]], (1,), _mean_of_second)

    stats = {k: stats[k] for k in _METRIC_ORDER if k in stats}
    values = {k: v.value() for k, v in stats.items()}
    i50 = COCO_IOU_THRESHOLDS.index(0.5)
    if boot:  # the binned AP exists for the bootstrap only
        n_t = len(COCO_IOU_THRESHOLDS)
        stats["map"] = ap_statistic(
            m_ap, dets, gt, COCO_IOU_THRESHOLDS, cfg.ap_max_dets, cfg.ap_score_bins
        )
        stats["ap50"] = replace(
            stats["map"], finalize=lambda tot: _binned_map(tot[..., [i50, n_t], :, :, :])
        )
    # exact AP for the point estimate (bins are for the bootstrap only)
    hits = [m_ap.matched(m_ap.index(t)) for t in COCO_IOU_THRESHOLDS]
    table = ap_table(
        dets.score,
        dets.category_id,
        m_ap.n_gt,
        [h[0] for h in hits],
        [h[1] for h in hits],
        rank=m_ap.rank,
        max_dets=cfg.ap_max_dets,
        order=m_ap.order,
        score_rank=m_ap.score_rank,
    )  # (T, C)
    ap_cats = [int(c) for c in sorted(m_ap.n_gt)]
    ours = {"map": _nanmean(table.ravel()), "ap50": _nanmean(table[i50])}
    ours_ap = {c: _nanmean(table[:, j]) for j, c in enumerate(ap_cats)}
    ours_ap50 = {c: float(table[i50, j]) for j, c in enumerate(ap_cats)}
    coco = None
    backend = cfg.ap_backend
    if backend == "auto":
        backend = "pycocotools" if len(dets) <= AP_AUTO_LIMIT else "trustmap"
    if backend == "pycocotools":
        coco = coco_eval(dets, gt, cfg.ap_max_dets)
        values["map"], values["ap50"] = coco["stats"]["AP"], coco["stats"]["AP50"]
        ap_by_cat = coco["per_category_ap"]
    else:
        values["map"], values["ap50"] = ours["map"], ours["ap50"]
        ap_by_cat = ours_ap

    # the binned AP's replicates are anchored at its own full-sample value
    estimates = {k: v for k, v in values.items() if k not in ("map", "ap50")}
    intervals = (
        bootstrap(
            stats, len(gt.images), cfg.n_boot, cfg.seed, cfg.ci_level, cfg.ci_method, estimates
        )
        if boot
        else {}
    )
    # AP replicates are binned (see ap_statistic); move their interval by the binning's
    # full-sample offset so it sits around the exact value
    ci_shift = {}
    for name in ("map", "ap50"):
        if name in intervals and np.isfinite(values[name]):
            ci_shift[name] = values[name] - stats[name].value()
            ap_iv = intervals[name]
            ap_iv.low, ap_iv.high = ap_iv.low + ci_shift[name], ap_iv.high + ci_shift[name]
    metrics: dict[str, Any] = {}
    for name, v in values.items():
        iv = intervals.get(name)
        if iv:  # an interval never leaves the metric's range (AP50's bound was 1.0000024)
            lo_b, hi_b = METRIC_RANGE.get(name, (0.0, 1.0))
            iv.low, iv.high = max(iv.low, lo_b), min(iv.high, hi_b)
        metrics[name] = {
            "value": None if not np.isfinite(v) else float(v),
            "ci_low": iv.low if iv else None,
            "ci_high": iv.high if iv else None,
            "std": iv.std if iv else None,
        }
        if iv:  # |z0| > ~2 flags a bias larger than the resampling spread
            metrics[name]["ci_z0"] = iv.z0
            metrics[name]["ci_bias"] = iv.bias
        elif cfg.n_boot > 0 and few_images:
            metrics[name]["ci_skipped"] = (
                f"{n_images} image(s), fewer than min_images = {cfg.min_images}: a bootstrap "
                "over so few images has too few distinct resamples for an interval"
            )
        if name in ci_shift:
            metrics[name]["ci_shift"] = ci_shift[name]
    for name, why in skipped.items():
        metrics[name] = {"value": None, "skipped": why}

    # per category: read off the class tables (same bins as a per-category call)
    # (no detections: one empty class row, no class value)
    cw_all = per_class_errors(cw.totals(), "ece", p)[: len(cls_vals)]
    cw_err = dict(zip(cls_vals.tolist(), cw_all, strict=True))
    la_err = dict(
        zip(
            la_vals.tolist(),
            per_class_errors(stats["laece"].totals(), "ece", 1)[: len(la_vals)],
            strict=True,
        )
    )
    crow = index_in(dets.category_id, cats)
    n_det = np.bincount(crow[crow >= 0], minlength=len(cats))
    tp_row = crow[r_main.tp_rows]
    n_tp = np.bincount(tp_row[tp_row >= 0], minlength=len(cats))
    per_category = {}
    for j, c in enumerate(cats):
        c = int(c)
        per_category[c] = {
            "name": gt.categories[c],
            "n_gt": m.n_gt[c],
            "n_detections": int(n_det[j]),
            "n_tp": int(n_tp[j]),
            "ap": _none_if_nan(ap_by_cat.get(c, float("nan"))),
            "ap50": _none_if_nan(ours_ap50.get(c, float("nan"))),
            "ece": _none_if_nan(cw_err[c]) if c in cw_err else None,
            "laece": _none_if_nan(la_err[c]) if c in la_err else None,
        }
    return {
        "config": cfg.model_dump(mode="json"),
        "counts": {
            "images": len(gt.images),
            "ground_truth": int(sum(m.n_gt.values())),
            "regions": int(gt.annotations.is_region.sum()),
            "detections": len(dets),
            "tp": len(r_main.tp_rows),
            "ignored": len(r_main.ignored_rows),
            # AP keeps the ap_max_dets best per (image, class), as COCO does; every
            # calibration metric uses all the detections
            "ap_detections": int((m_ap.rank < cfg.ap_max_dets).sum()) if len(dets) else 0,
        },
        "too_few": {
            "images": n_images < cfg.min_images,
            "detections": int((~r_main.ignored).sum()) < cfg.min_detections,
            "min_images": cfg.min_images,
            "min_detections": cfg.min_detections,
        },
        "metrics": metrics,
        "per_category": per_category,
        "coco": coco["stats"] if coco else None,
        "ap_backend": backend,
        "ap_trustmap": ours,
    }


#: Where each metric's values can lie (intervals are clipped to it); others lie in [0, 1].
METRIC_RANGE = {"nll": (0.0, float("inf")), "brier": (0.0, 2.0)}

_METRIC_ORDER = (
    "ece",
    "ece_debiased",
    "mce",
    "ace",
    "dece",
    "detection_top_label_ce",
    "detection_classwise_ce",
    "laece",
    "laace",
    "top_label_ce",
    "classwise_ce",
    "nll",
    "brier",
)


def _nanmean(v: Sequence[float] | np.ndarray) -> float:
    a = np.asarray(v, np.float64)
    return float(a[np.isfinite(a)].mean()) if np.isfinite(a).any() else float("nan")


def _none_if_nan(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)
