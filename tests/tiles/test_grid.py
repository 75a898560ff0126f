import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiles.errors import TrustmapError
from tiles.grid import TileGrid

dims = st.integers(min_value=1, max_value=400)


@st.composite
def grids(draw):
    h, w = draw(dims), draw(dims)
    size = draw(st.integers(min_value=6, max_value=300))
    overlap = draw(st.integers(min_value=0, max_value=size - 1))
    return TileGrid(h, w, size, overlap)


@settings(max_examples=120, deadline=None)
@given(grids())
def test_windows_cover_every_pixel_and_stay_inside(grid):
    cover = np.zeros((grid.height, grid.width), dtype=np.int32)
    for t in grid:
        r, c = t.slices
        assert r.start >= 0 and c.start >= 0
        assert r.stop <= grid.height and c.stop <= grid.width
        # never cut short: every window has the full tile size (or the scene size)
        assert (r.stop - r.start, c.stop - c.start) == (min(grid.size, grid.height), min(grid.size, grid.width))
        cover[r, c] += 1
    assert cover.min() >= 1


@settings(max_examples=120, deadline=None)
@given(grids())
def test_cores_partition_the_scene(grid):
    owner = np.zeros((grid.height, grid.width), dtype=np.int32)
    for t in grid:
        r, c = t.core.toslices()
        owner[r, c] += 1
        # the core lies inside the window
        rs, cs = t.core_in_tile
        assert rs.start >= 0 and cs.start >= 0
        assert rs.stop <= t.window.height and cs.stop <= t.window.width
    assert (owner == 1).all()


@settings(max_examples=100, deadline=None)
@given(grids())
def test_neighbours_overlap_at_least_the_requested_amount(grid):
    for starts in (grid.row_starts, grid.col_starts):
        for a, b in zip(starts[:-1], starts[1:], strict=False):
            assert b - a <= grid.stride  # shifted-inward last tile only overlaps more


def test_small_scene_gives_one_window():
    grid = TileGrid(100, 37, size=512, overlap=64)
    assert len(grid) == 1
    t = grid[0]
    assert (t.window.width, t.window.height) == (37, 100)
    assert (t.core.width, t.core.height) == (37, 100)


def test_last_tile_shifted_inward():
    grid = TileGrid(1000, 1000, size=512, overlap=64)
    assert grid.row_starts == [0, 448, 488]
    assert grid[-1].window.row_off + grid[-1].window.height == 1000


def test_core_boundary_is_middle_of_overlap():
    grid = TileGrid(960, 960, size=512, overlap=64)
    assert grid.row_starts == [0, 448]
    assert grid.row_cores == [(0, 480), (480, 960)]


@pytest.mark.parametrize(("size", "overlap"), [(64, 64), (32, 100), (0, 0), (16, -1)])
def test_bad_size_or_overlap(size, overlap):
    with pytest.raises(TrustmapError):
        TileGrid(100, 100, size, overlap)


def test_getitem_matches_iteration():
    grid = TileGrid(300, 500, 128, 16)
    assert [t.index for t in grid] == list(range(len(grid)))
    assert grid[5] == list(grid)[5]
