"""Cut a scene into georeferenced tiles with an index, and stitch such tiles back.

Each tile is a standalone GeoTIFF (its own transform, the scene's CRS, nodata and band
metadata), so it can go to any worker or tool. The index GeoPackage holds one footprint
polygon per tile with its window and core in scene pixels, which is all that
:func:`stitch_index` needs to rebuild the scene bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from shapely.geometry import box

from tiles.errors import TrustmapError
from tiles.grid import MAX_STITCH_PIXELS, MAX_TILES, Tile, TileGrid, tile_count
from tiles.io import (
    bundle_stage,
    check_output_dir,
    check_output_file,
    commit_bundle,
    refuse_existing,
    refuse_inputs,
    resolve_inside,
)
from tiles.profiles import check_creation_options, gtiff_profile
from tiles.progress import progress
from tiles.raster import dataset_path, open_raster, require_crs
from tiles.stitch import StitchMode, StitchWriter

INDEX_LAYER = "tiles"
INDEX_LAYER_FILE = "index.gpkg"


@dataclass(frozen=True)
class CutResult:
    index: Path
    tiles_dir: Path
    written: int
    skipped: int


def read_window(ds: rasterio.DatasetReader, tile: Tile) -> np.ndarray:
    """The pure per-tile read: (count, h, w) pixels of ``tile.window``."""
    return ds.read(window=tile.window)


def _tile_profile(
    ds: rasterio.DatasetReader, tile: Tile, grid: TileGrid, creation_options: Mapping[str, Any]
) -> dict[str, Any]:
    """A tile's own GTiff profile: the scene's bands, CRS and nodata on the tile's window."""
    return gtiff_profile(
        width=int(tile.window.width), height=int(tile.window.height), count=ds.count,
        dtype=ds.dtypes[0], crs=ds.crs, transform=grid.tile_transform(tile), nodata=ds.nodata,
        bigtiff=None, **creation_options,
    )  # fmt: skip


def cut_scene(
    scene: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    size: int = 512,
    overlap: int = 64,
    skip_nodata: bool = False,
    max_tiles: int = MAX_TILES,
    creation_options: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> CutResult:
    """Write every tile of ``scene`` under ``out_dir/tiles`` and an index at ``out_dir/index.gpkg``.

    ``tiles/`` and ``index.gpkg`` are one bundle: both are staged and committed together
    (:func:`tiles.io.commit_bundle`), so a failed cut leaves an earlier cut in ``out_dir``
    exactly as it was, and other files there are kept. ``creation_options`` (GDAL GTiff
    options, e.g. ``{"COMPRESS": "ZSTD"}``) override the tiles' layout. ``overwrite=False``
    refuses to replace an earlier cut (the CLI's default).
    """
    scene, out = dataset_path(scene), Path(out_dir)
    check_output_dir(out, option="--output")
    refuse_inputs(out / "tiles", [scene], option="--output")
    refuse_inputs(out / INDEX_LAYER_FILE, [scene], option="--output")
    if (out / "tiles").exists() and not (out / INDEX_LAYER_FILE).is_file():
        raise TrustmapError(
            f"holds a tiles/ folder without {INDEX_LAYER_FILE}, so not one that tiles cut wrote; "
            "refusing to replace it (choose another --output)",
            out,
        )
    refuse_existing([out / INDEX_LAYER_FILE], overwrite)
    with open_raster(scene) as ds:
        require_crs(ds, scene)
        TileGrid(ds.height, ds.width, size, overlap)  # checks size and overlap, builds small lists
        n = tile_count(ds.height, ds.width, size, overlap)
        if n > max_tiles:
            raise TrustmapError(
                f"--tile-size {size} with --overlap {overlap} makes {n:,} tiles, more than the limit of "
                f"{max_tiles:,}; use larger tiles, or raise --max-tiles if you mean it",
                scene,
            )
        grid = TileGrid.from_dataset(ds, size, overlap)
        # checked by GDAL against this scene's bands, before any tile is written
        co = check_creation_options(
            creation_options or {}, base={"count": ds.count, "dtype": ds.dtypes[0], "nodata": ds.nodata}
        )
        colormap = _colormap_or_none(ds)
        records = []
        skipped = 0
        with bundle_stage(out) as stage:
            tmp_tiles = stage / "tiles"
            tmp_tiles.mkdir()
            for tile in progress(grid, desc="cut", total=len(grid), unit="tile"):
                if skip_nodata and not ds.dataset_mask(window=tile.window).any():
                    skipped += 1
                    continue
                name = f"tile_r{tile.row:03d}_c{tile.col:03d}.tif"
                with rasterio.open(tmp_tiles / name, "w", **_tile_profile(ds, tile, grid, co)) as dst:
                    dst.write(read_window(ds, tile))
                    dst.descriptions = ds.descriptions
                    dst.colorinterp = ds.colorinterp
                    if colormap:
                        dst.write_colormap(1, colormap)
                w, c = tile.window, tile.core
                records.append(
                    {
                        "tile": tile.index, "row": tile.row, "col": tile.col, "path": f"tiles/{name}",
                        "col_off": int(w.col_off), "row_off": int(w.row_off),
                        "width": int(w.width), "height": int(w.height),
                        "core_col_off": int(c.col_off), "core_row_off": int(c.row_off),
                        "core_width": int(c.width), "core_height": int(c.height),
                        "scene_width": grid.width, "scene_height": grid.height,
                        "size": grid.size, "overlap": grid.overlap,
                        "geometry": box(*rasterio.windows.bounds(w, ds.transform)),
                    }
                )
            if not records:
                raise TrustmapError("every tile is nodata; nothing to cut", scene)
            index = gpd.GeoDataFrame(records, geometry="geometry", crs=ds.crs)
            index.to_file(stage / INDEX_LAYER_FILE, layer=INDEX_LAYER, driver="GPKG")
            commit_bundle(stage, out, last=[INDEX_LAYER_FILE])
    return CutResult(out / INDEX_LAYER_FILE, out / "tiles", len(records), skipped)


def _colormap_or_none(ds: rasterio.DatasetReader) -> dict[int, tuple[int, ...]] | None:
    if ds.count != 1:
        return None
    try:
        return ds.colormap(1)
    except ValueError:
        return None


def stitch_index(
    index_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    mode: StitchMode = "core",
    cog: bool = False,
    max_pixels: int = MAX_STITCH_PIXELS,
    max_tiles: int = MAX_TILES,
    allow_outside: bool = False,
    creation_options: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Rebuild a scene from the tiles listed in a :func:`cut_scene` index.

    The index is untrusted input: tile paths are resolved against the index's folder and
    may not leave it (unless ``allow_outside``), and the scene size it claims must stay
    within ``max_pixels`` and ``max_tiles``.
    """
    index_path = Path(index_path)
    if not index_path.exists():
        raise TrustmapError("tile index not found", index_path)
    if index_path.is_dir():
        raise TrustmapError("is a directory, expected a tile index (index.gpkg)", index_path)
    try:
        index = gpd.read_file(index_path, layer=INDEX_LAYER)
    except Exception as exc:  # pyogrio raises several types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrustmapError(f"not a trustmap tile index ({reason})", index_path) from None
    need = {"tile", "row", "col", "path", "col_off", "row_off", "scene_width", "scene_height", "size", "overlap"}
    if missing := need - set(index.columns):
        raise TrustmapError(f"tile index lacks column(s) {sorted(missing)}", index_path)
    if len(index) == 0:
        raise TrustmapError("tile index lists no tiles", index_path)
    base = index_path.parent
    try:
        rows = [
            (int(r.tile), int(r.row_off), int(r.col_off),
             resolve_inside(base, str(r.path), index_path, "tile path", allow_outside))
            for r in index.itertuples()
        ]  # fmt: skip
        first = index.iloc[0]
        height, width = int(first["scene_height"]), int(first["scene_width"])
        size, overlap = int(first["size"]), int(first["overlap"])
    except (TypeError, ValueError, OverflowError) as exc:
        raise TrustmapError(f"tile index has a malformed value ({exc})", index_path) from None
    if height <= 0 or width <= 0 or height * width > max_pixels:
        raise TrustmapError(
            f"tile index claims a {width:,} x {height:,} pixel scene; the limit is {max_pixels:,} "
            "pixels (raise --max-pixels if the scene really is that large)",
            index_path,
        )
    try:
        TileGrid(min(height, size + 1), min(width, size + 1), size, overlap)  # checks size/overlap
    except TrustmapError as exc:
        raise TrustmapError(f"tile index claims an impossible grid: {exc}", index_path) from None
    n = tile_count(height, width, size, overlap)
    if n > max_tiles:
        raise TrustmapError(
            f"tile index claims a grid of {n:,} tiles, more than the limit of {max_tiles:,} "
            "(raise --max-tiles if you mean it)",
            index_path,
        )
    check_output_file(out_path, [index_path, *(r[3] for r in rows)], option="--output")
    refuse_existing([out_path], overwrite)
    first_path = rows[0][3]
    with open_raster(first_path) as t0:
        scene_tf = t0.transform * Affine.translation(-rows[0][2], -rows[0][1])
        meta = {"count": t0.count, "dtype": t0.dtypes[0], "nodata": t0.nodata, "crs": t0.crs,
                "descriptions": t0.descriptions, "colormap": _colormap_or_none(t0)}
    grid = TileGrid(height, width, size, overlap, scene_tf, meta["crs"])
    if creation_options:  # checked by GDAL against the tiles' bands, before any work
        check_creation_options(creation_options, driver="COG" if cog else "GTiff",
                               base={k: meta[k] for k in ("count", "dtype", "nodata")})  # fmt: skip
    by_index = {r[0]: r for r in rows}
    if len(by_index) != len(rows):
        raise TrustmapError("tile index lists a tile more than once", index_path)
    if unknown := sorted(t for t in by_index if not 0 <= t < len(grid)):
        raise TrustmapError(f"tile index lists tile(s) {unknown[:5]} outside its own grid", index_path)
    with StitchWriter(out_path, grid, meta["count"], meta["dtype"], mode=mode, nodata=meta["nodata"],
                      cog=cog, colormap=meta["colormap"], creation_options=creation_options,
                      band_descriptions=meta["descriptions"] if any(meta["descriptions"]) else None) as w:
        for tile in progress(grid, desc="stitch", total=len(grid), unit="tile"):
            rec = by_index.get(tile.index)
            if rec is None:
                w.skip(tile)
                continue
            if (rec[1], rec[2]) != (int(tile.window.row_off), int(tile.window.col_off)):
                raise TrustmapError(f"tile {tile.index} window does not match the index grid", rec[3])
            with open_raster(rec[3], verify=False) as src:
                data = src.read()
            expect = (int(tile.window.height), int(tile.window.width))
            if data.shape[1:] != expect:
                raise TrustmapError(
                    f"tile is {data.shape[2]}x{data.shape[1]} pixels, the index grid says "
                    f"{expect[1]}x{expect[0]} (index {index_path.name})", rec[3],
                )  # fmt: skip
            if data.shape[0] != meta["count"] or data.dtype != np.dtype(meta["dtype"]):
                raise TrustmapError(
                    f"tile has {data.shape[0]} band(s) of {data.dtype}, the first tile "
                    f"{meta['count']} of {meta['dtype']}", rec[3],
                )  # fmt: skip
            w.write(tile, data)
    return Path(out_path)
