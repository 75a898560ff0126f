"""Cut a scene into georeferenced tiles with an index, and stitch such tiles back.

Each tile is a standalone GeoTIFF (its own transform, the scene's CRS, nodata and band
metadata), so it can go to any worker or tool. The index GeoPackage holds one footprint
polygon per tile with its window and core in scene pixels, which is all that
:func:`stitch_index` needs to rebuild the scene bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from shapely.geometry import box

from tiles.console import progress
from tiles.errors import TrustmapError
from tiles.grid import Tile, TileGrid
from tiles.io import atomic_dir, atomic_path, ensure_writable_dir
from tiles.raster import open_raster, require_crs
from tiles.stitch import StitchMode, StitchWriter

INDEX_LAYER = "tiles"


@dataclass(frozen=True)
class CutResult:
    index: Path
    tiles_dir: Path
    written: int
    skipped: int


def read_window(ds: rasterio.DatasetReader, tile: Tile) -> np.ndarray:
    """The pure per-tile read: (count, h, w) pixels of ``tile.window``."""
    return ds.read(window=tile.window)


def _tile_profile(ds: rasterio.DatasetReader, tile: Tile, grid: TileGrid) -> dict:
    h, w = int(tile.window.height), int(tile.window.width)
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": ds.count,
        "dtype": ds.dtypes[0],
        "crs": ds.crs,
        "transform": grid.tile_transform(tile),
        "nodata": ds.nodata,
        "compress": "deflate",
        "interleave": "band" if ds.count > 1 else "pixel",
    }
    if h >= 256 and w >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    return profile


def cut_scene(
    scene: str | os.PathLike,
    out_dir: str | os.PathLike,
    size: int = 512,
    overlap: int = 64,
    skip_nodata: bool = False,
) -> CutResult:
    """Write every tile of ``scene`` under ``out_dir/tiles`` and an index at ``out_dir/index.gpkg``."""
    with open_raster(scene) as ds:
        require_crs(ds, scene)
        grid = TileGrid.from_dataset(ds, size, overlap)
        out = ensure_writable_dir(out_dir)
        colormap = _colormap_or_none(ds)
        records = []
        skipped = 0
        with atomic_dir(out / "tiles") as tmp_tiles:
            for tile in progress(grid, desc="cut", total=len(grid), unit="tile"):
                if skip_nodata and not ds.dataset_mask(window=tile.window).any():
                    skipped += 1
                    continue
                name = f"tile_r{tile.row:03d}_c{tile.col:03d}.tif"
                with rasterio.open(tmp_tiles / name, "w", **_tile_profile(ds, tile, grid)) as dst:
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
        with atomic_path(out / "index.gpkg") as tmp:
            index.to_file(tmp, layer=INDEX_LAYER, driver="GPKG")
    return CutResult(out / "index.gpkg", out / "tiles", len(records), skipped)


def _colormap_or_none(ds: rasterio.DatasetReader) -> dict | None:
    if ds.count != 1:
        return None
    try:
        return ds.colormap(1)
    except ValueError:
        return None


def stitch_index(
    index_path: str | os.PathLike,
    out_path: str | os.PathLike,
    mode: StitchMode = "core",
    cog: bool = False,
) -> Path:
    """Rebuild a scene from the tiles listed in a :func:`cut_scene` index."""
    index_path = Path(index_path)
    if not index_path.exists():
        raise TrustmapError("tile index not found", index_path)
    try:
        index = gpd.read_file(index_path, layer=INDEX_LAYER)
    except Exception as exc:  # pyogrio raises several types for corrupt files
        raise TrustmapError(f"not a trustmap tile index ({exc})", index_path) from None
    need = {"tile", "row", "col", "path", "col_off", "row_off", "scene_width", "scene_height", "size", "overlap"}
    if missing := need - set(index.columns):
        raise TrustmapError(f"tile index lacks column(s) {sorted(missing)}", index_path)
    first = index.iloc[0]
    base = index_path.parent
    with open_raster(base / first["path"]) as t0:
        scene_tf = t0.transform * Affine.translation(-int(first["col_off"]), -int(first["row_off"]))
        meta = {"count": t0.count, "dtype": t0.dtypes[0], "nodata": t0.nodata, "crs": t0.crs,
                "descriptions": t0.descriptions, "colormap": _colormap_or_none(t0)}
    grid = TileGrid(int(first["scene_height"]), int(first["scene_width"]), int(first["size"]),
                    int(first["overlap"]), scene_tf, meta["crs"])
    by_index = {int(r.tile): r for r in index.itertuples()}
    with StitchWriter(out_path, grid, meta["count"], meta["dtype"], mode=mode, nodata=meta["nodata"],
                      cog=cog, colormap=meta["colormap"],
                      band_descriptions=meta["descriptions"] if any(meta["descriptions"]) else None) as w:
        for tile in progress(grid, desc="stitch", total=len(grid), unit="tile"):
            rec = by_index.get(tile.index)
            if rec is None:
                w.skip(tile)
                continue
            if (int(rec.row_off), int(rec.col_off)) != (int(tile.window.row_off), int(tile.window.col_off)):
                raise TrustmapError(f"tile {tile.index} window does not match the index grid", base / rec.path)
            with open_raster(base / rec.path, verify=False) as src:
                w.write(tile, src.read())
    return Path(out_path)
