"""Tile windows with overlap that cover every pixel of a scene.

The grid is defined on pixel indices alone, so it is cheap to build, identical on every
worker, and independent of the raster's content. Edge tiles are shifted inward (never cut
short or dropped) and a scene smaller than one tile gives a single, smaller window.

Each tile also carries its *core*: the part of its window closest to it rather than to a
neighbour. Cores partition the scene exactly, which is what stitch-by-cropping relies on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from affine import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from tiles.errors import TrustmapError

#: More tiles than this is almost surely a typo (``--size 1``); commands refuse it unless told.
MAX_TILES = 100_000
#: A tile index may claim any scene size; beyond this many pixels ``stitch`` wants an explicit limit.
MAX_STITCH_PIXELS = 500_000_000


def axis_count(length: int, size: int, stride: int) -> int:
    """len(axis_starts(length, size, stride)), by arithmetic (no list for huge claims)."""
    if length <= size:
        return 1
    return -(-(length - size) // stride) + 1


def tile_count(height: int, width: int, size: int, overlap: int) -> int:
    """How many tiles a grid would have, without building it (sizes assumed valid)."""
    stride = size - overlap
    return axis_count(height, size, stride) * axis_count(width, size, stride)


def axis_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets along one axis: regular steps, the last one shifted to end at ``length``."""
    if length <= size:
        return [0]
    last = length - size
    starts = list(range(0, last, stride))
    if not starts or starts[-1] != last:
        starts.append(last)
    return starts


def axis_cores(starts: list[int], size: int, length: int) -> list[tuple[int, int]]:
    """Core [lo, hi) per tile: the boundary between neighbours is the middle of their overlap."""
    span = min(size, length)
    bounds = [0]
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        bounds.append((b + a + span) // 2)
    bounds.append(length)
    return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


@dataclass(frozen=True)
class Tile:
    """One window of a :class:`TileGrid`."""

    index: int
    row: int
    col: int
    window: Window
    core: Window

    @property
    def core_in_tile(self) -> tuple[slice, slice]:
        """Slices that cut the core out of an array covering ``window``."""
        r0 = int(self.core.row_off - self.window.row_off)
        c0 = int(self.core.col_off - self.window.col_off)
        return (slice(r0, r0 + int(self.core.height)), slice(c0, c0 + int(self.core.width)))

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices of ``window`` in scene pixel coordinates."""
        return self.window.toslices()


class TileGrid:
    """Overlapping square tiles over a ``height`` x ``width`` pixel grid.

    ``size`` is the tile edge in pixels and ``overlap`` how many pixels neighbouring tiles
    share (at least; edge tiles shifted inward share more).
    """

    def __init__(
        self,
        height: int,
        width: int,
        size: int = 512,
        overlap: int = 0,
        transform: Affine | None = None,
        crs: Any = None,
    ) -> None:
        if height <= 0 or width <= 0:
            raise TrustmapError(f"scene has no pixels ({width}x{height})")
        if size <= 0:
            raise TrustmapError(f"tile size must be positive, got {size}")
        if overlap < 0:
            raise TrustmapError(f"overlap must be >= 0, got {overlap}")
        if size <= overlap:
            raise TrustmapError(f"tile size ({size}) must be larger than the overlap ({overlap})")
        self.height, self.width = int(height), int(width)
        self.size, self.overlap = int(size), int(overlap)
        self.stride = self.size - self.overlap
        self.transform = transform
        self.crs = crs
        self.row_starts = axis_starts(self.height, self.size, self.stride)
        self.col_starts = axis_starts(self.width, self.size, self.stride)
        self.row_cores = axis_cores(self.row_starts, self.size, self.height)
        self.col_cores = axis_cores(self.col_starts, self.size, self.width)
        self.tile_height = min(self.size, self.height)
        self.tile_width = min(self.size, self.width)

    @classmethod
    def from_dataset(cls, dataset: Any, size: int = 512, overlap: int = 0) -> TileGrid:
        """A grid over an open rasterio dataset, keeping its georeferencing."""
        return cls(dataset.height, dataset.width, size, overlap, dataset.transform, dataset.crs)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        return len(self.row_starts), len(self.col_starts)

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def __iter__(self) -> Iterator[Tile]:
        for r in range(len(self.row_starts)):
            for c in range(len(self.col_starts)):
                yield self.tile(r, c)

    def __getitem__(self, index: int) -> Tile:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(index)
        r, c = divmod(index % n, len(self.col_starts))
        return self.tile(r, c)

    def tile(self, row: int, col: int) -> Tile:
        r0, c0 = self.row_starts[row], self.col_starts[col]
        (cr0, cr1), (cc0, cc1) = self.row_cores[row], self.col_cores[col]
        return Tile(
            index=row * len(self.col_starts) + col,
            row=row,
            col=col,
            window=Window(c0, r0, self.tile_width, self.tile_height),
            core=Window(cc0, cr0, cc1 - cc0, cr1 - cr0),
        )

    def tile_transform(self, tile: Tile) -> Affine:
        """The affine transform of a tile's window (needs a georeferenced grid)."""
        if self.transform is None:
            raise TrustmapError("this tile grid has no geotransform")
        return window_transform(tile.window, self.transform)

    def __repr__(self) -> str:
        return (
            f"TileGrid({self.width}x{self.height}, size={self.size}, overlap={self.overlap}, "
            f"tiles={self.shape[0]}x{self.shape[1]})"
        )
