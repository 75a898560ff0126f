"""Cheap-label simulators: helpers against hand values and scipy, simulators on the sample scene."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist
from skimage.measure import label as label_components

from refine.cheap import common as common_noise
from refine.cheap import crowd as crowd_noise
from refine.cheap import spectral as spectral_noise
from refine.cheap.common import noise_rate
from refine.cheap.crowd import CrowdConfig, simulate_crowd
from refine.cheap.spectral import ModelNoiseConfig, simulate_model
from tiles.classes import ClassSchema, load_schema
from tiles.errors import TrustmapError
from tiles.samples import generate_scene_arrays

SCHEMA = load_schema("configs/classes/landcover6.yaml")
IGN = SCHEMA.ignore
WATER, TREE, CROP, BUILT, SOIL, ROAD = range(6)  # class indices


@pytest.fixture(scope="module")
def scene():
    bands, truth, valid = generate_scene_arrays(256, 0)
    truth = truth.copy()
    truth[:, :6] = IGN  # a nodata strip, so "ignore is kept" is tested on a sizeable area
    return bands, truth, truth != IGN


# --- helpers ----------------------------------------------------------------------------------


def test_noise_rate_by_hand():
    truth = np.array([[1, 2, IGN], [3, 3, 4]], np.uint8)
    cheap = np.array([[1, 3, 5], [IGN, 3, 4]], np.uint8)
    # 5 labelled pixels; wrong: (0,1) and (1,0) (ignore where the truth has a class).
    assert noise_rate(cheap, truth, IGN) == pytest.approx(2 / 5)
    assert noise_rate(truth, truth, IGN) == 0.0
    with pytest.raises(TrustmapError):
        noise_rate(cheap[:, :2], truth, IGN)


def test_confusability_is_structured():
    aff = common_noise.confusability(SCHEMA)
    assert aff[TREE, CROP] == aff[CROP, TREE] == 1.0
    assert aff[BUILT, SOIL] == 0.8 and aff[ROAD, BUILT] == 0.8
    assert aff[WATER, BUILT] == 0.03  # implausible pair: the floor
    assert np.all(np.diag(aff) == 0) and np.allclose(aff, aff.T)
    other = ClassSchema.model_validate(
        {"classes": [{"code": c, "name": f"c{c}", "color": "#000000"} for c in (1, 2, 3)]}
    )
    np.testing.assert_allclose(common_noise.confusability(other), 0.03 * (1 - np.eye(3)))


def test_smooth_fields_match_scipy_bspline():
    fields = common_noise.SmoothFields((70, 90), 16.0, 2, np.random.default_rng(0))
    rows = fields.rows(10, 40)
    yy, xx = np.mgrid[10:40, 0:90]
    for k in range(2):
        want = ndimage.map_coordinates(
            fields.coeffs[k], [yy / 16 + 1, xx / 16 + 1], order=3, prefilter=False
        )
        np.testing.assert_allclose(rows[k], want, atol=1e-5)
    ys = np.array([[0, 1, 2], [50, 51, 52]])
    xs = np.array([[87, 88, 89], [5, 6, 7]])
    patches = fields.patches(ys, xs)
    full = fields.rows(0, 70)
    np.testing.assert_allclose(patches[:, 1], full[:, 50:53, 5:8], atol=1e-6)
    np.testing.assert_allclose(patches[:, 0], full[:, 0:3, 87:90], atol=1e-6)


def test_parcels_are_nearest_seed_voronoi():
    shape, cell = (70, 83), 16
    got = crowd_noise._parcels(shape, cell, np.random.default_rng(5))
    rng = np.random.default_rng(5)  # the same draws, brute force
    gh, gw = 5, 6
    sy = (np.arange(gh)[:, None] + rng.uniform(0.25, 0.75, (gh, gw))) * cell
    sx = (np.arange(gw)[None, :] + rng.uniform(0.25, 0.75, (gh, gw))) * cell
    pix = np.stack(np.mgrid[0:70, 0:83], -1).reshape(-1, 2)
    want = cdist(pix, np.stack([sy.ravel(), sx.ravel()], 1)).argmin(axis=1).reshape(shape)
    np.testing.assert_array_equal(got, want)


def test_fill_from_neighbours_by_hand():
    lab = np.array(
        [
            [1, 1, 1, 3, 3],
            [1, 0, 0, 3, 3],
            [1, 1, 1, 3, -1],
        ]
    )
    hole = lab == 0
    # Pixel (1,1) touches only class 1; (1,2) touches 1 and 3: the higher rank wins.
    got = crowd_noise._fill_from_neighbours(lab, hole, rank=np.array([0, 1, 2, 3]), max_iter=3)
    np.testing.assert_array_equal(got[1, 1:3], [1, 3])
    got = crowd_noise._fill_from_neighbours(lab, hole, rank=np.array([0, 3, 2, 1]), max_iter=3)
    np.testing.assert_array_equal(got[1, 1:3], [1, 1])
    assert got[2, 4] == -1  # ignore is never a source and never changed


def test_majority_filter_by_hand_and_patches_match_full():
    pred = np.array(
        [
            [0, 0, 1, 1],
            [0, 2, 1, 1],
            [2, 2, 0, 1],
        ]
    )
    got = spectral_noise._majority(pred, 3, radius=1)
    # 3x3 windows, counting only pixels inside the image:
    # (1,1): 0 x4, 1 x2, 2 x3 -> 0     (0,1): 0 x3, 1 x2, 2 x1 -> 0     (0,2): 1 x4 -> 1
    # (1,0): 0 x3, 2 x3, tie -> own 0   (2,0): {0,2,2,2} -> 2      (2,2): 1 x3, 2 x2 -> 1
    want = np.array(
        [
            [0, 0, 1, 1],
            [0, 0, 1, 1],
            [2, 2, 1, 1],
        ]
    )
    np.testing.assert_array_equal(got, want)
    # Ties go to the centre's own class, then to the lowest class.
    tie = np.array([[0, 1], [1, 0]])  # every window: two votes each
    np.testing.assert_array_equal(spectral_noise._majority(tie, 2, radius=1), tie)
    row = np.array([[1, 1, 0, 2, 2]])  # centre window: 1 x2, 2 x2, 0 x1 -> 1
    assert spectral_noise._majority(row, 3, radius=2)[0, 2] == 1

    rng = np.random.default_rng(0)
    big = rng.integers(0, 4, (20, 23))
    full = spectral_noise._majority(big, 4, radius=2)
    cy, cx = np.array([0, 5, 19, 10]), np.array([0, 22, 3, 11])
    off = np.arange(-2, 3)
    ys, xs = cy[:, None] + off, cx[:, None] + off
    inside = ((ys >= 0) & (ys < 20))[:, :, None] & ((xs >= 0) & (xs < 23))[:, None, :]
    ys, xs = np.clip(ys, 0, 19), np.clip(xs, 0, 22)
    patches = spectral_noise._majority(big[ys[:, :, None], xs[:, None, :]], 4, 2, inside)
    np.testing.assert_array_equal(patches, full[cy, cx])


# --- crowd ------------------------------------------------------------------------------------


def _isolated_fraction(wrong: np.ndarray) -> float:
    """Share of wrong pixels that have no wrong 8-neighbour: salt-and-pepper noise.

    Independent pixel noise at rate p gives (1 - p)^8 (0.43 at p = 0.1, 0.017 at p = 0.4).
    """
    comps = label_components(wrong, connectivity=2)
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    return float((sizes == 1).sum() / max(wrong.sum(), 1))


def test_crowd_is_deterministic_and_keeps_ignore(scene):
    _, truth, valid = scene
    cfg = CrowdConfig(n_annotators=3, noise=0.25, seed=4)
    a = simulate_crowd(truth, SCHEMA, cfg)
    np.testing.assert_array_equal(a, simulate_crowd(truth, SCHEMA, cfg))
    b = simulate_crowd(truth, SCHEMA, CrowdConfig(n_annotators=3, noise=0.25, seed=5))
    assert a.shape == (3, *truth.shape) and a.dtype == np.uint8
    assert not np.array_equal(a, b)
    assert np.all((a == IGN) == ~valid[None])
    assert set(np.unique(a[:, valid])) <= set(SCHEMA.codes)


@pytest.mark.parametrize("target", [0.1, 0.25, 0.4])
def test_crowd_lands_near_target(scene, target):
    _, truth, valid = scene
    cfg = CrowdConfig(n_annotators=4, n_spammers=1, noise=target, seed=1)
    stack = simulate_crowd(truth, SCHEMA, cfg)
    rates = np.array([noise_rate(s, truth, IGN) for s in stack])
    want = target * cfg.skill_weights()
    assert abs(rates[:3].mean() - target) < 0.01, rates
    np.testing.assert_allclose(rates[:3], want, atol=0.02)
    # Annotators differ in quality: best first, the worst ~skill_spread (3) times worse; the
    # spammer's rate does not depend on the target.
    assert rates[0] < rates[1] < rates[2]
    assert rates[2] / rates[0] > 2.5
    assert rates[3] > 0.5


def test_crowd_errors_are_objects_on_plausible_pairs(scene):
    _, truth, valid = scene
    stack = simulate_crowd(truth, SCHEMA, CrowdConfig(n_annotators=3, noise=0.3, seed=2))
    lut = SCHEMA.code_to_index()
    t = lut[truth][valid]
    aff = common_noise.confusability(SCHEMA)
    plausible = []
    for s in stack:
        assert _isolated_fraction((s != truth) & valid) < 0.02  # (1 - 0.3)^8 = 0.06 if iid
        p = lut[s][valid]
        wrong = p != t
        plausible.append(np.mean(aff[t[wrong], p[wrong]] >= 0.5))
    # Wrong pixels sit mostly on pairs a person plausibly confuses (10 of the 30 ordered
    # pairs have affinity >= 0.5); most of all for the worst annotator, whose errors are
    # mostly whole mislabelled objects rather than sloppy boundaries.
    assert min(plausible) > 0.45 and plausible[-1] > 0.6, plausible


def test_crowd_misses_small_objects(scene):
    _, truth, _ = scene
    comps = label_components(SCHEMA.code_to_index()[truth], background=-1, connectivity=2)
    area = np.bincount(comps.ravel())
    small, large = np.flatnonzero(area < 64)[1:], np.flatnonzero(area >= 64)[1:]
    assert small.size >= 10  # the scene has trees and sheds to miss

    def kept(lab: np.ndarray, objects: np.ndarray) -> np.ndarray:
        right = np.bincount(comps.ravel(), weights=(lab == truth).ravel(), minlength=area.size)
        return right[objects] / area[objects]

    # One annotator with exact outlines, who misses every small object: it is painted with a
    # neighbouring class (a few come back when the object they were merged into is
    # relabelled), while large ones are outlined exactly. The target is set above what the
    # misses cost, so the simulator need not tone them down.
    floor = area[small].sum() / area[1:].sum()
    cfg = CrowdConfig(n_annotators=1, noise=floor + 0.04, miss_prob=1.0, boundary_px=0, seed=0)
    lab = simulate_crowd(truth, SCHEMA, cfg)[0]
    assert np.mean(kept(lab, small) == 0.0) > 0.9, kept(lab, small)
    assert np.median(kept(lab, large)) == 1.0


def test_crowd_config_errors():
    with pytest.raises(TrustmapError):
        CrowdConfig(noise=1.2)
    with pytest.raises(TrustmapError):
        CrowdConfig(n_annotators=2, n_spammers=2)
    with pytest.raises(TrustmapError, match="unknown class code"):
        simulate_crowd(np.full((8, 8), 9, np.uint8), SCHEMA)


def test_crowd_all_ignore():
    out = simulate_crowd(np.full((16, 16), IGN, np.uint8), SCHEMA, CrowdConfig(n_annotators=2))
    assert out.shape == (2, 16, 16) and np.all(out == IGN)


# --- weak model -------------------------------------------------------------------------------


def test_model_is_deterministic_and_keeps_ignore(scene):
    bands, truth, valid = scene
    cfg = ModelNoiseConfig(noise=0.25, seed=3)
    a = simulate_model(truth, bands, SCHEMA, cfg)
    np.testing.assert_array_equal(a, simulate_model(truth, bands, SCHEMA, cfg))
    assert not np.array_equal(a, simulate_model(truth, bands, SCHEMA, ModelNoiseConfig(seed=4)))
    assert a.dtype == np.uint8 and np.all((a == IGN) == ~valid)


@pytest.mark.parametrize("target", [0.1, 0.25, 0.4])
def test_model_lands_near_target_with_coherent_spectral_errors(scene, target):
    bands, truth, valid = scene
    pred = simulate_model(truth, bands, SCHEMA, ModelNoiseConfig(noise=target, seed=0))
    assert abs(noise_rate(pred, truth, IGN) - target) < 0.02
    wrong = (pred != truth) & valid
    # Far fewer isolated wrong pixels than independent noise at that rate; the few left are
    # staircase corners where the majority filter rounds a diagonal edge.
    assert _isolated_fraction(wrong) < min(0.08, (1 - target) ** 8 / 2)
    # Systematic confusions: for each true class, one wrong class takes most of its errors
    # (uniform confusions would give it 1/5).
    lut = SCHEMA.code_to_index()
    t, p = lut[truth][wrong], lut[pred][wrong]
    confusion = np.bincount(t * 6 + p, minlength=36).reshape(6, 6)
    assert confusion.max(axis=1).sum() / confusion.sum() > 0.45


def test_model_sampled_calibration_on_large_scenes(scene):
    bands, truth, _ = scene
    # 1000 windows of 7x7 cover fewer pixels than the scene: the patch-sample path is used.
    cfg = ModelNoiseConfig(noise=0.3, n_calibration=1000, seed=1)
    assert truth.size > cfg.n_calibration * (2 * cfg.smooth_px + 1) ** 2
    pred = simulate_model(truth, bands, SCHEMA, cfg)
    assert abs(noise_rate(pred, truth, IGN) - 0.3) < 0.04


def test_model_input_errors(scene):
    bands, truth, _ = scene
    with pytest.raises(TrustmapError, match="bands must be"):
        simulate_model(truth, bands[:3], SCHEMA)
    with pytest.raises(TrustmapError):
        ModelNoiseConfig(noise=-0.1)
