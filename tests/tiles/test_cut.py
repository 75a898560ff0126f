import os

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st

from tiles.cut import cut_scene, stitch_index
from tiles.errors import TrustmapError


def _scene(path, h, w, count=2, dtype="uint16", seed=0, nodata=0):
    data = np.random.default_rng(seed).integers(1, 1000, (count, h, w)).astype(dtype)
    prof = dict(driver="GTiff", width=w, height=h, count=count, dtype=dtype, crs="EPSG:32643",
                transform=rasterio.transform.from_origin(770000, 1430000, 1, 1), nodata=nodata)
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(data)
    return data


def test_real_landsat_round_trip(real_data, tmp_path):
    src = real_data / "RGB.byte.tif"
    res = cut_scene(src, tmp_path / "cut", size=256, overlap=48)
    index = gpd.read_file(res.index)
    assert len(index) == res.written == 16
    assert index.crs.to_epsg() == 32618
    # every tile is georeferenced on the scene grid
    with rasterio.open(src) as ds, rasterio.open(res.index.parent / index.iloc[5]["path"]) as t:
        assert t.crs == ds.crs and t.nodata == ds.nodata
        win = rasterio.windows.from_bounds(*t.bounds, transform=ds.transform)
        assert np.array_equal(t.read(), ds.read(window=win.round_offsets().round_lengths()))
    out = stitch_index(res.index, tmp_path / "back.tif")
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert np.array_equal(a.read(), b.read())
        assert a.transform == b.transform and a.crs == b.crs and a.nodata == b.nodata


def test_skip_nodata_on_the_landsat_collar(real_data, tmp_path):
    res = cut_scene(real_data / "RGB.byte.tif", tmp_path / "c", size=128, overlap=16, skip_nodata=True)
    assert res.skipped > 0
    out = stitch_index(res.index, tmp_path / "b.tif", mode="blend")
    with rasterio.open(real_data / "RGB.byte.tif") as a, rasterio.open(out) as b:
        valid = a.dataset_mask() > 0
        assert np.array_equal(a.read()[:, valid], b.read()[:, valid])


@settings(max_examples=8, deadline=None)
@given(h=st.integers(5, 130), w=st.integers(5, 130), size=st.integers(32, 80), ov=st.integers(0, 20))
def test_cut_stitch_round_trip_odd_shapes(tmp_path_factory, h, w, size, ov):
    ov = min(ov, size - 1)
    d = tmp_path_factory.mktemp("rt")
    data = _scene(d / "s.tif", h, w)
    res = cut_scene(d / "s.tif", d / "cut", size=size, overlap=ov)
    out = stitch_index(res.index, d / "back.tif")
    with rasterio.open(out) as b, rasterio.open(d / "s.tif") as a:
        assert np.array_equal(b.read(), data)
        assert b.transform == a.transform and b.crs == a.crs


def test_cog_output_validates(tmp_path):
    from rio_cogeo.cogeo import cog_validate

    _scene(tmp_path / "s.tif", 700, 600)
    res = cut_scene(tmp_path / "s.tif", tmp_path / "c", 256, 32)
    out = stitch_index(res.index, tmp_path / "cog.tif", cog=True)
    valid, errors, _ = cog_validate(str(out))
    assert valid, errors


def test_size_not_above_overlap_writes_nothing(tmp_path):
    _scene(tmp_path / "s.tif", 50, 50)
    with pytest.raises(TrustmapError, match="larger than the overlap"):
        cut_scene(tmp_path / "s.tif", tmp_path / "never", size=32, overlap=32)
    assert not (tmp_path / "never").exists()


def test_scene_without_crs_is_rejected(tmp_path):
    with rasterio.open(tmp_path / "nocrs.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as ds:
        ds.write(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(TrustmapError, match="no CRS"):
        cut_scene(tmp_path / "nocrs.tif", tmp_path / "o", 4, 0)


def unwritable_dir(tmp_path):
    """A directory we cannot write to, as root too (root ignores chmod; /sys is read-only)."""
    if os.geteuid() == 0:
        return "/sys/trustmap-unwritable"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    return ro / "x"


def test_unwritable_output_dir(tmp_path):
    _scene(tmp_path / "s.tif", 20, 20)
    with pytest.raises(TrustmapError, match="not writable|cannot create"):
        cut_scene(tmp_path / "s.tif", unwritable_dir(tmp_path), 16, 0)


def test_output_path_that_is_a_file(tmp_path):
    _scene(tmp_path / "s.tif", 20, 20)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TrustmapError, match="not a directory|cannot create"):
        cut_scene(tmp_path / "s.tif", tmp_path / "afile" / "sub", 16, 0)


def test_corrupt_index(tmp_path):
    (tmp_path / "index.gpkg").write_bytes(b"not a geopackage")
    with pytest.raises(TrustmapError, match="index"):
        stitch_index(tmp_path / "index.gpkg", tmp_path / "o.tif")
    assert not (tmp_path / "o.tif").exists()
