"""RGB quick-looks: band choice, nodata-aware stretch, decimated reads, georeferenced output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from tiles.errors import TrustmapError
from tiles.quicklook import pick_rgb_bands, write_quicklook
from tiles.samples import make_sample


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return make_sample(tmp_path_factory.mktemp("ql"), size=256, seed=1).scene


def _raster(path: Path, data: np.ndarray, **kw) -> Path:
    profile = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype.name,
        crs="EPSG:32643",
        transform=from_origin(770000, 1430000, 1, 1),
    )
    with rasterio.open(path, "w", **(profile | kw)) as dst:
        dst.write(data)
    return path


def test_sample_scene_png_and_geotiff(scene: Path, tmp_path: Path) -> None:
    ql = write_quicklook(
        scene, out_png=tmp_path / "q.png", out_tif=tmp_path / "q.tif", max_size=128
    )
    assert ql.bands == (3, 2, 1)  # from the band descriptions blue, green, red, nir
    assert ql.shape == (128, 128)
    png = np.asarray(Image.open(ql.png))
    assert png.shape == (128, 128, 4) and png.dtype == np.uint8
    with rasterio.open(scene) as src:
        valid = src.dataset_mask(out_shape=(128, 128)) > 0
        bounds, crs = src.bounds, src.crs
    assert np.array_equal(png[..., 3] == 255, valid)  # the nodata wedge is transparent
    with rasterio.open(ql.tif) as dst:
        assert (dst.count, dst.dtypes[0], dst.nodata) == (3, "uint8", 0)
        assert (dst.width, dst.height, dst.crs) == (128, 128, crs)
        assert dst.bounds == pytest.approx(bounds)
        rgb = dst.read()
    assert (rgb[:, valid] > 0).all() and (rgb[:, ~valid] == 0).all()
    assert np.abs(rgb[:, valid].astype(int) - png[valid, :3].T).max() <= 1  # same picture


def test_rgb_byte_landsat_with_nodata_collar(real_data: Path, tmp_path: Path) -> None:
    src_path = real_data / "RGB.byte.tif"
    ql = write_quicklook(src_path, out_png=tmp_path / "l.png", out_tif=tmp_path / "l.tif")
    assert ql.bands == (1, 2, 3)
    with rasterio.open(src_path) as src:
        assert ql.shape == (src.height, src.width)  # small enough: full resolution
        valid = src.dataset_mask() > 0
        crs, transform = src.crs, src.transform
    png = np.asarray(Image.open(ql.png))
    assert np.array_equal(png[..., 3] > 0, valid)
    # The collar (a third of the raster) must not pin the stretch: ~2 % of valid pixels clip to 0.
    for band in range(3):
        v = png[..., band][valid]
        assert 0.005 < (v == 0).mean() < 0.08 and 0.005 < (v == 255).mean() < 0.08
    with rasterio.open(ql.tif) as dst:
        assert dst.crs == crs and dst.transform.almost_equals(transform)


def test_decimated_read_keeps_the_extent(real_data: Path, tmp_path: Path) -> None:
    src_path = real_data / "RGB.byte.tif"
    ql = write_quicklook(src_path, out_tif=tmp_path / "small.tif", max_size=200)
    assert ql.png is None and max(ql.shape) == 200
    with rasterio.open(src_path) as src, rasterio.open(ql.tif) as dst:
        assert (dst.height, dst.width) == ql.shape
        assert dst.bounds == pytest.approx(src.bounds)


def test_default_output_is_a_png_beside_the_scene(scene: Path) -> None:
    ql = write_quicklook(scene, max_size=64)
    assert ql.png == scene.with_name("scene.quicklook.png") and ql.png.exists() and ql.tif is None


def test_band_choice_without_metadata(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    four = _raster(tmp_path / "four.tif", rng.integers(1, 999, (4, 20, 30), dtype=np.uint16))
    three = _raster(
        tmp_path / "three.tif",
        rng.integers(1, 255, (3, 20, 30), dtype=np.uint8),
        photometric="MINISBLACK",
    )
    one = _raster(tmp_path / "one.tif", rng.integers(1, 255, (1, 20, 30), dtype=np.uint8))
    for path, expected in ((four, (3, 2, 1)), (three, (1, 2, 3)), (one, (1, 1, 1))):
        with rasterio.open(path) as src:
            assert pick_rgb_bands(src) == expected
    ql = write_quicklook(one, out_png=tmp_path / "grey.png")
    png = np.asarray(Image.open(ql.png))
    assert (png[..., 0] == png[..., 1]).all() and (png[..., 1] == png[..., 2]).all()
    ql = write_quicklook(four, out_png=tmp_path / "nir.png", bands=[4, 3, 2])
    assert ql.bands == (4, 3, 2)


def test_band_descriptions_win_over_band_order(tmp_path: Path) -> None:
    path = _raster(tmp_path / "rgbn.tif", np.ones((4, 8, 8), np.uint16))
    with rasterio.open(path, "r+") as dst:
        dst.descriptions = ("Red", "Green", "Blue", "NIR")
    with rasterio.open(path) as src:
        assert pick_rgb_bands(src) == (1, 2, 3)


def test_user_errors(tmp_path: Path, scene: Path) -> None:
    with pytest.raises(TrustmapError, match="not found"):
        write_quicklook(tmp_path / "missing.tif")
    junk = tmp_path / "notes.tif"
    junk.write_text("not a raster")
    with pytest.raises(TrustmapError, match="notes.tif"):
        write_quicklook(junk)
    with pytest.raises(TrustmapError, match=r"band\(s\) \[7\]"):
        write_quicklook(scene, out_png=tmp_path / "x.png", bands=[7, 2, 1])
    with pytest.raises(TrustmapError, match="3 bands"):
        write_quicklook(scene, out_png=tmp_path / "x.png", bands=[1, 2])
    assert not (tmp_path / "x.png").exists()
