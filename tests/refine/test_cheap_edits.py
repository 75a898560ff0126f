"""Realistic cheap labels from a real truth mask (a Dubai scene in tests/data/dubai)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from refine.cheap.common import noise_rate
from refine.cheap.edits import (
    EditNoise,
    erase_small_objects,
    shift_boundaries,
    simulate_edits,
    swap_segments,
)
from tiles.classes import load_schema

DUBAI = Path(__file__).resolve().parents[1] / "data" / "dubai"


@pytest.fixture(scope="module")
def real() -> tuple[np.ndarray, object]:
    with rasterio.open(DUBAI / "t2_007_truth.tif") as ds:
        truth = ds.read(1)
    return truth, load_schema(DUBAI / "classes.yaml")


def _boundary(labels: np.ndarray) -> np.ndarray:
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    return edge


def test_boundary_shift_changes_pixels_only_near_class_edges(real) -> None:
    truth, schema = real
    out = shift_boundaries(truth, schema, np.random.default_rng(0), max_shift=3)
    changed = (out != truth) & (truth != schema.ignore)
    assert 0.005 < changed.mean() < 0.15
    dist = ndimage.distance_transform_edt(~_boundary(truth))
    assert dist[changed].max() <= 3 * np.sqrt(2) + 1  # never further than the shift from an edge
    assert np.array_equal(out == schema.ignore, truth == schema.ignore)  # ignore untouched


def test_erased_objects_were_small_and_take_a_neighbouring_class(real) -> None:
    truth, schema = real
    out = erase_small_objects(truth, schema, np.random.default_rng(1), max_area=300, probability=1.0)
    changed = out != truth
    assert changed.any()
    lab, n = ndimage.label(changed)
    assert np.bincount(lab.ravel())[1:].max() < 300 * 4  # pieces of small objects only
    assert set(np.unique(out[changed])) <= set(schema.codes)


def test_segment_swaps_reach_the_target_and_move_whole_segments(real) -> None:
    truth, schema = real
    out = swap_segments(truth, truth, schema, np.random.default_rng(2), target=0.1)
    assert 0.1 <= noise_rate(out, truth, schema.ignore) < 0.16
    for code in schema.codes:  # every truth segment is either untouched or swapped whole
        lab, n = ndimage.label(truth == code, structure=np.ones((3, 3)))
        for i in range(1, n + 1):
            assert np.unique(out[lab == i]).size == 1


@pytest.mark.parametrize("noise", [0.1, 0.2])
def test_simulate_edits_hits_the_noise_rate_deterministically(real, noise: float) -> None:
    truth, schema = real
    a = simulate_edits(truth, schema, EditNoise(noise=noise, seed=3))
    b = simulate_edits(truth, schema, EditNoise(noise=noise, seed=3))
    assert np.array_equal(a, b)
    assert noise - 0.005 <= noise_rate(a, truth, schema.ignore) <= noise + 0.06
    assert set(np.unique(a)) <= {*schema.codes, schema.ignore}
    assert not np.array_equal(a, simulate_edits(truth, schema, EditNoise(noise=noise, seed=4)))
