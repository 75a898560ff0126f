"""Vectorizing class masks: windowed polygons equal whole-raster ones; filters, simplify, GPKG."""

from __future__ import annotations

import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from tiles.errors import TrustmapError
from tiles.vectorize import polygon_areas, vectorize_mask, write_polygons

CRS = "EPSG:32618"
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)  # 10 m pixels, 100 m² each


def per_class(gdf: gpd.GeoDataFrame) -> dict[int, tuple[int, float]]:
    """Polygon count and total area per class code."""
    return {int(code): (len(g), float(g["area"].sum())) for code, g in gdf.groupby("code")}


def assert_same_polygons(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> None:
    """Same classes, same number of polygons per class, same areas and the same shapes."""
    assert per_class(a).keys() == per_class(b).keys()
    for code in per_class(a):
        ga, gb = a[a.code == code], b[b.code == code]
        assert len(ga) == len(gb)
        np.testing.assert_allclose(np.sort(ga["area"]), np.sort(gb["area"]), rtol=1e-12)
        assert (
            shapely.union_all(ga.geometry.values)
            .symmetric_difference(shapely.union_all(gb.geometry.values))
            .area
            == 0
        )


def expected_counts(mask: np.ndarray, valid: np.ndarray, codes) -> dict[int, tuple[int, float]]:
    """Per class: number of 4-connected regions and their area, straight from the pixels."""
    out = {}
    for code in codes:
        pixels = valid & (mask == code)
        if pixels.any():
            out[code] = (int(ndimage.label(pixels)[1]), float(pixels.sum() * 100.0))
    return out


@settings(max_examples=30, deadline=None)
@given(
    mask=arrays(
        np.uint8,
        st.tuples(st.integers(1, 20), st.integers(1, 20)),
        elements=st.sampled_from([1, 2, 3, 255]),
    ),
    window=st.integers(2, 9),
    nodata_row=st.integers(0, 25),
)
def test_windowed_vectorization_equals_whole_raster(
    schema, raster_writer, mask, window, nodata_row
):
    """Polygons cut by windows and merged back are exactly those of the whole raster."""
    data = mask.copy()
    valid = data != schema.ignore
    if nodata_row < data.shape[0]:  # a row of the mask's own nodata (0, not a class code)
        data[nodata_row] = 0
        valid[nodata_row] = False
    with tempfile.TemporaryDirectory() as tmp:
        path = raster_writer(Path(tmp) / "mask.tif", data, CRS, TRANSFORM, nodata=0)
        whole = vectorize_mask(path, schema, window_size=64, progress=False)
        tiled = vectorize_mask(path, schema, window_size=window, progress=False)

    assert_same_polygons(tiled, whole)
    assert per_class(tiled) == expected_counts(data, valid, schema.codes)
    assert tiled.geometry.is_valid.all() and (tiled.geom_type == "Polygon").all()
    assert list(tiled.columns) == ["code", "name", "area", "geometry"]
    assert tiled.crs == CRS


def test_real_mask_from_rgb_byte(schema, rgb_byte, tmp_path):
    """RGB.byte.tif thresholded into 3 classes, nodata collar excluded, in UTM 18N."""
    with rasterio.open(rgb_byte) as src:
        band, valid, profile = src.read(1), src.dataset_mask() > 0, src.profile
    band = ndimage.median_filter(band, size=5)  # fewer, larger regions: keeps the test quick
    mask = (np.digitize(band, [60, 120]) + 1).astype(np.uint8)
    mask[~valid] = schema.ignore
    profile.update(count=1, dtype="uint8", nodata=schema.ignore)
    path = tmp_path / "mask.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mask, 1)

    tiled = vectorize_mask(path, schema, window_size=200, progress=False)
    whole = vectorize_mask(path, schema, window_size=1024, progress=False)

    assert_same_polygons(tiled, whole)
    assert tiled.crs == profile["crs"]
    pixel_area = abs(profile["transform"].determinant)
    for code, (count, area) in per_class(tiled).items():
        assert count == ndimage.label(valid & (mask == code))[1]
        assert area == pytest.approx((valid & (mask == code)).sum() * pixel_area, rel=1e-9)
    assert set(tiled["name"]) == {"water", "tree", "grass/crop"}
    # nothing drawn over the nodata collar
    assert tiled["area"].sum() == pytest.approx(valid.sum() * pixel_area, rel=1e-9)


@pytest.fixture
def blobs(make_raster):
    """Three classes: a large and a small water body, a tree patch, one isolated road pixel."""
    data = np.full((20, 30), 255, dtype=np.uint8)
    data[2:12, 2:14] = 1  # 120 px
    data[15:17, 20:22] = 1  # 4 px
    data[2:10, 16:28] = 2  # 96 px, touching nothing
    data[18, 2] = 6  # 1 px
    return make_raster("blobs.tif", data, transform=TRANSFORM)


def test_min_area_and_min_pixels_drop_small_polygons(schema, blobs):
    every = vectorize_mask(blobs, schema, progress=False)
    assert sorted(every["area"]) == [100.0, 400.0, 9600.0, 12000.0]
    by_area = vectorize_mask(blobs, schema, min_area=500.0, progress=False)
    assert sorted(by_area["area"]) == [9600.0, 12000.0]
    by_pixels = vectorize_mask(blobs, schema, min_pixels=4, progress=False)
    assert sorted(by_pixels["area"]) == [400.0, 9600.0, 12000.0]
    assert list(every["code"]) == [1, 1, 2, 6]  # ordered by code, then position
    assert list(every["name"]) == ["water", "water", "tree", "road"]


def test_simplify_keeps_a_gap_free_valid_coverage(schema, make_raster):
    rng = np.random.default_rng(3)
    noisy = ndimage.zoom(rng.integers(1, 4, size=(8, 8)), 6, order=0).astype(np.uint8)
    noisy = np.where(ndimage.uniform_filter(rng.random(noisy.shape), 3) > 0.45, noisy, 1).astype(
        np.uint8
    )
    path = make_raster("noisy.tif", noisy, transform=TRANSFORM)
    exact = vectorize_mask(path, schema, window_size=16, progress=False)
    simple = vectorize_mask(path, schema, window_size=16, simplify=15.0, progress=False)

    assert len(simple) == len(exact)
    assert simple.geometry.is_valid.all()
    assert shapely.coverage_is_valid(simple.geometry.values)  # neighbours still share edges
    assert (
        shapely.get_num_coordinates(simple.geometry.values).sum()
        < shapely.get_num_coordinates(exact.geometry.values).sum()
    )
    # the outline of the whole mask is simplified too, but no gaps or overlaps open inside it
    union = shapely.union_all(simple.geometry.values)
    assert union.area == pytest.approx(simple["area"].sum(), rel=1e-9)
    assert simple["area"].sum() == pytest.approx(exact["area"].sum(), rel=0.05)


def test_unknown_codes_are_named(schema, make_raster):
    data = np.ones((10, 10), dtype=np.uint8)
    data[4, 4] = 42
    path = make_raster("bad.tif", data, transform=TRANSFORM)
    with pytest.raises(TrustmapError, match=r"unknown class code\(s\) \[42\]") as err:
        vectorize_mask(path, schema, progress=False)
    assert err.value.path == str(path)


def test_mask_must_be_single_band_integer_and_georeferenced(schema, make_raster):
    with pytest.raises(TrustmapError, match="must have one band, this raster has 2"):
        vectorize_mask(
            make_raster("two.tif", np.ones((2, 5, 5), dtype=np.uint8)), schema, progress=False
        )
    with pytest.raises(TrustmapError, match="must hold integer class codes .uint8., this raster is float32"):
        vectorize_mask(
            make_raster("float.tif", np.ones((5, 5), dtype=np.float32)), schema, progress=False
        )
    with pytest.raises(TrustmapError, match="has no CRS"):
        vectorize_mask(
            make_raster("nocrs.tif", np.ones((5, 5), dtype=np.uint8), crs=None),
            schema,
            progress=False,
        )
    with pytest.raises(TrustmapError, match="file not found"):
        vectorize_mask(Path("/nonexistent/mask.tif"), schema, progress=False)


def test_an_all_ignore_mask_gives_an_empty_table(schema, make_raster, tmp_path):
    path = make_raster("empty.tif", np.full((6, 6), 255, dtype=np.uint8), transform=TRANSFORM)
    gdf = vectorize_mask(path, schema, progress=False)
    assert len(gdf) == 0 and list(gdf.columns) == ["code", "name", "area", "geometry"]
    out = write_polygons(gdf, tmp_path / "empty.gpkg")
    back = gpd.read_file(out, layer="polygons")
    assert len(back) == 0 and back.crs == CRS


def test_write_polygons_round_trips_a_geopackage(schema, blobs, tmp_path):
    gdf = vectorize_mask(blobs, schema, progress=False)
    out = write_polygons(gdf, tmp_path / "out" / "polygons.gpkg", layer="classes")
    assert out == tmp_path / "out" / "polygons.gpkg"
    back = gpd.read_file(out, layer="classes")
    assert list(back.columns) == ["code", "name", "area", "geometry"]
    assert back.crs == CRS and (back.geom_type == "Polygon").all()
    assert (
        back["code"].tolist() == gdf["code"].tolist()
        and back["name"].tolist() == gdf["name"].tolist()
    )
    assert back.geometry.geom_equals(gdf.geometry).all()
    assert sorted(p.name for p in out.parent.iterdir()) == ["polygons.gpkg"]  # no temporaries left


def test_write_polygons_wants_a_gpkg_name(schema, blobs, tmp_path):
    gdf = vectorize_mask(blobs, schema, progress=False)
    with pytest.raises(TrustmapError, match="use a .gpkg file name"):
        write_polygons(gdf, tmp_path / "polygons.shp")


def test_areas_are_geodesic_square_metres_in_a_geographic_crs():
    one_degree = shapely.box(0.0, 0.0, 1.0, 1.0)  # at the equator: about 111.3 km x 110.6 km
    area = polygon_areas(np.array([one_degree]), "EPSG:4326")[0]
    assert area == pytest.approx(12_308e6, rel=0.01)
    assert polygon_areas(np.array([one_degree]), CRS)[0] == 1.0  # projected: map units²


@settings(max_examples=40, deadline=None)
@given(
    ids=arrays(np.int32, st.tuples(st.integers(1, 20), st.integers(1, 20)), elements=st.integers(-1, 3)),
    x0=st.floats(-1e5, 1e5),
    res=st.sampled_from([0.5, 1.0, 30.0]),
)
def test_region_polygons_burn_back_to_exactly_their_pixels(ids, x0, res) -> None:
    from rasterio.features import geometry_mask

    from tiles.vectorize import region_polygon

    transform = Affine(res, 0, x0, 0, -res, 5e6)
    for region in np.unique(ids[ids >= 0]):
        rows, cols = np.nonzero(ids == region)
        bbox = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
        geom = region_polygon(ids, int(region), bbox, transform)
        assert geom is not None and geom.is_valid and geom.geom_type == "MultiPolygon"
        assert geom.area == pytest.approx((ids == region).sum() * res * res)
        burnt = geometry_mask([geom], ids.shape, transform, invert=True)
        np.testing.assert_array_equal(burnt, ids == region)
    assert region_polygon(ids, 99, (0, 0, ids.shape[0], ids.shape[1]), transform) is None
