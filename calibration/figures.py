"""The audit's figures, drawn from the numbers that ``audit.json`` holds.

Every function takes plain JSON-like data (lists, None for empty bins), so a figure can be
redrawn from a saved audit without re-running anything. ``*_figure`` functions return the
:class:`matplotlib.figure.Figure` (to inspect or compose), the others its PNG bytes. Figures
use the Agg canvas directly: no pyplot state, no display needed, safe from any thread.
"""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from tiles.io import atomic_path

DPI = 110
#: Colours shared by every figure (colour-blind safe, Okabe-Ito).
BLUE, ORANGE, GREEN, RED, GREY = "#0072B2", "#E69F00", "#009E73", "#D55E00", "#999999"
SWEEP_METRICS = (("dece", "D-ECE", BLUE), ("ece", "ECE", ORANGE), ("laece", "LaECE", GREEN))


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def save_png(data: bytes, path: str | os.PathLike) -> Path:
    """Write PNG bytes atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _arr(values: Sequence[Any]) -> np.ndarray:
    """JSON list (None for missing) -> float array (NaN for missing)."""
    return np.array(
        [np.nan if v is None else v for v in np.ravel(np.asarray(values, dtype=object))], float
    ).reshape(np.shape(values))


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=GREY)
    ax.set_xticks([])
    ax.set_yticks([])


def reliability_figure(
    rel: Mapping[str, Sequence[Any]],
    title: str,
    ece: float | None = None,
    target_label: str = "precision",
) -> Figure:
    """Mean ``target_label`` against confidence per bin, with the gap to the diagonal and counts.

    ``rel`` has ``edges`` (B+1), and per bin ``count``, ``confidence`` and ``precision``
    (None where the bin is empty). Red gap bars above the diagonal's level mean
    over-confidence: the bin's detections score higher than they are right.
    """
    edges = np.asarray(rel["edges"], float)
    cnt = _arr(rel["count"])
    conf, prec = _arr(rel["confidence"]), _arr(rel["precision"])
    left, width = edges[:-1], np.diff(edges)
    fig = _figure(5.2, 5.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.2))
    ok = cnt > 0
    top.bar(
        left[ok],
        prec[ok],
        width[ok],
        align="edge",
        color=BLUE,
        edgecolor="white",
        label=f"observed {target_label}",
    )
    gap = conf - prec
    for sel, colour, hatch, label in (
        (ok & (gap > 0), RED, "//", "gap: over-confident"),
        (ok & (gap < 0), GREEN, "\\\\", "gap: under-confident"),
    ):
        if sel.any():
            top.bar(
                left[sel],
                gap[sel],
                width[sel],
                bottom=prec[sel],
                align="edge",
                color=colour,
                alpha=0.35,
                edgecolor=colour,
                hatch=hatch,
                linewidth=0.6,
                label=label,
            )
    top.plot(
        [0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="perfect calibration"
    )
    top.plot(conf[ok], prec[ok], "o", color="black", markersize=3)
    top.set_ylim(0, 1)
    top.set_xlim(edges[0], edges[-1])
    top.set_ylabel(target_label)
    top.legend(loc="upper left", fontsize=8, frameon=False)
    ece_txt = f" — ECE {ece:.3f}" if ece is not None and np.isfinite(ece) else ""
    top.set_title(f"{title}{ece_txt}", fontsize=10)
    if not ok.any():
        top.text(0.5, 0.5, "no detections", ha="center", transform=top.transAxes, color=GREY)
    bottom.bar(left, np.nan_to_num(cnt), width, align="edge", color=GREY, edgecolor="white")
    bottom.set_xlabel("confidence (score)")
    bottom.set_ylabel("detections")
    if np.nansum(cnt) > 0 and np.nanmax(cnt) / max(np.nanmin(cnt[ok]) if ok.any() else 1, 1) > 50:
        bottom.set_yscale("log")
    return fig


def _range_labels(edges: np.ndarray, fmt: str) -> list[str]:
    return [
        f"{format(a, fmt)}–{format(b, fmt)}" for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]


def heatmap_figure(grid: Mapping[str, Any], title: str, min_count: int = 1) -> Figure:
    """Calibration gap (mean confidence − precision) per 2-D bin of box position or size.

    ``grid`` has ``x_edges``, ``y_edges``, ``x_label``, ``y_label`` and per cell
    (rows = y bins) ``count``, ``confidence`` and ``precision``. Cells with fewer than
    ``min_count`` detections are masked grey; the colour scale is symmetric around 0
    (red: over-confident, blue: under-confident) and each cell prints its gap and count.
    """
    xe, ye = np.asarray(grid["x_edges"], float), np.asarray(grid["y_edges"], float)
    cnt = np.nan_to_num(_arr(grid["count"]))
    gap = _arr(grid["confidence"]) - _arr(grid["precision"])
    gap = np.where(cnt >= max(min_count, 1), gap, np.nan)
    ny, nx = gap.shape
    fig = _figure(5.6, 4.9)
    ax = fig.subplots()
    ax.set_facecolor("#e6e6e6")
    lim = float(np.nanmax(np.abs(gap))) if np.isfinite(gap).any() else 1.0
    lim = max(lim, 0.05)
    image_axes = bool(grid.get("image_axes", False))
    im = ax.imshow(
        np.ma.masked_invalid(gap),
        cmap="RdBu_r",
        norm=TwoSlopeNorm(0.0, -lim, lim),
        origin="upper" if image_axes else "lower",
        aspect="auto",
    )
    fmt = grid.get("edge_format", ".2f")
    ax.set_xticks(range(nx), _range_labels(xe, fmt), rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(ny), _range_labels(ye, fmt), fontsize=7)
    ax.set_xlabel(grid.get("x_label", "x"))
    ax.set_ylabel(grid.get("y_label", "y"))
    for (r, c), g in np.ndenumerate(gap):
        n = int(cnt[r, c])
        if np.isfinite(g):
            dark = abs(g) > 0.6 * lim
            ax.text(
                c,
                r,
                f"{g:+.2f}\nn={n}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
        else:
            ax.text(
                c,
                r,
                "empty" if n == 0 else f"n={n}",
                ha="center",
                va="center",
                fontsize=6,
                color=GREY,
            )
    bar = fig.colorbar(im, ax=ax, shrink=0.85)
    bar.set_label("score − precision", fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def per_class_figure(
    per_category: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]], title: str
) -> Figure:
    """Calibration error (ECE, LaECE) and AP per class, side by side, first row on top.

    ``per_category`` is either a sequence of ``{"name", "ece", "laece", "ap",
    "n_detections"}`` records drawn in its order (the report's ranked per-class table,
    :func:`calibration.report.class_table`; a record's ``rank`` prefixes its name), or a
    mapping of category id to such a record, sorted worst ECE first. Values are None where
    a class has no detections or no ground truth.
    """
    if isinstance(per_category, Mapping):
        rows = sorted(
            per_category.values(), key=lambda r: (r.get("ece") is None, -(r.get("ece") or 0.0))
        )
    else:
        rows = list(per_category)
    names = [
        (f"{r['rank']}. " if r.get("rank") is not None else "")
        + f"{r['name']} (n={r.get('n_detections', 0)})"
        for r in rows
    ]
    y = np.arange(len(rows))
    fig = _figure(6.4, 1.6 + 0.42 * max(len(rows), 2))
    ax_ce, ax_ap = fig.subplots(1, 2, sharey=True)
    h = 0.38
    ece = _arr([r.get("ece") for r in rows])
    la = _arr([r.get("laece") for r in rows])
    ap = _arr([r.get("ap") for r in rows])
    ax_ce.barh(y - h / 2, np.nan_to_num(ece), h, color=ORANGE, label="ECE (precision)")
    ax_ce.barh(y + h / 2, np.nan_to_num(la), h, color=GREEN, label="LaECE (IoU)")
    ax_ce.set_xlabel("calibration error (lower is better)")
    ax_ce.set_xlim(0, max(0.1, float(np.nanmax(np.r_[ece, la, 0.0])) * 1.15))
    ax_ce.legend(
        fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=2
    )
    ax_ap.barh(y, np.nan_to_num(ap), 0.6, color=BLUE, label="AP@[.5:.95]")
    ax_ap.set_xlim(0, 1)
    ax_ap.set_xlabel("AP (higher is better)")
    for yy, v in zip(y, ap, strict=True):
        ax_ap.text(
            0.01 if not np.isfinite(v) else v + 0.01,
            yy,
            "no GT" if not np.isfinite(v) else f"{v:.2f}",
            va="center",
            fontsize=7,
        )
    for yy, v in zip(y, ece, strict=True):
        if not np.isfinite(v):
            ax_ce.text(0.002, yy, "no detections", va="center", fontsize=7, color=GREY)
    ax_ce.set_yticks(y, names, fontsize=8)
    ax_ce.invert_yaxis()
    fig.suptitle(title, fontsize=10)
    return fig


def sweep_figure(sweeps: Mapping[str, Any], title: str) -> Figure:
    """D-ECE, ECE and LaECE (left axis) and mAP (right axis) along each post-processing sweep.

    ``sweeps`` maps a parameter name (``score_threshold``, ``nms_iou``, ``topk``) to
    ``{"label", "default", "points": [{"value", "metrics": {name: number}}]}``. The
    setting every other number in the audit uses is marked with a dotted line.
    """
    names = [k for k, v in sweeps.items() if isinstance(v, Mapping) and v.get("points")]
    fig = _figure(4.0 * max(len(names), 1) + 0.8, 3.4)
    axes = np.atleast_1d(fig.subplots(1, max(len(names), 1), squeeze=False)[0])
    if not names:
        _empty(axes[0], "no post-processing sweep was run")
        return fig
    handles: list[Any] = []
    marker = None
    for ax, name in zip(axes, names, strict=True):
        sw = sweeps[name]
        x = np.array([p["value"] for p in sw["points"]], float)
        for key, label, colour in SWEEP_METRICS:
            v = _arr([p["metrics"].get(key) for p in sw["points"]])
            handles.append(ax.plot(x, v, "o-", color=colour, label=label, markersize=4)[0])
        ax.set_xlabel(sw.get("label", name))
        ax.set_ylabel("calibration error (lower is better)")
        ax.set_ylim(bottom=0)
        twin = ax.twinx()
        m = _arr([p["metrics"].get("map") for p in sw["points"]])
        handles.append(
            twin.plot(x, m, "s--", color="black", label="mAP (right axis)", markersize=4)[0]
        )
        twin.set_ylabel("mAP@[.5:.95]")
        top = float(np.nanmax(m)) if np.isfinite(m).any() else 1.0
        twin.set_ylim(0, min(1.0, max(top * 1.25, 0.05)))
        d = sw.get("default")
        if d is not None:
            marker = ax.axvline(
                float(d), color=GREY, linestyle=":", linewidth=1.5, label="audited setting"
            )
        if name == "topk" and len(x) > 1 and x.max() / max(x.min(), 1) > 20:
            ax.set_xscale("log")
    shown = handles[:4] + ([marker] if marker is not None else [])
    fig.legend(
        shown,
        [h.get_label() for h in shown],
        loc="outside lower center",
        ncols=len(shown),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(title, fontsize=10)
    return fig


def reliability_diagram(
    rel: Mapping[str, Sequence[Any]],
    title: str,
    ece: float | None = None,
    target_label: str = "precision",
) -> bytes:
    """:func:`reliability_figure` as PNG bytes."""
    return to_png(reliability_figure(rel, title, ece, target_label))


def gap_heatmap(grid: Mapping[str, Any], title: str, min_count: int = 1) -> bytes:
    """:func:`heatmap_figure` as PNG bytes."""
    return to_png(heatmap_figure(grid, title, min_count))


def per_class_bars(
    per_category: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]], title: str
) -> bytes:
    """:func:`per_class_figure` as PNG bytes."""
    return to_png(per_class_figure(per_category, title))


def sweep_curves(sweeps: Mapping[str, Any], title: str) -> bytes:
    """:func:`sweep_figure` as PNG bytes."""
    return to_png(sweep_figure(sweeps, title))


# ------------------------------------------------------------- shift, OOD, repair


SHIFT_PANELS = (("dece", "D-ECE", "Reds"), ("ece", "ECE", "Oranges"), ("map", "mAP", "Blues"))


def shift_heatmap_figure(shift: Mapping[str, Any], title: str) -> Figure:
    """Corruption x severity heatmaps, one panel per metric (D-ECE, ECE, mAP), with the clean
    value and the mean over corruptions per severity as extra rows."""
    names = list(shift["corruptions"])
    sevs = [str(s) for s in shift["severities"]]
    grid, clean = shift["grid"], shift["clean"]
    short = shift.get("short", {})
    fig = _figure(4.0 * len(SHIFT_PANELS), 0.32 * (len(names) + 2) + 1.6)
    axes = fig.subplots(1, len(SHIFT_PANELS))
    for ax, (key, label, cmap) in zip(np.atleast_1d(axes), SHIFT_PANELS, strict=True):
        vals = np.array([[grid[n].get(s, {}).get(key) for s in sevs] for n in names], dtype=object)
        mean = [shift["mean_by_severity"][key].get(s) for s in sevs]
        mat = _arr(np.vstack([vals, [mean]]).tolist()) if names else np.zeros((0, len(sevs)))
        cl = clean.get(key)
        col0 = np.full((mat.shape[0], 1), np.nan if cl is None else cl)
        show = np.hstack([col0, mat])
        im = ax.imshow(np.ma.masked_invalid(show), cmap=cmap, aspect="auto")
        ax.set_xticks(range(len(sevs) + 1), ["clean", *sevs], fontsize=7)
        ax.set_yticks(
            range(len(names) + 1), [short.get(n, n) for n in names] + ["mean"], fontsize=7
        )
        ax.set_xlabel("severity")
        lim = np.nanmax(show) if np.isfinite(show).any() else 1.0
        for (r, c), v in np.ndenumerate(show):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v > 0.65 * lim else "black")  # fmt: skip
        ax.axhline(len(names) - 0.5, color="black", lw=0.8)
        ax.set_title(label, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.7)
    fig.suptitle(title, fontsize=10)
    return fig


def ood_figure(ood: Mapping[str, Any], title: str) -> Figure:
    """Score (and entropy) histograms of in-distribution against OOD detections."""
    panels = [("hist_edges", "hist_confidence", "max score", ood.get("auroc_max_score"))]
    if ood.get("hist_entropy"):
        panels.append(
            ("hist_entropy_edges", "hist_entropy", "entropy (nats)", ood.get("auroc_entropy"))
        )
    fig = _figure(4.2 * len(panels), 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (ek, hk, label, auc) in zip(axes, panels, strict=True):
        e = np.asarray(ood[ek], float)
        for name, colour in (("in", BLUE), ("ood", RED)):
            h = np.asarray(ood[hk][name], float)
            dens = h / max(h.sum(), 1.0)
            ax.stairs(
                dens,
                e,
                color=colour,
                lw=1.5,
                label="in-distribution" if name == "in" else "OOD images",
            )
        ax.set_xlabel(label)
        ax.set_ylabel("share of detections")
        ax.set_title(f"{label}: AUROC {auc:.2f}" if auc is not None else label, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def repair_figure(repair: Mapping[str, Any], title: str) -> Figure:
    """Test-split D-ECE (with its interval) and mAP of the original and each repair; the
    mean D-ECE over corruptions at each severity where shift was measured."""
    reps = repair["repairs"]
    names = list(reps)
    fig = _figure(9.0, 3.4)
    ax, ax2 = fig.subplots(1, 2)
    d = [reps[n]["test"]["dece"]["value"] or np.nan for n in names]
    lo = [reps[n]["test"]["dece"].get("ci_low") for n in names]
    hi = [reps[n]["test"]["dece"].get("ci_high") for n in names]
    err = None
    if all(v is not None for v in lo + hi):
        err = np.array(
            [
                [a - b for a, b in zip(d, lo, strict=True)],
                [b - a for a, b in zip(d, hi, strict=True)],
            ]
        )
    y = np.arange(len(names))
    ax.barh(y, d, xerr=err, color=[GREY if n == "original" else BLUE for n in names])
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test-split D-ECE (lower is better)")
    for i, n in enumerate(names):
        m = reps[n]["test"]["map"]["value"]
        ax.text(
            0, i, f" mAP {m:.3f}" if m is not None else "", va="center", fontsize=7, color="white"
        )
    any_shift = False
    for n in names:
        s = reps[n].get("shift_mean_by_severity", {}).get("dece")
        if s:
            any_shift = True
            ks = sorted(s, key=int)
            ax2.plot([int(k) for k in ks], [s[k] for k in ks], marker="o", label=n)
    if any_shift:
        ax2.set_xticks(
            sorted(
                {
                    int(k)
                    for n in names
                    for k in reps[n].get("shift_mean_by_severity", {}).get("dece", {})
                }
            )
        )
        ax2.set_xlabel("corruption severity")
        ax2.set_ylabel("mean D-ECE over corruptions")
        ax2.legend(fontsize=7)
    else:
        _empty(ax2, "no shift measured")
    fig.suptitle(title, fontsize=10)
    return fig


def shift_heatmaps(shift: Mapping[str, Any], title: str) -> bytes:
    return to_png(shift_heatmap_figure(shift, title))


def ood_histograms(ood: Mapping[str, Any], title: str) -> bytes:
    return to_png(ood_figure(ood, title))


def repair_bars(repair: Mapping[str, Any], title: str) -> bytes:
    return to_png(repair_figure(repair, title))


# ------------------------------------------------------------- false-positive crops


#: A white line under the boxes, so they stand out on dark and on green ground alike.
_HALO = [patheffects.withStroke(linewidth=3.6, foreground="white")]


def read_crop(path: str | os.PathLike[str], window: Sequence[float]) -> np.ndarray:
    """RGB float pixels in [0, 1] of ``window`` (``[x0, y0, x1, y1]``, pixels) of an image.

    GeoTIFFs are read by window with rasterio (R, G, B from
    :func:`tiles.quicklook.pick_rgb_bands`; 8-bit divided by 255, other types stretched
    2-98 % over the crop), so a crop of a large scene reads only the crop; other formats
    go through PIL.
    """
    x0, y0 = int(np.floor(window[0])), int(np.floor(window[1]))
    x1, y1 = int(np.ceil(window[2])), int(np.ceil(window[3]))
    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff"):
        import rasterio
        from rasterio.windows import Window

        from tiles.quicklook import pick_rgb_bands

        with rasterio.open(p) as src:
            bands = list(pick_rgb_bands(src))
            a = src.read(bands, window=Window(x0, y0, x1 - x0, y1 - y0)).astype(np.float64)
            eight_bit = src.dtypes[0] == "uint8"
        a = np.moveaxis(a, 0, -1)
        if eight_bit:
            return np.clip(a / 255.0, 0.0, 1.0)
        lo, hi = np.nanpercentile(a, 2, axis=(0, 1)), np.nanpercentile(a, 98, axis=(0, 1))
        flat = hi <= lo  # a uniform band is shown mid-grey, not black
        out = np.clip((a - lo) / np.where(flat, 1.0, hi - lo), 0.0, 1.0)
        return np.where(flat, 0.5, out)
    from PIL import Image

    with Image.open(p) as im:
        rgb = im.convert("RGB").crop((x0, y0, x1, y1))
        return np.asarray(rgb, np.float64) / 255.0


def false_positive_figure(
    examples: Sequence[Mapping[str, Any]], images: Mapping[int, Path], columns: int = 3
) -> Figure:
    """Crops of the given false positives, their boxes drawn: red the detection (class and
    score above it), green dashed the ground truth around it, with the image id and why it
    is wrong under each crop.

    ``examples`` are :func:`calibration.report.false_positive_examples` records (``bbox``
    xywh and ``crop`` ``[x0, y0, x1, y1]`` in image pixels); ``images`` maps an image id to
    its file. Examples whose image is missing are left out.
    """
    shown = [e for e in examples if int(e["image_id"]) in images]
    cols = max(1, min(columns, len(shown)))
    nrows = max(1, -(-len(shown) // cols))
    fig = _figure(3.3 * cols, 3.55 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False).ravel())
    for ax in axes[len(shown) :]:
        ax.set_axis_off()
    if not shown:
        _empty(axes[0], "no image of these examples could be read")
        return fig
    for ax, e in zip(axes, shown, strict=False):
        x0, y0, x1, y1 = (float(v) for v in e["crop"])
        pix = read_crop(images[int(e["image_id"])], e["crop"])
        h, w = pix.shape[:2]
        ax.imshow(pix, extent=(int(x0), int(x0) + w, int(y0) + h, int(y0)), interpolation="nearest")
        for t in e.get("truth", []):
            tx, ty, tw, th = t["bbox"]
            ax.add_patch(Rectangle((tx, ty), tw, th, fill=False, edgecolor=GREEN, linewidth=1.6,
                                   linestyle="--", path_effects=_HALO))  # fmt: skip
        bx, by, bw, bh = e["bbox"]
        ax.add_patch(
            Rectangle(
                (bx, by), bw, bh, fill=False, edgecolor=RED, linewidth=2.2, path_effects=_HALO
            )
        )
        ax.text(bx, by, f" {e['category']} {e['score']:.2f} ", color="white", fontsize=7.5,
                va="bottom", ha="left", backgroundcolor=RED, clip_on=True)  # fmt: skip
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"#{e['rank']} {e['category']} · score {e['score']:.2f} · image {e['image_id']}",
                     fontsize=8.5)  # fmt: skip
        ax.set_xlabel(
            "\n".join(textwrap.wrap(str(e.get("why", "")), 44)), fontsize=7, color="#33415c"
        )
    return fig


def false_positive_crops(
    examples: Sequence[Mapping[str, Any]], images: Mapping[int, Path], columns: int = 3
) -> bytes:
    """:func:`false_positive_figure` as PNG bytes."""
    return to_png(false_positive_figure(examples, images, columns))
