"""A set-based detector: DETR-family models from Hugging Face ``transformers``.

DETR predicts a fixed set of ``num_queries`` boxes, each with a softmax over K classes plus
"no object" (last), and needs no NMS. The two perspectives of the review map onto it as:

* **modeling**: every query, with its full probability vector (K+1 columns, "no object"
  last, the same convention as trustmap's softmax heads), category = the most likely
  foreground class, score = its probability;
* **application**: ``transformers``' own post-processing (foreground max above a score
  threshold, no NMS), optionally the ``topk`` best per image.

The model is built from a local folder (``config.json`` plus weights, as ``save_pretrained``
writes it); nothing is downloaded (``local_files_only``). Its last layer is
``class_labels_classifier``; :func:`finetune_detr` trains it alone with DETR's own
Hungarian-matched classification loss (``loss_ce``, no-object weight ``eos_coefficient``).
``transformers`` is imported lazily; without it the error says how to install it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from calibration.detections import Detections, GroundTruth
from tiles.errors import TrustmapError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAST_LAYER = "class_labels_classifier"


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError:  # pragma: no cover - installed with the test extras
        raise TrustmapError(
            "the DETR adapter needs Hugging Face transformers: pip install 'transformers>=5'"
        ) from None
    return transformers


@dataclass
class DetrDetector:
    """A ``transformers`` DETR-family model in eval mode, with dataset category ids for its labels."""

    model: Any
    category_ids: tuple[int, ...]
    score_thresh: float = 0.5
    topk: int | None = None
    name: str = "detr"

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    def _pixels(self, images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Normalised, zero-padded batch and its pixel mask (1 = real pixel)."""
        h = max(int(im.shape[1]) for im in images)
        w = max(int(im.shape[2]) for im in images)
        px = torch.zeros(len(images), 3, h, w)
        mask = torch.zeros(len(images), h, w, dtype=torch.long)
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        for i, im in enumerate(images):
            px[i, :, : im.shape[1], : im.shape[2]] = (im - mean) / std
            mask[i, : im.shape[1], : im.shape[2]] = 1
        return px, mask

    @torch.no_grad()
    def outputs(self, images: Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """(B, Q, K+1) softmax probabilities and (B, Q, 4) boxes as xywh pixels of each image."""
        self.model.eval()
        px, mask = self._pixels(images)
        out = self.model(pixel_values=px, pixel_mask=mask)
        probs = out.logits.softmax(-1).numpy().astype(np.float64)
        boxes = out.pred_boxes.numpy().astype(
            np.float64
        )  # cx, cy, w, h relative to the padded batch
        H, W = px.shape[2], px.shape[3]
        xywh = np.empty_like(boxes)
        xywh[..., 0] = (boxes[..., 0] - boxes[..., 2] / 2) * W
        xywh[..., 1] = (boxes[..., 1] - boxes[..., 3] / 2) * H
        xywh[..., 2] = boxes[..., 2] * W
        xywh[..., 3] = boxes[..., 3] * H
        return probs, xywh

    def detect(
        self, images: Sequence[Tensor], image_ids: Sequence[int], batch_size: int = 4
    ) -> tuple[Detections, Detections]:
        """(modeling, application) detections of in-memory images (3, H, W) in [0, 1]."""
        if len(images) != len(image_ids):
            raise TrustmapError(f"{len(images)} images but {len(image_ids)} image ids")
        cats = np.asarray(self.category_ids, np.int64)
        rows: list[tuple[np.ndarray, ...]] = []
        for a in range(0, len(images), batch_size):
            probs, boxes = self.outputs(images[a : a + batch_size])
            for i, (p, b) in enumerate(zip(probs, boxes, strict=True)):
                fg = p[:, :-1]
                lab = fg.argmax(1)
                rows.append((np.full(len(p), int(image_ids[a + i])), b, cats[lab], fg.max(1), p))
        if not rows:
            e = Detections.empty()
            return e, e
        img, box, cat, score, prob = (np.concatenate(x) for x in zip(*rows, strict=True))
        box[:, 2:] = np.maximum(box[:, 2:], 1e-3)  # degenerate queries stay valid boxes
        modeling = Detections(
            img, box, cat, score, probs=prob, prob_category_ids=tuple(int(c) for c in cats)
        )
        keep = np.flatnonzero(score > self.score_thresh)
        if self.topk is not None and keep.size:
            order = keep[np.lexsort((-score[keep], img[keep]))]
            ids = img[order]
            start = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1]
            rank = np.arange(len(ids)) - np.repeat(start, np.diff(np.r_[start, len(ids)]))
            keep = np.sort(order[rank < self.topk])
        return modeling.with_source(f"{self.name} (modeling)"), modeling.subset(keep).with_source(
            f"{self.name} (application)"
        )


def build_detr(
    config: dict[str, Any], category_ids: Sequence[int] | None = None, seed: int = 0
) -> DetrDetector:
    """A randomly initialised DETR from config keywords (``transformers.DetrConfig``); the
    backbone is built without pretrained weights (for tests and training from scratch)."""
    tf = _transformers()
    torch.manual_seed(seed)
    cfg = tf.DetrConfig(**({"use_pretrained_backbone": False} | dict(config)))
    model = tf.DetrForObjectDetection(cfg).eval()
    cats = tuple(category_ids) if category_ids is not None else tuple(range(1, cfg.num_labels + 1))
    return DetrDetector(model, cats)


def load_detr(
    path: str | os.PathLike,
    category_ids: Sequence[int] | None = None,
    score_thresh: float = 0.5,
    topk: int | None = None,
) -> DetrDetector:
    """A DETR-family model (DETR, Conditional DETR, RT-DETR, ...) from a local folder."""
    tf = _transformers()
    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise TrustmapError("expected a folder with config.json and weights (save_pretrained)", p)
    try:
        model = tf.AutoModelForObjectDetection.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrustmapError(f"cannot load a transformers object detector: {first}", p) from None
    if not hasattr(model, LAST_LAYER):
        raise TrustmapError(
            f"{type(model).__name__} has no '{LAST_LAYER}' layer: not a DETR-family detector", p
        )
    n = int(model.config.num_labels)
    cats = tuple(category_ids) if category_ids is not None else tuple(range(1, n + 1))
    if len(cats) != n:
        raise TrustmapError(f"{len(cats)} category ids given for {n} labels", p)
    return DetrDetector(model.eval(), cats, score_thresh, topk, type(model).__name__)


def detr_targets(
    det: DetrDetector, gt: GroundTruth, image_ids: Sequence[int], sizes: Sequence[tuple[int, int]]
) -> list[dict[str, Tensor]]:
    """DETR training labels: class index and (cx, cy, w, h) relative to the padded batch."""
    lut = {c: i for i, c in enumerate(det.category_ids)}
    an = gt.annotations
    H = max(s[0] for s in sizes)
    W = max(s[1] for s in sizes)
    out = []
    for iid in image_ids:
        sel = np.flatnonzero(
            (an.image_id == iid) & ~an.is_region & np.isin(an.category_id, list(lut))
        )
        b = an.bbox[sel]
        box = np.column_stack(
            [(b[:, 0] + b[:, 2] / 2) / W, (b[:, 1] + b[:, 3] / 2) / H, b[:, 2] / W, b[:, 3] / H]
        )
        out.append(
            {
                "class_labels": torch.tensor(
                    [lut[int(c)] for c in an.category_id[sel]], dtype=torch.long
                ),
                "boxes": torch.tensor(box.reshape(-1, 4), dtype=torch.float32),
            }
        )
    return out


def finetune_detr(
    det: DetrDetector,
    images: Sequence[Tensor],
    image_ids: Sequence[int],
    gt: GroundTruth,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 4,
    seed: int = 0,
) -> tuple[DetrDetector, list[float]]:
    """Train only ``class_labels_classifier`` with DETR's Hungarian-matched ``loss_ce``;
    returns a fine-tuned copy and the loss per epoch."""
    import copy

    model = copy.deepcopy(det.model)
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith(LAST_LAYER + "."))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    tuned = DetrDetector(model, det.category_ids, det.score_thresh, det.topk, det.name)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        model.train()
        for m in model.modules():  # dropout off, frozen statistics: only the last layer learns
            if isinstance(m, torch.nn.Dropout | torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        perm = torch.randperm(len(images), generator=gen).tolist()
        total = 0.0
        for a in range(0, len(perm), batch_size):
            b = perm[a : a + batch_size]
            ims = [images[i] for i in b]
            px, mask = tuned._pixels(ims)
            labels = detr_targets(
                tuned,
                gt,
                [image_ids[i] for i in b],
                [(int(x.shape[1]), int(x.shape[2])) for x in ims],
            )
            out = model(pixel_values=px, pixel_mask=mask, labels=labels)
            loss = out.loss_dict["loss_ce"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        history.append(total / len(images))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return tuned, history
