"""The audit report: plain-words findings, then tables, then figures, as HTML and Markdown.

Everything here is a pure function of the audit's JSON document (see
:mod:`calibration.audit`), so a report can be rebuilt from ``audit.json`` alone and every
sentence it prints is backed by numbers stored there. The HTML is one self-contained file
(inline CSS, figures as base64 data URIs) that a reviewer can open or attach anywhere; the
Markdown is for pasting into a review, with the figures as PNG files beside it.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from tiles.errors import TrustmapError
from tiles.io import resolve_inside

if TYPE_CHECKING:
    from calibration.detections import Detections, GroundTruth

#: A group is named in a finding only with at least this many detections (fewer is noise).
MIN_GROUP = 20
MIN_CELL = 10  # the same for a cell of the position map
#: Mean confidence − precision beyond which a set of detections is called over/under-confident.
GAP_TOLERANCE = 0.03
#: A group (region, size third, class) is called worse than the detector in general when its
#: ECE exceeds that of random same-size subsets by ``Z_OFF`` standard deviations and by
#: this much (and exceeds what perfect calibration would show, at the 95th percentile).
ECE_MARGIN = 0.02
#: A score bin (or all detections) counts as off only when its gap is this many standard
#: errors from 0 under perfect calibration (3 ~ Bonferroni over 10 bins at 5%).
Z_OFF = 3.0

# key, label, what it measures; every calibration error is "lower is better"
METRICS: tuple[tuple[str, str, str], ...] = (
    ("map", "mAP@[.5:.95]", "COCO average precision (pycocotools), higher is better"),
    ("ap50", "AP50", "COCO AP at IoU 0.5, higher is better"),
    ("ece", "ECE", "detection ECE: score vs precision, {bins} {strategy} bins, TP at IoU ≥ {iou}"),
    (
        "dece",
        "D-ECE",
        "ECE over score and box {dims} jointly, bins {dece_bins} (Küppers et al.; = netcal)",
    ),
    (
        "ece_debiased",
        "Debiased ECE (L2)",
        "Kumar et al. 2019: L2 ECE minus each bin's sampling variance; near 0 when calibrated, however few detections",
    ),
    ("mce", "MCE", "largest gap of any score bin"),
    ("ace", "ACE", "adaptive ECE: equal-mass bins, each bin weighted equally"),
    (
        "laece",
        "LaECE₀",
        "localisation-aware ECE: score vs IoU of TPs (any overlap), per class, {laece_bins} bins",
    ),
    ("laace", "LaACE₀", "LaECE with equal-mass bins"),
    (
        "detection_top_label_ce",
        "Top-label CE (det.)",
        "score vs precision, {classwise_norm} norm (Huseljic et al.)",
    ),
    (
        "detection_classwise_ce",
        "Classwise CE (det.)",
        "per-class score vs precision, mean over classes, {classwise_norm}",
    ),
    (
        "top_label_ce",
        "Top-label CE",
        "max class probability vs correct class incl. background (K+1), {classwise_norm}",
    ),
    (
        "classwise_ce",
        "Classwise CE",
        "every class probability vs its indicator (K+1), {classwise_norm}",
    ),
    ("nll", "NLL", "negative log-likelihood of the matched class or background (K+1)"),
    ("brier", "Brier", "squared error of the class-probability vector (K+1)"),
)
SWEEP_TEXT = {"score_threshold": "score threshold", "nms_iou": "NMS IoU", "topk": "top-k per image"}
PERSPECTIVE_WHERE = {
    "application": "after post-processing",
    "modeling": "on every proposal",
    "predictions": "on the predictions file as given",
}
PERSPECTIVE_LABEL = {
    "application": "application (after post-processing)",
    "modeling": "modeling (all proposals)",
    "predictions": "predictions file",
}


# --------------------------------------------------------------------------- formatting


CI_NOTE = (
    "Intervals are shifted percentile intervals: the bootstrap replicates' spread around their"
    " median, placed at the value, so they always contain it. Binned calibration errors are biased"
    " upward on small or resampled sets; ci_z0 and ci_bias in audit.json flag it, and the debiased"
    " ECE row removes it."
)


def _ci_note(data: Mapping[str, Any]) -> str:
    """What the intervals are, for the method the audit used."""
    method = data["inputs"]["metrics_config"].get("ci_method", "shifted")
    if method == "shifted":
        return CI_NOTE
    return (
        f"Intervals are {'bias-corrected percentile' if method == 'bc' else 'plain percentile'} "
        "intervals; binned calibration errors are biased upward on resamples, so an interval can lie "
        "above its value (ci_z0 in audit.json flags it)."
    )


def _f(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _ci(entry: Mapping[str, Any], digits: int = 3) -> str:
    """``0.123 [0.101, 0.140]``, or why there is no value."""
    if entry.get("skipped"):
        return "n/a"
    v = _f(entry.get("value"), digits)
    lo, hi = entry.get("ci_low"), entry.get("ci_high")
    return f"{v} [{_f(lo, digits)}, {_f(hi, digits)}]" if lo is not None and hi is not None else v


def _metric_text(data: Mapping[str, Any], p: Mapping[str, Any], key: str) -> str:
    e = p["metrics"].get(key, {})
    if e.get("value") is None:
        return f"{key}: n/a"
    lo, hi = e.get("ci_low"), e.get("ci_high")
    level = round(100 * data["inputs"]["metrics_config"].get("ci_level", 0.95))
    ci = f" ({level}% CI {_f(lo)}–{_f(hi)})" if lo is not None and hi is not None else ""
    return f"{_f(e['value'])}{ci}"


def primary_perspective(data: Mapping[str, Any]) -> str:
    """The perspective the findings are about: what users see, when it was measured."""
    names = list(data["perspectives"])
    for n in ("application", "predictions"):
        if n in names:
            return n
    return names[0]


# --------------------------------------------------------------------------- findings


def findings(data: Mapping[str, Any]) -> list[dict[str, str]]:
    """Plain-words statements of what is wrong and where, each ``{topic, severity, text}``.

    ``severity`` is ``problem`` (a miscalibration worth acting on), ``ok`` or ``info``.
    """
    name = primary_perspective(data)
    p = data["perspectives"][name]
    iou = data["inputs"]["metrics_config"]["iou_threshold"]
    out: list[dict[str, str]] = []
    if not p["counts"]["detections"]:
        return [
            {
                "topic": "overall",
                "severity": "problem",
                "text": f"There are no detections ({name}): nothing to audit.",
            }
        ]
    rec = _repair_finding(data)
    if rec:
        out.append(rec)
    out.append(_overall(data, p, name, iou))
    for f in (
        _shift_finding(data), _ood_finding(data), _position(p), _size(p), _classes(p)
    ):
        if f:
            out.append(f)
    out.extend(_sweeps(data, p))
    for f in (_perspectives(data), _matching(data), _detection_sets(data)):
        if f:
            out.append(f)
    skipped = [k for k, e in p["metrics"].items() if e.get("skipped")]
    if skipped:
        why = p["metrics"][skipped[0]]["skipped"]
        out.append(
            {
                "topic": "inputs",
                "severity": "info",
                "text": f"Not measured: {', '.join(_label(k) for k in skipped)} ({why}).",
            }
        )
    return out


def _label(key: str) -> str:
    return next((lab for k, lab, _ in METRICS if k == key), key)


def _direction(gap: float | None) -> str:
    if gap is None or abs(gap) <= GAP_TOLERANCE:
        return "calibrated"
    return "over-confident" if gap > 0 else "under-confident"


def _overall(
    data: Mapping[str, Any], p: Mapping[str, Any], name: str, iou: float
) -> dict[str, str]:
    o = p["overall"]
    n = o["n"]
    runs = [
        r for r in _runs(p["reliability"]) if abs(r["z"]) >= Z_OFF and abs(r["gap"]) > GAP_TOLERANCE
    ]
    runs = sorted(runs, key=lambda r: -r["contribution"])[:2]
    significant = o["gap_se"] is not None and abs(o["gap"]) >= Z_OFF * max(o["gap_se"], 1e-9)
    direction = _direction(o["gap"]) if significant else "calibrated"
    few = _too_few(p)
    if few:
        runs, direction = [], "too few"
        head = f"Too few to tell: {few}; the numbers below are shown, not judged."
    elif direction != "calibrated":
        head = direction.capitalize() + ": "
    elif runs:
        words = {_direction(r["gap"]) for r in runs}
        head = f"Close to calibrated on average, but {' and '.join(sorted(words))} in places: "
    else:
        head = "Close to calibrated: no range of scores is off by more than chance."
    said = []
    for i, r in enumerate(runs):
        tag = (
            ""
            if _direction(r["gap"]) == direction or len(runs) == 1
            else f" ({_direction(r['gap'])})"
        )
        who = "detections scored" if i == 0 else "those scored"
        said.append(
            f"{who} {r['lo']:.2f}–{r['hi']:.2f} are correct {_pct(r['precision'])} of the time at a mean "
            f"score of {r['confidence']:.2f} (n = {r['n']}){tag}"
        )
    parts = [head + ("; ".join(said) + "." if said else "")]  # head ends with ": " when runs follow
    parts.append(
        f"Overall the mean score is {o['confidence']:.2f} and {_pct(o['precision'])} of the {n} detections are "
        f"correct (same class, IoU ≥ {iou:g})."
    )
    parts.append(
        f"ECE {_metric_text(data, p, 'ece')}, {_f(o['ece_chance'])} if perfectly calibrated; "
        f"D-ECE {_metric_text(data, p, 'dece')}; next to mAP {_metric_text(data, p, 'map')}; all measured "
        f"{PERSPECTIVE_WHERE.get(name, name)}."
    )
    off = (
        o["ece"] is not None and o["ece_chance_p95"] is not None and o["ece"] > o["ece_chance_p95"]
    )
    sev = "problem" if off or runs or direction != "calibrated" else "ok"
    if few:
        sev = "info"
    return {"topic": "overall", "severity": sev, "text": " ".join(p for p in parts if p)}


def _too_few(p: Mapping[str, Any]) -> str | None:
    """Why a perspective's numbers cannot be judged (below min_images / min_detections)."""
    tf = p.get("too_few") or {}
    why = []
    if tf.get("images"):
        why.append(f"{p['counts']['images']} images, fewer than {tf['min_images']}")
    if tf.get("detections"):
        why.append(f"{p['overall']['n']} detections, fewer than {tf['min_detections']}")
    return " and ".join(why) or None


def _runs(rel: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Runs of adjacent score bins whose gap has the same sign, pooled.

    ``z`` is the pooled gap over its standard error if the scores were calibrated
    (``sqrt(Σ n c (1 - c)) / n`` with bin means ``c``); ``contribution`` the run's share of
    the (unnormalised) ECE, ``Σ n |gap|``.
    """
    edges = rel["edges"]
    runs: list[dict[str, Any]] = []
    cur: list[int] = []
    bins = [b for b, c in enumerate(rel["count"]) if c and rel["precision"][b] is not None]
    sign = lambda b: rel["confidence"][b] > rel["precision"][b]  # noqa: E731
    for b in bins:
        if cur and (sign(b) != sign(cur[-1])):
            runs.append(_pool(rel, cur, edges))
            cur = []
        cur.append(b)
    if cur:
        runs.append(_pool(rel, cur, edges))
    return runs


def _pool(rel: Mapping[str, Any], bins: list[int], edges: Sequence[float]) -> dict[str, Any]:
    cnt = [rel["count"][b] for b in bins]
    conf = [rel["confidence"][b] for b in bins]
    prec = [rel["precision"][b] for b in bins]
    n = sum(cnt)
    gap_sum = sum(c * (cf - pr) for c, cf, pr in zip(cnt, conf, prec, strict=True))
    var = sum(c * cf * (1.0 - cf) for c, cf in zip(cnt, conf, strict=True))
    return {
        "lo": edges[bins[0]],
        "hi": edges[bins[-1] + 1],
        "n": int(n),
        "confidence": sum(c * cf for c, cf in zip(cnt, conf, strict=True)) / n,
        "precision": sum(c * pr for c, pr in zip(cnt, prec, strict=True)) / n,
        "gap": gap_sum / n,
        "z": gap_sum / max(var**0.5, 1e-9),
        "contribution": abs(gap_sum),
    }


def _direction_words(gap: float | None) -> str:
    """A group's direction; a miscalibrated group whose mean gap is ~0 errs both ways."""
    d = _direction(gap)
    return "over- and under-confident by score range" if d == "calibrated" else d


def _describe_group(g: Mapping[str, Any]) -> str:
    link = "but" if _direction(g["gap"]) != "calibrated" else "and"
    return (
        f"ECE {_f(g['ece'])} vs {_f(g.get('ece_random'))} ± {_f(g.get('ece_random_sd'))} for random sets of "
        f"{g['n']} of these detections (z = {g.get('z', 0):.1f}); mean score {_f(g['confidence'], 2)} {link} "
        f"{_pct(g['precision'])} correct"
    )


def ranked(groups: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The groups a finding may rank, worst first: ``z`` (how many standard deviations the
    group's ECE lies above that of random same-size subsets) descending, ties in stored
    order. Groups with fewer than :data:`MIN_GROUP` detections, or no ``z``, are not ranked.
    The findings and the per-class table both read this order, so they cannot disagree."""
    ok = [k for k, g in groups.items() if g.get("n", 0) >= MIN_GROUP and g.get("z") is not None]
    return sorted(ok, key=lambda k: -float(groups[k]["z"]))


def _worst(groups: Mapping[str, Mapping[str, Any]]) -> tuple[str, str] | None:
    """(worst, best) group names of :func:`ranked`; None with fewer than two ranked."""
    order = ranked(groups)
    if len(order) < 2:
        return None
    return order[0], order[-1]


def _clearly_worse(g: Mapping[str, Any]) -> bool:
    """Worse than random subsets by ``Z_OFF`` sds and ``ECE_MARGIN``, and miscalibrated beyond chance."""
    return (
        g["z"] >= Z_OFF
        and g["ece"] - g["ece_random"] >= ECE_MARGIN
        and g["ece"] > (g.get("ece_chance_p95") or 0.0)
    )


def _listing(groups: Mapping[str, Mapping[str, Any]]) -> str:
    return ", ".join(f"{k} {_f(g['ece'])}" for k, g in groups.items() if g.get("ece") is not None)


REGION_TEXT = {
    "corners": ("image corners", "corners"),
    "edges": ("band along the image edges", "edge band"),
    "interior": ("image interior", "interior"),
}


def _position(p: Mapping[str, Any]) -> dict[str, str] | None:
    regions = p.get("regions") or {}
    wb = _worst(regions)
    if wb is None:
        return None
    worst, best = wb
    band = p.get("regions_band", 0.2)
    long_name = REGION_TEXT[worst][0] + (
        "" if worst == "interior" else f" (outer {band:.0%} of the image)"
    )
    if not _clearly_worse(regions[worst]):
        return {
            "topic": "position",
            "severity": "ok",
            "text": f"No clear position effect: no image region is worse than random subsets of the same size "
            f"(ECE {_listing(regions)}).",
        }
    text = (
        f"Worst in the {long_name}: {_describe_group(regions[worst])}. "
        f"Best: the {REGION_TEXT[best][1]}, ECE {_f(regions[best]['ece'])}."
    )
    cell = _worst_cell(p["position"], worst)
    if cell:
        text += f" Its most miscalibrated cell of the position map is {cell}."
    return {"topic": "position", "severity": "problem", "text": text}


def _worst_cell(grid: Mapping[str, Any], region: str) -> str | None:
    """Words for the cell of ``region`` (interior, edges, corners) with the largest count-weighted gap."""
    best, at = -1.0, None
    ny, nx = len(grid["count"]), len(grid["count"][0])
    outer_axes = {"interior": 0, "edges": 1, "corners": 2}[region]
    for r, row in enumerate(grid["count"]):
        for c, n in enumerate(row):
            if int(r in (0, ny - 1)) + int(c in (0, nx - 1)) != outer_axes:
                continue
            if n and n >= MIN_CELL and grid["precision"][r][c] is not None:
                contrib = n * abs(grid["confidence"][r][c] - grid["precision"][r][c])
                if contrib > best:
                    best, at = contrib, (r, c)
    if at is None:
        return None
    r, c = at
    vert = ("top", "middle", "bottom")[min(int(3 * (r + 0.5) / ny), 2)]
    horiz = ("left", "centre", "right")[min(int(3 * (c + 0.5) / nx), 2)]
    name = (
        "centre"
        if (vert, horiz) == ("middle", "centre")
        else f"{vert}-{horiz}".replace("middle-", "middle ")
    )
    xe, ye = grid["x_edges"], grid["y_edges"]
    gap = grid["confidence"][r][c] - grid["precision"][r][c]
    return (
        f"{name} (x {xe[c]:.1f}–{xe[c + 1]:.1f}, y {ye[r]:.1f}–{ye[r + 1]:.1f} of the image): "
        f"gap {gap:+.2f}, {_pct(grid['precision'][r][c])} correct at mean score {grid['confidence'][r][c]:.2f} "
        f"(n = {int(grid['count'][r][c])})"
    )


def _size(p: Mapping[str, Any]) -> dict[str, str] | None:
    sizes = p.get("sizes") or {}
    wb = _worst(sizes)
    if wb is None:
        return None
    worst, best = wb
    span = {
        "small": f"small boxes (under {sizes['small'].get('below_px', 0):.0f} px across)",
        "medium": "medium boxes ({:.0f}–{:.0f} px across)".format(
            *sizes["medium"].get("range_px", [0, 0])
        ),
        "large": f"large boxes (over {sizes['large'].get('above_px', 0):.0f} px across)",
    }
    if _clearly_worse(sizes[worst]):
        return {
            "topic": "size",
            "severity": "problem",
            "text": f"Worst for {span[worst]}: {_describe_group(sizes[worst])}. "
            f"Best: {best} boxes, ECE {_f(sizes[best]['ece'])}.",
        }
    return {
        "topic": "size",
        "severity": "ok",
        "text": f"Box size matters little: no size third is worse than random subsets (ECE {_listing(sizes)}).",
    }


CLASS_RANK_TEXT = (
    "ranked by z, how many standard deviations a class's ECE lies above that of random subsets "
    "of the same size, as in the per-class table"
)


def _unranked_note(classes: Mapping[str, Mapping[str, Any]], order: Sequence[str]) -> str:
    few = [f"'{g['name']}' (n = {g.get('n', 0)})" for k, g in classes.items() if k not in order]
    if not few:
        return ""
    return f" Not ranked, fewer than {MIN_GROUP} detections: {', '.join(few)}."


def _classes(p: Mapping[str, Any]) -> dict[str, str] | None:
    """The class finding, in the order of the per-class table (:func:`ranked`).

    Classes are ranked by ``z``: how many standard deviations a class's ECE lies above
    random subsets of the same size, so that a small class is not called worst for its
    binning noise; classes under :data:`MIN_GROUP` detections are not ranked. Every ECE
    quoted is the one in the table's ECE column. The ranked class with the lowest ECE is
    named as well, since it need not be the one ranked best."""
    classes = p.get("classes") or {}
    order = ranked(classes)
    if len(order) < 2:
        return None
    worst, best = order[0], order[-1]
    w, b = classes[worst], classes[best]
    ap = lambda k: _f((p["per_category"].get(k) or p["per_category"].get(int(k)) or {}).get("ap"))  # noqa: E731
    low = min(order, key=lambda k: classes[k]["ece"])
    lowest = (
        ""
        if low == best
        else f" Lowest ECE of the ranked classes: '{classes[low]['name']}', {_f(classes[low]['ece'])} "
        f"(n = {classes[low]['n']}, z {classes[low]['z']:+.1f})."
    )
    unranked = _unranked_note(classes, order)
    if _clearly_worse(w):
        return {
            "topic": "class",
            "severity": "problem",
            "text": f"Worst for class '{w['name']}' ({_direction_words(w['gap'])}): {_describe_group(w)}; AP {ap(worst)}. "
            f"Best by z: '{b['name']}', ECE {_f(b['ece'])} (z {b['z']:+.1f}), AP {ap(best)}.{lowest} "
            f"Classes are {CLASS_RANK_TEXT}.{unranked}",
        }
    named = {f"'{classes[k]['name']}'": classes[k] for k in order}
    return {
        "topic": "class",
        "severity": "ok",
        "text": f"No class stands out from random subsets of the same size ({CLASS_RANK_TEXT}; "
        f"ECE {_listing(named)}).{unranked}",
    }


def _sweeps(data: Mapping[str, Any], p: Mapping[str, Any]) -> list[dict[str, str]]:
    sw = data.get("sweeps") or {}
    out = []
    base_p = data["perspectives"].get(sw.get("perspective"), p)
    for key in ("score_threshold", "nms_iou", "topk"):
        s = sw.get(key)
        if not s or len(s.get("points", [])) < 2:
            continue
        pts = [q for q in s["points"] if q["metrics"].get("dece") is not None]
        if not pts:
            continue
        base = next((q for q in pts if q.get("audited")), None)
        if base is not None:
            b_dece, b_map, b_name = (
                base["metrics"]["dece"],
                base["metrics"]["map"],
                f"{base['value']:g}",
            )
        else:
            b_dece, b_map, b_name = (
                base_p["metrics"]["dece"]["value"],
                base_p["metrics"]["map"]["value"],
                "the file as given",
            )
        if b_dece is None:
            continue
        far = max(pts, key=lambda q: abs(q["metrics"]["dece"] - b_dece))
        delta = far["metrics"]["dece"] - b_dece
        label = SWEEP_TEXT[key]
        cap = label[0].upper() + label[1:]
        if abs(delta) < 0.005:
            out.append(
                {
                    "topic": "post-processing",
                    "severity": "ok",
                    "text": f"The {label} barely moves D-ECE: within 0.005 of {b_dece:.3f} over {_range(pts)}.",
                }
            )
            continue
        instead = f"instead of {b_name}" if base is not None else "on top of the file as given"
        text = (
            f"{cap} {far['value']:g} {instead} {'raises' if delta > 0 else 'lowers'} D-ECE by "
            f"{abs(delta):.3f} ({b_dece:.3f} → {far['metrics']['dece']:.3f}) while mAP goes "
            f"{_f(b_map)} → {_f(far['metrics'].get('map'))} ({far['detections']} detections)."
        )
        out.append(
            {
                "topic": "post-processing",
                "severity": "problem" if delta > 0 else "info",
                "text": text,
            }
        )
    return out


def _range(pts: Sequence[Mapping[str, Any]]) -> str:
    return f"{pts[0]['value']:g}–{pts[-1]['value']:g}"


def _repair_finding(data: Mapping[str, Any]) -> dict[str, str] | None:
    """Which repair to ship, and why, in numbers (the summary's first line)."""
    rp = data.get("repair")
    if not rp:
        return None
    rec, reps = rp["recommendation"], rp["repairs"]
    base = reps["original"]
    b = base["test"]["dece"]
    sev = "3"
    b_s = (base.get("shift_mean_by_severity") or {}).get("dece", {}).get(sev)
    if rec.get("ship") is None:
        return {
            "topic": "repair",
            "severity": "problem",
            "text": f"No repair to ship: {rec['reason']} (original D-ECE {_f(b['value'])}).",
        }
    r = reps[rec["ship"]]
    d = r["test"]["dece"]
    r_s = (r.get("shift_mean_by_severity") or {}).get("dece", {}).get(sev)
    kind = "post-hoc calibrator" if r["kind"] == "post-hoc" else r["kind"]
    text = (
        f"Ship '{rec['ship']}' ({kind}, fitted on the calibration split): test-split D-ECE "
        f"{_f(b['value'])} → {_f(d['value'])} [{_f(d.get('ci_low'))}, {_f(d.get('ci_high'))}] "
        f"({_pct(rec.get('cut'))} lower), mAP {_f(rec['map_before'])} → {_f(rec['map_after'])}"
    )
    if b_s is not None and r_s is not None:
        text += f"; under corruption at severity 3, mean D-ECE {_f(b_s)} → {_f(r_s)}"
    others = sorted(
        (k for k in rec["candidates"] if k != rec["ship"]),
        key=lambda k: rec["candidates"][k]["dece"],
    )
    if others:
        nxt = others[0]
        text += f". Next best: '{nxt}' at {_f(rec['candidates'][nxt]['dece'])}"
    if "finetune" in reps and rec["ship"] != "finetune":
        text += f"; last-layer fine-tuning reaches {_f(reps['finetune']['test']['dece']['value'])}"
    text += f". Chosen as the {rec['reason']}."
    return {"topic": "repair", "severity": "info", "text": text}


def _shift_finding(data: Mapping[str, Any]) -> dict[str, str] | None:
    sh = data.get("shift")
    if not sh:
        return None
    mb, cl = sh["mean_by_severity"], sh["clean"]
    sevs = [str(s) for s in sh["severities"]]
    worst = max(sh["corruptions"], key=lambda n: sh["grid"][n][sevs[-1]].get("dece") or 0.0)
    w = sh["grid"][worst][sevs[-1]]
    return {
        "topic": "shift",
        "severity": "problem" if (mb["dece"][sevs[-1]] or 0) > (cl["dece"] or 0) else "info",
        "text": f"Under corruption ({len(sh['corruptions'])} corruptions, {sh['images']} test images), "
        f"mean D-ECE goes {_f(cl['dece'])} (clean) → "
        + ", ".join(f"{_f(mb['dece'][s])} (severity {s})" for s in sevs)
        + f", while mAP goes {_f(cl['map'])} → {_f(mb['map'][sevs[-1]])}. Worst at severity "
        f"{sevs[-1]}: {worst.replace('_', ' ')}, D-ECE {_f(w.get('dece'))}, mAP {_f(w.get('map'))}.",
    }


def _ood_finding(data: Mapping[str, Any]) -> dict[str, str] | None:
    o = data.get("ood")
    if not o:
        return None
    parts = [
        f"On {o['images']} images with none of the known classes the detector makes "
        f"{o['fp_per_image']:.1f} false positives per image above score {o['threshold']:g} "
        f"(mean score {_f(o['confidence']['ood'].get('mean'))} against "
        f"{_f(o['confidence']['in'].get('mean'))} in-distribution)."
    ]
    if o.get("auroc_max_score") is not None:
        parts.append(
            f"AUROC in- vs out-of-distribution: {_f(o['auroc_max_score'], 2)} by max score"
        )
        if o.get("auroc_entropy") is not None:
            parts[-1] += f", {_f(o['auroc_entropy'], 2)} by entropy"
        parts[-1] += " (0.5 = cannot tell them apart)."
    return {
        "topic": "OOD",
        "severity": "problem" if o["fp_per_image"] >= 0.5 else "info",
        "text": " ".join(parts),
    }


def shift_rows(sh: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    sevs = [str(s) for s in sh["severities"]]
    head = ["corruption", "metric", "clean", *[f"sev {s}" for s in sevs]]
    rows = []
    for n in [*sh["corruptions"], "mean"]:
        for key in ("dece", "ece", "map"):
            if n == "mean":
                vals = [sh["mean_by_severity"][key][s] for s in sevs]
            else:
                vals = [sh["grid"][n][s].get(key) for s in sevs]
            rows.append(
                [
                    n.replace("_", " ") if key == "dece" else "",
                    _label(key),
                    _f(sh["clean"][key]),
                    *map(_f, vals),
                ]
            )
    return head, rows


def ood_rows(o: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["measure", "in-distribution", "OOD images"]
    rows = [
        ["detections", str(o["confidence"]["in"]["n"]), str(o["confidence"]["ood"]["n"])],
        [
            "mean score",
            _f(o["confidence"]["in"].get("mean")),
            _f(o["confidence"]["ood"].get("mean")),
        ],
        [
            "median score",
            _f(o["confidence"]["in"].get("quantiles", {}).get("p50")),
            _f(o["confidence"]["ood"].get("quantiles", {}).get("p50")),
        ],
    ]
    if o.get("entropy"):
        rows.append(
            [
                "mean entropy (nats)",
                _f(o["entropy"]["in"].get("mean")),
                _f(o["entropy"]["ood"].get("mean")),
            ]
        )
    for t, v in o["fp_per_image_by_threshold"].items():
        rows.append([f"false positives / image, score > {t}", "", f"{v:.2f}"])
    rows.append(["AUROC by max score", "", _f(o.get("auroc_max_score"), 2)])
    if o.get("auroc_entropy") is not None:
        rows.append(["AUROC by entropy", "", _f(o.get("auroc_entropy"), 2)])
    return head, rows


def repair_rows(rp: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = [
        "repair",
        "kind",
        "D-ECE",
        "ECE",
        "debiased ECE (L2)",
        "NLL",
        "mAP",
        "AP50",
        "CV D-ECE (cal split)",
        "mean D-ECE sev 3",
    ]
    rows = []
    for name, r in rp["repairs"].items():
        t = r["test"]
        cv = r.get("cv") or {}
        if name == "finetune" and r.get("history"):
            h = r["history"]
            cvs = f"{_f(h[0]['val_dece'])} → {_f(min(x['val_dece'] for x in h))} (held out)"
        else:
            cvs = f"{_f(cv.get('dece_raw'))} → {_f(cv.get('dece'))}" if cv else "–"
        s3 = (r.get("shift_mean_by_severity") or {}).get("dece", {}).get("3")
        rows.append([
            name, r.get("kind", ""), _ci(t["dece"]), _ci(t["ece"]), _ci(t.get("ece_debiased", {})),
            _ci(t.get("nll", {})), _ci(t["map"]), _ci(t["ap50"]), cvs, _f(s3),
        ])  # fmt: skip
    return head, rows


def _matching(data: Mapping[str, Any]) -> dict[str, str] | None:
    """Name the matching rule used, and what the other rule says (the verdict can flip)."""
    from calibration.audit import RULE_TEXT

    p = data["perspectives"][primary_perspective(data)]
    mr = p.get("matching_rules")
    if not mr:
        return None
    used = mr["rules"].get(mr["used"], {})
    others = [
        (k, r) for k, r in mr["rules"].items() if k != mr["used"] and r.get("ece") is not None
    ]
    if used.get("ece") is None or not others:
        return None
    said = [
        f"'{k}': ECE {_f(r['ece'])}, D-ECE {_f(r['dece'])}, precision {_pct(r['precision'])} ({_direction(r['gap'])})"
        for k, r in others
    ]
    flips = any(_direction(r["gap"]) != _direction(used["gap"]) for _, r in others)
    return {
        "topic": "matching",
        "severity": "problem" if flips else "info",
        "text": f"Matched with the {RULE_TEXT.get(mr['used'], mr['used'])} rule at IoU ≥ {mr['iou']:g}: ECE "
        f"{_f(used['ece'])}, D-ECE {_f(used['dece'])}, precision {_pct(used['precision'])} ({_direction(used['gap'])}). "
        f"With the other rule, {'; '.join(said)}."
        + (" The verdict depends on the rule." if flips else ""),
    }


def _detection_sets(data: Mapping[str, Any]) -> dict[str, str] | None:
    """Say that AP and the calibration metrics count different detection sets when they do."""
    p = data["perspectives"][primary_perspective(data)]
    c = p["counts"]
    n_ap, n = c.get("ap_detections"), c["detections"]
    if n_ap is None or n_ap >= n:
        return None
    md = data["inputs"]["metrics_config"].get("ap_max_dets", 100)
    return {
        "topic": "inputs",
        "severity": "info",
        "text": f"AP keeps the {md} best detections per image and class, as COCO does ({n_ap} of {n}); "
        f"ECE, D-ECE and the other calibration metrics use all {n}.",
    }


def _perspectives(data: Mapping[str, Any]) -> dict[str, str] | None:
    ps = data["perspectives"]
    if "application" not in ps or "modeling" not in ps:
        return None
    a, m = ps["application"], ps["modeling"]
    parts = [
        f"Post-processing changes the picture: before it (modeling perspective, {m['counts']['detections']} proposals) "
        f"ECE is {_f(m['metrics']['ece']['value'])} and D-ECE {_f(m['metrics']['dece']['value'])}; after it "
        f"({a['counts']['detections']} detections) ECE is {_f(a['metrics']['ece']['value'])} and D-ECE "
        f"{_f(a['metrics']['dece']['value'])}."
    ]
    if (
        m["metrics"].get("nll", {}).get("value") is not None
        and a["metrics"].get("nll", {}).get("value") is not None
    ):
        parts.append(
            f"NLL {_f(m['metrics']['nll']['value'])} → {_f(a['metrics']['nll']['value'])}."
        )
    return {"topic": "perspective", "severity": "info", "text": " ".join(parts)}


# --------------------------------------------------------------------------- tables


def _descr(template: str, mc: Mapping[str, Any]) -> str:
    dims = [d for d in mc.get("dece_dims", []) if d != "confidence"]
    return template.format(
        bins=mc.get("bins"),
        strategy="equal-width" if mc.get("bin_strategy", "width") == "width" else "equal-mass",
        iou=mc.get("iou_threshold"),
        dims=", ".join(dims) or "(none)",
        dece_bins="×".join(str(b) for b in mc.get("dece_bins", [])),
        laece_bins=mc.get("laece_bins"),
        classwise_norm=str(mc.get("classwise_norm", "")).upper(),
    )


def metric_rows(data: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main table: every metric with its CI, per perspective."""
    names = list(data["perspectives"])
    mc = data["inputs"]["metrics_config"]
    head = ["metric", *[PERSPECTIVE_LABEL.get(n, n) for n in names], "what it measures"]
    rows = []
    for key, label, what in METRICS:
        if not any(key in data["perspectives"][n]["metrics"] for n in names):
            continue
        rows.append(
            [
                label,
                *[
                    _ci(data["perspectives"][n]["metrics"].get(key, {"skipped": "-"}))
                    for n in names
                ],
                _descr(what, mc),
            ]
        )
    for ckey, clabel in (
        ("detections", "detections"),
        ("tp", f"true positives (IoU ≥ {mc['iou_threshold']:g})"),
        ("ignored", "in crowd/ignore regions"),
    ):
        rows.append(
            [clabel, *[str(data["perspectives"][n]["counts"][ckey]) for n in names], "count"]
        )
    return head, rows


def class_table(p: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One record per class in the order the class finding ranks them (:func:`ranked`:
    worst first, then the classes too small to rank, by category id).

    ``ece``, ``z``, ``n``, ``confidence`` and ``precision`` are the class's group numbers
    (``classes`` in ``audit.json``: the audit's ECE on the class's detections outside
    crowd/ignore regions), so the table, the bars and the sentence quote the same values;
    ``rank`` is None for unranked classes, with ``why`` saying why.
    """
    classes = p.get("classes") or {}
    per_cat = {str(k): v for k, v in p["per_category"].items()}
    order = ranked(classes)
    rest = [k for k in per_cat if k not in order]
    rows = []
    for k in [*order, *rest]:
        c, g = per_cat.get(k, {}), classes.get(k, {})
        n = g.get("n", c.get("n_detections", 0))
        rank = order.index(k) + 1 if k in order else None
        why = None
        if rank is None:
            why = "no detections" if not n else f"fewer than {MIN_GROUP} detections"
        rows.append(
            {
                "id": k,
                "name": c.get("name", g.get("name", k)),
                "rank": rank,
                "why": why,
                "n_gt": c.get("n_gt"),
                "n_detections": n,
                "n_ignored": max(int(c.get("n_detections", n)) - int(n), 0),
                "n_tp": c.get("n_tp"),
                "ap": c.get("ap"),
                "ap50": c.get("ap50"),
                "ece": g["ece"] if "ece" in g else c.get("ece"),
                "ece_random": g.get("ece_random"),
                "ece_random_sd": g.get("ece_random_sd"),
                "z": g.get("z"),
                "laece": c.get("laece"),
                "confidence": g.get("confidence"),
                "precision": g.get("precision"),
            }
        )
    return rows


def class_rows(p: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The per-class table, ranked as the class finding ranks (see :func:`class_table`)."""
    head = [
        "rank (by z)",
        "class",
        "objects",
        "detections",
        "TP",
        "AP",
        "AP50",
        "ECE",
        "ECE of random subsets",
        "z",
        "LaECE",
        "mean score",
        "precision",
    ]
    rows = []
    for r in class_table(p):
        dets = str(r["n_detections"]) + (f" (+{r['n_ignored']} in crowd/ignore)" if r["n_ignored"] else "")
        rand = (
            f"{_f(r['ece_random'])} ± {_f(r['ece_random_sd'])}" if r["ece_random"] is not None else "–"
        )
        rows.append(
            [
                str(r["rank"]) if r["rank"] is not None else f"– ({r['why']})",
                f"{r['name']} ({r['id']})",
                str(r["n_gt"]),
                dets,
                str(r["n_tp"]),
                _f(r["ap"]),
                _f(r["ap50"]),
                _f(r["ece"]),
                rand,
                "–" if r["z"] is None else f"{r['z']:+.1f}",
                _f(r["laece"]),
                _f(r["confidence"], 2),
                _pct(r["precision"]),
            ]
        )
    return head, rows


def class_note(p: Mapping[str, Any]) -> str:
    """What the per-class table ranks, above it."""
    return (
        f"Ranked as the class finding ranks them: by z, how many standard deviations a class's ECE "
        f"lies above the ECE of random subsets of the same size drawn from all detections (1 = worst; "
        f"a small class is not called worst for its binning noise). Classes with fewer than {MIN_GROUP} "
        "detections are not ranked. ECE: the audit's ECE on the class's detections outside crowd/ignore "
        "regions, with the audit's bins."
    )


def sweep_rows(sw: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["setting", "value", "detections", "D-ECE", "ECE", "LaECE", "MCE", "mAP", "AP50"]
    rows = []
    for key in ("score_threshold", "nms_iou", "topk"):
        s = sw.get(key)
        if not s:
            continue
        for q in s["points"]:
            m = q["metrics"]
            mark = " (audited)" if q.get("audited") else ""
            rows.append(
                [
                    s["label"],
                    f"{q['value']:g}{mark}",
                    str(q["detections"]),
                    _f(m["dece"]),
                    _f(m["ece"]),
                    _f(m["laece"]),
                    _f(m["mce"]),
                    _f(m["map"]),
                    _f(m["ap50"]),
                ]
            )
    return head, rows


def group_rows(p: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Where the miscalibration sits: image regions and box sizes."""
    head = [
        "group",
        "detections",
        "mean score",
        "precision",
        "gap",
        "ECE",
        "ECE if calibrated (p95)",
        "ECE of random subsets",
        "z",
    ]
    rows = []
    band = p.get("regions_band", 0.2)
    for k, g in (p.get("regions") or {}).items():
        rows.append(
            [f"region: {k}" + ("" if k == "interior" else f" (outer {band:.0%})"), *_group_cells(g)]
        )
    sizes = p.get("sizes") or {}
    for k, g in sizes.items():
        if "below_px" in g:
            span = f"< {g['below_px']:.0f} px"
        elif "above_px" in g:
            span = f"≥ {g['above_px']:.0f} px"
        else:
            span = "{:.0f}–{:.0f} px".format(*g.get("range_px", [0, 0]))
        rows.append([f"size: {k} ({span})", *_group_cells(g)])
    return head, rows


def _group_cells(g: Mapping[str, Any]) -> list[str]:
    gap = "–" if g.get("gap") is None else f"{g['gap']:+.3f}"
    chance = f"{_f(g.get('ece_chance'))} ({_f(g.get('ece_chance_p95'))})"
    rand = (
        f"{_f(g.get('ece_random'))} ± {_f(g.get('ece_random_sd'))}"
        if g.get("ece_random") is not None
        else "–"
    )
    z = "–" if g.get("z") is None else f"{g['z']:+.1f}"
    return [
        str(g["n"]),
        _f(g["confidence"], 3),
        _pct(g["precision"]),
        gap,
        _f(g["ece"]),
        chance,
        rand,
        z,
    ]


# --------------------------------------------------------------------------- false positives


#: How many of the most over-confident false positives the report shows.
FP_EXAMPLES = 6


def false_positive_examples(
    dets: Detections,
    gt: GroundTruth,
    valid: np.ndarray,
    tp: np.ndarray,
    iou_threshold: float,
    k: int = FP_EXAMPLES,
) -> list[dict[str, Any]]:
    """The ``k`` highest-scored false positives (matched to no object, outside crowd/ignore
    regions), for the report's example crops; each says why it is wrong.

    ``valid`` and ``tp`` are per detection, as the audit's matching gives them. Each record
    holds the image (id, ``file_name``), the box (xywh, pixels), class, score, a crop window
    around the box (``[x0, y0, x1, y1]``: the box plus its own size on every side, at
    least 16 px, clipped to the image), the ground-truth boxes inside that window with
    their IoU, and ``why``: a duplicate of a matched object, the wrong class, a poorly
    placed box, or background.
    """
    fp = np.flatnonzero(np.asarray(valid, bool) & ~np.asarray(tp, bool))
    order = fp[np.argsort(-dets.score[fp], kind="stable")][:k]
    a = gt.annotations
    rows = gt.images.index_of(dets.image_id[order])
    out: list[dict[str, Any]] = []
    for rank, (i, row) in enumerate(zip(order.tolist(), rows.tolist(), strict=True), 1):
        x, y, w, h = (float(v) for v in dets.bbox[i])
        img = int(dets.image_id[i])
        cid = int(dets.category_id[i])
        width, height = float(gt.images.width[row]), float(gt.images.height[row])
        pad = max(w, h, 16.0)
        crop = [max(0.0, x - pad), max(0.0, y - pad), min(width, x + w + pad), min(height, y + h + pad)]
        on = np.flatnonzero((a.image_id == img) & ~a.is_region)
        ious = _iou_xywh(dets.bbox[i], a.bbox[on])
        same = a.category_id[on] == cid
        truth = []
        for j, iou in zip(on.tolist(), ious.tolist(), strict=True):
            bx, by, bw, bh = (float(v) for v in a.bbox[j])
            if bx < crop[2] and by < crop[3] and bx + bw > crop[0] and by + bh > crop[1]:
                cat = int(a.category_id[j])
                truth.append({"bbox": [bx, by, bw, bh], "category": gt.categories.get(cat, str(cat)), "iou": iou})
        name = gt.categories.get(cid, str(cid))
        out.append(
            {
                "rank": rank,
                "image_id": img,
                "file_name": str(gt.images.file_name[row]),
                "category_id": cid,
                "category": name,
                "score": float(dets.score[i]),
                "bbox": [x, y, w, h],
                "crop": crop,
                "truth": truth,
                "why": _fp_why(name, ious, same, a.category_id[on], gt.categories, iou_threshold),
            }
        )
    return out


def _iou_xywh(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xywh box with each of ``boxes`` (M, 4)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0 = np.maximum(box[0], b[:, 0]), np.maximum(box[1], b[:, 1])
    x1 = np.minimum(box[0] + box[2], b[:, 0] + b[:, 2])
    y1 = np.minimum(box[1] + box[3], b[:, 1] + b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = box[2] * box[3] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _fp_why(
    name: str,
    ious: np.ndarray,
    same: np.ndarray,
    cats: np.ndarray,
    categories: Mapping[int, str],
    thr: float,
) -> str:
    """Why a false positive is one, from its overlaps with the image's objects."""
    best_same = float(ious[same].max()) if same.any() else 0.0
    other = ~same
    best_other = float(ious[other].max()) if other.any() else 0.0
    if best_same >= thr:
        return f"duplicate: the {name} it covers (IoU {best_same:.2f}) is matched to a higher-scored box"
    if best_other >= thr:
        j = int(np.flatnonzero(other)[np.argmax(ious[other])])
        return f"wrong class: on a {categories.get(int(cats[j]), str(cats[j]))} (IoU {best_other:.2f})"
    if best_same > 0.1:
        return f"poorly placed: IoU {best_same:.2f} < {thr:g} with a {name}"
    if best_other > 0.1:
        j = int(np.flatnonzero(other)[np.argmax(ious[other])])
        return (
            f"wrong class, poorly placed: overlaps a {categories.get(int(cats[j]), str(cats[j]))} "
            f"(IoU {best_other:.2f})"
        )
    return "background: overlaps no object (IoU ≤ 0.1)"


def example_images(
    data: Mapping[str, Any], folder: str | os.PathLike[str] | None = None
) -> tuple[dict[int, Path], str | None]:
    """Where the primary perspective's false-positive examples' images are, or why not.

    The images are the audit's own inputs: the COCO images folder or the generated sample
    set (``folder/data`` while the audit is being written into ``folder``), the scene of a
    scene audit. A predictions-only audit has none. ``file_name`` may not leave the folder.
    """
    inp = data["inputs"]
    ex = data["perspectives"][primary_perspective(data)].get("false_positives") or []
    mode = inp.get("mode")
    if mode in ("scene", "scene files"):
        scene = inp.get("scene")
        if scene and Path(scene).is_file() and data["dataset"]["images"] == 1:
            return {int(e["image_id"]): Path(scene) for e in ex}, None
        return {}, f"the scene ({scene}) could not be read back"
    if mode != "model" or not (inp.get("images") or inp.get("sample")):
        return {}, (
            "this audit read a predictions file and annotations only, no images; audit with a "
            "config whose data section names the images to see them"
        )
    root = Path(folder) / "data" if inp.get("sample") and folder is not None else Path(inp["images"])
    paths: dict[int, Path] = {}
    for e in ex:
        try:
            path = resolve_inside(root, str(e["file_name"]), root, "image file_name")
        except TrustmapError:
            continue
        if path.is_file():
            paths[int(e["image_id"])] = path
    if ex and not paths:
        return {}, f"their images are no longer in {root}"
    return paths, None


def _fp_intro(data: Mapping[str, Any], examples: Sequence[Mapping[str, Any]]) -> str:
    name = primary_perspective(data)
    iou = data["inputs"]["metrics_config"]["iou_threshold"]
    return (
        f"The {len(examples)} highest-scored detections ({PERSPECTIVE_WHERE.get(name, name)}) that match no "
        f"object of their class at IoU ≥ {iou:g}. Red: the detection; green, dashed: ground truth nearby."
    )


def _fp_rows(examples: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = ["#", "image", "class", "score", "box (x, y, w, h px)", "why it is wrong"]
    rows = [
        [
            str(e["rank"]),
            f"{e['image_id']} ({e['file_name']})" if e.get("file_name") else str(e["image_id"]),
            str(e["category"]),
            f"{e['score']:.3f}",
            ", ".join(f"{v:.0f}" for v in e["bbox"]),
            str(e["why"]),
        ]
        for e in examples
    ]
    return head, rows


def _fp_missing(data: Mapping[str, Any]) -> str:
    """The one line said in place of the crops."""
    _, why = example_images(data)
    return f"No example crops: {why or 'the images could not be read'}."


def _false_positives_html(data: Mapping[str, Any], figures: Mapping[str, bytes]) -> list[str]:
    examples = data["perspectives"][primary_perspective(data)].get("false_positives")
    if examples is None:  # an audit.json from before the examples were kept
        return []
    out = ["<h2 id='false-positives'>Most over-confident false positives</h2>"]
    if not examples:
        return [*out, "<p class='note'>No false positives: every detection matches an object.</p>"]
    out.append(f"<p class='note'>{html.escape(_fp_intro(data, examples))}</p>")
    if "false_positives" in figures:
        out.append(
            f"<div class='figs'>{_figure_html('false_positives', figures['false_positives'], data, wide=True)}</div>"
        )
    else:
        out.append(f"<p class='note missing-crops'>{html.escape(_fp_missing(data))}</p>")
    out.append(_table(*_fp_rows(examples)))
    return out


def _false_positives_md(data: Mapping[str, Any]) -> list[str]:
    examples = data["perspectives"][primary_perspective(data)].get("false_positives")
    if examples is None:
        return []
    out = ["", "## Most over-confident false positives", ""]
    if not examples:
        return [*out, "No false positives: every detection matches an object."]
    out += [md_escape(_fp_intro(data, examples)), ""]
    path = (data.get("figures") or {}).get("false_positives")
    if path:
        out += [f"![false_positives]({path})", "", f"_{caption('false_positives', data)}_", ""]
    else:
        out += [md_escape(_fp_missing(data)), ""]
    return [*out, _md_table(*_fp_rows(examples))]


# --------------------------------------------------------------------------- HTML


CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'DejaVu Sans',Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 10px;border-bottom:2px solid #e3e6ea;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 8px}.sub{color:#5b6472;font-size:13px;margin:0 0 18px}
.findings{border-left:5px solid #D55E00;background:#fff6f0;padding:12px 18px 12px 14px;margin:12px 0}
.findings h2{border:0;margin:0 0 6px;padding:0;font-size:18px}
.findings ul{margin:0;padding-left:20px}.findings li{margin:6px 0;line-height:1.45;font-size:14.5px}
li.ok{color:#2d5a3a}li.info{color:#33415c}li.problem{color:#1d2330}
.tag{display:inline-block;font-size:11px;font-weight:600;text-transform:uppercase;border-radius:3px;padding:0 5px;
margin-right:6px;letter-spacing:.03em}.tag.problem{background:#D55E00;color:#fff}.tag.ok{background:#009E73;color:#fff}
.tag.info{background:#0072B2;color:#fff}
table{border-collapse:collapse;font-size:13px;margin:6px 0 8px;width:100%}
th,td{border-bottom:1px solid #e3e6ea;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
tr.key td{background:#f8fafc;font-weight:600}td.what{color:#5b6472;font-size:12px}
.figs{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:14px;align-items:start}
@media (max-width:800px){.figs{grid-template-columns:1fr}}
figure{margin:0;border:1px solid #e3e6ea;padding:6px;background:#fff}figure img{width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#5b6472;padding:4px 2px 0}
figure.wide{grid-column:1/-1}pre{background:#f6f8fa;padding:10px;font-size:11.5px;overflow-x:auto}
.note{color:#5b6472;font-size:12.5px}
"""

FIGURE_CAPTIONS = {
    "shift": "Each metric per corruption (rows) and severity (columns), the clean test images in "
    "the first column and the mean over corruptions in the last row. Point estimates.",
    "ood": "Share of detections per score (and entropy) bin on in-distribution test images and on "
    "images with none of the known classes; AUROC of telling them apart.",
    "repair": "Left: test-split D-ECE with its bootstrap interval, and mAP, of the original "
    "detector and each repair (all fitted on the calibration split). Right: mean D-ECE over "
    "corruptions per severity.",
    "reliability": "Reliability diagram: observed precision per score bin (blue), its gap to the score (red), "
    "counts below. Bars under the diagonal are over-confident.",
    "position": "Calibration gap (score − precision; red: over-confident) by box centre, as D-ECE bins it; "
    "image axes (top-left is the image's top-left).",
    "size": "Calibration gap (score − precision; red: over-confident) by box width and height (pixels, "
    "equal-mass bins).",
    "classes": "Per class: calibration errors (left) next to AP (right), in the per-class table's order "
    "(ranked by z, worst first; classes too small to rank last).",
    "sweeps": "How post-processing moves calibration (left axis) and mAP (right axis); one setting changed at a time.",
    "false_positives": "Each crop: the false positive's box (red) with its class and score, the image id, "
    "and the ground-truth boxes around it (green, dashed).",
}


def _table(
    head: Sequence[str], rows: Sequence[Sequence[str]], key_rows: int = 0, what_col: bool = False
) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = []
    for i, r in enumerate(rows):
        cells = []
        for j, v in enumerate(r):
            cls = "what" if what_col and j == len(r) - 1 else ("num" if j else "")
            cells.append(
                f"<td class='{cls}'>{html.escape(v)}</td>" if cls else f"<td>{html.escape(v)}</td>"
            )
        body.append(f"<tr{' class=key' if i < key_rows else ''}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _subtitle(data: Mapping[str, Any]) -> str:
    inp, ds = data["inputs"], data["dataset"]
    if inp["mode"] == "model":
        d = inp["detector"]
        src = f"detector {d['model']} ({d['weights']})"
    elif inp["mode"] == "scene":
        src = f"detector {inp['detector']['model']} over scene {inp['scene']}"
    elif inp["mode"] == "scene files":
        src = f"predictions {inp['predictions']} on scene {inp['scene']}"
    else:
        src = f"predictions {inp['predictions']}"
    truth = inp.get("annotations") or inp.get("truth")
    return (
        f"{src} · ground truth {truth} · {ds['images']} images, {ds['objects']} objects, "
        f"{len(ds['categories'])} classes · {data['created']}"
    )


def caption(name: str, data: Mapping[str, Any]) -> str:
    """A figure's caption; heat maps say how few detections grey a cell out."""
    kind, _, persp = name.partition("_")
    cap = FIGURE_CAPTIONS.get(name) or FIGURE_CAPTIONS.get(kind, "")
    grid = (
        (data["perspectives"].get(persp) or {}).get(kind) if kind in ("position", "size") else None
    )
    if grid and grid.get("min_count"):
        cap += f" Grey: fewer than {grid['min_count']} detections."
    return cap


def _figure_html(name: str, png: bytes, data: Mapping[str, Any], wide: bool = False) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    cap = caption(name, data)
    cls = " class='wide'" if wide else ""
    return (
        f"<figure{cls}><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>"
        f"<figcaption>{html.escape(cap)}</figcaption></figure>"
    )


def render_html(data: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """One self-contained HTML page: findings, tables, figures, inputs (no external assets)."""
    esc = html.escape
    level = round(100 * data["inputs"]["metrics_config"].get("ci_level", 0.95))
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(data['title'])}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{esc(data['title'])}</h1><p class='sub'>{esc(_subtitle(data))}</p>",
        "<section class='findings'><h2>What is wrong, and where</h2><ul>",
    ]
    for f in data["findings"]:
        sev = f["severity"]
        parts.append(
            f"<li class='{sev}'><span class='tag {sev}'>{esc(f['topic'])}</span>{esc(f['text'])}</li>"
        )
    parts.append("</ul></section>")
    head, rows = metric_rows(data)
    parts += [
        "<h2>Metrics</h2>",
        f"<p class='note'>Value [{level}% bootstrap interval over images, "
        f"{data['inputs']['metrics_config']['n_boot']} resamples]. Calibration errors: lower is better. "
        f"{_ci_note(data)}</p>",
        _table(head, rows, key_rows=2, what_col=True),
    ]
    parts += _extra_sections_html(data, figures)
    for name, p in data["perspectives"].items():
        parts.append(
            f"<h3>Where: image regions and box sizes — {esc(PERSPECTIVE_LABEL.get(name, name))}</h3>"
        )
        parts.append(_table(*group_rows(p)))
        parts.append(
            f"<h3 id='classes-{esc(name)}'>Per class — {esc(PERSPECTIVE_LABEL.get(name, name))}</h3>"
        )
        parts.append(f"<p class='note'>{esc(class_note(p))}</p>")
        parts.append(_table(*class_rows(p)))
    parts += _false_positives_html(data, figures)
    sw = data.get("sweeps") or {}
    if sw:
        parts += [
            f"<h2>Post-processing sweeps ({esc(sw['perspective'])} perspective)</h2>",
            f"<p class='note'>{esc(sw['note'])}. Point estimates, no intervals.</p>",
            _table(*sweep_rows(sw)),
        ]
        if "sweeps" in figures:
            parts.append(
                f"<div class='figs'>{_figure_html('sweeps', figures['sweeps'], data, wide=True)}</div>"
            )
    for name in data["perspectives"]:
        parts.append(
            f"<h2>Figures — {esc(PERSPECTIVE_LABEL.get(name, name))}</h2><div class='figs'>"
        )
        for kind in ("reliability", "position", "size"):
            key = f"{kind}_{name}"
            if key in figures:
                parts.append(_figure_html(key, figures[key], data))
        key = f"classes_{name}"
        if key in figures:
            parts.append(_figure_html(key, figures[key], data))
        parts.append("</div>")
    parts += [
        "<h2>Inputs</h2>",
        _table(["input", "value"], _input_rows(data)),
        "<h3>Configuration (as run, defaults filled in)</h3>",
        f"<pre>{esc(config_text(data))}</pre>",
        "<p class='note'>Every number above, with its interval, is in audit.json next to this file.</p>",
        "</main></body></html>",
    ]
    return "\n".join(parts)


def _extra_sections_html(data: Mapping[str, Any], figures: Mapping[str, bytes]) -> list[str]:
    """Repair, shift and OOD sections (when the audit measured them)."""
    out = []
    if data.get("repair"):
        rp = data["repair"]
        cs = rp["calibration_split"]
        out += [
            "<h2>Repair</h2>",
            f"<p class='note'>Every calibrator and the fine-tuned last layer were fitted on the calibration "
            f"split only ({cs['images']} images, {cs['detections']} detections; mode {html.escape(rp['mode'])}) "
            "and are judged here on the test split, with bootstrap intervals, and under corruption. "
            "CV D-ECE: cross-validated over calibration images (fine-tuning: its held-out part, before → best epoch).</p>",
            _table(*repair_rows(rp)),
        ]
        if "repair" in figures:
            out.append(
                f"<div class='figs'>{_figure_html('repair', figures['repair'], data, wide=True)}</div>"
            )
    if data.get("shift"):
        sh = data["shift"]
        out += [
            "<h2>Under distribution shift</h2>",
            f"<p class='note'>{len(sh['corruptions'])} corruptions (COCO-C's, on albumentations; parameters in "
            f"docs/corruptions.md) at severities {', '.join(map(str, sh['severities']))} on the first "
            f"{sh['images']} test images, seed {sh['seed']}. Point estimates.</p>",
        ]
        if "shift" in figures:
            out.append(
                f"<div class='figs'>{_figure_html('shift', figures['shift'], data, wide=True)}</div>"
            )
        out.append(_table(*shift_rows(sh)))
    if data.get("ood"):
        out += [
            "<h2>Out-of-distribution images</h2>",
            f"<p class='note'>{data['ood']['images']} images with none of the known classes "
            f"({data['ood']['known_class_objects']} known-class objects): every detection on them is a false positive.</p>",
            _table(*ood_rows(data["ood"])),
        ]
        if "ood" in figures:
            out.append(
                f"<div class='figs'>{_figure_html('ood', figures['ood'], data, wide=True)}</div>"
            )
    return out


def _extra_sections_md(data: Mapping[str, Any]) -> list[str]:
    out = []
    if data.get("repair"):
        out += [
            "",
            "## Repair",
            "",
            "Fitted on the calibration split only; judged on the test split.",
            "",
            _md_table(*repair_rows(data["repair"])),
        ]
    if data.get("shift"):
        out += ["", "## Under distribution shift", "", _md_table(*shift_rows(data["shift"]))]
    if data.get("ood"):
        out += ["", "## Out-of-distribution images", "", _md_table(*ood_rows(data["ood"]))]
    return out


def _input_rows(data: Mapping[str, Any]) -> list[list[str]]:
    inp = data["inputs"]
    rows = [["mode", inp["mode"]]]
    for key in ("predictions", "annotations", "images", "scene", "truth", "detections_gpkg", "score_column", "bands", "calibrator", "config_path"):
        if inp.get(key):
            rows.append([key.replace("_", " "), str(inp[key])])
    if inp.get("tiling"):
        rows.append(["tiling", ", ".join(f"{k}={v}" for k, v in inp["tiling"].items())])
    if inp.get("detector"):
        d = inp["detector"]
        rows.append(["detector", d["model"]])
        if "weights" in d:
            rows.append(["weights", d["weights"]])
        if "head" in d:
            rows.append(["head", d["head"]])
        if "postprocess" in d:
            rows.append(["post-processing", ", ".join(f"{k}={v}" for k, v in d["postprocess"].items())])
    mc = inp["metrics_config"]
    rows.append(["matching", f"{mc['match_mode']}, IoU ≥ {mc['iou_threshold']:g}, class-aware"])
    rows.append(["versions", ", ".join(f"{k} {v}" for k, v in inp["versions"].items())])
    if data.get("timings_s"):
        rows.append(
            ["timings (s)", ", ".join(f"{k} {v:.1f}" for k, v in data["timings_s"].items())]
        )
    return rows


def config_text(data: Mapping[str, Any]) -> str:
    """The settings that shaped the numbers, as YAML: the config's sections that apply, with
    the metric settings resolved (the config leaves unset ones to the library defaults)."""
    cfg = {k: v for k, v in data["inputs"]["config"].items() if v is not None}
    if data["inputs"]["mode"] != "model":
        for k in ("perspectives", "postprocess", "detector", "data"):
            cfg.pop(k, None)
    cfg["metrics"] = data["inputs"]["metrics_config"]
    return yaml.safe_dump(
        cfg, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100
    )


# --------------------------------------------------------------------------- Markdown


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*|"} | {"<": "&lt;", ">": "&gt;"})


def md_escape(text: Any) -> str:
    """Text (category names, findings) as literal Markdown: no HTML, no emphasis, no links."""
    return str(text).translate(_MD_SPECIAL)


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    clean = md_escape
    lines = ["| " + " | ".join(clean(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(clean(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(data: Mapping[str, Any]) -> str:
    """Markdown for a review: findings, tables, and figures referenced as ``figures/*.png``."""
    level = round(100 * data["inputs"]["metrics_config"].get("ci_level", 0.95))
    out = [f"# {data['title']}", "", f"_{_subtitle(data)}_", "", "## What is wrong, and where", ""]
    out += [f"- **{md_escape(f['topic'])}** ({f['severity']}): {md_escape(f['text'])}" for f in data["findings"]]
    head, rows = metric_rows(data)
    out += [
        "",
        "## Metrics",
        "",
        f"Value [{level}% bootstrap interval over images]. Calibration errors: lower is better. {_ci_note(data)}",
        "",
        _md_table(head, rows),
    ]
    out += _extra_sections_md(data)
    for name, p in data["perspectives"].items():
        label = PERSPECTIVE_LABEL.get(name, name)
        out += [
            "",
            f"### Where: image regions and box sizes — {label}",
            "",
            _md_table(*group_rows(p)),
            "",
            f"### Per class — {label}",
            "",
            class_note(p),
            "",
            _md_table(*class_rows(p)),
        ]
    out += _false_positives_md(data)
    sw = data.get("sweeps") or {}
    if sw:
        out += [
            "",
            f"## Post-processing sweeps ({sw['perspective']} perspective)",
            "",
            f"{sw['note']}.",
            "",
            _md_table(*sweep_rows(sw)),
        ]
    figs = data.get("figures") or {}
    if figs:
        out += ["", "## Figures", ""]
        for name, path in figs.items():
            if name == "false_positives":  # shown in its own section
                continue
            cap = caption(name, data)
            out += [f"![{name}]({path})", "", f"_{name}: {cap}_", ""]
    out += [
        "## Inputs",
        "",
        _md_table(["input", "value"], _input_rows(data)),
        "",
        "### Configuration (as run, defaults filled in)",
        "",
        "```yaml",
        config_text(data).rstrip(),
        "```",
        "",
    ]
    return "\n".join(out)
