"""Detections and ground truth as columnar numpy tables, with COCO and npz I/O.

Columns rather than lists of dicts: a million detections is eight arrays, and every
metric downstream is a vectorised function of them. The on-disk formats are the ones
users already have: COCO results JSON (what detectron2's ``COCOEvaluator`` writes,
optionally with ``probs``/``logits`` per entry), a COCO annotations JSON for ground truth,
and an ``.npz`` with the same columns for sets too large for JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import unicodedata
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from tiles.errors import TrustmapError
from tiles.io import atomic_path

if TYPE_CHECKING:
    from pycocotools.coco import COCO

NPZ_FORMAT = "trustmap-detections-v1"
_OPTIONAL = ("probs", "logits", "proposal_index")

#: How far (pixels) a box may reach past the image edge before it counts as outside:
#: detectors clip in float32 and COCO boxes are rounded, so exact edges are not exact.
EDGE_TOLERANCE_PX = 1.0


def _first_bad(
    mask: ArrayLike,
    what: Callable[[int], str],
    describe: Callable[[int], str],
    source: str | None,
    kind: str,
) -> None:
    """Raise naming the first offending entry (and how many others) if ``mask`` has any."""
    bad = np.flatnonzero(mask)
    if bad.size:
        i = int(bad[0])
        more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
        raise TrustmapError(f"{kind} {describe(i)}: {what(i)}{more}", source)


def _read_json(path: str | os.PathLike) -> Any:
    p = Path(path)
    if not p.exists():
        raise TrustmapError("file not found", p)
    if p.is_dir():
        raise TrustmapError("is a directory, expected a JSON file", p)
    try:
        with p.open("rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise TrustmapError(
            f"not valid JSON (truncated or corrupt?): {exc.msg} at line {exc.lineno} column {exc.colno}",
            p,
        ) from None
    except UnicodeDecodeError:
        raise TrustmapError("not a text JSON file (binary content)", p) from None


def _json_kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        type(None): "null",
        bool: "a boolean",
    }.get(type(value), "a number")


_INT64 = (-(2**63), 2**63 - 1)


def _int64(value: Any) -> int:
    """A COCO id or category: a whole number that fits int64 (not a bool, not 1.5)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | np.integer):
        raise TypeError(f"expected a whole number, got {_json_kind(value)}")
    number = int(value)
    if isinstance(value, float) and number != value:
        raise ValueError(f"expected a whole number, got {value!r}")
    if not _INT64[0] <= number <= _INT64[1]:
        raise OverflowError(f"{value!r} does not fit a 64-bit id")
    return number


def _category_name(entry: dict[str, Any]) -> str:
    name = entry.get("name", entry["id"])
    if not isinstance(name, str | int) or isinstance(name, bool):
        raise TypeError(f"category {entry['id']!r}: 'name' must be text, got {_json_kind(name)}")
    name = str(name)
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Cn") for ch in name):
        raise ValueError(f"category {entry['id']!r}: name {name!r} contains control characters")
    return name


def _check_numbers(values: list, key: str, vector: bool, source: str | None) -> None:
    """Each entry's ``key``: a flat list of numbers (vector) or one whole number."""
    for i, v in enumerate(values):
        if vector:
            ok = isinstance(v, list) and all(
                isinstance(x, float)
                or (isinstance(x, int) and not isinstance(x, bool) and abs(x) < 2**1023)
                for x in v
            )
            what = "a list of numbers"
        else:
            ok = isinstance(v, int) and not isinstance(v, bool) and _INT64[0] <= v <= _INT64[1]
            what = "a whole number"
        if not ok:
            raise TrustmapError(
                f"detection {i}: '{key}' must be {what}, got {_json_kind(v)}", source
            )


def _xywh_problems(bbox: np.ndarray) -> np.ndarray:
    """Per-row text-free flags: non-finite or non-positive width/height."""
    return ~np.isfinite(bbox).all(axis=1) | (bbox[:, 2] <= 0) | (bbox[:, 3] <= 0)


def _box_problem(bbox: np.ndarray, i: int) -> str:
    x, y, w, h = (float(v) for v in bbox[i])
    if not np.isfinite(bbox[i]).all():
        return f"bbox {[x, y, w, h]} is not finite (NaN or inf)"
    return f"bbox {[x, y, w, h]} has width or height <= 0"


# --------------------------------------------------------------------------- ground truth


@dataclass(eq=False)  # arrays: compare columns explicitly
class ImageTable:
    """The images a ground truth covers: COCO ``images`` as columns."""

    id: np.ndarray  # (I,) int64
    file_name: np.ndarray  # (I,) str
    width: np.ndarray  # (I,) float64
    height: np.ndarray  # (I,) float64

    def __len__(self) -> int:
        return len(self.id)

    def index_of(self, image_id: np.ndarray) -> np.ndarray:
        """Row of each image id in this table (-1 where unknown), vectorised."""
        image_id = np.asarray(image_id, dtype=np.int64)
        if len(self.id) == 0:
            return np.full(image_id.shape, -1, dtype=np.int64)
        order = np.argsort(self.id, kind="stable")
        ids = self.id[order]
        pos = np.clip(np.searchsorted(ids, image_id), 0, len(ids) - 1)
        return np.where(ids[pos] == image_id, order[pos], -1)


@dataclass(eq=False)  # arrays: compare columns explicitly
class AnnotationTable:
    """COCO ``annotations`` as columns. ``ignore`` marks do-not-care regions."""

    id: np.ndarray  # (M,) int64
    image_id: np.ndarray  # (M,) int64
    bbox: np.ndarray  # (M, 4) float64 xywh
    category_id: np.ndarray  # (M,) int64
    iscrowd: np.ndarray  # (M,) bool
    ignore: np.ndarray  # (M,) bool
    area: np.ndarray  # (M,) float64 (COCO's area ranges use it)

    def __len__(self) -> int:
        return len(self.id)

    @property
    def is_region(self) -> np.ndarray:
        """Crowd or ignore: detections inside it are neither TP nor FP (COCO crowd rules)."""
        return self.iscrowd | self.ignore


@dataclass(eq=False)  # arrays: compare columns explicitly
class GroundTruth:
    """Images, annotated boxes and category names of one evaluation set."""

    images: ImageTable
    annotations: AnnotationTable
    categories: dict[int, str]
    source: str | None = field(default=None, compare=False)

    @property
    def category_ids(self) -> np.ndarray:
        """Category ids in ascending order: the order of K-column probability vectors."""
        return np.array(sorted(self.categories), dtype=np.int64)

    def subset_images(self, image_ids: Sequence[int] | np.ndarray) -> GroundTruth:
        """The same ground truth restricted to ``image_ids`` (categories kept)."""
        keep = np.isin(self.images.id, np.asarray(image_ids, np.int64))
        im = self.images
        a = self.annotations
        ka = np.isin(a.image_id, im.id[keep])
        return GroundTruth(
            ImageTable(im.id[keep], im.file_name[keep], im.width[keep], im.height[keep]),
            AnnotationTable(
                a.id[ka], a.image_id[ka], a.bbox[ka], a.category_id[ka], a.iscrowd[ka],
                a.ignore[ka], a.area[ka],
            ),
            dict(self.categories),
            self.source,
        )  # fmt: skip

    @classmethod
    def from_coco(
        cls, data: dict[str, Any], source: str | os.PathLike | None = None
    ) -> GroundTruth:
        """Build from a COCO annotations dict (``images``, ``annotations``, ``categories``)."""
        src = None if source is None else str(source)
        if not isinstance(data, dict) or not all(
            k in data for k in ("images", "annotations", "categories")
        ):
            hint = " (this looks like a detections/results list)" if isinstance(data, list) else ""
            raise TrustmapError(
                f"not a COCO annotations file: needs 'images', 'annotations' and 'categories'{hint}",
                src,
            )
        for key in ("images", "annotations", "categories"):
            if not isinstance(data[key], list) or not all(isinstance(e, dict) for e in data[key]):
                raise TrustmapError(
                    f"'{key}' must be a list of objects, got {_json_kind(data[key])}", src
                )
        try:
            cats = {_int64(c["id"]): _category_name(c) for c in data["categories"]}
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise TrustmapError(
                f"categories: every entry needs an integer 'id' and a text 'name' ({exc!r})", src
            ) from None
        imgs = data["images"]
        try:
            images = ImageTable(
                id=np.array([_int64(im["id"]) for im in imgs], dtype=np.int64),
                file_name=np.array([str(im.get("file_name", "")) for im in imgs], dtype=str),
                width=np.array([float(im["width"]) for im in imgs], dtype=np.float64),
                height=np.array([float(im["height"]) for im in imgs], dtype=np.float64),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise TrustmapError(
                f"images: every entry needs 'id', 'width' and 'height' ({exc!r})", src
            ) from None
        anns = data["annotations"]
        rows = []
        for i, a in enumerate(anns):
            try:
                bb = [float(v) for v in a["bbox"]]
                if len(bb) != 4:
                    raise ValueError("bbox must have 4 numbers")
                rows.append(
                    (
                        _int64(a.get("id", i + 1)),
                        _int64(a["image_id"]),
                        bb,
                        _int64(a["category_id"]),
                        bool(a.get("iscrowd", 0)),
                        bool(a.get("ignore", 0)),
                        float(a["area"]) if "area" in a else bb[2] * bb[3],
                    )
                )
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise TrustmapError(f"annotation {i}: malformed ({exc!r})", src) from None
        m = len(rows)
        annotations = AnnotationTable(
            id=np.array([r[0] for r in rows], dtype=np.int64),
            image_id=np.array([r[1] for r in rows], dtype=np.int64),
            bbox=np.array([r[2] for r in rows], dtype=np.float64).reshape(m, 4),
            category_id=np.array([r[3] for r in rows], dtype=np.int64),
            iscrowd=np.array([r[4] for r in rows], dtype=bool),
            ignore=np.array([r[5] for r in rows], dtype=bool),
            area=np.array([r[6] for r in rows], dtype=np.float64),
        )
        gt = cls(images=images, annotations=annotations, categories=cats, source=src)
        gt.validate()
        return gt

    @classmethod
    def from_coco_json(cls, path: str | os.PathLike) -> GroundTruth:
        """Read a COCO annotations JSON (instances_*.json)."""
        return cls.from_coco(_read_json(path), source=path)

    @classmethod
    def from_raster_boxes(
        cls,
        raster: str | os.PathLike,
        boxes: str | os.PathLike,
        categories: dict[int, str] | None = None,
        image_id: int = 1,
        **kwargs: Any,
    ) -> GroundTruth:
        """A georeferenced tile plus a box file (CSV in pixels, or GPKG/GeoJSON in map units).

        The conversion itself lives in :mod:`tiles.boxes` (geospatial, no ML); this only
        wraps its COCO dict.
        """
        from tiles.boxes import read_boxes, to_coco

        table = read_boxes(raster, boxes, **kwargs)
        return cls.from_coco(
            to_coco([table], categories=categories, first_image_id=image_id), source=boxes
        )

    def validate(self) -> None:
        """Check ids, boxes and shapes; raise naming the first bad annotation."""
        src = self.source
        im, an = self.images, self.annotations
        if len(np.unique(im.id)) != len(im.id):
            dup = im.id[np.flatnonzero(np.diff(np.sort(im.id)) == 0)[0]]
            raise TrustmapError(f"images: image id {int(dup)} appears more than once", src)
        _first_bad(
            ~(np.isfinite(im.width) & np.isfinite(im.height) & (im.width > 0) & (im.height > 0)),
            lambda i: f"width/height {im.width[i]}x{im.height[i]} must be positive",
            lambda i: f"{int(im.id[i])}",
            src,
            "image",
        )
        name = lambda i: f"{i} (id {int(an.id[i])})"  # noqa: E731
        _first_bad(
            _xywh_problems(an.bbox), lambda i: _box_problem(an.bbox, i), name, src, "annotation"
        )
        row = im.index_of(an.image_id)
        _first_bad(
            row < 0,
            lambda i: f"image_id {int(an.image_id[i])} has no image",
            name,
            src,
            "annotation",
        )
        known = np.isin(an.category_id, self.category_ids)
        _first_bad(
            ~known,
            lambda i: f"category_id {int(an.category_id[i])} is not a known category",
            name,
            src,
            "annotation",
        )
        x1, y1 = an.bbox[:, 0] + an.bbox[:, 2], an.bbox[:, 1] + an.bbox[:, 3]
        tol = EDGE_TOLERANCE_PX
        outside = (
            (an.bbox[:, 0] < -tol)
            | (an.bbox[:, 1] < -tol)
            | (x1 > im.width[row] + tol)
            | (y1 > im.height[row] + tol)
        )
        _first_bad(
            outside,
            lambda i: (
                f"bbox {an.bbox[i].tolist()} lies outside its {im.width[row[i]]:g}x{im.height[row[i]]:g} image"
            ),
            name,
            src,
            "annotation",
        )

    def to_coco_dict(self) -> dict[str, Any]:
        """Plain COCO annotations dict (JSON-serialisable)."""
        im, an = self.images, self.annotations
        return {
            "images": [
                {"id": int(i), "file_name": str(f), "width": _num(w), "height": _num(h)}
                for i, f, w, h in zip(im.id, im.file_name, im.width, im.height, strict=True)
            ],
            "annotations": [
                {
                    "id": int(an.id[k]),
                    "image_id": int(an.image_id[k]),
                    "bbox": [float(v) for v in an.bbox[k]],
                    "category_id": int(an.category_id[k]),
                    "iscrowd": int(an.iscrowd[k]),
                    "ignore": int(an.ignore[k]),
                    "area": float(an.area[k]),
                }
                for k in range(len(an))
            ],
            "categories": [{"id": int(c), "name": n} for c, n in sorted(self.categories.items())],
        }

    def to_coco_json(self, path: str | os.PathLike) -> Path:
        """Write a COCO annotations JSON atomically."""
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_coco_dict()), encoding="utf-8")
        return Path(path)

    def to_coco(self) -> COCO:
        """A pycocotools ``COCO`` built in memory, for ``COCOeval``.

        pycocotools overwrites ``ignore`` with ``iscrowd``, so ignore regions are passed as
        crowd regions: the same rule our matcher applies to both.
        """
        from pycocotools.coco import COCO

        d = self.to_coco_dict()
        for a in d["annotations"]:
            a["iscrowd"] = int(a["iscrowd"] or a.pop("ignore"))
        coco = COCO()
        coco.dataset = d
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


# --------------------------------------------------------------------------- detections


@dataclass(eq=False)
class Detections:
    """Detections of one model on one image set, one row per box.

    ``probs`` holds the full class vector when the model exposes it: K columns for
    sigmoid heads (RetinaNet, FCOS), K+1 for softmax heads with background last
    (Faster R-CNN). ``prob_category_ids`` names the category of columns 0..K-1; when
    ``None`` the columns follow the ground truth's category ids in ascending order
    (detectron2's contiguous mapping).
    """

    image_id: np.ndarray
    bbox: np.ndarray
    category_id: np.ndarray
    score: np.ndarray
    probs: np.ndarray | None = None
    logits: np.ndarray | None = None
    proposal_index: np.ndarray | None = None
    prob_category_ids: tuple[int, ...] | None = None
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        src = self.source
        try:
            self.image_id = np.asarray(self.image_id, dtype=np.int64).reshape(-1)
            self.category_id = np.asarray(self.category_id, dtype=np.int64).reshape(-1)
            self.score = np.asarray(self.score, dtype=np.float64).reshape(-1)
            self.bbox = np.asarray(self.bbox, dtype=np.float64).reshape(-1, 4)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TrustmapError(f"detections: malformed column ({exc})", src) from None
        n = len(self.image_id)
        for name in ("bbox", "category_id", "score"):
            if len(getattr(self, name)) != n:
                raise TrustmapError(
                    f"detections: column '{name}' has {len(getattr(self, name))} rows, image_id has {n}",
                    src,
                )
        for name in ("probs", "logits"):
            v = getattr(self, name)
            if v is not None:
                try:
                    v = np.asarray(v, dtype=np.float64)
                except (TypeError, ValueError, OverflowError) as exc:
                    raise TrustmapError(
                        f"detections: '{name}' is not numeric ({exc})", src
                    ) from None
                if v.ndim != 2 or len(v) != n:
                    raise TrustmapError(
                        f"detections: '{name}' must be (N, classes) with N={n}, got {v.shape}", src
                    )
                setattr(self, name, v)
        if (
            self.probs is not None
            and self.logits is not None
            and self.probs.shape != self.logits.shape
        ):
            raise TrustmapError(
                f"detections: probs {self.probs.shape} and logits {self.logits.shape} differ in shape",
                src,
            )
        if self.proposal_index is not None:
            self.proposal_index = np.asarray(self.proposal_index, dtype=np.int64).reshape(-1)
            if len(self.proposal_index) != n:
                raise TrustmapError(
                    f"detections: 'proposal_index' has {len(self.proposal_index)} rows, expected {n}",
                    src,
                )
        if self.prob_category_ids is not None:
            self.prob_category_ids = tuple(int(c) for c in self.prob_category_ids)

    def __len__(self) -> int:
        return len(self.image_id)

    def __eq__(self, other: object) -> bool:
        """Same columns, value for value (the source file is not compared)."""
        if not isinstance(other, Detections):
            return NotImplemented
        for f in fields(self):
            if f.name == "source":
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if (a is None) != (b is None):
                return False
            if isinstance(a, np.ndarray) and not np.array_equal(a, b):
                return False
            if not isinstance(a, np.ndarray) and a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    # ----------------------------------------------------------------- building blocks

    def subset(self, mask_or_idx: np.ndarray | Sequence[int] | slice) -> Detections:
        """Rows selected by a boolean mask, an index array or a slice (a copy)."""
        sel = mask_or_idx if isinstance(mask_or_idx, slice) else np.asarray(mask_or_idx)
        if isinstance(sel, np.ndarray) and sel.dtype == bool and len(sel) != len(self):
            raise TrustmapError(
                f"detections: mask has {len(sel)} rows, expected {len(self)}", self.source
            )
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v[sel] if isinstance(v, np.ndarray) else v
        return Detections(**kw)

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        """Stack several tables; optional columns survive only if every part has them."""
        if not parts:
            return cls.empty()
        pci = {p.prob_category_ids for p in parts}
        if len(pci) > 1:
            raise TrustmapError(
                "detections: cannot concatenate tables with different prob_category_ids"
            )
        kw: dict[str, Any] = {"prob_category_ids": pci.pop(), "source": parts[0].source}
        for name in ("image_id", "bbox", "category_id", "score", *_OPTIONAL):
            cols = [getattr(p, name) for p in parts]
            if any(c is None for c in cols):  # only optional columns can be None
                kw[name] = None
                continue
            kw[name] = np.concatenate(cols)
        return cls(**kw)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0))

    @property
    def bbox_xyxy(self) -> np.ndarray:
        b = self.bbox
        return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)

    def class_probabilities(
        self, category_ids: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray | None:
        """The probability vectors (from ``probs``, else from ``logits``), or None.

        Logits become probabilities by softmax when there are K+1 columns and by a
        per-class sigmoid when there are K, the two head types detectors ship with.
        """
        if self.probs is not None:
            return self.probs
        if self.logits is None:
            return None
        cols = self.prob_category_ids if self.prob_category_ids is not None else category_ids
        k = 0 if cols is None else len(cols)
        z = self.logits
        if k and z.shape[1] == k:
            return 1.0 / (1.0 + np.exp(-z))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    # ----------------------------------------------------------------------- checking

    def validate(self, ground_truth: GroundTruth) -> None:
        """Check every row against the ground truth; raise naming the first bad entry."""
        src = self.source
        gt = ground_truth
        name = lambda i: f"{i} (image_id {int(self.image_id[i])})"  # noqa: E731
        _first_bad(
            _xywh_problems(self.bbox), lambda i: _box_problem(self.bbox, i), name, src, "detection"
        )
        s = self.score
        _first_bad(
            ~np.isfinite(s) | (s < 0) | (s > 1),
            lambda i: f"score {float(s[i])!r} is outside [0, 1]",
            name,
            src,
            "detection",
        )
        row = gt.images.index_of(self.image_id)
        _first_bad(
            row < 0,
            lambda i: f"image_id {int(self.image_id[i])} is not an image of the ground truth",
            name,
            src,
            "detection",
        )
        _first_bad(
            ~np.isin(self.category_id, gt.category_ids),
            lambda i: (
                f"category_id {int(self.category_id[i])} is not a ground-truth category "
                f"(known: {sorted(gt.categories)[:20]})"
            ),
            name,
            src,
            "detection",
        )
        b, tol = self.bbox, EDGE_TOLERANCE_PX
        w, h = gt.images.width[row], gt.images.height[row]
        outside = (
            (b[:, 0] < -tol)
            | (b[:, 1] < -tol)
            | (b[:, 0] + b[:, 2] > w + tol)
            | (b[:, 1] + b[:, 3] > h + tol)
        )
        _first_bad(
            outside,
            lambda i: f"bbox {b[i].tolist()} lies outside its {w[i]:g}x{h[i]:g} image",
            name,
            src,
            "detection",
        )
        self._validate_vectors(gt, name)

    def _validate_vectors(self, gt: GroundTruth, name: Callable[[int], str]) -> None:
        src = self.source
        cols = self.prob_category_ids
        if cols is not None:
            unknown = [c for c in cols if c not in gt.categories]
            if unknown:
                raise TrustmapError(
                    f"detections: prob_category_ids {unknown} are not ground-truth categories", src
                )
        k = len(cols) if cols is not None else len(gt.categories)
        for vname in ("probs", "logits"):
            v = getattr(self, vname)
            if v is None:
                continue
            if v.shape[1] not in (k, k + 1):
                raise TrustmapError(
                    f"detections: '{vname}' has {v.shape[1]} columns; expected {k} (sigmoid head) or {k + 1} "
                    "(softmax head, background last) for the ground truth's categories",
                    src,
                )

            def not_finite(i: int, vn: str = vname) -> str:
                return f"{vn} contain NaN or inf"

            _first_bad(
                ~np.isfinite(v).all(axis=1),
                not_finite,
                name,
                src,
                "detection",
            )
        p = self.probs
        if p is not None:
            _first_bad(
                ((p < 0) | (p > 1)).any(axis=1),
                lambda i: "probs outside [0, 1]",
                name,
                src,
                "detection",
            )
            if p.shape[1] == k + 1:
                tot = p.sum(axis=1)
                _first_bad(
                    np.abs(tot - 1) > 1e-3,
                    lambda i: f"softmax probs sum to {tot[i]:.6g}, not 1",
                    name,
                    src,
                    "detection",
                )

    # ---------------------------------------------------------------------------- I/O

    @classmethod
    def from_coco_results(
        cls,
        entries: Any,
        source: str | os.PathLike | None = None,
        prob_category_ids: Sequence[int] | None = None,
    ) -> Detections:
        """Build from a COCO results list (dicts with image_id, category_id, bbox, score)."""
        src = None if source is None else str(source)
        if isinstance(entries, dict):
            hint = " (this looks like a COCO annotations file)" if "annotations" in entries else ""
            raise TrustmapError(
                f"not a COCO results file: expected a list of detections{hint}", src
            )
        if not isinstance(entries, list):
            raise TrustmapError("not a COCO results file: expected a list of detections", src)
        n = len(entries)
        image_id = np.empty(n, np.int64)
        cat = np.empty(n, np.int64)
        score = np.empty(n, np.float64)
        bbox = np.empty((n, 4), np.float64)
        extra: dict[str, list] = {k: [] for k in _OPTIONAL}
        present = {
            k: (n > 0 and isinstance(entries[0], dict) and k in entries[0]) for k in _OPTIONAL
        }
        for i, e in enumerate(entries):
            try:
                image_id[i] = _int64(e["image_id"])
                cat[i] = _int64(e["category_id"])
                score[i] = float(e["score"])
                bb = e["bbox"]
                if len(bb) != 4:
                    raise ValueError(f"bbox has {len(bb)} numbers, not 4")
                bbox[i] = bb
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise TrustmapError(
                    f"detection {i}: malformed entry ({exc!r}); COCO results need image_id, "
                    "category_id, bbox [x, y, w, h] and score",
                    src,
                ) from None
            for k in _OPTIONAL:
                if (k in e) != present[k]:
                    raise TrustmapError(
                        f"detection {i}: '{k}' is {'missing' if present[k] else 'present'} here but "
                        f"{'present' if present[k] else 'missing'} in entry 0; give it for every entry or none",
                        src,
                    )
                if present[k]:
                    extra[k].append(e[k])
        opt: dict[str, Any] = {}
        for k in ("probs", "logits", "proposal_index"):
            if present[k]:
                _check_numbers(extra[k], k, vector=k != "proposal_index", source=src)
        for k in ("probs", "logits"):
            if present[k]:
                lens = {len(v) for v in extra[k]}
                if len(lens) != 1:
                    bad = next(i for i, v in enumerate(extra[k]) if len(v) != len(extra[k][0]))
                    raise TrustmapError(
                        f"detection {bad}: '{k}' has {len(extra[k][bad])} values, entry 0 has {len(extra[k][0])}",
                        src,
                    )
                opt[k] = np.asarray(extra[k], dtype=np.float64)
        if present["proposal_index"]:
            opt["proposal_index"] = np.asarray(extra["proposal_index"], dtype=np.int64)
        return cls(
            image_id=image_id,
            bbox=bbox,
            category_id=cat,
            score=score,
            prob_category_ids=None if prob_category_ids is None else tuple(prob_category_ids),
            source=src,
            **opt,
        )

    @classmethod
    def from_coco_json(
        cls, path: str | os.PathLike, prob_category_ids: Sequence[int] | None = None
    ) -> Detections:
        """Read a COCO results JSON (e.g. detectron2's ``coco_instances_results.json``)."""
        return cls.from_coco_results(
            _read_json(path), source=path, prob_category_ids=prob_category_ids
        )

    def to_coco_results(self) -> list[dict[str, Any]]:
        out = []
        for i in range(len(self)):
            e: dict[str, Any] = {
                "image_id": int(self.image_id[i]),
                "category_id": int(self.category_id[i]),
                "bbox": [float(v) for v in self.bbox[i]],
                "score": float(self.score[i]),
            }
            for k in _OPTIONAL:
                v = getattr(self, k)
                if v is not None:
                    e[k] = v[i].tolist()
            out.append(e)
        return out

    def to_coco_json(self, path: str | os.PathLike) -> Path:
        """Write a COCO results JSON atomically (probs/logits/proposal_index per entry).

        ``prob_category_ids`` has no place in that format; use ``.npz`` to keep it.
        """
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_coco_results()), encoding="utf-8")
        return Path(path)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.json`` (COCO results) or ``.npz`` (columnar, for millions), atomically."""
        suffix = Path(path).suffix.lower()
        if suffix == ".json":
            return self.to_coco_json(path)
        if suffix != ".npz":
            raise TrustmapError("unknown detections format: use a .json or .npz file name", path)
        arrays: dict[str, np.ndarray] = {
            "format": np.array(NPZ_FORMAT),
            "image_id": self.image_id,
            "bbox": self.bbox,
            "category_id": self.category_id,
            "score": self.score,
        }
        for k in _OPTIONAL:
            if getattr(self, k) is not None:
                arrays[k] = getattr(self, k)
        if self.prob_category_ids is not None:
            arrays["prob_category_ids"] = np.asarray(self.prob_category_ids, dtype=np.int64)
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            # numpy's stubs type **kwds as if a key could be savez's allow_pickle: bool
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        return Path(path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, prob_category_ids: Sequence[int] | None = None
    ) -> Detections:
        """Read ``.json`` or ``.npz`` by extension."""
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix == ".json":
            return cls.from_coco_json(p, prob_category_ids=prob_category_ids)
        if suffix != ".npz":
            raise TrustmapError("unknown detections format: use a .json or .npz file", p)
        if not p.exists():
            raise TrustmapError("file not found", p)
        try:
            with np.load(p, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise TrustmapError(
                f"not a readable .npz file (truncated or corrupt?): {exc}", p
            ) from None
        missing = [k for k in ("image_id", "bbox", "category_id", "score") if k not in data]
        if missing:
            raise TrustmapError(f"detections .npz lacks column(s) {missing}", p)
        pci = data.get("prob_category_ids")
        return cls(
            image_id=data["image_id"],
            bbox=data["bbox"],
            category_id=data["category_id"],
            score=data["score"],
            probs=data.get("probs"),
            logits=data.get("logits"),
            proposal_index=data.get("proposal_index"),
            prob_category_ids=tuple(pci.tolist())
            if pci is not None
            else (None if prob_category_ids is None else tuple(prob_category_ids)),
            source=str(p),
        )

    def with_source(self, source: str | None) -> Detections:
        return replace(self, source=source)
