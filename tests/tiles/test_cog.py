"""COG writing: layout validated by rio-cogeo, colour table, nodata, NEAREST overviews."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from tiles.classes import load_schema
from tiles.cog import translate_to_cog, validate_cog, write_class_cog
from tiles.errors import TrustmapError

SCHEMA = load_schema(Path(__file__).parents[2] / "configs/classes/landcover6.yaml")
BLOCK = 128  # small blocks so a 512 px raster gets internal overviews


def _write(path: Path, data: np.ndarray, nodata=None, **extra) -> Path:
    data = data if data.ndim == 3 else data[None]
    profile = dict(
        driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
        dtype=data.dtype, crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 4000000),
        nodata=nodata, **extra,
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def _checkerboard(size: int = 512) -> np.ndarray:
    """Codes 1 and 3 alternating per pixel: an averaging overview would invent code 2."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.where((yy + xx) % 2 == 0, 1, 3).astype(np.uint8)
    mask[:, : size // 4] = SCHEMA.ignore
    return mask


def test_class_cog_layout_palette_nodata_and_nearest_overviews(tmp_path: Path) -> None:
    mask = _checkerboard()
    src = _write(tmp_path / "mask.tif", mask)  # striped, uncompressed, no colour table
    out = write_class_cog(src, tmp_path / "out" / "classes.tif", SCHEMA, blocksize=BLOCK)

    valid, errors, _ = cog_validate(str(out))
    assert valid, errors
    with rasterio.open(out) as ds:
        assert ds.dtypes == ("uint8",) and ds.nodata == SCHEMA.ignore
        assert ds.block_shapes == [(BLOCK, BLOCK)] and ds.overviews(1) == [2, 4]
        np.testing.assert_array_equal(ds.read(1), mask)
        cmap = ds.colormap(1)
        for c in SCHEMA.classes:
            assert cmap[c.code] == (*c.rgb, 255)
        assert cmap[SCHEMA.ignore][3] == 0  # ignore is transparent
    with rasterio.open(out, overview_level=0) as ov:
        assert set(np.unique(ov.read(1)).tolist()) <= {1, 3, SCHEMA.ignore}
    # the staging folder next to the output is gone
    assert sorted(p.name for p in out.parent.iterdir()) == ["classes.tif"]


def test_average_overviews_would_invent_codes(tmp_path: Path) -> None:
    """Guards the test above: the checkerboard does tell NEAREST from AVERAGE apart."""
    src = _write(tmp_path / "mask.tif", _checkerboard())
    out = translate_to_cog(src, tmp_path / "avg.tif", resampling="average", blocksize=BLOCK)
    with rasterio.open(out, overview_level=0) as ov:
        assert 2 in np.unique(ov.read(1))


def test_source_nodata_becomes_ignore(tmp_path: Path) -> None:
    mask = np.full((64, 64), 2, np.uint8)
    mask[:10] = 0  # the file declares 0 as nodata; 0 is not a class code
    src = _write(tmp_path / "mask.tif", mask, nodata=0)
    out = write_class_cog(src, tmp_path / "classes.tif", SCHEMA, blocksize=BLOCK)
    with rasterio.open(out) as ds:
        data = ds.read(1)
    assert (data[:10] == SCHEMA.ignore).all() and (data[10:] == 2).all()


def test_int16_mask_is_written_as_uint8(tmp_path: Path) -> None:
    mask = np.full((40, 50), 4, np.int16)
    mask[5:9, 5:9] = 6
    out = write_class_cog(_write(tmp_path / "m.tif", mask), tmp_path / "c.tif", SCHEMA)
    with rasterio.open(out) as ds:
        assert ds.dtypes == ("uint8",)
        np.testing.assert_array_equal(ds.read(1), mask)


def test_unknown_codes_are_all_named_and_nothing_is_written(tmp_path: Path) -> None:
    mask = np.full((300, 300), 1, np.uint8)
    mask[0, 0] = 7  # first block
    mask[299, 299] = 9  # last block: the scan goes on after the first bad block
    src = _write(tmp_path / "bad.tif", mask)
    out_dir = tmp_path / "out"
    with pytest.raises(TrustmapError) as err:
        write_class_cog(src, out_dir / "classes.tif", SCHEMA, blocksize=BLOCK)
    assert "[7, 9]" in str(err.value) and str(src) in str(err.value)
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (np.ones((2, 20, 20), np.uint8), r"m.tif: a class mask must have one band, this raster has 2 \(one class code per pixel\)"),
        (np.ones((20, 20), np.float32), r"m.tif: a class mask must hold integer class codes \(uint8\), this raster is float32"),
    ],
)
def test_mask_shape_and_type_errors(tmp_path: Path, data: np.ndarray, problem: str) -> None:
    src = _write(tmp_path / "m.tif", data)
    with pytest.raises(TrustmapError, match=problem):
        write_class_cog(src, tmp_path / "c.tif", SCHEMA)
    assert not (tmp_path / "c.tif").exists()


def test_continuous_cog_with_predictor(tmp_path: Path) -> None:
    yy, xx = np.mgrid[:300, :300]
    data = (np.sin(xx / 20.0) * np.cos(yy / 30.0)).astype(np.float32)
    src = _write(tmp_path / "prob.tif", data)
    out = translate_to_cog(src, tmp_path / "prob_cog.tif", resampling="average", predictor=True,
                           blocksize=BLOCK)  # fmt: skip
    validate_cog(out)
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1), data)
        assert ds.overviews(1)  # averaged overviews were built


def test_validate_cog_rejects_a_plain_geotiff(tmp_path: Path) -> None:
    plain = _write(tmp_path / "plain.tif", np.zeros((600, 600), np.uint8))
    with pytest.raises(TrustmapError, match="not a valid Cloud Optimized GeoTIFF") as err:
        validate_cog(plain)
    assert str(plain) in str(err.value)
