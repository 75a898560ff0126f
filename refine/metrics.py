"""How good a label map is against the truth, and how well refinement finds the wrong pixels.

Everything starts from one confusion matrix (truth rows, prediction columns) accumulated
with ``np.bincount`` over blocks of pixels, so the same code scores a 256² test scene and a
held-out GeoTIFF read window by window. Truth pixels with the ignore code take no part.
A prediction of ``ignore`` where the truth has a class counts against that class (a missing
label is a wrong label), in an extra last column of the matrix.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from tiles.classes import ClassSchema
from tiles.errors import TrustmapError

CHUNK_PIXELS = 1 << 22


def _index(codes: np.ndarray, schema: ClassSchema) -> np.ndarray:
    """Codes -> class index; ignore and unknown codes -> C (the 'no class' column)."""
    lut = schema.code_to_index().astype(np.int64)
    lut[lut < 0] = schema.num_classes
    return lut[np.asarray(codes, np.uint8)]


def confusion(pred: np.ndarray, truth: np.ndarray, schema: ClassSchema) -> np.ndarray:
    """(C, C + 1) int64 counts: row = truth class, column = predicted class or 'none' (last).

    ``pred`` and ``truth`` are uint8 code arrays of the same shape.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise TrustmapError(f"prediction has shape {pred.shape}, truth {truth.shape}")
    c = schema.num_classes
    out = np.zeros(c * (c + 1), np.int64)
    p, t = pred.reshape(-1), truth.reshape(-1)
    for i in range(0, p.size, CHUNK_PIXELS):
        ti = _index(t[i : i + CHUNK_PIXELS], schema)
        pi = _index(p[i : i + CHUNK_PIXELS], schema)
        keep = ti < c
        out += np.bincount(ti[keep] * (c + 1) + pi[keep], minlength=c * (c + 1))
    return out.reshape(c, c + 1)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU per class from :func:`confusion`; NaN for a class absent from truth and prediction."""
    c = conf.shape[0]
    tp = np.diag(conf[:, :c]).astype(np.float64)
    fn = conf.sum(axis=1) - tp
    fp = conf[:, :c].sum(axis=0) - tp
    den = tp + fn + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, tp / np.maximum(den, 1), np.nan)


@dataclass(frozen=True)
class Scores:
    """mIoU, pixel accuracy and per-class IoU of one label map."""

    miou: float
    accuracy: float
    iou: dict[str, float]
    support: dict[str, int]
    pixels: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "miou": self.miou,
            "accuracy": self.accuracy,
            "iou": dict(self.iou),
            "support": dict(self.support),
            "pixels": self.pixels,
        }


def scores_from_confusion(conf: np.ndarray, schema: ClassSchema) -> Scores:
    """mIoU over the classes present in truth or prediction; accuracy over labelled truth."""
    iou = iou_per_class(conf)
    total = int(conf.sum())
    acc = float(np.trace(conf[:, : conf.shape[0]]) / total) if total else float("nan")
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    return Scores(
        miou=miou,
        accuracy=acc,
        iou={
            n: (None if np.isnan(v) else float(v)) for n, v in zip(schema.names, iou, strict=True)
        },
        support={n: int(s) for n, s in zip(schema.names, conf.sum(axis=1), strict=True)},
        pixels=total,
    )


def score_labels(pred: np.ndarray, truth: np.ndarray, schema: ClassSchema) -> Scores:
    """Scores of a code map against the truth (both (H, W) uint8)."""
    return scores_from_confusion(confusion(pred, truth, schema), schema)


def score_raster(
    pred_path: str | os.PathLike,
    truth: np.ndarray | str | os.PathLike,
    schema: ClassSchema,
    probabilities: bool = False,
    windows: Iterable[Window] | None = None,
) -> Scores:
    """Scores of a label raster, or of a probability raster's argmax, window by window."""
    c = schema.num_classes
    conf = np.zeros((c, c + 1), np.int64)
    to_code = np.append(schema.index_to_code(), np.uint8(schema.ignore))
    truth_ds = rasterio.open(truth) if not isinstance(truth, np.ndarray) else None
    try:
        with rasterio.open(pred_path) as ds:
            shape = (ds.height, ds.width)
            tshape = truth.shape if truth_ds is None else (truth_ds.height, truth_ds.width)
            if tshape != shape:
                raise TrustmapError(f"has shape {shape}, the truth {tshape}", pred_path)
            if probabilities and ds.count != c:
                raise TrustmapError(
                    f"has {ds.count} bands, expected {c} class probabilities", pred_path
                )
            for _, win in windows if windows is not None else ds.block_windows(1):
                if probabilities:
                    p = ds.read(window=win)
                    finite = np.isfinite(p).all(axis=0)
                    idx = np.where(finite, np.argmax(np.nan_to_num(p, nan=-1.0), axis=0), c)
                    pred = to_code[idx]
                else:
                    pred = ds.read(1, window=win)
                t = truth[win.toslices()] if truth_ds is None else truth_ds.read(1, window=win)
                conf += confusion(pred, t, schema)
    finally:
        if truth_ds is not None:
            truth_ds.close()
    return scores_from_confusion(conf, schema)


# --- label errors ------------------------------------------------------------------------------
def wrong_mask(labels: np.ndarray, truth: np.ndarray, ignore: int) -> np.ndarray:
    """Pixels whose label differs from a labelled truth pixel (a missing label is wrong)."""
    return (np.asarray(labels) != np.asarray(truth)) & (np.asarray(truth) != ignore)


@dataclass(frozen=True)
class ErrorTracking:
    """Label-error bookkeeping of a refinement run against the truth.

    ``recall``: share of the cheap labels' wrong pixels that are right now (fixed so far);
    ``introduced``: pixels that were right in the cheap labels and are wrong now;
    ``remaining``: wrong pixels now (of any origin).
    """

    initial_wrong: int
    fixed: int
    introduced: int
    remaining: int
    labelled: int

    @property
    def recall(self) -> float:
        return self.fixed / self.initial_wrong if self.initial_wrong else float("nan")

    @property
    def error_rate(self) -> float:
        return self.remaining / self.labelled if self.labelled else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "initial_wrong": self.initial_wrong,
            "fixed": self.fixed,
            "introduced": self.introduced,
            "remaining_wrong": self.remaining,
            "labelled": self.labelled,
            "error_recall": self.recall,
            "error_rate": self.error_rate,
        }


def track_errors(
    cheap: np.ndarray, current: np.ndarray, truth: np.ndarray, ignore: int
) -> ErrorTracking:
    """Compare the current labels with the cheap ones, both against the truth."""
    was = wrong_mask(cheap, truth, ignore)
    now = wrong_mask(current, truth, ignore)
    return ErrorTracking(
        initial_wrong=int(np.count_nonzero(was)),
        fixed=int(np.count_nonzero(was & ~now)),
        introduced=int(np.count_nonzero(~was & now)),
        remaining=int(np.count_nonzero(now)),
        labelled=int(np.count_nonzero(np.asarray(truth) != ignore)),
    )


def review_precision(
    before: np.ndarray, truth: np.ndarray, reviewed: np.ndarray, ignore: int
) -> dict[str, Any]:
    """Of the pixels sent to review (``reviewed`` mask), how many were wrong before review."""
    t = np.asarray(truth)[reviewed]
    b = np.asarray(before)[reviewed]
    labelled = t != ignore
    n = int(np.count_nonzero(labelled))
    wrong = int(np.count_nonzero((b != t) & labelled))
    return {
        "reviewed_pixels": n,
        "wrong_before": wrong,
        "precision": wrong / n if n else float("nan"),
    }


def normalised_area(spent: np.ndarray, values: np.ndarray, total: float) -> float:
    """Area under a curve of ``values`` against budget ``spent`` (trapezoids), over [0, total].

    Divide two of these, (S - random) / (oracle - random), for the normalised area under the
    budget curve of the literature.
    """
    x = np.asarray(spent, np.float64)
    y = np.asarray(values, np.float64)
    if x.size < 2 or total <= 0:
        return float("nan")
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0) / total)
