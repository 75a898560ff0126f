"""The audit's figures: drawn from JSON-like numbers, correct where a reader looks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from calibration import figures
from calibration.metrics import reliability


def _png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def _rgb_at(fig, ax, x: float, y: float) -> np.ndarray:
    """Colour of the rendered PNG at data coordinates (x, y) of ``ax``."""
    img = _png(figures.to_png(fig))
    px, py = ax.transData.transform((x, y))
    h = img.shape[0]
    return img[int(round(h - py)), int(round(px))]


@pytest.fixture(scope="module")
def over_confident() -> dict:
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 4000)
    correct = rng.random(4000) < conf - 0.3  # 30 points less often right than scored
    rel = reliability(conf, correct, bins=10)
    return {
        "edges": rel["edges"].tolist(),
        "count": rel["count"].tolist(),
        "confidence": [None if np.isnan(v) else v for v in rel["confidence"]],
        "precision": [None if np.isnan(v) else v for v in rel["target"]],
    }


def test_reliability_diagram_shows_gap_counts_and_ece(over_confident):
    fig = figures.reliability_figure(over_confident, "Reliability", ece=0.3)
    top, bottom = fig.axes
    assert "ECE 0.300" in top.get_title()
    heights = [p.get_height() for p in bottom.patches]
    assert heights == pytest.approx(np.nan_to_num(over_confident["count"]).tolist())
    # the five empty bins below 0.5 draw nothing on top; each filled bin draws precision + gap
    assert len(top.patches) == 2 * 5
    gaps = [p.get_height() for p in top.patches[5:]]
    assert all(0.2 < g < 0.4 for g in gaps)  # the injected 0.3 gap, bin by bin
    diag = [ln for ln in top.lines if list(ln.get_xdata()) == [0, 1]]
    assert diag and list(diag[0].get_ydata()) == [0, 1]
    img = _png(figures.reliability_diagram(over_confident, "Reliability", ece=0.3))
    assert img.std() > 10


def test_heatmap_colours_gap_sign_and_masks_empty_cells():
    grid = {
        "x_edges": [0, 0.5, 1.0],
        "y_edges": [0, 0.5, 1.0],
        "x_label": "cx",
        "y_label": "cy",
        "image_axes": True,
        "count": [[50, 0], [40, 3]],
        "confidence": [[0.9, None], [0.3, 0.5]],
        "precision": [[0.3, None], [0.8, 0.5]],
    }
    fig = figures.heatmap_figure(grid, "gap", min_count=5)
    ax = fig.axes[0]
    # sample away from the printed numbers at each cell's centre; row 0 is the top (image axes)
    over = _rgb_at(fig, ax, -0.35, -0.35)  # gap +0.6
    under = _rgb_at(fig, ax, -0.35, 0.65)  # gap -0.5
    empty = _rgb_at(fig, ax, 0.65, -0.35)
    sparse = _rgb_at(fig, ax, 0.65, 0.65)  # 3 < min_count: masked like an empty cell
    assert over[0] > over[2] + 60  # red
    assert under[2] > under[0] + 60  # blue
    assert abs(empty[0] - empty[2]) < 10 and abs(empty[0] - empty[1]) < 10  # grey
    assert np.array_equal(empty, sparse)
    texts = {t.get_text() for t in ax.texts}
    assert {"+0.60\nn=50", "-0.50\nn=40", "empty", "n=3"} <= texts


def test_per_class_bars_put_worst_calibrated_class_first():
    per_cat = {
        "1": {"name": "vehicle", "ece": 0.05, "laece": 0.1, "ap": 0.6, "n_detections": 100},
        "2": {"name": "ship", "ece": 0.30, "laece": 0.35, "ap": 0.2, "n_detections": 40},
        "3": {"name": "tank", "ece": None, "laece": None, "ap": None, "n_detections": 0},
    }
    fig = figures.per_class_figure(per_cat, "classes")
    ax_ce, ax_ap = fig.axes[:2]
    labels = [t.get_text() for t in ax_ce.get_yticklabels()]
    assert labels[0].startswith("ship") and labels[-1].startswith("tank")
    ap_widths = [p.get_width() for p in ax_ap.patches]
    assert ap_widths == pytest.approx([0.2, 0.6, 0.0])
    assert _png(figures.per_class_bars(per_cat, "classes")).std() > 10


def test_sweep_curves_plot_every_metric_and_map_on_a_twin_axis():
    pts = [
        {
            "value": v,
            "metrics": {
                "dece": 0.1 + v / 10,
                "ece": 0.05 + v / 10,
                "laece": 0.2,
                "map": 0.5 - v / 5,
            },
        }
        for v in (0.3, 0.5, 0.7)
    ]
    sweeps = {
        "nms_iou": {"label": "NMS IoU", "default": 0.5, "points": pts},
        "score_threshold": {"label": "score threshold", "default": 0.05, "points": pts[:2]},
    }
    fig = figures.sweep_figure(sweeps, "sweeps")
    ax = fig.axes[0]
    twin = next(a for a in fig.axes if a is not ax and a.bbox.bounds == ax.bbox.bounds)
    by_label = {ln.get_label(): ln for ln in ax.lines}
    assert list(by_label["D-ECE"].get_ydata()) == pytest.approx([0.13, 0.15, 0.17])
    assert list(twin.lines[0].get_ydata()) == pytest.approx([0.44, 0.4, 0.36])
    assert any(
        list(ln.get_xdata()) == [0.5, 0.5] for ln in ax.lines
    )  # the audited setting is marked
    assert len(fig.axes) == 4  # two sweeps, each with its twin axis
    empty = figures.sweep_figure({}, "none")
    assert "no post-processing sweep" in empty.axes[0].texts[0].get_text()


def test_save_png_is_atomic_and_complete(tmp_path, over_confident):
    data = figures.reliability_diagram(over_confident, "r")
    out = figures.save_png(data, tmp_path / "sub" / "r.png")
    assert out.read_bytes() == data
    assert [p.name for p in out.parent.iterdir()] == ["r.png"]


def test_read_crop_reads_only_the_window_of_a_geotiff_and_of_a_png(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    rgb = np.random.default_rng(0).integers(0, 256, (3, 40, 50), dtype=np.uint8)
    prof = {"driver": "GTiff", "width": 50, "height": 40, "count": 3, "dtype": "uint8",
            "crs": "EPSG:32643", "transform": from_origin(0, 40, 1, 1)}  # fmt: skip
    with rasterio.open(tmp_path / "a.tif", "w", **prof) as dst:
        dst.write(rgb)
    crop = figures.read_crop(tmp_path / "a.tif", [10.2, 5.0, 30.0, 25.7])  # x0, y0, x1, y1
    assert crop.shape == (21, 20, 3)  # pixels 5..25 x 10..29: outward to whole pixels
    assert np.array_equal(crop, np.moveaxis(rgb[:, 5:26, 10:30], 0, -1) / 255.0)
    Image.fromarray(np.moveaxis(rgb, 0, -1)).save(tmp_path / "a.png")
    assert np.array_equal(figures.read_crop(tmp_path / "a.png", [10.2, 5.0, 30.0, 25.7]), crop)
    # 16-bit B, G, R, NIR: R, G, B shown (bands 3, 2, 1), each stretched 2-98 % over the crop
    ys, xs = np.mgrid[0:40, 0:50].astype(np.uint16)
    four = np.stack([1000 + 10 * xs, np.full_like(xs, 500), 2000 + 10 * ys, 7 * xs])
    with rasterio.open(tmp_path / "b.tif", "w", **(prof | {"count": 4, "dtype": "uint16"})) as dst:
        dst.write(four)
    c = figures.read_crop(tmp_path / "b.tif", [20, 10, 40, 30])
    assert c.shape == (20, 20, 3) and c.min() == 0.0 and c.max() == 1.0
    red, green, blue = np.moveaxis(c, -1, 0)
    assert (np.diff(red, axis=0) >= 0).all() and (np.diff(red, axis=1) == 0).all()  # band 3: y
    assert (np.diff(blue, axis=1) >= 0).all() and (np.diff(blue, axis=0) == 0).all()  # band 1: x
    assert (green == 0.5).all()  # a uniform band: mid-grey
