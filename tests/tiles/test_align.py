"""Label alignment: rasters reprojected and vectors rasterized onto the scene grid."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rasterio.features import rasterize
from rasterio.warp import calculate_default_transform, reproject
from rasterio.windows import Window

from tiles.align import LabelSource, SceneGrid, align_labels
from tiles.errors import TrustmapError


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture
def shape(scene_grid) -> tuple[int, int]:
    return scene_grid.height, scene_grid.width


@pytest.fixture
def corner(scene_grid) -> tuple[float, float, float]:
    """Upper-left x, y and pixel size of the test scene."""
    return scene_grid.bounds[0], scene_grid.bounds[3], scene_grid.transform.a


# --- rasters ---------------------------------------------------------------------------------


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    blocks=arrays(
        np.uint8,
        st.tuples(st.integers(1, 12), st.integers(1, 12)),
        elements=st.sampled_from([1, 2, 3, 6, 255]),
    ),
    shift=st.tuples(st.integers(-12, 12), st.integers(-12, 12)),
    factor=st.sampled_from([1, 2, 3]),
)
def test_nearest_alignment_is_exact_on_a_shifted_finer_grid(
    schema, raster_writer, blocks, shift, factor
):
    """A label raster whose k x k blocks sit on scene pixels comes back exactly, shifted."""
    drow, dcol = shift
    res = 30.0
    grid = SceneGrid("EPSG:32618", Affine(res, 0, 0, 0, -res, 0), width=10, height=8)
    fine = np.kron(blocks, np.ones((factor, factor), dtype=np.uint8))
    transform = Affine(res / factor, 0, dcol * res, 0, -res / factor, -drow * res)
    expected = np.full((grid.height, grid.width), schema.ignore, dtype=np.uint8)
    rows = slice(max(drow, 0), min(drow + blocks.shape[0], grid.height))
    cols = slice(max(dcol, 0), min(dcol + blocks.shape[1], grid.width))
    overlaps = rows.start < rows.stop and cols.start < cols.stop
    if overlaps:
        expected[rows, cols] = blocks[
            rows.start - drow : rows.stop - drow, cols.start - dcol : cols.stop - dcol
        ]

    with tempfile.TemporaryDirectory() as tmp:
        src = raster_writer(Path(tmp) / "labels.tif", fine, "EPSG:32618", transform)
        if not overlaps:
            with pytest.raises(TrustmapError, match="does not overlap the scene"):
                align_labels(src, grid, schema, Path(tmp) / "out.tif", progress=False)
            return
        report = align_labels(
            src, grid, schema, Path(tmp) / "out.tif", tile_size=16, progress=False
        )
        out = read(Path(tmp) / "out.tif")

    np.testing.assert_array_equal(out, expected)
    covered = (rows.stop - rows.start) * (cols.stop - cols.start) / (grid.height * grid.width)
    assert report.covered == pytest.approx(covered, abs=1e-9)
    assert report.counts == {
        int(c): int(n) for c, n in zip(*np.unique(expected, return_counts=True), strict=True)
    }
    assert report.labelled_fraction == pytest.approx(np.mean(expected != schema.ignore))
    assert (covered < 0.9995) == any("labels cover" in w for w in report.warnings)


def test_raster_in_another_crs_matches_the_truth(
    schema, label_raster, scene_path, truth_labels, tmp_path
):
    report = align_labels(
        label_raster, scene_path, schema, tmp_path / "aligned.tif", progress=False
    )
    out = read(tmp_path / "aligned.tif")
    assert report.kind == "raster" and report.covered > 0.99
    # the label raster's nodata stripe along the top became ignore ...
    assert (out[0] == schema.ignore).all()
    # ... and everywhere else the classes agree with burning the polygons directly
    labelled = out != schema.ignore
    assert labelled.mean() > 0.8
    assert (out[labelled] == truth_labels[labelled]).mean() > 0.97


def test_output_is_a_tiled_deflated_coloured_uint8_geotiff_on_the_scene_grid(
    schema, label_raster, scene_path, tmp_path
):
    align_labels(label_raster, scene_path, schema, tmp_path / "a.tif", progress=False)
    with rasterio.open(tmp_path / "a.tif") as out, rasterio.open(scene_path) as scene:
        assert (out.crs, out.transform, out.shape) == (scene.crs, scene.transform, scene.shape)
        assert out.dtypes == ("uint8",) and out.count == 1 and out.nodata == schema.ignore
        assert out.profile["tiled"] and out.compression.value == "DEFLATE"
        cmap = out.colormap(1)
        assert all(cmap[code] == rgba for code, rgba in schema.colormap().items())
    assert [p.name for p in tmp_path.iterdir()] == ["a.tif"]  # no temporaries left


def test_window_size_does_not_change_the_result(schema, label_raster, scene_path, tmp_path):
    align_labels(
        label_raster, scene_path, schema, tmp_path / "big.tif", tile_size=1024, progress=False
    )
    align_labels(
        label_raster, scene_path, schema, tmp_path / "small.tif", tile_size=16, progress=False
    )
    np.testing.assert_array_equal(read(tmp_path / "big.tif"), read(tmp_path / "small.tif"))


def test_read_is_a_pure_function_of_the_window(schema, label_raster, scene_path, shape):
    source = LabelSource.open(label_raster, scene_path, schema)
    whole = source.read(Window(0, 0, shape[1], shape[0]))
    part = Window(17, 5, 20, 30)
    np.testing.assert_array_equal(source.read(part), whole[part.toslices()])


@pytest.mark.parametrize("kind", ["raster", "vector"])
def test_sources_survive_pickling_for_other_workers(
    schema, label_raster, vector_labels, scene_path, kind
):
    source = LabelSource.open(
        label_raster if kind == "raster" else vector_labels, scene_path, schema
    )
    window = Window(8, 8, 24, 16)
    copy = pickle.loads(pickle.dumps(source))
    assert copy.kind == kind
    np.testing.assert_array_equal(copy.read(window), source.read(window))


def test_nodata_of_a_wider_integer_raster_maps_to_ignore(
    schema, make_raster, scene_profile, shape, tmp_path
):
    data = np.full(shape, 3, dtype=np.int16)
    data[:, :10] = -9999
    src = make_raster("int16.tif", data, nodata=-9999)
    report = align_labels(src, scene_profile, schema, tmp_path / "out.tif", progress=False)
    out = read(tmp_path / "out.tif")
    assert (out[:, :10] == schema.ignore).all() and (out[:, 10:] == 3).all()
    assert report.counts == {3: data[:, 10:].size, schema.ignore: data[:, :10].size}


def test_partial_overlap_is_reported_with_the_covered_fraction(
    schema, make_raster, scene_profile, shape, tmp_path
):
    width = shape[1] * 5 // 8
    src = make_raster("left.tif", np.full((shape[0], width), 2, dtype=np.uint8))
    report = align_labels(src, scene_profile, schema, tmp_path / "out.tif", progress=False)
    assert report.covered == pytest.approx(0.625)
    assert "labels cover 62.5% of the scene" in report.warnings
    summary = report.summary(schema)
    assert "tree" in summary and "(ignore)" in summary and "warning: labels cover 62.5%" in summary
    assert report.to_dict()["counts"] == {
        "2": shape[0] * width,
        "255": shape[0] * (shape[1] - width),
    }
    assert report.counts == {2: shape[0] * width, schema.ignore: shape[0] * (shape[1] - width)}


def test_disjoint_raster_names_the_file_and_both_extents(
    schema, make_raster, scene_profile, corner, tmp_path
):
    x0, y0, res = corner
    far = Affine(res, 0, x0 + 1e5, 0, -res, y0)
    src = make_raster("far.tif", np.ones((8, 8), dtype=np.uint8), transform=far)
    with pytest.raises(TrustmapError, match="does not overlap the scene") as err:
        align_labels(src, scene_profile, schema, tmp_path / "out.tif", progress=False)
    msg = str(err.value)
    assert msg.startswith(str(src)) and "400000" in msg and "300000" in msg and "EPSG:32618" in msg
    assert not (tmp_path / "out.tif").exists()


def test_label_raster_without_crs_is_named(schema, make_raster, scene_profile, shape, tmp_path):
    src = make_raster("nocrs.tif", np.ones(shape, dtype=np.uint8), crs=None)
    with pytest.raises(TrustmapError, match="has no CRS") as err:
        align_labels(src, scene_profile, schema, tmp_path / "out.tif", progress=False)
    assert err.value.path == str(src)


def test_scene_without_crs_is_named(schema, make_raster, label_raster, shape, tmp_path):
    scene = make_raster("scene_nocrs.tif", np.zeros((3, *shape), dtype=np.uint8), crs=None)
    with pytest.raises(TrustmapError, match="has no CRS") as err:
        align_labels(label_raster, scene, schema, tmp_path / "out.tif", progress=False)
    assert err.value.path == str(scene)


def test_unknown_codes_in_a_raster_are_named(schema, make_raster, scene_profile, shape, tmp_path):
    data = np.full(shape, 1, dtype=np.uint8)
    data[3, 3], data[4, 4] = 9, 200
    src = make_raster("codes.tif", data)
    with pytest.raises(TrustmapError, match=r"unknown class code\(s\) \[9, 200\]") as err:
        align_labels(src, scene_profile, schema, tmp_path / "out.tif", progress=False)
    assert err.value.path == str(src)


def test_large_rasters_have_their_codes_checked_window_by_window(
    schema, make_raster, scene_profile, shape, tmp_path, monkeypatch
):
    monkeypatch.setattr("tiles.align.EAGER_CODE_CHECK_PIXELS", 0)  # as if too big to scan
    data = np.full(shape, 1, dtype=np.uint8)
    data[-1, -1] = 77
    src = make_raster("late.tif", data)
    with pytest.raises(TrustmapError, match=r"unknown class code\(s\) \[77\]"):
        align_labels(src, scene_profile, schema, tmp_path / "out.tif", tile_size=16, progress=False)
    assert list(tmp_path.iterdir()) == [src]  # no partial output


@pytest.mark.parametrize(
    ("bands", "dtype", "message"),
    [(2, np.uint8, "bad.tif: a label raster must have one band, this raster has 2"),
     (1, np.float32, "bad.tif: a label raster must hold integer class codes .*, this raster is float32")],
)  # fmt: skip
def test_label_raster_must_be_one_band_of_integers(
    schema, make_raster, scene_profile, shape, bands, dtype, message
):
    src = make_raster("bad.tif", np.ones((bands, *shape), dtype=dtype))
    with pytest.raises(TrustmapError, match=message):
        LabelSource.open(src, scene_profile, schema)


def test_missing_or_unreadable_label_files(schema, scene_profile, tmp_path):
    with pytest.raises(TrustmapError, match="label file not found"):
        LabelSource.open(tmp_path / "nope.tif", scene_profile, schema)
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    with pytest.raises(TrustmapError, match="not a readable raster"):
        LabelSource.open(junk, scene_profile, schema)
    (tmp_path / "junk.gpkg").write_text("not a geopackage")
    with pytest.raises(TrustmapError, match="not a readable vector file"):
        LabelSource.open(tmp_path / "junk.gpkg", scene_profile, schema)


def test_real_mask_aligned_onto_a_reprojected_grid(schema, rgb_byte, tmp_path):
    """RGB.byte.tif thresholded into classes, its nodata collar as ignore, onto a Web Mercator grid."""
    with rasterio.open(rgb_byte) as src:
        band, valid, profile = src.read(1), src.dataset_mask() > 0, src.profile
    mask = (np.digitize(band, [60, 120]) + 1).astype(np.uint8)
    mask[~valid] = 0
    profile.update(count=1, dtype="uint8", nodata=0)
    label = tmp_path / "mask.tif"
    with rasterio.open(label, "w", **profile) as dst:
        dst.write(mask, 1)
    transform, width, height = calculate_default_transform(
        profile["crs"],
        "EPSG:3857",
        profile["width"],
        profile["height"],
        *rasterio.open(label).bounds,
    )
    grid = {"crs": "EPSG:3857", "transform": transform, "width": width, "height": height}

    report = align_labels(
        label, grid, schema, tmp_path / "aligned.tif", tile_size=256, progress=False
    )
    out = read(tmp_path / "aligned.tif")

    # nearly the same pixels as GDAL's whole-raster nearest reprojection (which approximates
    # the transform to 1/8 px, so a few pixels on class edges differ)
    reference = np.full((height, width), schema.ignore, dtype=np.uint8)
    reproject(
        mask,
        reference,
        src_transform=profile["transform"],
        src_crs=profile["crs"],
        src_nodata=0,
        dst_transform=transform,
        dst_crs="EPSG:3857",
        dst_nodata=schema.ignore,
    )
    assert (out == reference).mean() > 0.99
    # the class shares survive the change of grid; the collar and the corners are ignore
    for code in (1, 2, 3):
        assert np.mean(out[out != schema.ignore] == code) == pytest.approx(
            np.mean(mask[valid] == code), abs=0.01
        )
    assert report.labelled_fraction < np.mean(valid)
    # the Mercator grid is the bounding box of the tilted UTM footprint: its corners are empty
    inside = np.zeros((height, width), dtype=np.uint8)
    reproject(
        np.ones_like(mask),
        inside,
        src_transform=profile["transform"],
        src_crs=profile["crs"],
        dst_transform=transform,
        dst_crs="EPSG:3857",
        dst_nodata=0,
    )
    assert report.covered == pytest.approx(inside.mean(), abs=0.005) and report.covered < 0.98
    assert report.warnings == [f"labels cover {report.covered:.1%} of the scene"]


# --- vectors ---------------------------------------------------------------------------------


def test_vector_in_another_crs_with_class_names(
    schema, vector_labels, scene_path, truth_labels, tmp_path
):
    report = align_labels(vector_labels, scene_path, schema, tmp_path / "v.tif", progress=False)
    out = read(tmp_path / "v.tif")
    assert report.kind == "vector" and report.class_field == "Class" and report.repaired == 0
    assert report.covered == pytest.approx(1.0, abs=1e-3)
    assert (out == truth_labels).mean() > 0.98


@pytest.mark.parametrize("suffix", [".geojson", ".shp", ".gpkg"])
def test_vector_in_the_scene_crs_with_codes_burns_exactly(
    schema, truth_polygons, scene_profile, truth_labels, tmp_path, suffix
):
    path = tmp_path / f"codes{suffix}"
    truth_polygons[["code", "geometry"]].to_file(path)
    report = align_labels(
        path, scene_profile, schema, tmp_path / "out.tif", tile_size=16, progress=False
    )
    np.testing.assert_array_equal(read(tmp_path / "out.tif"), truth_labels)
    assert report.class_field == "code"


def test_vector_partial_coverage_and_unlabelled_pixels(schema, scene_profile, corner, tmp_path):
    x0, y0, res = corner
    quarter = shapely.box(x0, y0 - 24 * res, x0 + 32 * res, y0)  # top-left quarter
    path = tmp_path / "quarter.gpkg"
    gpd.GeoDataFrame({"label": ["grass/crop"]}, geometry=[quarter], crs="EPSG:32618").to_file(path)
    report = align_labels(path, scene_profile, schema, tmp_path / "out.tif", progress=False)
    out = read(tmp_path / "out.tif")
    assert (
        (out[:24, :32] == 3).all()
        and (out[24:] == schema.ignore).all()
        and (out[:, 32:] == schema.ignore).all()
    )
    assert report.covered == pytest.approx(0.25)
    assert "labels cover 25.0% of the scene" in report.warnings


def test_empty_vector_file_is_an_error(schema, scene_profile, tmp_path):
    path = tmp_path / "empty.gpkg"
    gpd.GeoDataFrame({"class": []}, geometry=[], crs="EPSG:32618").to_file(path)
    with pytest.raises(TrustmapError, match="has no features"):
        LabelSource.open(path, scene_profile, schema)


def test_invalid_geometries_are_repaired_and_counted(schema, scene_profile, corner, tmp_path):
    x0, y0, _ = corner
    bowtie = shapely.Polygon([(x0, y0), (x0 + 600, y0 - 600), (x0 + 600, y0), (x0, y0 - 600)])
    assert not bowtie.is_valid
    gdf = gpd.GeoDataFrame(
        {"class": [5, 5]},
        geometry=[bowtie, shapely.box(x0 + 900, y0 - 300, x0 + 1200, y0)],
        crs="EPSG:32618",
    )
    path = tmp_path / "bowtie.gpkg"
    gdf.to_file(path)
    report = align_labels(path, scene_profile, schema, tmp_path / "out.tif", progress=False)
    assert report.repaired == 1
    assert "repaired 1 invalid geometry with make_valid" in report.warnings
    out = read(tmp_path / "out.tif")
    assert out[10, 0] == 5 and out[10, 19] == 5  # both triangles of the bow tie are labelled
    assert out[1, 10] == schema.ignore  # the gap between them, above the crossing, is not
    assert out[5, 35] == 5  # the valid feature is untouched


def test_unrepairable_geometry_is_an_error_naming_the_feature(
    schema, scene_profile, corner, tmp_path
):
    x0, y0, _ = corner
    flat = shapely.Polygon([(x0, y0 - 10), (x0 + 300, y0 - 310), (x0 + 600, y0 - 610)])
    gdf = gpd.GeoDataFrame(
        {"class": [1, 1]},
        geometry=[shapely.box(x0, y0 - 300, x0 + 300, y0), flat],
        crs="EPSG:32618",
    )
    path = tmp_path / "flat.gpkg"
    gdf.to_file(path)
    with pytest.raises(
        TrustmapError, match=r"FID \[2\] have invalid geometry that make_valid cannot repair"
    ):
        LabelSource.open(path, scene_profile, schema)


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_vector_without_crs_is_named(schema, scene_profile, truth_polygons, tmp_path):
    path = tmp_path / "nocrs.shp"
    truth_polygons.set_crs(None, allow_override=True).to_file(path)
    assert not path.with_suffix(".prj").exists()
    with pytest.raises(TrustmapError, match="has no CRS") as err:
        LabelSource.open(path, scene_profile, schema)
    assert err.value.path == str(path)


def test_disjoint_vector_is_an_error(schema, scene_profile, truth_polygons, tmp_path):
    path = tmp_path / "far.gpkg"
    truth_polygons.translate(xoff=1e6).pipe(
        lambda g: gpd.GeoDataFrame({"code": [1, 2, 4]}, geometry=g)
    ).to_file(path)
    with pytest.raises(TrustmapError, match="does not overlap the scene"):
        LabelSource.open(path, scene_profile, schema)


def test_unknown_class_values_name_the_values_and_the_field(
    schema, scene_profile, truth_polygons, tmp_path
):
    gdf = truth_polygons.assign(kind=["water", "forest", 17])[["kind", "geometry"]]
    path = tmp_path / "unknown.gpkg"
    gdf.astype({"kind": str}).to_file(path)
    with pytest.raises(TrustmapError, match=r"values \['forest', '17'\] in attribute 'kind'"):
        LabelSource.open(path, scene_profile, schema, class_field="kind")


def test_missing_class_values_are_an_error(schema, scene_profile, truth_polygons, tmp_path):
    path = tmp_path / "nulls.gpkg"
    truth_polygons.assign(code=[1, None, 4]).to_file(path)
    with pytest.raises(TrustmapError, match="1 feature\\(s\\) have no value in 'code'"):
        LabelSource.open(path, scene_profile, schema, class_field="code")


def test_class_field_lookup_says_what_was_tried(schema, scene_profile, truth_polygons, tmp_path):
    path = tmp_path / "nofield.gpkg"
    truth_polygons.rename(columns={"Class": "kind", "code": "id"}).to_file(path)
    with pytest.raises(TrustmapError, match="tried class, code, label, name") as err:
        LabelSource.open(path, scene_profile, schema)
    assert "'kind'" in str(err.value) and "'id'" in str(err.value)
    with pytest.raises(TrustmapError, match="has no attribute 'cls'"):
        LabelSource.open(path, scene_profile, schema, class_field="cls")
    assert LabelSource.open(path, scene_profile, schema, class_field="KIND").class_field == "kind"


def test_layer_must_be_chosen_when_there_are_several(
    schema, scene_profile, truth_polygons, truth_labels, shape, tmp_path
):
    path = tmp_path / "layers.gpkg"
    truth_polygons.to_file(path, layer="first")
    truth_polygons.to_file(path, layer="second")
    with pytest.raises(TrustmapError, match="has 2 layers \\(first, second\\)"):
        LabelSource.open(path, scene_profile, schema)
    with pytest.raises(TrustmapError, match="has no layer 'third'"):
        LabelSource.open(path, scene_profile, schema, layer="third")
    source = LabelSource.open(path, scene_profile, schema, layer="second")
    np.testing.assert_array_equal(source.read(Window(0, 0, shape[1], shape[0])), truth_labels)


def test_overlapping_features_of_different_classes_are_reported(
    schema, scene_profile, corner, tmp_path
):
    x0, y0, _ = corner
    a, b = (
        shapely.box(x0, y0 - 600, x0 + 600, y0),
        shapely.box(x0 + 300, y0 - 900, x0 + 900, y0 - 300),
    )
    path = tmp_path / "overlap.gpkg"
    gpd.GeoDataFrame({"class": ["water", "road"]}, geometry=[a, b], crs="EPSG:32618").to_file(path)
    shape = (scene_profile["height"], scene_profile["width"])

    def burnt(geom):
        return rasterize([(geom, 1)], out_shape=shape, transform=scene_profile["transform"]) > 0

    both = int((burnt(a) & burnt(b)).sum())
    assert both > 0
    # small windows: the count adds up over windows whatever the tiling
    for tile_size in (1024, 16):
        report = align_labels(path, scene_profile, schema, tmp_path / f"o{tile_size}.tif",
                              tile_size=tile_size, progress=False)  # fmt: skip
        assert report.conflict_pixels == both
        assert (
            f"{both} pixel(s) lie under overlapping features of different classes; the later "
            "feature wins there" in report.warnings
        )
    source = LabelSource.open(path, scene_profile, schema)
    assert source.read(Window(0, 0, 64, 48))[15, 15] == 6


def test_same_class_overlaps_are_not_conflicts(schema, scene_profile, corner, tmp_path):
    x0, y0, _ = corner
    boxes = [shapely.box(x0, y0 - 600, x0 + 600, y0), shapely.box(x0 + 300, y0 - 900, x0 + 900, y0 - 300)]
    path = tmp_path / "same.gpkg"
    gpd.GeoDataFrame({"class": ["water", "water"]}, geometry=boxes, crs="EPSG:32618").to_file(path)
    report = align_labels(path, scene_profile, schema, tmp_path / "o.tif", progress=False)
    assert report.conflict_pixels == 0 and not any("overlapping" in w for w in report.warnings)


def test_features_with_the_ignore_code_count_as_covered(schema, scene_profile, tmp_path):
    """Coverage is "under a feature", not "got a class": an explicit ignore polygon covers."""
    t = scene_profile["transform"]
    whole = shapely.box(*rasterio.transform.array_bounds(scene_profile["height"], scene_profile["width"], t))
    path = tmp_path / "ignore.gpkg"
    gpd.GeoDataFrame({"code": [schema.ignore]}, geometry=[whole], crs="EPSG:32618").to_file(path)
    report = align_labels(path, scene_profile, schema, tmp_path / "o.tif", progress=False)
    assert report.covered == pytest.approx(1.0) and report.labelled_fraction == 0.0
