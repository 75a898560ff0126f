"""Shared fixtures: the sample detector's real predictions on small calibration and test splits."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory) -> dict[str, Path]:
    """The packaged sample detector run once on 60 calibration and 60 test images (seed 0):
    COCO ground truth and application-perspective COCO results (with ``probs``) per split."""
    import torch

    from calibration.adapters import images_from_coco, load_detector
    from calibration.samples import make_split

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sample_run")
    det = load_detector("sample_fasterrcnn")
    out: dict[str, Path] = {"root": root}
    for split in ("cal", "test"):
        ann = make_split(root, split, 60, size=256, seed=0)
        cand = det.candidates(images_from_coco(root, ann), batch_size=8)
        pred = root / f"{split}_results.json"
        cand.postprocess().to_coco_json(pred)
        out[f"{split}_gt"], out[f"{split}_pred"] = ann, pred
    return out
