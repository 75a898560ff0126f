"""Post-hoc calibrators of detection scores, fitted on a calibration split, saved as JSON.

A calibrator maps a detection's score (and, for the box-conditioned one, its position and
size relative to the image) to the probability that the detection is correct: matched to
an object of its class at the audit's IoU threshold and rule (the target of D-ECE). It is
fitted on a *calibration* split only, never on the split it is judged on, and
:func:`cross_validate` measures it on held-out images of the calibration split.

Methods (netcal fits them with ``tensorboard=False``; trustmap stores the fitted numbers
and applies them itself, so a calibrator file is plain JSON, no pickle, and applying one
needs neither netcal nor torch):

============== ====================================== =====================================
method         model                                  fitted by
============== ====================================== =====================================
temperature    ``σ(w · logit s)``, ``w = 1/T``        ``netcal.scaling.TemperatureScaling``
platt          ``σ(a · logit s + b)``                 ``netcal.scaling.LogisticCalibration``
beta           ``σ(a ln s − b ln(1−s) + c)``          ``netcal.scaling.BetaCalibration``
isotonic       monotone step function of ``s``        ``netcal.binning.IsotonicRegression``
histogram      mean correctness per score bin         ``netcal.binning.HistogramBinning``
box_logistic   ``σ(a · logit s + Σ_k w_k x_k + b)``,  ``LogisticCalibration(detection=True)``
               ``x`` = box centre / size in [0, 1]
============== ====================================== =====================================

**Class-wise or shared.** ``mode="shared"`` fits one calibrator on every detection;
``"classwise"`` one per category, shrunk towards the shared one where a class has few
detections: ``f(x) = λ_c f_c(x) + (1 − λ_c) f_shared(x)`` with ``λ_c = n_c / (n_c + k)``
(``k`` = ``shrinkage``, in detections). netcal has no such fallback: this blend is trustmap's.

**Probability vectors.** :meth:`Calibrator.apply` rewrites ``score``; where the detections
carry ``probs``, the detection's own class column becomes the calibrated score and, for
softmax heads (background last), the other columns are rescaled to sum to one with it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.special import expit, logit

from calibration.detections import Detections, GroundTruth
from calibration.matching import MatchMode, match
from calibration.metrics import BOX_DIMS, MetricsConfig, box_features, dece, ece
from tiles.errors import TrustmapError
from tiles.io import jsonable, write_text_atomic

FORMAT = "trustmap-calibrator-v1"
Mode = Literal["shared", "classwise"]
_EPS = np.finfo(np.float64).eps
#: Box features the box-conditioned logistic uses after the score (relative to the image).
BOX_FEATURES = ("cx", "cy", "w", "h")


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(x, np.float64), _EPS, 1.0 - _EPS)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """netcal and pyro print progress and warn about defaults; keep the CLI's output clean."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------ the methods


def _fit_temperature(s: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from netcal.scaling import TemperatureScaling

    with _quiet():
        m = TemperatureScaling(tensorboard=False).fit(_clip(s), y)
    return {"w": float(np.asarray(m.weights).ravel()[0])}


def _apply_temperature(p: dict[str, Any], s: np.ndarray, x: np.ndarray) -> np.ndarray:
    return expit(p["w"] * logit(_clip(s)))


def _fit_platt(s: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from netcal.scaling import LogisticCalibration

    with _quiet():
        m = LogisticCalibration(tensorboard=False).fit(_clip(s), y)
    return {
        "a": float(np.asarray(m.weights).ravel()[0]),
        "b": float(np.asarray(m.intercept).ravel()[0]),
    }


def _apply_platt(p: dict[str, Any], s: np.ndarray, x: np.ndarray) -> np.ndarray:
    return expit(p["a"] * logit(_clip(s)) + p["b"])


def _fit_beta(s: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from netcal.scaling import BetaCalibration

    with _quiet():
        m = BetaCalibration(tensorboard=False).fit(_clip(s), y)
    w = np.asarray(m._sites["weights"]["values"], np.float64).ravel()
    b = np.asarray(m._sites["bias"]["values"], np.float64).ravel()
    return {"a": float(w[0]), "b": float(w[1]), "c": float(b[0])}


def _apply_beta(p: dict[str, Any], s: np.ndarray, x: np.ndarray) -> np.ndarray:
    s = _clip(s)
    return expit(p["a"] * np.log(s) - p["b"] * np.log1p(-s) + p["c"])


def _fit_isotonic(s: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from netcal.binning import IsotonicRegression

    with _quiet():
        m = IsotonicRegression().fit(np.asarray(s, np.float64), y)
    iso = m._iso
    return {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}


def _apply_isotonic(p: dict[str, Any], s: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.interp(np.asarray(s, np.float64), p["x"], p["y"])


def _fit_histogram(s: np.ndarray, x: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, Any]:
    from netcal.binning import HistogramBinning

    with _quiet():
        m = HistogramBinning(bins=bins).fit(np.asarray(s, np.float64), y)
    return {
        "edges": np.asarray(m._bin_bounds[0], np.float64).tolist(),
        "values": np.asarray(m._bin_map, np.float64).ravel().tolist(),
    }


def _apply_histogram(p: dict[str, Any], s: np.ndarray, x: np.ndarray) -> np.ndarray:
    edges, values = np.asarray(p["edges"]), np.asarray(p["values"])
    b = np.clip(
        np.searchsorted(edges, np.asarray(s, np.float64), side="right") - 1, 0, len(values) - 1
    )
    return values[b]


def _fit_box_logistic(s: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from netcal.scaling import LogisticCalibration

    X = np.column_stack([_clip(s), _clip(x)])
    with _quiet():
        m = LogisticCalibration(tensorboard=False, detection=True).fit(X, y)
    w = np.asarray(m.weights, np.float64).ravel()
    return {"a": float(w[0]), "w": w[1:].tolist(), "b": float(np.asarray(m.intercept).ravel()[0])}


def _apply_box_logistic(p: dict[str, Any], s: np.ndarray, x: np.ndarray) -> np.ndarray:
    return expit(p["a"] * logit(_clip(s)) + _clip(x) @ np.asarray(p["w"]) + p["b"])


@dataclass(frozen=True)
class Method:
    fit: Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]
    apply: Callable[[dict[str, Any], np.ndarray, np.ndarray], np.ndarray]
    uses_boxes: bool = False
    keys: tuple[str, ...] = ()


METHODS: dict[str, Method] = {
    "temperature": Method(_fit_temperature, _apply_temperature, keys=("w",)),
    "platt": Method(_fit_platt, _apply_platt, keys=("a", "b")),
    "beta": Method(_fit_beta, _apply_beta, keys=("a", "b", "c")),
    "isotonic": Method(_fit_isotonic, _apply_isotonic, keys=("x", "y")),
    "histogram": Method(_fit_histogram, _apply_histogram, keys=("edges", "values")),
    "box_logistic": Method(_fit_box_logistic, _apply_box_logistic, True, ("a", "w", "b")),
}


def check_method(name: str) -> Method:
    if name not in METHODS:
        raise TrustmapError(f"unknown calibrator {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


# ------------------------------------------------------------------ fitting data


@dataclass
class FitData:
    """Score, box features, correctness and category of every detection that counts."""

    score: np.ndarray
    boxes: np.ndarray  # (N, 4) cx, cy, w, h relative to the image
    correct: np.ndarray  # (N,) 0/1
    category: np.ndarray
    image_index: np.ndarray

    def subset(self, rows: np.ndarray) -> FitData:
        return FitData(
            *(
                a[rows]
                for a in (self.score, self.boxes, self.correct, self.category, self.image_index)
            )
        )


def fit_data(
    dets: Detections, gt: GroundTruth, iou: float = 0.5, mode: MatchMode = "greedy"
) -> FitData:
    """Targets as the audit's D-ECE sees them: matched at ``iou`` with ``mode``; detections
    absorbed by crowd/ignore regions are left out."""
    dets.validate(gt)
    m = match(dets, gt, [iou], mode)
    r = m.row(0)
    keep = np.flatnonzero(~r.ignored)
    feats = box_features(dets, gt, ("confidence", *BOX_FEATURES)) if len(dets) else np.zeros((0, 5))
    return FitData(
        dets.score[keep].astype(np.float64),
        feats[keep, 1:],
        r.tp[keep].astype(np.float64),
        dets.category_id[keep].astype(np.int64),
        m.image_index[keep],
    )


# ------------------------------------------------------------------ the calibrator


@dataclass
class Calibrator:
    """A fitted calibrator: the method, its parameters (shared, and per class), and where
    it came from. :meth:`save` / :meth:`load` round-trip it through JSON."""

    method: str
    mode: Mode
    shared: dict[str, Any]
    categories: dict[int, str]
    per_class: dict[int, dict[str, Any]] = field(default_factory=dict)
    shrinkage: float = 50.0
    iou: float = 0.5
    match_mode: str = "greedy"
    fitted_on: dict[str, Any] = field(default_factory=dict)
    cv: dict[str, Any] | None = None

    @property
    def uses_boxes(self) -> bool:
        return METHODS[self.method].uses_boxes

    # ---- applying

    def calibrate(
        self, score: np.ndarray, boxes: np.ndarray | None, category: np.ndarray
    ) -> np.ndarray:
        """Calibrated probability of each detection (scores, (N, 4) box features, categories)."""
        meth = METHODS[self.method]
        s = np.asarray(score, np.float64)
        x = np.zeros((len(s), 4)) if boxes is None else np.asarray(boxes, np.float64)
        out = meth.apply(self.shared, s, x)
        if self.mode == "classwise":
            cat = np.asarray(category)
            for c, entry in self.per_class.items():
                rows = np.flatnonzero(cat == c)
                if rows.size and entry.get("params") is not None:
                    lam = entry["weight"]
                    own = meth.apply(entry["params"], s[rows], x[rows])
                    out[rows] = lam * own + (1.0 - lam) * out[rows]
        return np.clip(out, 0.0, 1.0)

    def check_categories(self, dets: Detections, source: str | os.PathLike | None = None) -> None:
        """The detections' categories must be ones the calibrator was fitted on."""
        have = set(np.unique(dets.category_id).tolist())
        unknown = sorted(have - set(self.categories))
        if unknown:
            raise TrustmapError(
                f"detections carry categories {unknown} that the calibrator was not fitted on "
                f"(it knows {sorted(self.categories)}); fit it on predictions of the same detector",
                source or dets.source,
            )

    def apply(
        self,
        dets: Detections,
        images: GroundTruth | None = None,
        source: str | os.PathLike | None = None,
    ) -> Detections:
        """The detections with calibrated scores (and probability vectors, see module doc).

        ``images``: ground truth or any COCO file with the images' sizes; the box-conditioned
        calibrator needs it for the box features."""
        self.check_categories(dets, source)
        boxes = None
        if self.uses_boxes:
            if images is None:
                raise TrustmapError(
                    f"the {self.method} calibrator uses box position and size: give the annotations "
                    "(or any COCO file listing the images with their width and height)",
                    source or dets.source,
                )
            boxes = (
                box_features(dets, images, ("confidence", *BOX_FEATURES))[:, 1:]
                if len(dets)
                else None
            )
        new = self.calibrate(dets.score, boxes, dets.category_id)
        return _with_scores(dets, new, tuple(sorted(self.categories)))

    # ---- JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": self.method,
            "mode": self.mode,
            "target": f"matched to an object of its class, IoU >= {self.iou:g}, {self.match_mode} rule",
            "iou": self.iou,
            "match_mode": self.match_mode,
            "shrinkage": self.shrinkage,
            "categories": {str(k): v for k, v in sorted(self.categories.items())},
            "shared": self.shared,
            "per_class": {str(k): v for k, v in sorted(self.per_class.items())},
            "fitted_on": self.fitted_on,
            "cv": self.cv,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the calibrator as JSON, atomically."""
        write_text_atomic(Path(path), json.dumps(jsonable(self.to_dict()), indent=1) + "\n")
        return Path(path)

    @classmethod
    def from_dict(cls, d: Any, source: str | os.PathLike | None = None) -> Calibrator:
        """Validate a calibrator document; every problem names the file and the key."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise TrustmapError(
                f'not a trustmap calibrator (expected "format": "{FORMAT}")', source
            )
        for key in ("method", "mode", "shared", "categories"):
            if key not in d:
                raise TrustmapError(f"calibrator lacks key '{key}'", source)
        if d["method"] not in METHODS:
            raise TrustmapError(f"key 'method': unknown calibrator {d['method']!r}", source)
        if d["mode"] not in ("shared", "classwise"):
            raise TrustmapError(
                f"key 'mode': must be 'shared' or 'classwise', got {d['mode']!r}", source
            )
        meth = METHODS[d["method"]]

        def params(p: Any, where: str) -> dict[str, Any]:
            if not isinstance(p, Mapping) or any(k not in p for k in meth.keys):
                raise TrustmapError(
                    f"key '{where}': {d['method']} needs parameters {list(meth.keys)}", source
                )
            return dict(p)

        try:
            per_class = {
                int(k): dict(v)
                | {
                    "params": None
                    if v.get("params") is None
                    else params(v["params"], f"per_class.{k}.params")
                }
                for k, v in (d.get("per_class") or {}).items()
            }
            cats = {int(k): str(v) for k, v in d["categories"].items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise TrustmapError(f"malformed calibrator: {exc}", source) from None
        return cls(
            method=d["method"],
            mode=d["mode"],
            shared=params(d["shared"], "shared"),
            categories=cats,
            per_class=per_class,
            shrinkage=float(d.get("shrinkage", 50.0)),
            iou=float(d.get("iou", 0.5)),
            match_mode=str(d.get("match_mode", "greedy")),
            fitted_on=dict(d.get("fitted_on") or {}),
            cv=d.get("cv"),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibrator:
        p = Path(path)
        if not p.exists():
            raise TrustmapError("calibrator file not found", p)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TrustmapError(
                f"not a JSON calibrator file ({exc.__class__.__name__})", p
            ) from None
        return cls.from_dict(d, p)


def _with_scores(dets: Detections, new: np.ndarray, default_cats: tuple[int, ...]) -> Detections:
    """``dets`` with ``score`` replaced; the own-class probability follows (module doc).
    Columns follow ``prob_category_ids``, else ``default_cats`` (ascending ids)."""
    from dataclasses import replace

    probs = dets.probs
    if probs is not None and len(dets):
        probs = np.array(probs, np.float64, copy=True)
        cats = dets.prob_category_ids if dets.prob_category_ids is not None else default_cats
        lut = {c: j for j, c in enumerate(cats)}
        col = np.array([lut.get(int(c), -1) for c in dets.category_id.tolist()], np.int64)
        ok = (col >= 0) & (col < probs.shape[1])
        rows = np.flatnonzero(ok)
        if rows.size:
            c = col[rows]
            old = probs[rows, c]
            softmax = probs.shape[1] == len(cats) + 1
            if softmax:
                rest = np.maximum(1.0 - old, _EPS)
                probs[rows] *= ((1.0 - new[rows]) / rest)[:, None]
            probs[rows, c] = new[rows]
    return replace(dets, score=np.asarray(new, np.float64), probs=probs, logits=None)


# ------------------------------------------------------------------ fitting


def fit_arrays(
    data: FitData,
    method: str,
    mode: Mode = "shared",
    categories: Mapping[int, str] | None = None,
    shrinkage: float = 50.0,
    source: str | os.PathLike | None = None,
) -> Calibrator:
    """Fit ``method`` on prepared data (see :func:`fit`)."""
    meth = check_method(method)
    if mode not in ("shared", "classwise"):
        raise TrustmapError(f"calibrator mode must be 'shared' or 'classwise', got {mode!r}")
    cats = (
        dict(categories)
        if categories is not None
        else {int(c): str(c) for c in np.unique(data.category)}
    )
    n, pos = len(data.score), int(data.correct.sum())
    if n == 0:
        raise TrustmapError(
            "the calibration split has no detections to fit a calibrator on", source
        )
    if pos == 0 or pos == n:
        what = "no correct detections (no positives)" if pos == 0 else "no wrong detections"
        raise TrustmapError(
            f"the calibration split has {what}: a calibrator cannot be fitted", source
        )
    shared = meth.fit(data.score, data.boxes, data.correct)
    per_class: dict[int, dict[str, Any]] = {}
    if mode == "classwise":
        for c in sorted(cats):
            rows = np.flatnonzero(data.category == c)
            nc, pc = int(rows.size), int(data.correct[rows].sum())
            if nc and pc == 0:
                raise TrustmapError(
                    f"class {c} ('{cats[c]}') has {nc} detections but no positives in the calibration "
                    "split: a class-wise calibrator would score it 0; fit a shared one, or add data",
                    source,
                )
            entry: dict[str, Any] = {
                "n": nc,
                "n_pos": pc,
                "weight": nc / (nc + shrinkage) if nc else 0.0,
            }
            entry["params"] = (
                meth.fit(data.score[rows], data.boxes[rows], data.correct[rows])
                if 0 < pc < nc
                else None
            )
            if entry["params"] is None:
                entry["weight"] = 0.0
            per_class[c] = entry
    return Calibrator(
        method=method,
        mode=mode,
        shared=shared,
        categories=cats,
        per_class=per_class,
        shrinkage=float(shrinkage),
        fitted_on={
            "detections": n,
            "positives": pos,
            "images": int(len(np.unique(data.image_index))),
        },
    )


def fit(
    dets: Detections,
    gt: GroundTruth,
    method: str,
    mode: Mode = "shared",
    shrinkage: float = 50.0,
    iou: float = 0.5,
    match_mode: MatchMode = "greedy",
    source: str | os.PathLike | None = None,
) -> Calibrator:
    """Fit a calibrator on a calibration split (detections and their ground truth)."""
    extra = sorted(set(np.unique(dets.category_id).tolist()) - set(gt.categories))
    if extra:
        raise TrustmapError(
            f"detections carry categories {extra} that the annotations do not list", source
        )
    cal = fit_arrays(
        fit_data(dets, gt, iou, match_mode), method, mode, gt.categories, shrinkage, source
    )
    cal.iou, cal.match_mode = iou, match_mode
    return cal


def _dece_of(p: np.ndarray, d: FitData, mcfg: MetricsConfig) -> float:
    cols = {
        "confidence": p,
        "cx": d.boxes[:, 0],
        "cy": d.boxes[:, 1],
        "w": d.boxes[:, 2],
        "h": d.boxes[:, 3],
    }
    X = np.column_stack([cols[k] for k in mcfg.dece_dims])
    return dece(X, d.correct, mcfg.dece_bin_counts, mcfg.bin_strategy)


def cross_validate(
    data: FitData,
    method: str,
    mode: Mode = "shared",
    folds: int = 5,
    seed: int = 0,
    shrinkage: float = 50.0,
    mcfg: MetricsConfig | None = None,
    categories: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """K-fold cross-validation over images of the calibration split: fit on K-1 folds,
    calibrate the held-out one; D-ECE and ECE of the out-of-fold scores against the raw ones."""
    mcfg = mcfg or MetricsConfig()
    imgs = np.unique(data.image_index)
    if len(imgs) < folds or folds < 2:
        raise TrustmapError(
            f"cross-validation needs at least {max(folds, 2)} images, got {len(imgs)}"
        )
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(rng.permutation(imgs).tolist(), np.arange(len(imgs)) % folds, strict=True))
    f = np.array([fold_of[i] for i in data.image_index.tolist()], np.int64)
    oof = np.full(len(data.score), np.nan)
    for k in range(folds):
        tr, te = np.flatnonzero(f != k), np.flatnonzero(f == k)
        if not te.size:
            continue
        try:
            cal = fit_arrays(data.subset(tr), method, mode, categories, shrinkage)
        except TrustmapError:
            cal = None  # a fold without positives: keep its scores
        sub = data.subset(te)
        oof[te] = sub.score if cal is None else cal.calibrate(sub.score, sub.boxes, sub.category)
    return {
        "folds": folds,
        "dece_raw": _dece_of(data.score, data, mcfg),
        "dece": _dece_of(oof, data, mcfg),
        "ece_raw": ece(data.score, data.correct, bins=mcfg.bins),
        "ece": ece(oof, data.correct, bins=mcfg.bins),
    }


def choose(
    data: FitData,
    methods: Sequence[str] = tuple(METHODS),
    mode: Mode = "shared",
    folds: int = 5,
    seed: int = 0,
    shrinkage: float = 50.0,
    mcfg: MetricsConfig | None = None,
    categories: Mapping[int, str] | None = None,
) -> tuple[str, dict[str, dict[str, Any]]]:
    """The method with the lowest cross-validated D-ECE, and every method's CV numbers."""
    res = {
        m: cross_validate(data, m, mode, folds, seed, shrinkage, mcfg, categories) for m in methods
    }
    return min(res, key=lambda m: res[m]["dece"]), res


__all__ = [
    "BOX_DIMS",
    "FORMAT",
    "METHODS",
    "Calibrator",
    "FitData",
    "choose",
    "cross_validate",
    "fit",
    "fit_arrays",
    "fit_data",
]
