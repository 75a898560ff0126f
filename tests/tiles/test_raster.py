import json
from pathlib import Path

import pytest

from tiles.errors import TrustmapError
from tiles.raster import format_info, open_raster, scene_info


def test_info_on_real_landsat(real_data):
    info = scene_info(real_data / "RGB.byte.tif")
    assert (info["width"], info["height"], info["count"]) == (791, 718, 3)
    assert info["crs"] == "EPSG:32618" and info["nodata"] == 0
    assert info["dtypes"] == ["uint8"] * 3
    assert info["res"][0] == pytest.approx(300.0379, abs=1e-3)
    assert info["bounds"][0] == pytest.approx(101985.0)
    assert info["block_shapes"][0] == [3, 791]
    json.dumps(info)  # JSON-able
    text = format_info(info)
    assert "UTM zone 18N" in text and "791 x 718" in text


def test_missing_file(tmp_path):
    with pytest.raises(TrustmapError, match="file not found") as e:
        open_raster(tmp_path / "nope.tif")
    assert "nope.tif" in str(e.value)


def test_non_raster_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(TrustmapError, match="not a readable raster"):
        open_raster(p)


def test_truncated_geotiff(real_data, tmp_path):
    data = (real_data / "RGB.byte.tif").read_bytes()
    p = tmp_path / "trunc.tif"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrustmapError, match="trunc.tif"):
        open_raster(p)


def test_truncated_tiled_geotiff_fails_on_block_probe(tmp_path):
    import numpy as np
    import rasterio

    p = tmp_path / "tiled.tif"
    with rasterio.open(p, "w", driver="GTiff", width=512, height=512, count=1, dtype="uint16", tiled=True,
                       blockxsize=256, blockysize=256, crs="EPSG:32643",
                       transform=rasterio.transform.from_origin(0, 512, 1, 1)) as ds:
        ds.write(np.random.default_rng(0).integers(0, 60000, (1, 512, 512)).astype("uint16"))
    raw = p.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: int(len(raw) * 0.8)])
    with pytest.raises(TrustmapError, match="cut.tif: (corrupt or truncated|not a readable)"):
        open_raster(cut)


def test_directory_is_not_a_raster(tmp_path):
    with pytest.raises(TrustmapError, match="directory"):
        open_raster(tmp_path)


def test_info_keys_and_values_are_rio_infos(real_data):
    """Every key rio info prints has the same value here (JSON-encoded as rio does)."""
    from click.testing import CliRunner
    from rasterio.rio.main import main_group

    rio = json.loads(CliRunner().invoke(main_group, ["info", str(real_data / "RGB.byte.tif")]).output)
    ours = json.loads(json.dumps(scene_info(real_data / "RGB.byte.tif")))
    for key in ("crs", "transform", "res", "bounds", "dtype", "count", "width", "height", "nodata", "lnglat"):
        assert key in ours, key
    assert {k: ours[k] for k in rio} == rio
    assert {"path", "crs_name", "dtypes", "block_shapes", "overviews"} <= set(ours)


@pytest.mark.parametrize(
    ("path", "gdal"),
    [
        ("/vsizip/a.zip/b.tif", True),
        ("/vsicurl/https://example.com/a.tif", True),
        ("https://example.com/a.tif", True),
        ("s3://bucket/a.tif", True),
        ("scene.tif", False),
        ("/data/vsi/a.tif", False),
        ("C:/data/a.tif", False),
    ],
)
def test_gdal_paths_are_told_from_local_files(path, gdal):
    from tiles.raster import dataset_path, is_gdal_path

    assert is_gdal_path(path) is gdal
    assert dataset_path(path) == (path if gdal else Path(path))


def test_url_is_not_mangled_and_a_failed_open_names_it():
    url = "https://127.0.0.1:9/nothing-here.tif"  # port 9 (discard): refused at once
    with pytest.raises(TrustmapError) as e:
        open_raster(url)
    assert str(e.value).startswith(url + ": cannot open this GDAL path or URL (")


def test_vsizip_scene_opens(real_data, tmp_path):
    import zipfile

    z = tmp_path / "scene.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(real_data / "RGB.byte.tif", "inner/RGB.byte.tif")
    info = scene_info(f"/vsizip/{z}/inner/RGB.byte.tif")
    assert info["width"] == 791 and info["path"] == f"/vsizip/{z}/inner/RGB.byte.tif"
    with pytest.raises(TrustmapError, match=r"/vsizip/.*/inner/nope\.tif: cannot open"):
        open_raster(f"/vsizip/{z}/inner/nope.tif")
