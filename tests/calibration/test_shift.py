"""The corruption suite and the OOD measures."""

from __future__ import annotations

import numpy as np
import pytest

from calibration import shift as S
from calibration.detections import Detections
from tiles.errors import TrustmapError


def _image(seed=0, size=96):
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = rng.integers(60, 160, 3)
    img[20:50, 30:70] = (220, 220, 225)  # a bright object
    img[53:77, 11:41] = (30, 40, 35)  # a dark one off the pixel grid
    return np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)  # texture


def test_fifteen_corruptions_five_severities_as_coco_c():
    assert len(S.CORRUPTIONS) == 15 and S.SEVERITIES == (1, 2, 3, 4, 5)
    assert all(len(c.params) == 5 for c in S.CORRUPTIONS.values())
    fams = {c.family for c in S.CORRUPTIONS.values()}
    assert fams == {"noise", "blur", "weather", "digital"}
    assert len(S.parameter_table()) == 15


@pytest.mark.parametrize("name", list(S.CORRUPTIONS))
def test_corruptions_are_deterministic_and_grow_with_severity(name):
    img = _image()
    a = S.corrupt(img, name, 3, seed=1, image_id=7)
    np.testing.assert_array_equal(a, S.corrupt(img, name, 3, seed=1, image_id=7))
    assert a.shape == img.shape and a.dtype == np.uint8
    outs = [S.corrupt(img, name, s, 1, 7).astype(float) for s in (1, 5)]
    if name == "frost":  # a blend: less of the image is left (ImageNet-C's weights 1.0 -> 0.6)
        d = [1 - np.corrcoef(o.ravel(), img.ravel().astype(float))[0, 1] for o in outs]
    else:
        d = [np.abs(o - img).mean() for o in outs]
    assert d[1] > d[0] > 0, (name, d)


def test_the_seed_changes_random_corruptions_only():
    img = _image()
    a, b = S.corrupt(img, "gaussian_noise", 2, seed=0), S.corrupt(img, "gaussian_noise", 2, seed=1)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(
        S.corrupt(img, "contrast", 2, 0), S.corrupt(img, "contrast", 2, 1)
    )


def test_contrast_follows_imagenet_c_around_the_mean():
    img = _image()
    out = S.corrupt(img, "contrast", 1).astype(float)  # factor 0.4
    want = (img - img.mean()) * 0.4 + img.mean()
    assert np.abs(out - want).mean() < 1.5


def test_unknown_corruption_and_bad_severity_are_errors():
    with pytest.raises(
        TrustmapError, match="unknown corruption 'rain'; choose from gaussian_noise"
    ):
        S.corrupt(_image(), "rain", 1)
    with pytest.raises(TrustmapError, match="severity must be 1-5, got 6"):
        S.corrupt(_image(), "fog", 6)


def test_unknown_corruption_in_the_audit_config_names_the_key(tmp_path):
    from calibration.config import load_config

    p = tmp_path / "a.yaml"
    p.write_text("detector: {}\ndata: {sample: {}}\nshift: {corruptions: [fog, rain]}\n")
    with pytest.raises(TrustmapError, match=r"key 'shift.corruptions': unknown corruption 'rain'"):
        load_config(p)
    p.write_text("shift: {}\n")
    with pytest.raises(TrustmapError, match="'shift' runs the detector again"):
        load_config(p)


def test_ood_measures():
    rng = np.random.default_rng(0)
    n_in, n_ood = 400, 120
    s_in, s_ood = rng.beta(5, 2, n_in), rng.beta(2, 5, n_ood)

    def dets(s, k):
        p = np.column_stack([s, (1 - s) * 0.2, (1 - s) * 0.8])  # 2 classes + background
        return Detections(
            np.ones(k, int), np.tile([0, 0, 5, 5.0], (k, 1)), np.ones(k, int), s, probs=p
        )

    o = S.ood_measures(
        dets(s_in, n_in), dets(s_ood, n_ood), n_ood_images=40, threshold=0.5, category_ids=[1, 2]
    )
    assert o["fp_per_image"] == pytest.approx((s_ood > 0.5).sum() / 40)
    assert 0.8 < o["auroc_max_score"] <= 1.0
    from sklearn.metrics import roc_auc_score

    ref = roc_auc_score(np.r_[np.ones(n_in), np.zeros(n_ood)], np.r_[s_in, s_ood])
    assert o["auroc_max_score"] == pytest.approx(ref)
    assert o["auroc_entropy"] is not None and sum(o["hist_confidence"]["ood"]) == n_ood
