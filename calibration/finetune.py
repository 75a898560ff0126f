"""Last-layer fine-tuning: retrain only a detector's classification layer on a calibration split.

The review this audit comes from (Huseljic et al. 2022) froze everything but the class
layer and trained about 10 epochs at lr 2.5e-4. Here:

* **Faster R-CNN** (torchvision, and the sample detector): only
  ``roi_heads.box_predictor.cls_score`` (optionally also ``bbox_pred``) is trained. Since
  everything before it is frozen, the RoI features of each calibration image are computed
  once (proposals sampled as torchvision's training does: 25 % foreground, IoU 0.5), and the
  epochs run over those cached features, so the loss can be cross-entropy, focal or
  label-smoothed cross-entropy.
* **RetinaNet and FCOS**: only ``head.classification_head.cls_logits`` is trained, with the
  model's own training loss (torchvision's sigmoid focal loss), a full forward per step.

BatchNorm layers stay in eval mode (their statistics are frozen too). A share of the
calibration images (``val_fraction``) is held out; after each epoch the detector runs on
them and their D-ECE (application perspective) decides early stopping: the best epoch's
weights are kept. :func:`save_checkpoint` writes a checkpoint that
:func:`calibration.adapters.load_detector` reads back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from calibration.detections import GroundTruth
from calibration.metrics import MetricsConfig, compute_metrics
from tiles.errors import TrustmapError
from tiles.io import atomic_path

if TYPE_CHECKING:
    from calibration.adapters.torchvision_models import DetectionModel, TorchvisionDetector
    from calibration.config import FinetuneSection

Loss = Literal["ce", "focal", "label_smoothing"]


@dataclass
class FinetuneSettings:
    """What :func:`finetune` does (the audit YAML's ``repair.finetune`` section)."""

    epochs: int = 10
    lr: float = 2.5e-4
    loss: Loss = "ce"
    smoothing: float = 0.1
    focal_gamma: float = 2.0
    train_box: bool = False
    patience: int = 3
    val_fraction: float = 0.25
    seed: int = 0
    batch_rois: int = 512
    batch_images: int = 4

    @classmethod
    def from_section(cls, sec: FinetuneSection) -> FinetuneSettings:
        return cls(**{k: getattr(sec, k) for k in cls.__dataclass_fields__ if hasattr(sec, k)})


@dataclass
class FinetuneResult:
    """The fine-tuned detector and how it got there."""

    detector: TorchvisionDetector  # with the fine-tuned model
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    trained: list[str] = field(default_factory=list)  # parameter names that were trained
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def trainable_layers(model: nn.Module, train_box: bool = False) -> list[str]:
    """Names of the parameters last-layer fine-tuning trains for this model's family."""
    from calibration.adapters.torchvision_models import family_of

    fam = family_of(model)
    if fam == "rcnn":
        prefixes = ["roi_heads.box_predictor.cls_score."]
        if train_box:
            prefixes.append("roi_heads.box_predictor.bbox_pred.")
    elif fam in ("retinanet", "fcos"):
        prefixes = ["head.classification_head.cls_logits."]
    else:
        raise TrustmapError(
            f"last-layer fine-tuning supports Faster R-CNN, RetinaNet and FCOS, not {fam}"
        )
    names = [n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes))]
    if not names:
        raise TrustmapError(f"no parameters under {prefixes} in {type(model).__name__}")
    return names


def _freeze(model: nn.Module, names: Sequence[str]) -> None:
    keep = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)


def _train_mode(model: nn.Module) -> None:
    """Training behaviour (losses, proposal sampling) with frozen BatchNorm statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def targets_for(
    detector: TorchvisionDetector, gt: GroundTruth, image_ids: Sequence[int]
) -> list[dict[str, Tensor]]:
    """torchvision training targets (xyxy boxes, model labels) of each image; crowd/ignore
    regions and categories the model does not know are left out."""
    cat_to_label = {c: lab for lab, c in detector.label_to_category.items()}
    an = gt.annotations
    rows = gt.images.index_of(an.image_id)
    out = []
    for iid in image_ids:
        r = int(gt.images.index_of(np.array([iid]))[0])
        sel = np.flatnonzero(
            (rows == r) & ~an.is_region & np.isin(an.category_id, list(cat_to_label))
        )
        b = an.bbox[sel].astype(np.float32)
        xyxy = (
            np.column_stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]])
            if len(sel)
            else np.zeros((0, 4), np.float32)
        )
        labels = np.array([cat_to_label[int(c)] for c in an.category_id[sel]], np.int64)
        out.append({"boxes": torch.from_numpy(xyxy), "labels": torch.from_numpy(labels)})
    return out


def _loss(logits: Tensor, labels: Tensor, s: FinetuneSettings) -> Tensor:
    if s.loss == "ce":
        return F.cross_entropy(logits, labels)
    if s.loss == "label_smoothing":
        return F.cross_entropy(logits, labels, label_smoothing=s.smoothing)
    logp = F.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
    return (-((1.0 - logp.exp()) ** s.focal_gamma) * logp).mean()


@torch.no_grad()
def _rcnn_cache(
    model: DetectionModel,
    images: Sequence[Tensor],
    targets: Sequence[dict[str, Tensor]],
    batch: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """RoI features, class labels and regression targets of the sampled proposals."""
    feats, labels, regs = [], [], []
    _train_mode(model)
    for a in range(0, len(images), batch):
        ims, tgs = list(images[a : a + batch]), [dict(t) for t in targets[a : a + batch]]
        il, tl = model.transform(ims, tgs)
        f = model.backbone(il.tensors)
        proposals, _ = model.rpn(il, f, tl)
        proposals, _, lab, reg = model.roi_heads.select_training_samples(proposals, tl)
        bf = model.roi_heads.box_head(model.roi_heads.box_roi_pool(f, proposals, il.image_sizes))
        feats.append(bf)
        labels.append(torch.cat(lab))
        regs.append(torch.cat(reg))
    model.eval()
    return torch.cat(feats), torch.cat(labels), torch.cat(regs)


def _val_dece(
    detector: TorchvisionDetector,
    images: Sequence[Tensor],
    ids: Sequence[int],
    gt: GroundTruth,
    mcfg: MetricsConfig,
) -> tuple[float, float]:
    """(D-ECE, mAP) of the application perspective on the validation images."""
    detector.model.eval()
    dets = detector.candidates_for_tensors(list(images), list(ids)).postprocess()
    sub = gt.subset_images(ids)
    r = compute_metrics(
        dets, sub, mcfg.model_copy(update={"n_boot": 0, "ap_backend": "trustmap"}), validate=False
    )
    d = r["metrics"]["dece"]["value"]
    return (math.inf if d is None else float(d)), float(r["metrics"]["map"]["value"] or 0.0)


def finetune(
    detector: TorchvisionDetector,
    images: Sequence[Tensor],
    image_ids: Sequence[int],
    gt: GroundTruth,
    settings: FinetuneSettings | None = None,
    mcfg: MetricsConfig | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``detector``'s last layer on calibration images (tensors in [0, 1])
    with their ground truth; early stopping on the held-out part's D-ECE."""
    from calibration.adapters.torchvision_models import TorchvisionDetector

    s = settings or FinetuneSettings()
    mcfg = mcfg or MetricsConfig()
    t0 = time.perf_counter()
    if len(images) != len(image_ids):
        raise TrustmapError(f"{len(images)} images but {len(image_ids)} image ids")
    if len(images) < 4:
        raise TrustmapError(f"fine-tuning needs at least 4 calibration images, got {len(images)}")
    torch.manual_seed(s.seed)
    model = copy.deepcopy(detector.model).cpu()
    names = trainable_layers(model, s.train_box)
    _freeze(model, names)
    tuned = TorchvisionDetector(
        model,
        name=detector.name,
        category_ids=list(detector.prob_category_ids),
        background_label=detector.background,
        min_score=detector.min_score,
    )
    rng = np.random.default_rng(s.seed)
    order = rng.permutation(len(images))
    n_val = max(1, int(round(s.val_fraction * len(images))))
    val, tr = order[:n_val], order[n_val:]
    tr_imgs, tr_ids = [images[i] for i in tr], [int(image_ids[i]) for i in tr]
    va_imgs, va_ids = [images[i] for i in val], [int(image_ids[i]) for i in val]
    targets = targets_for(detector, gt, tr_ids)
    params = [p for n, p in model.named_parameters() if n in set(names)]
    opt = torch.optim.SGD(params, lr=s.lr, momentum=0.9)
    base, base_map = _val_dece(tuned, va_imgs, va_ids, gt, mcfg)
    history = [{"epoch": 0, "val_dece": base, "val_map": base_map}]
    best, best_epoch = base, 0
    best_state = {n: p.detach().clone() for n, p in model.named_parameters() if n in set(names)}
    family = tuned.family
    if family == "rcnn":
        feats, labels, regs = _rcnn_cache(model, tr_imgs, targets, s.batch_images)
        pred = model.roi_heads.box_predictor
    elif s.loss != "focal":
        raise TrustmapError(
            f"{type(model).__name__} trains its sigmoid classifier with torchvision's focal loss; "
            f"loss {s.loss!r} applies to softmax heads (Faster R-CNN): use loss 'focal'"
        )
    gen = torch.Generator().manual_seed(s.seed)
    stale = 0
    for epoch in range(1, s.epochs + 1):
        total, steps = 0.0, 0
        if family == "rcnn":
            perm = torch.randperm(len(labels), generator=gen)
            for a in range(0, len(perm), s.batch_rois):
                idx = perm[a : a + s.batch_rois]
                logits, box = pred(feats[idx])
                loss = _loss(logits, labels[idx], s)
                if s.train_box:
                    pos = torch.nonzero(labels[idx] > 0)[:, 0]
                    if pos.numel():
                        box = box.reshape(len(idx), -1, 4)[pos, labels[idx][pos]]
                        loss = loss + F.smooth_l1_loss(
                            box, regs[idx][pos], beta=1 / 9, reduction="sum"
                        ) / len(idx)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, steps = total + float(loss.detach()), steps + 1
        else:
            _train_mode(model)
            img_perm = torch.randperm(len(tr_imgs), generator=gen).tolist()
            for a in range(0, len(img_perm), s.batch_images):
                b = img_perm[a : a + s.batch_images]
                losses = model([tr_imgs[i] for i in b], [dict(targets[i]) for i in b])
                loss = losses["classification"]
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, steps = total + float(loss.detach()), steps + 1
            model.eval()
        d, mp = _val_dece(tuned, va_imgs, va_ids, gt, mcfg)
        history.append(
            {"epoch": epoch, "loss": total / max(steps, 1), "val_dece": d, "val_map": mp}
        )
        if d < best - 1e-6:
            best, best_epoch, stale = d, epoch, 0
            best_state = {
                n: p.detach().clone() for n, p in model.named_parameters() if n in set(names)
            }
        else:
            stale += 1
            if stale >= s.patience:
                break
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in best_state:
                p.copy_(best_state[n])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return FinetuneResult(
        tuned, history, best_epoch, names,
        {k: getattr(s, k) for k in s.__dataclass_fields__},
        time.perf_counter() - t0,
    )  # fmt: skip


def save_checkpoint(
    result: FinetuneResult, path: str | os.PathLike, arch: str, categories: Sequence[dict[str, Any]]
) -> Path:
    """A checkpoint of the fine-tuned model (plain tensors and containers: ``weights_only``-safe)."""
    model = result.detector.model
    ckpt = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "arch": arch,
        "num_classes": int(len(result.detector.labels) + (1 if result.detector.softmax else 0)),
        "categories": [{"id": int(c["id"]), "name": str(c["name"])} for c in categories],
        "finetune": {
            "trained": list(result.trained),
            "best_epoch": int(result.best_epoch),
            "settings": {k: v for k, v in result.settings.items()},
            "history": [{k: float(v) for k, v in h.items()} for h in result.history],
        },
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)
