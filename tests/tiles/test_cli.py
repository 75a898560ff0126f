"""The ``tiles`` CLI and its shared options, in-process with click's CliRunner (fast).

Real processes (exit codes as a shell sees them, TTY detection, ``python -m tiles``) are in
``tests/e2e/test_tiles_cli.py``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.features import rasterize

from tiles import cli_options
from tiles.cli import main
from tiles.errors import TrustmapError
from tiles.profiles import check_creation_options, check_raster_suffix, gtiff_profile
from tiles.progress import Progress, progress

LANDCOVER = Path(__file__).resolve().parents[2] / "configs" / "classes" / "landcover6.yaml"


def run(*args: object) -> click.testing.Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _reset_logging():
    """The verbosity options set package logger levels; leave them as other tests expect."""
    yield
    for name in cli_options.PACKAGE_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.NOTSET)
        logger.handlers = [h for h in logger.handlers if not isinstance(h, cli_options._StderrHandler)]


# --- the options module, on a toy command ------------------------------------------------------
@click.command()
@cli_options.output_option()
@cli_options.renamed_option("--old", "--new", "new", type=int)
@click.option("--new", type=int, default=None)
@cli_options.creation_options
@cli_options.overwrite_option
def toy(output: Path, new: int | None, creation_options: dict[str, str], overwrite: bool) -> None:
    click.echo(json.dumps({"output": str(output), "new": new, "co": creation_options, "overwrite": overwrite}))


@pytest.mark.parametrize("flag", ["-o", "--output", "--out"])
def test_output_has_one_meaning_under_every_spelling(flag):
    res = CliRunner().invoke(toy, [flag, "x.tif"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"output": "x.tif", "new": None, "co": {}, "overwrite": False}


def test_output_is_required_and_spellings_may_not_disagree():
    res = CliRunner().invoke(toy, [])
    assert res.exit_code == 2 and "Missing option '-o' / '--output'" in res.output
    res = CliRunner().invoke(toy, ["-o", "a.tif", "--out", "b.tif"])
    assert res.exit_code == 2 and "--out and -o/--output name different values" in res.output
    assert CliRunner().invoke(toy, ["-o", "a.tif", "--out", "a.tif"]).exit_code == 0


def test_renamed_option_works_hidden_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="tiles.cli"):
        res = CliRunner().invoke(toy, ["-o", "x", "--old", "3"])
    assert json.loads(res.stdout)["new"] == 3
    assert "--old is deprecated; use --new" in caplog.text
    assert "--old" not in CliRunner().invoke(toy, ["--help"]).output


def test_creation_options_are_parsed_into_upper_case_keys():
    res = CliRunner().invoke(toy, ["-o", "x", "--co", "compress=ZSTD", "--co", "zstd_level = 9"])
    assert json.loads(res.stdout)["co"] == {"COMPRESS": "ZSTD", "ZSTD_LEVEL": "9"}
    for bad in ("COMPRESS", "=ZSTD", "COMPRESS="):
        res = CliRunner().invoke(toy, ["-o", "x", "--co", bad])
        assert res.exit_code == 2 and "expected KEY=VALUE" in res.output, bad


@pytest.mark.parametrize(
    ("args", "level"), [([], logging.INFO), (["-v"], logging.DEBUG), (["-q"], logging.WARNING), (["-qq"], logging.ERROR)]
)
def test_verbosity_sets_the_package_loggers(real_data, args, level):
    res = run(*args, "info", real_data / "RGB.byte.tif")
    assert res.exit_code == 0, res.output
    assert logging.getLogger("tiles").level == level
    assert logging.getLogger("refine").level == logging.NOTSET  # not tiles' to set


def test_version_lists_gdal_rasterio_and_torch():
    res = run("--version")
    lines = res.output.splitlines()
    assert res.exit_code == 0 and lines[0].startswith("trustmap ")
    assert lines[1:3] == [f"GDAL {rasterio.__gdal_version__}", f"rasterio {rasterio.__version__}"]
    assert lines[3].startswith("torch ")


@given(st.text(alphabet="abc/._-", min_size=1, max_size=20))
def test_local_paths_become_paths_and_gdal_paths_stay_text(tail):
    dp = cli_options.DatasetPath()
    assert dp.convert(f"/vsizip/{tail}", None, None) == f"/vsizip/{tail}"
    assert dp.convert(f"https://host/{tail}", None, None) == f"https://host/{tail}"  # not https:/
    assert dp.convert(f"data/{tail}", None, None) == Path(f"data/{tail}")


# --- tiles commands ------------------------------------------------------------------------------
def test_info_json_has_rio_keys_and_extras(real_data):
    info = json.loads(run("info", real_data / "RGB.byte.tif", "--json").output)
    assert info["crs"] == "EPSG:32618" and info["res"][0] == pytest.approx(300.0379, abs=1e-3)
    assert len(info["transform"]) == 9 and info["bounds"][0] == pytest.approx(101985.0)
    assert info["dtype"] == "uint8" and info["lnglat"][1] == pytest.approx(24.5616, abs=1e-3)
    assert info["crs_name"].endswith("UTM zone 18N") and info["block_shapes"][0] == [3, 791]


def test_cut_takes_creation_options_and_refuses_to_replace(real_data, tmp_path):
    res = run("cut", real_data / "RGB.byte.tif", "--tile-size", 512, "-o", tmp_path / "c", "--co", "COMPRESS=LZW")
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "c" / "tiles" / "tile_r000_c000.tif") as ds:
        assert ds.compression.value == "LZW"
    before = (tmp_path / "c" / "index.gpkg").read_bytes()
    res = run("cut", real_data / "RGB.byte.tif", "--tile-size", 256, "-o", tmp_path / "c")
    assert res.exit_code == 1 and "index.gpkg: --output exists; pass --overwrite" in res.output
    assert (tmp_path / "c" / "index.gpkg").read_bytes() == before
    assert run("cut", real_data / "RGB.byte.tif", "--tile-size", 256, "-o", tmp_path / "c", "--overwrite").exit_code == 0
    from tiles.grid import tile_count

    assert len(list((tmp_path / "c" / "tiles").iterdir())) == tile_count(718, 791, 256, 64) == 16


def test_stitch_refuses_a_suffix_of_another_format(real_data, tmp_path):
    assert run("cut", real_data / "RGB.byte.tif", "-o", tmp_path / "c").exit_code == 0
    res = run("stitch", tmp_path / "c" / "index.gpkg", "-o", tmp_path / "x.jpg")
    assert res.exit_code == 1 and "x.jpg: --output is a JPEG name ('.jpg')" in res.output
    assert not (tmp_path / "x.jpg").exists()
    res = run("stitch", tmp_path / "c" / "index.gpkg", "-o", tmp_path / "x.tif", "--co", "COMPRESS=ZSTD")
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "x.tif") as ds:
        assert ds.compression.value == "ZSTD"


def _mask(path: Path, transform, crs="EPSG:32618") -> None:
    codes = np.tile(np.repeat(np.array([1, 2, 3, 4], np.uint8), 16), (64, 1))
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8", crs=crs,
                       transform=transform, nodata=255) as ds:  # fmt: skip
        ds.write(codes, 1)


def test_align_scene_is_positional_and_the_old_flag_gives_the_same_bytes(tmp_path):
    tf = rasterio.transform.from_origin(500_000, 4_100_000, 2, 2)
    _mask(tmp_path / "labels.tif", tf)
    _mask(tmp_path / "scene.tif", tf)
    new = run("align", tmp_path / "labels.tif", tmp_path / "scene.tif", "--classes", LANDCOVER, "-o", tmp_path / "a.tif")
    assert new.exit_code == 0, new.output
    assert "footprint covers 100.0% of the scene, 100.0% of its pixels got a class" in new.output
    old = run("align", tmp_path / "labels.tif", "--scene", tmp_path / "scene.tif", "--classes", LANDCOVER,
              "--out", tmp_path / "b.tif")  # fmt: skip
    assert old.exit_code == 0 and "--scene is deprecated" in old.output
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert np.array_equal(a.read(), b.read())


def test_align_reports_the_labelled_share_of_a_warped_raster_with_nodata(tmp_path):
    """The footprint of a warped mask covers the scene, but its nodata wedges do not label it."""
    from rasterio.warp import Resampling, reproject

    tf = rasterio.transform.from_origin(500_000, 4_100_000, 2, 2)
    _mask(tmp_path / "scene.tif", tf)
    with rasterio.open(tmp_path / "scene.tif") as src:
        dst_tf, w, h = rasterio.warp.calculate_default_transform(src.crs, "EPSG:4326", 64, 64, *src.bounds)
        warped = np.full((h, w), 255, np.uint8)
        reproject(src.read(1), warped, src_transform=src.transform, src_crs=src.crs, dst_transform=dst_tf,
                  dst_crs="EPSG:4326", resampling=Resampling.nearest, src_nodata=255, dst_nodata=255)  # fmt: skip
    warped[:, : w // 2] = 255  # half of it is nodata
    with rasterio.open(tmp_path / "w.tif", "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=dst_tf, nodata=255) as ds:  # fmt: skip
        ds.write(warped, 1)
    res = run("align", tmp_path / "w.tif", tmp_path / "scene.tif", "--classes", LANDCOVER, "-o", tmp_path / "a.tif")
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "a.tif") as ds:
        labelled = float((ds.read(1) != 255).mean())
    assert 0.3 < labelled < 0.7
    assert f"{100 * labelled:.1f}% of its pixels got a class" in res.output


def test_export_qgis_takes_the_scene_as_second_argument(tmp_path):
    tf = rasterio.transform.from_origin(500_000, 4_100_000, 2, 2)
    _mask(tmp_path / "mask.tif", tf)
    res = run("export-qgis", tmp_path / "mask.tif", tmp_path / "mask.tif", "--classes", LANDCOVER, "-o", tmp_path / "q")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "q" / "mask_quicklook.tif").is_file()
    again = run("export-qgis", tmp_path / "mask.tif", "--classes", LANDCOVER, "-o", tmp_path / "q")
    assert again.exit_code == 1 and "mask.qgs: --output exists; pass --overwrite" in again.output


def test_vectorize_names_its_options_as_the_cli_spells_them(tmp_path):
    tf = rasterio.transform.from_origin(500_000, 4_100_000, 2, 2)
    _mask(tmp_path / "mask.tif", tf)
    res = run("vectorize", tmp_path / "mask.tif", "--classes", LANDCOVER, "-o", tmp_path / "p.shp")
    assert res.exit_code == 1 and "--output: polygons are written as a GeoPackage" in res.output
    assert run("vectorize", tmp_path / "mask.tif", "--classes", LANDCOVER, "-o", tmp_path / "p.gpkg").exit_code == 0
    res = run("align", tmp_path / "p.gpkg", tmp_path / "mask.tif", "--classes", LANDCOVER, "-o", tmp_path / "a.tif",
              "--class-field", "klass")  # fmt: skip
    assert res.exit_code == 1 and "has no attribute 'klass' (--class-field)" in res.output


# --- progress ------------------------------------------------------------------------------------
def test_progress_logs_lines_off_a_terminal_and_nothing_when_quiet(monkeypatch, caplog):
    monkeypatch.setenv("TRUSTMAP_PROGRESS_SECONDS", "0")
    with caplog.at_level(logging.INFO, logger="tiles.progress"):
        assert list(progress(range(3), desc="job", unit="window")) == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("job: 1/3 window(s) (33 %)") and lines[-1].startswith("job: 3 window(s) done in")
    caplog.clear()
    logging.getLogger("tiles").setLevel(logging.WARNING)  # what -q does
    assert list(progress(range(3), desc="job")) == [0, 1, 2]
    assert caplog.records == []


def test_progress_is_silent_for_short_steps(caplog):
    with caplog.at_level(logging.INFO, logger="tiles.progress"), Progress(total=5, desc="quick") as bar:
        for _ in range(5):
            bar.update()
    assert caplog.records == []


def test_progress_draws_a_bar_on_a_terminal(monkeypatch, caplog):
    import tiles.progress as tp

    monkeypatch.setattr(tp, "_on_terminal", lambda: True)
    monkeypatch.setenv("TRUSTMAP_PROGRESS_SECONDS", "0")
    with caplog.at_level(logging.INFO, logger="tiles.progress"), Progress(total=2, desc="bar") as bar:
        assert bar._bar is not None
        bar.update(2)
        assert bar._bar.n == 2
    assert caplog.records == []  # a bar, not log lines


# --- profiles -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "ok"), [("a.tif", True), ("a.TIFF", True), ("a.jpg", False), ("a.png", False), ("a", False)])
def test_raster_suffix_must_match_the_driver(name, ok):
    if ok:
        assert check_raster_suffix(name) == Path(name)
    else:
        with pytest.raises(TrustmapError, match=r"--output is .*this command writes a GeoTIFF"):
            check_raster_suffix(name)


@pytest.mark.parametrize(
    ("co", "driver", "problem"),
    [({"NOPE": "1"}, "GTiff", "does not support creation option NOPE"),
     ({"COMPRESS": "BOGUS"}, "GTiff", "unexpected value for COMPRESS"),
     ({"BLOCKXSIZE": "17", "TILED": "YES"}, "GTiff", "multiples of 16"),
     ({"NOPE": "1"}, "COG", "COG does not support creation option NOPE")],
)  # fmt: skip
def test_creation_options_are_checked_by_gdal(co, driver, problem):
    with pytest.raises(TrustmapError, match=problem):
        check_creation_options(co, driver=driver)
    assert check_creation_options({"compress": "zstd"}, driver=driver) == {"COMPRESS": "zstd"}


@given(st.integers(1, 600), st.integers(1, 600), st.sampled_from([16, 256, 512]))
@settings(max_examples=40, deadline=None)
def test_profile_tiles_exactly_the_rasters_that_hold_a_block(width, height, block):
    p = gtiff_profile(width=width, height=height, count=2, dtype="uint16", crs=None, transform=None,
                      blocksize=block)  # fmt: skip
    assert p.get("tiled", False) == (width >= block and height >= block)
    assert p["interleave"] == "band" and p["BIGTIFF"] == "IF_SAFER"


# --- align: vector checks measured on the grid ---------------------------------------------------
_coord = st.floats(0, 60, allow_nan=False)


@st.composite
def polygons(draw):
    x0, y0 = draw(_coord), draw(_coord)
    w, h = draw(st.floats(1, 30)), draw(st.floats(1, 30))
    outer = shapely.box(x0, y0, x0 + w, y0 + h)
    if draw(st.booleans()):
        outer = outer.difference(shapely.box(x0 + w / 4, y0 + h / 4, x0 + w / 2, y0 + h / 2))
    if draw(st.booleans()):
        outer = shapely.MultiPolygon([outer, shapely.box(x0 + w + 1, y0, x0 + w + 3, y0 + 2)])
    return shapely.affinity.rotate(outer, draw(st.floats(0, 90)), origin="centroid")


@given(st.lists(polygons(), min_size=1, max_size=8))
@settings(max_examples=40, deadline=None)
def test_fast_geojson_burns_the_same_pixels_as_shapely(geoms):
    from tiles.align import _as_geojson

    arr = np.array(geoms, dtype=object)
    codes = list(range(1, len(geoms) + 1))
    kw = {"out_shape": (50, 50), "transform": rasterio.transform.from_origin(0, 80, 1.6, 1.6), "fill": 0}
    assert np.array_equal(rasterize(zip(_as_geojson(arr), codes, strict=True), **kw),
                          rasterize(zip(geoms, codes, strict=True), **kw))  # fmt: skip


@given(st.lists(st.tuples(polygons(), st.sampled_from([1, 2, 6])), min_size=1, max_size=6),
       st.sampled_from([7, 16, 64]))  # fmt: skip
@settings(max_examples=25, deadline=None)
def test_coverage_and_conflicts_do_not_depend_on_the_windows(features, tile):
    """Counts add up over windows in any tiling, and equal a whole-scene count."""
    from rasterio.windows import Window, subdivide

    from tiles.align import SceneGrid, VectorLabels
    from tiles.classes import load_schema

    schema = load_schema(LANDCOVER)
    grid = SceneGrid("EPSG:32618", rasterio.transform.from_origin(0, 80, 1.6, 1.6), 50, 50)
    geoms = np.array([g for g, _ in features], dtype=object)
    codes = np.array([c for _, c in features], dtype=np.uint8)
    src = VectorLabels("mem", grid, schema, None, geoms, codes, "code")
    whole = src.read_stats(Window(0, 0, 50, 50))
    parts = [src.read_stats(w) for w in subdivide(Window(0, 0, 50, 50), tile, tile)]
    assert sum(p[1] for p in parts) == whole[1] and sum(p[2] for p in parts) == whole[2]
    # the conflict count is the pixels where features of different classes overlap
    kw = {"out_shape": (50, 50), "transform": grid.transform}
    classes_under = np.zeros((50, 50), np.int32)
    for code in set(codes.tolist()):
        burnt = rasterize([(g, 1) for g, c in zip(geoms, codes, strict=True) if c == code], fill=0, **kw)
        classes_under += burnt.astype(np.int32)
    first_last_differ = whole[2]
    assert first_last_differ <= int((classes_under >= 2).sum())
    assert whole[1] == int((classes_under >= 1).sum())


@st.composite
def lattice_features(draw):
    """Rectilinear polygons with vertices on pixel corners (as vectorized masks are)."""
    c0, r0 = draw(st.integers(-4, 38)), draw(st.integers(-4, 38))  # each reaches the 40 x 40 scene
    w, h = draw(st.integers(5, 20)), draw(st.integers(5, 20))
    geom = shapely.box(c0, r0, c0 + w, r0 + h)
    if w > 2 and h > 2 and draw(st.booleans()):
        geom = geom.difference(shapely.box(c0 + 1, r0 + 1, c0 + w - 1, r0 + h - 1))  # a ring
    return geom, draw(st.sampled_from([1, 2, 6]))


@given(st.lists(lattice_features(), min_size=1, max_size=7), st.sampled_from([8, 64]))
@settings(max_examples=30, deadline=None)
def test_one_pass_route_counts_the_conflicts_of_the_two_pass_route(tmp_path_factory, features, tile):
    """On the pixel lattice, align burns once and finds overlaps from areas: same numbers."""
    import geopandas as gpd
    from rasterio.windows import Window

    from tiles.align import SceneGrid, VectorLabels, align_labels
    from tiles.classes import load_schema

    schema = load_schema(LANDCOVER)
    tf = rasterio.transform.from_origin(300_000, 4_500_000, 2, 2)
    grid = SceneGrid("EPSG:32618", tf, 40, 40)
    geoms = [shapely.affinity.affine_transform(g, [tf.a, tf.b, tf.d, tf.e, tf.c, tf.f]) for g, _ in features]
    codes = [c for _, c in features]
    path = tmp_path_factory.mktemp("lattice") / "f.gpkg"
    gpd.GeoDataFrame({"code": codes}, geometry=geoms, crs="EPSG:32618").to_file(path)
    report = align_labels(path, grid, schema, path.with_suffix(".tif"), tile_size=tile, progress=False)
    src = VectorLabels("mem", grid, schema, None, np.array(geoms, dtype=object), np.array(codes, np.uint8), "code")
    assert src.on_lattice()
    labels, under, conflicts = src.read_stats(Window(0, 0, 40, 40))
    assert report.conflict_pixels == conflicts
    assert report.covered == pytest.approx(under / 1600)
    with rasterio.open(path.with_suffix(".tif")) as ds:
        assert np.array_equal(ds.read(1), labels)


def test_verbosity_options_bare_sets_all_three_packages():
    @click.command()
    @cli_options.verbosity_options
    def cmd() -> None:
        click.echo("ok")

    assert CliRunner().invoke(cmd, ["-q"]).exit_code == 0
    assert {logging.getLogger(n).level for n in cli_options.PACKAGE_LOGGERS} == {logging.WARNING}


def test_creation_options_are_checked_against_the_real_bands(tmp_path):
    """PREDICTOR=3 (floating point) is right for a float scene, wrong for a byte one."""
    tf = rasterio.transform.from_origin(500_000, 4_100_000, 2, 2)
    with rasterio.open(tmp_path / "f.tif", "w", driver="GTiff", width=64, height=64, count=2, dtype="float32",
                       crs="EPSG:32618", transform=tf) as ds:  # fmt: skip
        ds.write(np.random.default_rng(0).random((2, 64, 64), dtype=np.float32))
    ok = run("cut", tmp_path / "f.tif", "--tile-size", 32, "--overlap", 0, "-o", tmp_path / "c", "--co", "PREDICTOR=3")
    assert ok.exit_code == 0, ok.output
    ok = run("stitch", tmp_path / "c" / "index.gpkg", "-o", tmp_path / "s.tif", "--co", "PREDICTOR=3")
    assert ok.exit_code == 0, ok.output
    with rasterio.open(tmp_path / "s.tif") as s, rasterio.open(tmp_path / "f.tif") as f:
        assert np.array_equal(s.read(), f.read())
    _mask(tmp_path / "m.tif", tf)
    bad = run("cut", tmp_path / "m.tif", "-o", tmp_path / "c2", "--co", "PREDICTOR=3")
    assert bad.exit_code == 1 and "--co PREDICTOR=3" in bad.output and not (tmp_path / "c2").exists()


def test_align_reads_zipped_vector_labels_and_scene(tmp_path):
    """GDAL paths work for every input of align, vector labels included."""
    import zipfile

    import geopandas as gpd

    tf = rasterio.transform.from_origin(500_000, 4_100_000, 2, 2)
    _mask(tmp_path / "scene.tif", tf)
    box = shapely.box(500_000, 4_100_000 - 64, 500_064, 4_100_000)  # the top-left quarter
    gpd.GeoDataFrame({"code": [3]}, geometry=[box], crs="EPSG:32618").to_file(tmp_path / "l.gpkg")
    with zipfile.ZipFile(tmp_path / "in.zip", "w") as zf:
        zf.write(tmp_path / "l.gpkg", "l.gpkg")
        zf.write(tmp_path / "scene.tif", "scene.tif")
    z = f"/vsizip/{tmp_path}/in.zip"
    res = run("align", f"{z}/l.gpkg", f"{z}/scene.tif", "--classes", LANDCOVER, "-o", tmp_path / "a.tif")
    assert res.exit_code == 0, res.output
    assert "footprint covers 25.0% of the scene" in res.output
    with rasterio.open(tmp_path / "a.tif") as ds:
        out = ds.read(1)
    assert (out[:32, :32] == 3).all() and (out[32:, :] == 255).all()
    res = run("align", f"{z}/nope.gpkg", f"{z}/scene.tif", "--classes", LANDCOVER, "-o", tmp_path / "b.tif")
    assert res.exit_code == 1 and f"{z}/nope.gpkg: not a readable vector file" in res.output
