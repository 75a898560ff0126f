"""The report of a refinement run: every number in ``report.json``, the story in ``report.html``.

The HTML is one self-contained file (figures embedded as PNG data URIs, no scripts, no
external CSS), so it can be mailed or archived next to the refined mask and read without
running anything. It opens with one sentence saying whether the refined labels beat the
cheap ones and by how much, then shows learning curves against the budget spent, per-class
IoU before and after, the per-round record and where the time went.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tiles.classes import ClassSchema
from tiles.io import jsonable, write_text_atomic

REPORT_FORMAT = "trustmap.refine.report/1"
STEPS = ("train", "predict", "score", "select", "review", "evaluate", "write")


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _num(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def summarise(
    setup: dict[str, Any], rounds: list[dict[str, Any]], final: dict[str, Any] | None
) -> dict[str, Any]:
    """Cheap-vs-refined headline numbers and the sentence that opens the report."""
    cheap = setup["labels"]["scores"]
    last = rounds[-1] if rounds else setup
    refined = last["labels"]["scores"]
    spent = last["budget"]["spent_total"]
    frac = last["budget"]["spent_fraction"]
    unit = setup["budget"]["unit"]
    recall = last["labels"]["errors"]["error_recall"]
    gain = refined["miou"] - cheap["miou"]
    acc_gain = refined["accuracy"] - cheap["accuracy"]
    beats = gain > 0
    verdict = "beat" if beats else ("match" if gain == 0 else "do not beat")
    sentence = (
        f"The refined labels {verdict} the cheap ones: mIoU {cheap['miou']:.3f} → {refined['miou']:.3f} "
        f"({gain:+.3f}), pixel accuracy {_pct(cheap['accuracy'])} → {_pct(refined['accuracy'])} "
        f"({100 * acc_gain:+.1f} points), after an expert reviewed {_pct(frac)} of the scene "
        f"({spent:g} {unit}) in {len(rounds)} round{'s' if len(rounds) != 1 else ''}; "
        f"{_pct(recall)} of the wrong pixels were fixed."
    )
    errors = last["labels"]["errors"]
    auto = last.get("autocorrect") or {}
    curated = auto.get("curated_labels")
    expert = curated if curated is not None else errors
    auto_truth = auto.get("truth") or {}
    net = {
        "cheap_error_rate": setup["labels"]["errors"]["error_rate"],
        "refined_error_rate": errors["error_rate"],
        "expert_fixed": expert["fixed"],
        "expert_made_wrong": expert["introduced"],
        "auto_corrected": int(auto.get("pixels") or 0),
        "auto_threshold": auto.get("threshold"),
        "auto_estimated_precision": auto.get("estimated_precision"),
        "auto_fixed": auto_truth.get("fixed"),
        "auto_made_wrong": auto_truth.get("broken"),
        "auto_precision": auto_truth.get("precision"),
    }
    sentence += (
        f" Net change: label error {_pct(net['cheap_error_rate'])} → {_pct(net['refined_error_rate'])}; the "
        f"expert's answers fixed {net['expert_fixed']:,} pixels and made {net['expert_made_wrong']:,} wrong"
    )
    if net["auto_corrected"]:
        sentence += (
            f"; {net['auto_corrected']:,} unreviewed pixels were auto-corrected (threshold "
            f"{net['auto_threshold']:.2f}, calibrated precision {_pct(net['auto_estimated_precision'])}"
            + (
                f"; against the truth {_pct(net['auto_precision'])}: {net['auto_fixed']:,} fixed, "
                f"{net['auto_made_wrong']:,} made wrong)."
                if net["auto_precision"] is not None
                else ")."
            )
        )
    elif auto:
        sentence += (
            "; no pixel was auto-corrected: on the audited regions no model confidence reached the "
            f"target precision {_pct(auto.get('target_precision'))}."
        )
    else:
        sentence += "."
    model_first = model_last = None
    models = [
        r["model"]
        for r in [*rounds, *([final] if final else [])]
        if r.get("model") and r["model"].get("heldout")
    ]
    if models:
        model_first, model_last = models[0]["heldout"]["miou"], models[-1]["heldout"]["miou"]
        sentence += (
            f" A model trained on them scores mIoU {model_last:.3f} on a held-out scene "
            f"(trained on the cheap labels: {model_first:.3f})."
        )
    else:
        sentence += " The model's mIoU is not available: no held-out scene with truth was given."
    return {
        "sentence": sentence,
        "beats_cheap": bool(beats),
        "cheap_miou": cheap["miou"],
        "refined_miou": refined["miou"],
        "gain_miou": gain,
        "cheap_accuracy": cheap["accuracy"],
        "refined_accuracy": refined["accuracy"],
        "gain_accuracy": acc_gain,
        "error_recall": recall,
        "errors_introduced": last["labels"]["errors"]["introduced"],
        "spent": spent,
        "spent_fraction": frac,
        "unit": unit,
        "rounds": len(rounds),
        "model_miou_cheap": model_first,
        "model_miou_refined": model_last,
        "model_available": bool(models),
        "net_change": net,
    }


def build_report(
    *,
    config: Any,
    inputs: Any,
    schema: ClassSchema,
    setup: dict[str, Any],
    rounds: list[dict[str, Any]],
    final: dict[str, Any] | None,
    outputs: dict[str, Any],
    finished: bool,
    seconds: float,
    strategy: str,
    maps: str | None = None,
) -> dict[str, Any]:
    """Everything the run measured, as plain JSON values.

    ``config`` is recorded as it ran (``model.encoder: auto`` resolved to the encoder and
    weights file used); ``maps`` is an embedded PNG of the reviewed regions and changes.
    """
    from refine.model import describe_encoder, resolve_settings

    ran = config.to_json_dict()
    ran["model"] = resolve_settings(config.model).model_dump(mode="json")
    step_totals = {s: float(sum(r["times"].get(s, 0.0) for r in rounds)) for s in STEPS}
    if final:
        for s, v in final["times"].items():
            step_totals[s] = step_totals.get(s, 0.0) + float(v)
    n = max(len(rounds), 1)
    return jsonable(
        {
            "format": REPORT_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "finished": finished,
            "summary": summarise(setup, rounds, final),
            "strategy": strategy,
            "config": ran,
            "encoder": describe_encoder(config.model),
            "maps": maps,
            "inputs": inputs.to_dict(),
            "classes": [{"code": c.code, "name": c.name, "color": c.color} for c in schema.classes],
            "ignore": schema.ignore,
            "scene": setup.get("scene"),
            "regions": setup.get("regions"),
            "budget": setup.get("budget"),
            "cheap": {
                "sources": setup.get("sources"),
                "fusion": setup.get("fusion"),
                "start": setup["labels"],
            },
            "rounds": rounds,
            "final_model": final,
            "model_evaluation": "held-out scene"
            if any((r.get("model") or {}).get("heldout") for r in rounds)
            else "not available (no held-out scene and truth given)",
            "times": {
                "total_s": seconds,
                "steps_total_s": step_totals,
                "steps_mean_per_round_s": {k: v / n for k, v in step_totals.items()},
            },
            "outputs": {k: str(v) for k, v in outputs.items()},
        }
    )


def change_map_png(
    scene_path: str | os.PathLike,
    regions: np.ndarray,
    reviewed: np.ndarray,
    expert_changed: np.ndarray,
    auto: np.ndarray,
    max_size: int = 1200,
) -> str:
    """The scene's RGB quick-look with reviewed regions, expert changes and auto-corrections."""
    import matplotlib.pyplot as plt
    import rasterio
    from skimage.segmentation import find_boundaries

    from tiles.quicklook import render_rgb

    with rasterio.open(scene_path) as src:
        rgb, valid, _, _ = render_rgb(src, max_size=max_size)
    h, w = rgb.shape[:2]
    step_r, step_c = regions.shape[0] / h, regions.shape[1] / w
    rr = np.minimum((np.arange(h) * step_r).astype(int), regions.shape[0] - 1)
    cc = np.minimum((np.arange(w) * step_c).astype(int), regions.shape[1] - 1)
    pick = np.ix_(rr, cc)
    img = (rgb.astype(np.float32) * 0.75).astype(np.uint8)
    img[~valid] = 255  # nodata: the page's white, not a black band that reads as imagery
    img[auto[pick]] = (0, 220, 255)
    img[expert_changed[pick]] = (255, 0, 200)
    rid = np.where(np.isin(regions, np.flatnonzero(reviewed)), regions, -1)[pick]
    img[find_boundaries(rid, mode="inner") & (rid >= 0)] = (255, 255, 255)
    fig, ax = plt.subplots(figsize=(8, 8 * h / max(w, 1)), dpi=110)
    ax.imshow(img)
    ax.set_axis_off()
    fig.tight_layout(pad=0.2)
    return _png(fig)


# --- figures -----------------------------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def curves_figure(report: dict[str, Any]) -> str:
    """Label mIoU, error recall and model mIoU against the budget spent, as a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from refine.evaluation import curve

    setup = {"budget": report["budget"], "labels": report["cheap"]["start"]}
    rounds, final = report["rounds"], report["final_model"]
    frac = 100.0 / max(report["budget"]["capacity"], 1e-12)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title, ylabel in (
        (axes[0], "label_miou", "label mIoU vs truth", "mIoU (0–1)"),
        (axes[1], "error_recall", "cheap-label errors fixed", "% of the cheap labels' errors"),
        (axes[2], "model_miou", "model mIoU (held-out scene)", "mIoU (0–1)"),
    ):
        x, y = curve(setup, rounds, final, key)
        if key == "error_recall":
            y = 100.0 * y  # the text gives it in %, so does the axis
        if x.size:
            ax.plot(x * frac, y, marker="o", color="#1f78b4")
            if key == "label_miou":
                ax.axhline(y[0], color="#999999", ls="--", lw=1, label="cheap labels")
            if key == "error_recall":
                # Reviewing at random fixes errors in proportion to the area reviewed.
                ax.plot([0, x[-1] * frac], [0, x[-1] * frac], color="#999999", ls="--", lw=1,
                        label="random review (expected)")  # fmt: skip
            if key != "error_recall":
                lo, hi = np.nanmin(y), np.nanmax(y)
                pad = max(0.05 - (hi - lo) / 2, 0.01)  # at least 0.1 tall: noise stays small
                ax.set_ylim(lo - pad, hi + pad)
            if key != "model_miou":
                ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(
                0.5,
                0.5,
                "not available",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="#777777",
            )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("budget spent (% of scene cost)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    uri = _png(fig)
    plt.close(fig)
    return uri


def times_figure(report: dict[str, Any]) -> str:
    """Seconds per step and round, stacked, as a PNG data URI."""
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    bottom = np.zeros(len(rounds))
    xs = np.arange(1, len(rounds) + 1)
    for step in STEPS:
        v = np.array([r["times"].get(step, 0.0) for r in rounds])
        if v.sum() > 0:
            ax.bar(xs, v, bottom=bottom, label=step)
            bottom += v
    ax.set_xlabel("round")
    ax.set_ylabel("seconds")
    ax.set_xticks(xs)
    ax.legend(fontsize=7, ncol=4)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    uri = _png(fig)
    plt.close(fig)
    return uri


# --- HTML ----------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
.lead{font-size:1.1em;background:#f3f7fb;border-left:4px solid #1f78b4;padding:.8em 1em}
.lead.bad{background:#fbf3f3;border-left-color:#e31a1c}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f5f5f5}td.l,th.l{text-align:left}.pos{color:#1b7837}.neg{color:#b2182b}
img{max-width:100%}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #888;vertical-align:middle;margin-right:.3em}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    th = "".join(
        f"<th class='l'>{_e(h)}</th>" if i < left else f"<th>{_e(h)}</th>"
        for i, h in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='l'>{c}</td>" if i < left else f"<td>{c}</td>" for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _delta(v: float | None, scale: float = 1.0, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    cls = "pos" if v > 0 else ("neg" if v < 0 else "")
    return f"<span class='{cls}'>{scale * v:+.{digits}f}</span>"


def render_html(report: dict[str, Any]) -> str:
    """The self-contained HTML page of a report dict from :func:`build_report`."""
    s = report["summary"]
    colours = {c["name"]: c["color"] for c in report["classes"]}
    start = report["cheap"]["start"]["scores"]
    end = report["rounds"][-1]["labels"]["scores"] if report["rounds"] else start
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>trustmap refine report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Label refinement report</h1>",
        f"<p class='lead{'' if s['beats_cheap'] else ' bad'}'>{_e(s['sentence'])}</p>",
        f"<p>Strategy <b>{_e(report['strategy'])}</b>, regions <b>{_e(report['regions']['kind'])}</b> "
        f"({report['regions']['count']} of about {report['regions']['mean_area']:.0f} px), relabelling "
        f"<b>{_e(report['config']['review']['relabel'])}</b>, expert error rate "
        f"{report['config']['review']['expert_error']:g}. Encoder: {_e(report.get('encoder', 'n/a'))}. "
        f"Model: {_e(report['model_evaluation'])}.</p>",
        *(
            [
                "<h2>Where the labels changed</h2>",
                f"<img alt='reviewed regions and changes over the scene' src='{report['maps']}'>",
                "<p><small>Over the scene's quick-look: reviewed regions outlined in white, pixels the "
                "expert changed in magenta, pixels auto-corrected in cyan.</small></p>",
            ]
            if report.get("maps")
            else []
        ),
        "<h2>Learning curves</h2>",
        f"<img alt='learning curves' src='{curves_figure(report)}'>",
        "<h2>Per-class IoU, cheap vs refined</h2>",
    ]
    rows = []
    for name in [c["name"] for c in report["classes"]]:
        a, b = start["iou"].get(name), end["iou"].get(name)
        rows.append([
            f"<span class='swatch' style='background:{_e(colours[name])}'></span>{_e(name)}",
            _num(a), _num(b), _delta(None if a is None or b is None else b - a), f"{start['support'].get(name, 0):,}",
        ])  # fmt: skip
    rows.append(
        [
            "<b>mean (mIoU)</b>",
            _num(start["miou"]),
            _num(end["miou"]),
            _delta(end["miou"] - start["miou"]),
            "",
        ]
    )
    rows.append(["pixel accuracy", _pct(start["accuracy"]), _pct(end["accuracy"]),
                 _delta(end["accuracy"] - start["accuracy"], 100, 1), ""])  # fmt: skip
    parts.append(_table(["class", "cheap IoU", "refined IoU", "Δ", "truth pixels"], rows))

    sources = report["cheap"]["sources"] or []
    if sources:
        parts.append("<h2>Cheap label sources</h2>")
        srows = [
            [f"source {i + 1}", _num(src["miou"]), _pct(src["accuracy"])]
            for i, src in enumerate(sources)
        ]
        if len(sources) > 1:
            srows.append(
                [
                    f"fused ({_e(report['cheap']['fusion'])})",
                    _num(start["miou"]),
                    _pct(start["accuracy"]),
                ]
            )
        parts.append(_table(["labels", "mIoU", "accuracy"], srows))

    parts.append("<h2>Rounds</h2>")
    rrows = []
    for r in report["rounds"]:
        m = (r.get("model") or {}).get("heldout")
        rrows.append([
            str(r["round"]), _pct(r["budget"]["spent_fraction"]), str(r["selected"]["count"]),
            f"{r['selected']['pixels']:,}", _pct(r["review"]["precision"]), f"{r['changes']['pixels']:,}",
            f"{r['labels']['errors']['introduced']:,}", _num(r["labels"]["scores"]["miou"]),
            _pct(r["labels"]["scores"]["accuracy"]), _pct(r["labels"]["errors"]["error_recall"]),
            f"{(r.get('autocorrect') or {}).get('pixels') or 0:,}", _num(m["miou"]) if m else "n/a",
        ])  # fmt: skip
    parts.append(
        _table(
            [
                "round",
                "spent",
                "regions",
                "pixels reviewed",
                "precision",
                "pixels changed",
                "errors introduced",
                "label mIoU",
                "accuracy",
                "error recall",
                "auto-corrected px",
                "model mIoU*",
            ],  # fmt: skip
            rrows,
        )
    )
    parts.append(
        "<p><small>precision: share of reviewed pixels that were wrong before review. error recall: share of "
        "the cheap labels' wrong pixels fixed so far. errors introduced: pixels right in the cheap labels and "
        "wrong now (dominant relabelling of mixed regions, expert mistakes). *model mIoU: the model trained "
        "at the start of the round (on the labels before its review), on the held-out scene.</small></p>"
    )
    final = report.get("final_model")
    if final and (final.get("model") or {}).get("heldout"):
        parts.append(
            f"<p>Final model trained on the refined labels: held-out mIoU "
            f"<b>{final['model']['heldout']['miou']:.3f}</b>.</p>"
        )

    parts.append("<h2>Pixels changed per class</h2>")
    crow = []
    for r in report["rounds"]:
        frm = ", ".join(f"{_e(k)} {v:,}" for k, v in r["changes"].get("from", {}).items()) or "none"
        to = ", ".join(f"{_e(k)} {v:,}" for k, v in r["changes"].get("to", {}).items()) or "none"
        crow.append([str(r["round"]), frm, to])
    parts.append(_table(["round", "taken from", "given to"], crow, left=3))

    t = report["times"]
    parts.append("<h2>Time</h2>")
    parts.append(f"<p>Total {t['total_s']:.1f} s. Mean per round: " + ", ".join(
        f"{k} {v:.1f} s" for k, v in t["steps_mean_per_round_s"].items() if v > 0) + ".</p>")  # fmt: skip
    if report["rounds"]:
        parts.append(f"<img alt='time per round' src='{times_figure(report)}'>")

    parts.append("<h2>Outputs</h2><ul>")
    base = Path(report["outputs"].get("report_html", "")).parent if report["outputs"].get("report_html") else None
    for k, v in report["outputs"].items():
        shown = v
        if base is not None:
            try:  # relative to the report, so the folder can be moved or shared
                shown = Path(v).relative_to(base).as_posix() or "."
            except ValueError:
                shown = v
        parts.append(f"<li>{_e(k)}: <code>{_e(shown)}</code></li>")
    parts.append("</ul><h2>Configuration</h2>")
    parts.append(f"<pre>{_e(yaml.safe_dump(report['config'], sort_keys=False))}</pre>")
    parts.append(f"<p><small>Inputs: <code>{_e(json.dumps(report['inputs']))}</code></small></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(report: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` (each atomically) into ``out_dir``."""
    out = Path(out_dir)
    js = write_text_atomic(
        out / "report.json", json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n"
    )
    page = write_text_atomic(out / "report.html", render_html(report))
    return js, page
