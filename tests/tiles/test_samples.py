"""The embedded sample scene: deterministic bytes, georeferencing, classes and plausible spectra."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
from rasterio.enums import ColorInterp

from tiles.classes import load_schema
from tiles.errors import TrustmapError
from tiles.samples import (
    BAND_NAMES,
    BUILT,
    CROP,
    ROAD,
    SOIL,
    TREE,
    WATER,
    _layout,
    _render_strip,
    generate_scene_arrays,
    make_sample,
)

B, G, R, NIR = range(4)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    make_sample(out, size=256, seed=3)
    return out


@pytest.fixture(scope="module")
def arrays512() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return generate_scene_arrays(512, 0)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes(sample: Path, tmp_path: Path) -> None:
    paths = make_sample(tmp_path, size=256, seed=3)
    assert {p.name for p in (paths.scene, paths.truth, paths.quicklook)} == set(_digest(sample))
    assert _digest(tmp_path) == _digest(sample)


def test_different_seeds_differ() -> None:
    b0, t0, _ = generate_scene_arrays(256, 0)
    b1, t1, _ = generate_scene_arrays(256, 1)
    assert (b0 != b1).mean() > 0.5
    assert (t0 != t1).mean() > 0.2


def test_files_hold_the_in_memory_arrays(sample: Path) -> None:
    bands, truth, valid = generate_scene_arrays(256, 3)
    with rasterio.open(sample / "scene.tif") as src:
        assert np.array_equal(src.read(), bands)
    with rasterio.open(sample / "truth.tif") as src:
        assert np.array_equal(src.read(1), truth)
    assert np.array_equal(valid, truth != 255)


def test_rendering_is_a_pure_function_of_the_rows(arrays512) -> None:
    # Strips are rendered independently; any row window must reproduce the full scene exactly.
    bands, truth, _ = arrays512
    layout = _layout(512, 0)
    for r0, r1 in ((100, 300), (0, 37), (255, 257), (411, 512)):
        b, t = _render_strip(layout, r0, r1)
        assert np.array_equal(b, bands[:, r0:r1]), (r0, r1)
        assert np.array_equal(t, truth[r0:r1]), (r0, r1)


def test_scene_georeferencing_and_layout(sample: Path) -> None:
    with rasterio.open(sample / "scene.tif") as src:
        assert src.crs.to_epsg() == 32643
        assert src.res == (1.0, 1.0)
        assert (src.transform.c, src.transform.f) == (770000.0, 1430000.0)
        lon_lat = rasterio.warp.transform(src.crs, "EPSG:4326", [src.bounds.left], [src.bounds.top])
        assert 77.3 < lon_lat[0][0] < 77.8 and 12.8 < lon_lat[1][0] < 13.2  # Bengaluru
        assert (src.count, src.dtypes, src.nodata) == (4, ("uint16",) * 4, 0)
        assert src.descriptions == BAND_NAMES
        assert list(src.colorinterp) == [
            ColorInterp.blue,
            ColorInterp.green,
            ColorInterp.red,
            ColorInterp.nir,
        ]
        assert src.block_shapes == [(256, 256)] * 4
        assert src.profile["compress"] == "deflate"
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        assert "TIFFTAG_DATETIME" not in src.tags()


def test_truth_raster_carries_the_schema(sample: Path, landcover6_path: Path) -> None:
    schema = load_schema(landcover6_path)
    with rasterio.open(sample / "truth.tif") as src:
        assert (src.count, src.dtypes[0], src.nodata) == (1, "uint8", 255)
        cmap = src.colormap(1)
        truth = src.read(1)
    for cls in schema.classes:
        assert cmap[cls.code][:3] == cls.rgb
    assert cmap[255][3] == 0
    schema.check_codes(truth, "truth.tif")


@pytest.mark.parametrize("seed", range(6))
def test_every_class_present_at_the_smallest_size(seed: int) -> None:
    _, truth, valid = generate_scene_arrays(256, seed)
    counts = np.bincount(truth[valid], minlength=7)
    assert all(counts[c] >= 50 for c in (WATER, TREE, CROP, BUILT, SOIL, ROAD)), counts


def test_nodata_is_a_wedge_on_an_edge_and_ignored_in_truth(arrays512) -> None:
    bands, truth, valid = arrays512
    missing = ~valid
    assert 0.005 < missing.mean() < 0.1
    assert np.array_equal((bands == 0).all(axis=0), missing)  # nodata in all bands at once
    assert not (bands[:, valid] == 0).any()
    assert (truth[missing] == 255).all()
    edges = np.r_[missing[0], missing[-1], missing[:, 0], missing[:, -1]]
    assert edges.any() and not missing[200:312, 200:312].any()


def _ndvi(bands: np.ndarray) -> np.ndarray:
    nir, red = bands[NIR].astype(np.float32), bands[R].astype(np.float32)
    return (nir - red) / np.maximum(nir + red, 1)


def test_spectra_are_plausible(arrays512) -> None:
    bands, truth, _ = arrays512
    ndvi = _ndvi(bands)
    med = {c: float(np.median(ndvi[truth == c])) for c in (WATER, TREE, CROP, BUILT, SOIL, ROAD)}
    assert med[TREE] > 0.6 and med[CROP] > 0.25
    assert min(med[TREE], med[CROP]) > max(med[BUILT], med[WATER], med[ROAD], med[SOIL])
    nir_water = np.median(bands[NIR][truth == WATER])
    assert nir_water < 0.5 * np.median(bands[NIR][truth != WATER]) and nir_water < 800
    visible = bands[:3].astype(np.float32).mean(axis=0)
    assert (
        np.median(visible[truth == BUILT])
        > np.median(visible[(truth == TREE) | (truth == CROP)]) * 1.5
    )
    soil = bands[:, truth == SOIL].astype(np.float32)
    assert np.median(soil[R]) > np.median(soil[G]) > np.median(soil[B])  # brownish red


def test_classes_are_confusable_but_learnable(arrays512) -> None:
    # The refine benchmarks need a scene a small U-Net can learn, but not from colour alone.
    bands, truth, valid = arrays512
    x = np.log(bands[:, valid].T.astype(np.float32))
    y = truth[valid]
    codes = np.unique(y)
    centroids = np.stack([x[y == c].mean(axis=0) for c in codes])
    pred = codes[np.argmin(((x[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)]
    accuracy = float((pred == y).mean())
    assert 0.4 < accuracy < 0.85, accuracy
    ndvi = _ndvi(bands)
    # some crop parcels are as green as trees; some bare soil is as bright as roofs
    assert (ndvi[truth == CROP] > np.median(ndvi[truth == TREE])).mean() > 0.02
    visible = bands[:3].astype(np.float32).mean(axis=0)
    assert (visible[truth == SOIL] > np.percentile(visible[truth == BUILT], 25)).mean() > 0.01


def test_bad_size_and_schema_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(TrustmapError, match="between 256"):
        make_sample(tmp_path, size=100)
    schema = tmp_path / "three.yaml"
    schema.write_text("classes:\n  - {code: 1, name: water, color: '#0000ff'}\nignore: 255\n")
    with pytest.raises(TrustmapError, match="lacks"):
        make_sample(tmp_path / "out", size=256, schema_path=schema)
    assert not (tmp_path / "out" / "scene.tif").exists()
