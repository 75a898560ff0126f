"""Run a detectron2 model directly, when detectron2 is installed.

detectron2 is not on PyPI and cannot be installed everywhere, so its first-class route into
the audit is its own export: ``coco_instances_results.json`` from ``COCOEvaluator``, read by
:meth:`calibration.detections.Detections.from_coco_json`. This module is the convenience for
machines that do have it: it imports detectron2 only when called and otherwise says how to
use the export instead. It gives the "application" perspective only (detectron2's
``Instances`` carry one score per box, like the export).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from calibration.detections import Detections
from tiles.errors import TrustmapError

MISSING = (
    "detectron2 is not installed; export coco_instances_results.json with detectron2's "
    "COCOEvaluator and pass it with --predictions"
)


def require_detectron2() -> Any:
    """Import detectron2 or raise the user-facing error that points at the export route."""
    try:
        import detectron2  # noqa: F401
        from detectron2 import config, modeling
        from detectron2.checkpoint import DetectionCheckpointer
    except ImportError:
        raise TrustmapError(MISSING) from None
    return config, modeling, DetectionCheckpointer


def run_detectron2(
    config_file: str | os.PathLike,
    weights: str | os.PathLike,
    records: Sequence[Any],
    category_ids: Sequence[int],
    device: str = "cpu",
    score_thresh: float | None = None,
) -> Detections:
    """Detections of a detectron2 model (config + local weights) on ``ImageRecord`` s.

    ``category_ids[i]`` is the dataset id of detectron2's contiguous class ``i``.
    """
    config, modeling, checkpointer = require_detectron2()
    import torch

    from calibration.adapters.torchvision_models import read_image

    for p, what in ((config_file, "config"), (weights, "weights")):
        if not os.path.isfile(p):
            raise TrustmapError(f"detectron2 {what} file not found", p)
    cfg = config.get_cfg()
    cfg.merge_from_file(str(config_file))
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.MODEL.DEVICE = device
    if score_thresh is not None:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(score_thresh)
    model = modeling.build_model(cfg)
    checkpointer(model).load(str(weights))
    model.eval()
    ids, boxes, cats, scores = [], [], [], []
    lut = np.asarray(category_ids, dtype=np.int64)
    with torch.no_grad():
        for r in records:
            img = read_image(r.path)  # RGB in [0, 1]
            bgr = (img.flip(0) * 255.0) if cfg.INPUT.FORMAT == "BGR" else img * 255.0
            inst = model([{"image": bgr, "height": img.shape[1], "width": img.shape[2]}])[0][
                "instances"
            ].to("cpu")
            b = inst.pred_boxes.tensor.numpy().astype(np.float64)
            ids.append(np.full(len(b), r.image_id, np.int64))
            boxes.append(np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1))
            cats.append(lut[inst.pred_classes.numpy()])
            scores.append(inst.scores.numpy().astype(np.float64))
    if not ids:
        return Detections.empty()
    return Detections(
        image_id=np.concatenate(ids),
        bbox=np.concatenate(boxes),
        category_id=np.concatenate(cats),
        score=np.concatenate(scores),
        source=str(weights),
    )
