import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS

from tiles.errors import TrustmapError
from tiles.grid import TileGrid
from tiles.stitch import StitchWriter, edge_ramp, stitch_tiles

TF = Affine(2.0, 0, 500000.0, 0, -2.0, 4000000.0)
CRS32 = CRS.from_epsg(32631)


def _write(path, grid, data, mode, dtype, order=None, **kw):
    tiles = list(grid)
    if order is not None:
        tiles = [tiles[i] for i in order]
    with StitchWriter(path, grid, data.shape[0], dtype, crs=CRS32, transform=TF, mode=mode, blocksize=32, **kw) as w:
        for t in tiles:
            r, c = t.slices
            w.write(t, data[:, r, c])
    return w


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 150), w=st.integers(1, 150), size=st.integers(8, 80), ov=st.integers(0, 40),
    count=st.integers(1, 3), seed=st.integers(0, 2**16), shuffle=st.booleans(),
)
def test_core_round_trip_is_bit_exact(tmp_path_factory, h, w, size, ov, count, seed, shuffle):
    ov = min(ov, size - 1)
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 65535, size=(count, h, w), dtype=np.uint16)
    grid = TileGrid(h, w, size, ov, TF, CRS32)
    order = rng.permutation(len(grid)) if shuffle else None
    out = tmp_path_factory.mktemp("st") / "out.tif"
    writer = _write(out, grid, data, "core", "uint16", order)
    assert writer.open_blocks == 0
    with rasterio.open(out) as ds:
        assert np.array_equal(ds.read(), data)
        assert ds.transform == TF and ds.crs == CRS32


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 120), w=st.integers(1, 120), size=st.integers(8, 64), ov=st.integers(0, 30),
       seed=st.integers(0, 2**16))
def test_blend_of_identical_tiles_reproduces_the_scene(tmp_path_factory, h, w, size, ov, seed):
    ov = min(ov, size - 1)
    data = np.random.default_rng(seed).random((2, h, w), dtype=np.float32)
    grid = TileGrid(h, w, size, ov, TF, CRS32)
    out = tmp_path_factory.mktemp("bl") / "out.tif"
    _write(out, grid, data, "blend", "float32")
    with rasterio.open(out) as ds:
        np.testing.assert_allclose(ds.read(), data, rtol=1e-5, atol=1e-5)  # float32 accumulation


def test_blend_weights_fall_off_across_overlap(tmp_path):
    # two tiles of constant 0 and 1 overlapping by 16 px: the overlap ramps 0 -> 1
    grid = TileGrid(16, 48, size=32, overlap=16, transform=TF, crs=CRS32)
    assert grid.col_starts == [0, 16]
    with StitchWriter(tmp_path / "r.tif", grid, 1, "float32", mode="blend", blocksize=16) as w:
        w.write(grid[0], np.zeros((1, 16, 32), np.float32))
        w.write(grid[1], np.ones((1, 16, 32), np.float32))
    row = rasterio.open(tmp_path / "r.tif").read(1)[0]
    assert (row[:16] == 0).all() and (row[32:] == 1).all()
    ramp = row[16:32]
    assert (np.diff(ramp) > 0).all() and 0 < ramp[0] < 0.1 and 0.9 < ramp[-1] < 1


def test_edge_ramp_keeps_full_weight_on_scene_borders():
    assert (edge_ramp(10, 4, False, False) == 1).all()
    w = edge_ramp(10, 4, True, False)
    np.testing.assert_allclose(w[:4], [0.125, 0.375, 0.625, 0.875])
    assert (w[4:] == 1).all()


def test_memory_is_bounded_by_one_row_of_tiles(tmp_path):
    # 16 x 16 tiles of 64 px over blocks of 64: row-major order holds at most ~2 block rows
    grid = TileGrid(1024, 1024, size=64, overlap=16, transform=TF, crs=CRS32)
    with StitchWriter(tmp_path / "m.tif", grid, 1, "float32", mode="blend", blocksize=64) as w:
        tile = np.ones((1, 64, 64), np.float32)
        for t in grid:
            w.write(t, tile)
    blocks_per_row = 1024 // 64
    assert w.peak_blocks <= 3 * blocks_per_row  # not 256 (the whole scene)
    assert w.open_blocks == 0


def test_skipped_tiles_become_nodata(tmp_path):
    grid = TileGrid(64, 64, 32, 0, TF, CRS32)
    with StitchWriter(tmp_path / "n.tif", grid, 1, "uint8", mode="core", nodata=255, blocksize=32) as w:
        for t in grid:
            if t.index == 0:
                w.skip(t)
            else:
                w.write(t, np.full((32, 32), 7, np.uint8))
    arr = rasterio.open(tmp_path / "n.tif").read(1)
    assert (arr[:32, :32] == 255).all() and (arr[32:, :] == 7).all()


def test_incomplete_stitch_leaves_nothing(tmp_path):
    grid = TileGrid(64, 64, 32, 0, TF, CRS32)
    out = tmp_path / "inc.tif"
    with pytest.raises(TrustmapError, match="never written"), StitchWriter(out, grid, 1, "uint8", blocksize=32) as w:
        w.write(grid[0], np.zeros((32, 32), np.uint8))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_exception_inside_leaves_previous_output_untouched(tmp_path):
    out = tmp_path / "keep.tif"
    grid = TileGrid(32, 32, 32, 0, TF, CRS32)
    stitch_tiles(out, grid, lambda t: np.ones((1, 32, 32), np.uint8), 1, "uint8", progress_desc=None, blocksize=32)
    before = out.read_bytes()
    with pytest.raises(RuntimeError), StitchWriter(out, grid, 1, "uint8", blocksize=32):
        raise RuntimeError("boom")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tif"]


def test_wrong_tile_shape_and_double_write(tmp_path):
    grid = TileGrid(32, 32, 16, 0, TF, CRS32)
    with pytest.raises(TrustmapError), StitchWriter(tmp_path / "x.tif", grid, 1, "uint8", blocksize=16) as w:
        w.write(grid[0], np.zeros((8, 8), np.uint8))
    with pytest.raises(TrustmapError, match="twice"), StitchWriter(tmp_path / "y.tif", grid, 1, "uint8", blocksize=16) as w:
        w.write(grid[0], np.zeros((16, 16), np.uint8))
        w.write(grid[0], np.zeros((16, 16), np.uint8))
