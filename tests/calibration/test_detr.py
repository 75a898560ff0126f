"""The set-based detector adapter: a tiny DETR from transformers, both perspectives, and
fine-tuning of class_labels_classifier alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers  # noqa: E402,F401 - a test extra: a missing install must fail, not skip

from calibration.adapters.detr import build_detr, finetune_detr, load_detr  # noqa: E402
from calibration.detections import AnnotationTable, GroundTruth, ImageTable  # noqa: E402
from calibration.metrics import MetricsConfig, compute_metrics  # noqa: E402
from tiles.errors import TrustmapError  # noqa: E402

TINY = dict(
    use_timm_backbone=True, backbone="resnet18", num_queries=12, d_model=32, encoder_layers=1,
    decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
    decoder_attention_heads=2, num_labels=2,
)  # fmt: skip


def _data(n=4, size=64):
    gt = GroundTruth(
        ImageTable(np.arange(1, n + 1), np.array(["x"] * n), np.full(n, float(size)), np.full(n, float(size))),
        AnnotationTable(np.arange(1, n + 1), np.arange(1, n + 1), np.tile([10, 12, 20, 16.0], (n, 1)),
                        np.array([3, 7] * (n // 2)), np.zeros(n, bool), np.zeros(n, bool), np.full(n, 320.0)),
        {3: "car", 7: "boat"},
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    return gt, [torch.rand(3, size, size, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def detr():
    torch.set_num_threads(1)
    return build_detr(TINY, category_ids=[3, 7])


def test_both_perspectives(detr):
    gt, imgs = _data()
    detr.score_thresh = 0.0
    modeling, application = detr.detect(imgs, [1, 2, 3, 4])
    assert len(modeling) == 4 * 12  # every query of every image
    assert modeling.probs.shape == (48, 3) and np.allclose(modeling.probs.sum(1), 1.0)
    assert set(np.unique(modeling.category_id)) <= {3, 7}
    np.testing.assert_allclose(modeling.score, modeling.probs[:, :2].max(1))
    detr.score_thresh, detr.topk = 0.3, 2
    _, app = detr.detect(imgs, [1, 2, 3, 4])
    assert (app.score > 0.3).all() and np.bincount(app.image_id).max() <= 2
    modeling.validate(gt)
    r = compute_metrics(modeling, gt, MetricsConfig(n_boot=0))
    assert r["metrics"]["nll"]["value"] is not None  # K+1 metrics from the query vectors


def test_only_the_class_layer_is_fine_tuned(detr, tmp_path):
    gt, imgs = _data()
    tuned, hist = finetune_detr(detr, imgs, [1, 2, 3, 4], gt, epochs=3, lr=5e-3)
    a, b = detr.model.state_dict(), tuned.model.state_dict()
    changed = sorted(k for k in a if not torch.equal(a[k], b[k]))
    assert changed == ["class_labels_classifier.bias", "class_labels_classifier.weight"]
    assert len(hist) == 3 and hist[-1] < hist[0]
    tuned.model.save_pretrained(tmp_path / "m")
    again = load_detr(tmp_path / "m", category_ids=[3, 7])
    w = "class_labels_classifier.weight"
    assert torch.equal(again.model.state_dict()[w], b[w])
    with pytest.raises(TrustmapError, match="config.json"):
        load_detr(tmp_path)
