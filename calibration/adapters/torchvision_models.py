"""Run torchvision detectors and keep what calibration needs: full class-probability vectors.

torchvision's detectors return boxes, one score and one label per detection; the rest of the
class vector and the proposal each detection came from are thrown away inside
``postprocess_detections``. This adapter re-runs the model's own layers up to the heads
(``backbone -> rpn -> box_roi_pool -> box_head -> box_predictor`` for Faster R-CNN,
``backbone -> head`` plus anchors for RetinaNet, FCOS and SSD) and keeps **candidates**: every
proposal or anchor the detector would consider, with its probability vector, and every
(candidate, class) pair with its box and score. From candidates it gives

* the review's **"modeling"** perspective (:meth:`Candidates.modeling`): one row per candidate,
  before score threshold, NMS and top-k;
* the **"application"** perspective (:meth:`Candidates.postprocess`): torchvision's own
  filter (score threshold, small-box removal, per-class NMS, top-k), replicated on the pairs
  while carrying the candidate index, so it returns exactly the boxes, scores and labels that
  the model's ``forward`` returns (bit for bit; only candidates with exactly equal scores may
  come in another order, which torchvision leaves arbitrary as well), plus each detection's
  probability vector. Re-applying it with other thresholds costs no forward pass, which makes
  post-processing sweeps cheap (:func:`postprocess`).

Probability columns: Faster R-CNN and SSD are softmax heads whose background is index 0 in
torchvision; it is moved LAST (K+1 columns). RetinaNet and FCOS are per-class sigmoid heads (K
columns); FCOS's column values are its detection scores ``sqrt(sigmoid(cls) * sigmoid(ctr))``, so
that ``score == probs[category column]`` holds for every detector, and its ``logits`` are the
logit of those values (clamped to [1e-6, 1 - 1e-6] to stay finite). torchvision reserves label 0 for the background in every detector (the
``num_classes`` of its builders counts it); for sigmoid heads ``background_label=None`` keeps
that column as a class.

Memory: candidates hold ``rows x columns`` float32 twice (probs and logits) and ``pairs x 5``
per image. Faster R-CNN keeps every RPN proposal (``rpn_post_nms_top_n_test``, 1000 by
default); dense heads keep the anchors of their per-level (RetinaNet, FCOS) or per-class (SSD)
top-``topk_candidates`` pairs, the same cap torchvision applies before NMS. ``min_score`` drops
pairs at or below it for good (sweeps can then not go lower); raise it for 90-class models on
large image sets.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import detection as tvd
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

from calibration.detections import Detections
from tiles.console import progress
from tiles.errors import TrustmapError

Family = Literal["rcnn", "retinanet", "fcos", "ssd"]
Perspective = Literal["modeling", "application"]
#: The torchvision detectors handled here. torchvision ships no type information, so mypy
#: sees these classes as Any: attribute access on their submodules (``roi_heads``, ``head``,
#: ``box_coder``...) is unchecked, where on a plain ``nn.Module`` it would be ``Tensor | Module``.
DetectionModel: TypeAlias = "tvd.FasterRCNN | tvd.RetinaNet | tvd.FCOS | SSD"

SAMPLE_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "sample_detector.pt"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _sample_builder(num_classes: int, **kwargs: Any) -> nn.Module:
    from calibration.models import sample_fasterrcnn

    return sample_fasterrcnn(num_classes=num_classes, **kwargs)


#: name -> (builder, post-processing family). torchvision builders get
#: ``weights=None, weights_backbone=None``: nothing is ever downloaded.
MODELS: dict[str, tuple[Callable[..., nn.Module], Family]] = {
    "fasterrcnn_resnet50_fpn": (tvd.fasterrcnn_resnet50_fpn, "rcnn"),
    "fasterrcnn_resnet50_fpn_v2": (tvd.fasterrcnn_resnet50_fpn_v2, "rcnn"),
    "fasterrcnn_mobilenet_v3_large_fpn": (tvd.fasterrcnn_mobilenet_v3_large_fpn, "rcnn"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": (tvd.fasterrcnn_mobilenet_v3_large_320_fpn, "rcnn"),
    "retinanet_resnet50_fpn": (tvd.retinanet_resnet50_fpn, "retinanet"),
    "retinanet_resnet50_fpn_v2": (tvd.retinanet_resnet50_fpn_v2, "retinanet"),
    "fcos_resnet50_fpn": (tvd.fcos_resnet50_fpn, "fcos"),
    "ssd300_vgg16": (tvd.ssd300_vgg16, "ssd"),
    "ssdlite320_mobilenet_v3_large": (tvd.ssdlite320_mobilenet_v3_large, "ssd"),
    "sample_fasterrcnn": (_sample_builder, "rcnn"),
}


def family_of(model: nn.Module) -> Family:
    """Which post-processing a torchvision model uses, from its class."""
    if isinstance(model, tvd.FasterRCNN):
        return "rcnn"
    if isinstance(model, tvd.RetinaNet):
        return "retinanet"
    if isinstance(model, tvd.FCOS):
        return "fcos"
    if isinstance(model, SSD):
        return "ssd"
    raise TrustmapError(
        f"unsupported detector class {type(model).__name__}: expected torchvision FasterRCNN, RetinaNet, FCOS or SSD"
    )


def build_model(name: str, num_classes: int = 91, **kwargs: Any) -> nn.Module:
    """A randomly initialised detector by name (``num_classes`` counts the background)."""
    if name not in MODELS:
        raise TrustmapError(f"unknown detector {name!r}; choose from {', '.join(sorted(MODELS))}")
    builder, _ = MODELS[name]
    if name == "sample_fasterrcnn":
        return builder(num_classes=num_classes, **kwargs)
    return builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)


# --------------------------------------------------------------------------- weights


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` from a state_dict file or a checkpoint with "model"/"state_dict"."""
    p = Path(path)
    if not p.exists():
        raise TrustmapError("weights file not found", p)
    if p.is_dir():
        raise TrustmapError("is a directory, expected a weights file (.pt/.pth)", p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # RuntimeError, UnpicklingError, EOFError...: torch has no one type
        text = str(exc)
        unsafe = next((ln.strip() for ln in text.splitlines() if "Unsupported global" in ln), None)
        if (
            unsafe
        ):  # a real checkpoint that pickles arbitrary Python objects: not loaded, for safety
            raise TrustmapError(
                "cannot read weights safely: the file pickles Python objects beyond tensors and "
                f"plain containers ({unsafe.split(' was not')[0]}); re-save it as a state_dict",
                p,
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise TrustmapError(
            f"cannot read weights: not a PyTorch checkpoint, or truncated/corrupt ({first})", p
        ) from None
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                meta = {k: v for k, v in obj.items() if k != key}
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(v, Tensor) for v in obj.values())
    ):
        raise TrustmapError(
            "no model weights found: expected a state_dict, or a dict with a 'model' or 'state_dict' state_dict",
            p,
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, meta


def load_state(
    model: nn.Module, state: Mapping[str, Tensor], path: str | os.PathLike, name: str
) -> None:
    """Load weights strictly, but say which keys are missing, unexpected or of the wrong shape.

    BatchNorm's ``num_batches_tracked`` counters are ignored: torchvision's published weights
    come from FrozenBatchNorm models, which have none, and they do not affect inference.
    """
    expected = model.state_dict()
    skip = lambda k: k.endswith("num_batches_tracked")  # noqa: E731
    missing = [k for k in expected if k not in state and not skip(k)]
    unexpected = [k for k in state if k not in expected and not skip(k)]
    wrong = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(
                f"{len(wrong)} key(s) with another shape: "
                + ", ".join(f"{k} file {a} vs model {b}" for k, a, b in wrong[:4])
            )
            if any(
                k.startswith(("roi_heads.box_predictor.", "head.classification_head."))
                for k, _, _ in wrong
            ):
                parts.append(
                    "the number of classes differs: omit num_classes to take it from the file"
                )
        if missing:
            parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:4])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:4])}")
        raise TrustmapError(f"weights do not fit architecture {name!r}: " + "; ".join(parts), path)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def _classes_in(state: Mapping[str, Tensor], model: nn.Module) -> int | None:
    """num_classes (with background) that a state dict was trained with, from its class layer."""
    key, per_location = _class_layer(model)
    w = state.get(key)
    return None if w is None else int(w.shape[0]) // per_location


def _class_layer(model: nn.Module) -> tuple[str, int]:
    """The state-dict key of the (first) classification layer and its outputs per class."""
    fam = family_of(model)
    if fam == "rcnn":
        return "roi_heads.box_predictor.cls_score.weight", 1
    det: DetectionModel = model
    head = det.head.classification_head
    if fam == "ssd":  # one conv per level; SSDlite's is a (depthwise, pointwise) sequence
        prefix = "head.classification_head.module_list.0."
        key = [k for k in model.state_dict() if k.startswith(prefix) and k.endswith("weight")][-1]
        return key, int(model.state_dict()[key].shape[0]) // int(head.num_columns)
    return "head.classification_head.cls_logits.weight", int(head.num_anchors)


def load_detector(
    name: str,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    category_ids: Sequence[int] | None = None,
    background_label: int | None = 0,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> TorchvisionDetector:
    """Build detector ``name`` and load local ``weights`` into it.

    ``num_classes`` (torchvision's, with background) defaults to what the weights file holds.
    ``category_ids`` maps labels 1..K (0..K-1 with ``background_label=None``) to dataset
    category ids; by default a label is its category id (torchvision's COCO convention), or the
    ids stored in a trustmap checkpoint's ``categories``. ``kwargs`` go to the builder (e.g.
    ``min_size``, ``rpn_post_nms_top_n_test``). ``weights=None`` is allowed only for
    ``sample_fasterrcnn``, which then loads the packaged sample detector.
    """
    if name not in MODELS:
        raise TrustmapError(f"unknown detector {name!r}; choose from {', '.join(sorted(MODELS))}")
    if weights is None:
        if name != "sample_fasterrcnn":
            raise TrustmapError(
                f"detector {name!r} needs a local weights file (nothing is downloaded)"
            )
        weights = SAMPLE_WEIGHTS
    state, meta = read_checkpoint(weights)
    arch = meta.get("arch")
    if isinstance(arch, str) and arch != name:
        raise TrustmapError(f"weights were saved for architecture {arch!r}, not {name!r}", weights)
    model = build_model(name, num_classes=num_classes or int(meta.get("num_classes", 91)), **kwargs)
    if num_classes is None:
        found = _classes_in(state, model)
        if found is not None and found != _num_classes(model):
            model = build_model(name, num_classes=found, **kwargs)
    load_state(model, state, weights, name)
    if category_ids is None and isinstance(meta.get("categories"), list):
        category_ids = [int(c["id"]) for c in meta["categories"]]
    return TorchvisionDetector(
        model,
        name=name,
        category_ids=category_ids,
        background_label=background_label,
        device=device,
    )


def _num_classes(model: nn.Module) -> int:
    fam = family_of(model)
    det: DetectionModel = model
    if fam == "rcnn":
        return int(det.roi_heads.box_predictor.cls_score.out_features)
    head = det.head.classification_head
    return int(head.num_columns if fam == "ssd" else head.num_classes)


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageRecord:
    """One input image: its id in the detections, its file, and the size the labels expect."""

    image_id: int
    path: Path
    width: int | None = None
    height: int | None = None


def images_from_folder(folder: str | os.PathLike) -> list[ImageRecord]:
    """PNG / JPEG / GeoTIFF files of a folder, sorted by name, with ids 1..N."""
    root = Path(folder)
    if not root.is_dir():
        raise TrustmapError("image folder not found" if not root.exists() else "not a folder", root)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise TrustmapError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder", root)
    return [ImageRecord(i + 1, p) for i, p in enumerate(files)]


def images_from_coco(
    images_dir: str | os.PathLike, annotations: str | os.PathLike, allow_outside: bool = False
) -> list[ImageRecord]:
    """The images a COCO annotations file lists, resolved under ``images_dir``.

    A ``file_name`` that leads out of ``images_dir`` (absolute, ``..``, a link) is refused
    unless ``allow_outside``, with the same message whether or not the target exists.
    """
    from calibration.detections import GroundTruth
    from tiles.io import resolve_inside

    gt = GroundTruth.from_coco_json(annotations)
    root = Path(images_dir)
    if not root.is_dir():
        raise TrustmapError("images folder not found", root)
    im = gt.images
    records = [
        ImageRecord(
            int(i), resolve_inside(root, str(f), annotations, "image file_name", allow_outside), int(w), int(h)
        )
        for i, f, w, h in zip(im.id, im.file_name, im.width, im.height, strict=True)
    ]
    missing = [r.path for r in records if not r.path.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TrustmapError(f"image listed in {Path(annotations).name} not found{more}", missing[0])
    return records


def read_image(path: str | os.PathLike, bands: Sequence[int] | None = None) -> Tensor:
    """An RGB float tensor (3, H, W) in [0, 1], as torchvision detectors expect.

    GeoTIFFs are read with rasterio. Which bands are R, G, B comes from ``bands`` (1-based)
    or ``tiles.quicklook.pick_rgb_bands``: band descriptions or colour interpretation, else
    3, 2, 1 for a 4-band B, G, R, NIR scene (trustmap's own and most satellite products) and
    1, 2, 3 otherwise; a 1- or 2-band image is fed as grey from band 1. 8-bit data is divided
    by 255; other types get a per-band 2-98 % stretch over valid pixels, the usual display
    stretch for 16-bit and float imagery. Other formats go through PIL.
    """
    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff"):
        import rasterio
        from rasterio.errors import RasterioIOError

        from tiles.quicklook import pick_rgb_bands

        try:
            with rasterio.open(p) as src:
                picked = tuple(bands) if bands is not None else pick_rgb_bands(src)
                if len(picked) != 3 or not all(1 <= int(b) <= src.count for b in picked):
                    raise TrustmapError(
                        f"bands {list(picked)} are not 3 bands of this {src.count}-band image", p
                    )
                unique = list(dict.fromkeys(int(b) for b in picked))
                read = src.read(unique, masked=True)
                data = np.ma.stack([read[unique.index(int(b))] for b in picked])
        except RasterioIOError as exc:
            raise TrustmapError(f"cannot read image ({exc})", p) from None
        if data.dtype == np.uint8:
            arr = data.filled(0).astype(np.float32) / 255.0
        else:
            arr = np.zeros(data.shape, np.float32)
            for b in range(3):
                valid = data[b].compressed().astype(np.float64)
                if valid.size:
                    lo, hi = np.percentile(valid, [2, 98])
                    arr[b] = np.clip(
                        (data[b].filled(lo).astype(np.float64) - lo) / max(hi - lo, 1e-12), 0, 1
                    )
        return torch.from_numpy(np.ascontiguousarray(arr))
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as img:
            arr = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise TrustmapError("image not found", p) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise TrustmapError(f"cannot read image ({exc})", p) from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


# --------------------------------------------------------------------------- candidates


@dataclass
class ImageCandidates:
    """One image's candidates, boxes in the network's (resized) pixel frame.

    Rows are proposals (Faster R-CNN) or anchors (dense heads); pairs are (row, class)
    combinations with the class's box and score, in the order torchvision builds them.
    """

    image_id: int
    net_size: tuple[int, int]  # (h, w) after the model's transform
    orig_size: tuple[int, int]  # (h, w) of the input image
    row_index: Tensor  # (M,) proposal index / flat anchor index
    row_box: Tensor  # (M, 4) xyxy, box of the row's top foreground class
    row_probs: Tensor  # (M, C) output column order
    row_logits: Tensor  # (M, C)
    pair_row: Tensor  # (Q,) index into rows
    pair_label: Tensor  # (Q,) torchvision label
    pair_score: Tensor  # (Q,)
    pair_box: Tensor  # (Q, 4) xyxy

    def to_original(self, boxes: Tensor) -> Tensor:
        """Boxes back in input-image pixels, exactly as torchvision's transform.postprocess."""
        return resize_boxes(boxes, self.net_size, self.orig_size)


@dataclass
class Candidates:
    """Everything a detector considered on a set of images, before post-processing."""

    images: list[ImageCandidates]
    family: Family
    label_to_category: dict[int, int]  # torchvision label -> category id (foreground only)
    prob_category_ids: tuple[int, ...]
    softmax: bool  # K+1 columns (background last) vs K sigmoid columns
    score_thresh: float  # the model's own defaults, used when a parameter is None
    nms_iou: float
    topk: int
    min_score: float = 0.0
    model_name: str | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.images)

    def postprocess_tensors(
        self,
        score_thresh: float | None = None,
        nms_iou: float | None = None,
        topk: int | None = None,
    ) -> list[dict[str, Tensor]]:
        """torchvision-format outputs (``boxes``, ``scores``, ``labels`` and ``rows``) per image."""
        t = self.score_thresh if score_thresh is None else float(score_thresh)
        iou = self.nms_iou if nms_iou is None else float(nms_iou)
        k = self.topk if topk is None else int(topk)
        if t < self.min_score:
            raise TrustmapError(
                f"score threshold {t} is below the candidates' min_score {self.min_score}: re-run with a lower min_score"
            )
        if not 0.0 <= iou <= 1.0 or k < 0:
            raise TrustmapError(f"NMS IoU must be in [0, 1] and top-k >= 0 (got {iou}, {k})")
        out = []
        for ic in self.images:
            sel = torch.where(ic.pair_score > t)[0]
            boxes, scores, labels = ic.pair_box[sel], ic.pair_score[sel], ic.pair_label[sel]
            keep = box_ops.batched_nms(boxes, scores, labels, iou)[:k]
            out.append(
                {
                    "boxes": ic.to_original(boxes[keep]),
                    "scores": scores[keep],
                    "labels": labels[keep],
                    "rows": ic.pair_row[sel][keep],
                }
            )
        return out

    def postprocess(
        self,
        score_thresh: float | None = None,
        nms_iou: float | None = None,
        topk: int | None = None,
    ) -> Detections:
        """The "application" perspective: after threshold, NMS and top-k (model defaults if None)."""
        outs = self.postprocess_tensors(score_thresh, nms_iou, topk)
        ids, boxes, labels, scores, probs, logits, index = [], [], [], [], [], [], []
        for ic, o in zip(self.images, outs, strict=True):
            n = len(o["scores"])
            ids.append(np.full(n, ic.image_id, np.int64))
            boxes.append(o["boxes"].numpy())
            labels.append(o["labels"].numpy())
            scores.append(o["scores"].numpy())
            probs.append(ic.row_probs[o["rows"]].numpy())
            logits.append(ic.row_logits[o["rows"]].numpy())
            index.append(ic.row_index[o["rows"]].numpy())
        return self._detections(ids, boxes, labels, scores, probs, logits, index)

    def modeling(self, max_per_image: int | None = 1000) -> Detections:
        """The "modeling" perspective: one row per candidate, no threshold, NMS or top-k.

        Each row takes its top foreground class as ``category_id`` and that class's
        probability as ``score``; ``probs`` keeps the whole vector (background included for
        softmax heads). ``max_per_image`` keeps the highest-scoring rows (memory cap).
        """
        ids, boxes, labels, scores, probs, logits, index = [], [], [], [], [], [], []
        k = len(self.prob_category_ids)
        fg_labels = torch.as_tensor(sorted(self.label_to_category), dtype=torch.int64)
        for ic in self.images:
            fg = ic.row_probs[:, :k]
            best, col = (
                fg.max(dim=1) if len(fg) else (fg.new_zeros(0), torch.zeros(0, dtype=torch.int64))
            )
            order = torch.argsort(best, descending=True, stable=True)
            if max_per_image is not None:
                order = order[:max_per_image]
            ids.append(np.full(len(order), ic.image_id, np.int64))
            boxes.append(ic.to_original(ic.row_box[order]).numpy())
            labels.append(fg_labels[col[order]].numpy())
            scores.append(best[order].numpy())
            probs.append(ic.row_probs[order].numpy())
            logits.append(ic.row_logits[order].numpy())
            index.append(ic.row_index[order].numpy())
        return self._detections(ids, boxes, labels, scores, probs, logits, index)

    def detections(self, perspective: Perspective = "application", **post: Any) -> Detections:
        """Either perspective by name (``post``: score_thresh / nms_iou / topk or max_per_image)."""
        if perspective == "modeling":
            return self.modeling(**post)
        if perspective == "application":
            return self.postprocess(**post)
        raise TrustmapError(f"unknown perspective {perspective!r}: use 'modeling' or 'application'")

    def _detections(
        self,
        ids: list[np.ndarray],
        boxes: list[np.ndarray],
        labels: list[np.ndarray],
        scores: list[np.ndarray],
        probs: list[np.ndarray],
        logits: list[np.ndarray],
        index: list[np.ndarray],
    ) -> Detections:
        c = len(self.prob_category_ids) + (1 if self.softmax else 0)
        xyxy = np.concatenate(boxes).astype(np.float64) if boxes else np.zeros((0, 4))
        lab = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        lut = np.full(max(self.label_to_category) + 1, -1, np.int64)
        for label, cat in self.label_to_category.items():
            lut[label] = cat
        cat_ids = lut[lab]
        return Detections(
            image_id=np.concatenate(ids) if ids else np.zeros(0, np.int64),
            bbox=np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1),
            category_id=cat_ids,
            score=np.concatenate(scores).astype(np.float64) if scores else np.zeros(0),
            probs=np.concatenate(probs).astype(np.float64) if probs else np.zeros((0, c)),
            logits=np.concatenate(logits).astype(np.float64) if logits else np.zeros((0, c)),
            proposal_index=np.concatenate(index) if index else np.zeros(0, np.int64),
            prob_category_ids=self.prob_category_ids,
            source=self.model_name,
        )


def postprocess(
    candidates: Candidates,
    score_thresh: float | None = None,
    nms_iou: float | None = None,
    topk: int | None = None,
) -> Detections:
    """Re-apply post-processing to stored candidates (no forward pass): for sweeps."""
    return candidates.postprocess(score_thresh, nms_iou, topk)


# --------------------------------------------------------------------------- detector


class TorchvisionDetector:
    """A torchvision detector in eval mode that yields :class:`Candidates`."""

    def __init__(
        self,
        model: nn.Module,
        name: str | None = None,
        category_ids: Sequence[int] | None = None,
        background_label: int | None = 0,
        device: str | torch.device = "cpu",
        min_score: float = 0.0,
    ):
        self.family = family_of(model)
        self.model: DetectionModel = model.eval().to(device)
        self.name = name or type(model).__name__
        self.device = torch.device(device)
        self.min_score = float(min_score)
        n = _num_classes(model)
        self.softmax = self.family in ("rcnn", "ssd")
        if self.softmax and background_label not in (0, None):
            raise TrustmapError(f"{self.name}: softmax heads have their background at label 0")
        self.background = 0 if self.softmax else background_label
        self.labels = [lab for lab in range(n) if lab != self.background]
        cats = list(self.labels) if category_ids is None else [int(c) for c in category_ids]
        if len(cats) != len(self.labels):
            raise TrustmapError(
                f"{self.name}: {len(cats)} category ids given for {len(self.labels)} foreground classes "
                f"(model num_classes={n}, background label {self.background})"
            )
        self.label_to_category = dict(zip(self.labels, cats, strict=True))
        self.prob_category_ids = tuple(cats)
        det: DetectionModel = self.model
        m = det.roi_heads if self.family == "rcnn" else det
        self.defaults = (float(m.score_thresh), float(m.nms_thresh), int(m.detections_per_img))

    # ----------------------------------------------------------------- public API

    @torch.no_grad()
    def candidates(
        self, records: Sequence[ImageRecord], batch_size: int = 4, show_progress: bool = True
    ) -> Candidates:
        """Run over image files in batches (with a progress bar) and keep all candidates."""
        if batch_size < 1:
            raise TrustmapError(f"batch size must be >= 1, got {batch_size}")
        batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
        it = (
            progress(batches, desc=f"detect ({self.name})", total=len(batches))
            if show_progress
            else batches
        )
        out: list[ImageCandidates] = []
        for batch in it:
            tensors = []
            for r in batch:
                img = read_image(r.path)
                if r.width is not None and (img.shape[2], img.shape[1]) != (r.width, r.height):
                    raise TrustmapError(
                        f"image is {img.shape[2]}x{img.shape[1]} pixels but the annotations say {r.width}x{r.height}",
                        r.path,
                    )
                tensors.append(img)
            out.extend(self.image_candidates(tensors, [r.image_id for r in batch]))
        return self.wrap(out)

    @torch.no_grad()
    def candidates_for_tensors(
        self, images: Sequence[Tensor], image_ids: Sequence[int]
    ) -> Candidates:
        """Candidates for in-memory images (3, H, W) in [0, 1], one forward pass."""
        return self.wrap(self.image_candidates(images, image_ids))

    def detect(
        self,
        records: Sequence[ImageRecord],
        perspective: Perspective = "application",
        batch_size: int = 4,
        show_progress: bool = True,
        **post: Any,
    ) -> Detections:
        """Candidates, then one perspective (``post``: score_thresh, nms_iou, topk)."""
        return self.candidates(records, batch_size, show_progress).detections(perspective, **post)

    def wrap(self, images: list[ImageCandidates]) -> Candidates:
        t, iou, k = self.defaults
        return Candidates(
            images,
            self.family,
            self.label_to_category,
            self.prob_category_ids,
            self.softmax,
            score_thresh=t,
            nms_iou=iou,
            topk=k,
            min_score=self.min_score,
            model_name=self.name,
        )

    # ----------------------------------------------------------------- extraction

    @torch.no_grad()
    def image_candidates(
        self, images: Sequence[Tensor], image_ids: Sequence[int]
    ) -> list[ImageCandidates]:
        """Forward the model's own layers, stopping before its post-processing."""
        if len(images) != len(image_ids):
            raise TrustmapError(f"{len(images)} images but {len(image_ids)} image ids")
        if not images:
            return []
        images = [im.to(self.device) for im in images]
        orig = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        tr, _ = self.model.transform(images)
        per_image = getattr(self, f"_{self.family}")(tr)
        return [
            ImageCandidates(int(i), (int(s[0]), int(s[1])), o, *(x.cpu() for x in parts))
            for i, s, o, parts in zip(image_ids, tr.image_sizes, orig, per_image, strict=True)
        ]

    def _features(self, tr: ImageList) -> dict[str, Tensor]:
        feats = self.model.backbone(tr.tensors)
        if isinstance(feats, Tensor):
            feats = OrderedDict([("0", feats)])
        return feats

    def _rcnn(self, tr: ImageList) -> list[tuple[Tensor, ...]]:
        model = self.model
        rh = model.roi_heads
        features = self._features(tr)
        proposals, _ = model.rpn(tr, features)
        # exactly roi_heads.forward in eval mode, up to postprocess_detections
        x = rh.box_roi_pool(features, proposals, tr.image_sizes)
        x = rh.box_head(x)
        class_logits, box_regression = rh.box_predictor(x)
        pred_boxes = rh.box_coder.decode(box_regression, proposals)
        pred_scores = F.softmax(class_logits, -1)
        counts = [len(p) for p in proposals]
        out: list[tuple[Tensor, ...]] = []
        for boxes, scores, logits, shape in zip(
            pred_boxes.split(counts),
            pred_scores.split(counts),
            class_logits.split(counts),
            tr.image_sizes,
            strict=True,
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)  # (P, C, 4)
            p, c = scores.shape
            fg_boxes, fg_scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
            labels = torch.arange(1, c, device=scores.device).repeat(p)
            rows = torch.arange(p, device=scores.device).repeat_interleave(c - 1)
            sel = torch.where(fg_scores > self.min_score)[0]
            fg_boxes, fg_scores, labels, rows = (
                fg_boxes[sel],
                fg_scores[sel],
                labels[sel],
                rows[sel],
            )
            keep = box_ops.remove_small_boxes(fg_boxes, min_size=1e-2)
            top = scores[:, 1:].argmax(dim=1) + 1
            every = torch.arange(p, device=scores.device)
            out.append(
                (
                    every,
                    boxes[every, top],
                    torch.cat([scores[:, 1:], scores[:, :1]], dim=1),
                    torch.cat([logits[:, 1:], logits[:, :1]], dim=1),
                    rows[keep],
                    labels[keep],
                    fg_scores[keep],
                    fg_boxes[keep],
                )
            )
        return out

    def _dense(
        self, tr: ImageList
    ) -> tuple[list[Tensor], dict[str, Tensor], list[Tensor], list[int]]:
        features = list(self._features(tr).values())
        head = self.model.head(features)
        anchors = self.model.anchor_generator(tr, features)
        hw = [f.shape[2] * f.shape[3] for f in features]
        per_loc = head["cls_logits"].shape[1] // sum(hw)
        return features, head, anchors, [n * per_loc for n in hw]

    def _retinanet(self, tr: ImageList) -> list[tuple[Tensor, ...]]:
        return self._per_level(tr, ctr=False)

    def _fcos(self, tr: ImageList) -> list[tuple[Tensor, ...]]:
        return self._per_level(tr, ctr=True)

    def _per_level(self, tr: ImageList, ctr: bool) -> list[tuple[Tensor, ...]]:
        """RetinaNet / FCOS: per level, threshold and top-k over (anchor, class) pairs."""
        model = self.model
        _, head, anchors, per_level = self._dense(tr)
        cols = torch.as_tensor(self.labels, device=head["cls_logits"].device)
        out = []
        for i, image_anchors in enumerate(anchors):
            logits_all = head["cls_logits"][i]
            if ctr:  # FCOS scores: geometric mean of class and centre-ness probabilities
                score_all = torch.sqrt(
                    torch.sigmoid(logits_all) * torch.sigmoid(head["bbox_ctrness"][i])
                )
            else:
                score_all = torch.sigmoid(logits_all)
            num_classes = logits_all.shape[1]
            rows, labels, scores, boxes = [], [], [], []
            for start, n in zip(np.cumsum([0] + per_level[:-1]).tolist(), per_level, strict=True):
                s = score_all[start : start + n].flatten()
                keep = s > self.min_score
                if self.background is not None:  # the reserved background column is not a class
                    keep &= (
                        torch.arange(s.numel(), device=s.device) % num_classes
                    ) != self.background
                idx = torch.where(keep)[0]
                s, top = s[keep].topk(min(model.topk_candidates, idx.numel()))
                idx = idx[top]
                anchor = torch.div(idx, num_classes, rounding_mode="floor")
                reg = head["bbox_regression"][i][start : start + n][anchor]
                a = image_anchors[start : start + n][anchor]
                b = model.box_coder.decode(reg, a) if ctr else model.box_coder.decode_single(reg, a)
                rows.append(anchor + start)
                labels.append(idx % num_classes)
                scores.append(s)
                boxes.append(box_ops.clip_boxes_to_image(b, tr.image_sizes[i]))
            out.append(
                self._rows_from_pairs(
                    torch.cat(rows),
                    torch.cat(labels),
                    torch.cat(scores),
                    torch.cat(boxes),
                    score_all[:, cols],
                    logits_all,
                    cols,
                    ctr,
                )
            )
        return out

    def _rows_from_pairs(
        self,
        anchor: Tensor,
        labels: Tensor,
        scores: Tensor,
        boxes: Tensor,
        probs_all: Tensor,
        logits_all: Tensor,
        cols: Tensor,
        ctr: bool,
    ) -> tuple[Tensor, ...]:
        index, pair_row = torch.unique(anchor, return_inverse=True)
        probs = probs_all[index]
        logits = torch.logit(probs, eps=1e-6) if ctr else logits_all[index][:, cols]
        row_box = torch.zeros((len(index), 4), dtype=boxes.dtype, device=boxes.device)
        row_box[pair_row] = boxes  # every pair of an anchor has the anchor's box
        return index, row_box, probs, logits, pair_row, labels, scores, boxes

    def _ssd(self, tr: ImageList) -> list[tuple[Tensor, ...]]:
        """SSD: softmax over classes, then per class threshold and top-k over anchors."""
        model = self.model
        _, head, anchors, _ = self._dense(tr)
        all_scores = F.softmax(head["cls_logits"], dim=-1)
        out: list[tuple[Tensor, ...]] = []
        for i, image_anchors in enumerate(anchors):
            boxes = model.box_coder.decode_single(head["bbox_regression"][i], image_anchors)
            boxes = box_ops.clip_boxes_to_image(boxes, tr.image_sizes[i])
            scores, logits = all_scores[i], head["cls_logits"][i]
            rows, labels, pair_scores = [], [], []
            for label in range(1, scores.shape[1]):
                s = scores[:, label]
                idx = torch.where(s > self.min_score)[0]
                s, top = s[idx].topk(min(model.topk_candidates, idx.numel()))
                rows.append(idx[top])
                labels.append(torch.full_like(top, label))
                pair_scores.append(s)
            anchor = torch.cat(rows)
            index, pair_row = torch.unique(anchor, return_inverse=True)
            out.append(
                (
                    index,
                    boxes[index],
                    torch.cat([scores[index, 1:], scores[index, :1]], dim=1),
                    torch.cat([logits[index, 1:], logits[index, :1]], dim=1),
                    pair_row,
                    torch.cat(labels),
                    torch.cat(pair_scores),
                    boxes[anchor],
                )
            )
        return out
