"""Open and inspect scenes, with errors that name the file and say what is wrong."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from tiles.errors import TrustmapError


def open_raster(path: str | os.PathLike, verify: bool = True) -> rasterio.DatasetReader:
    """Open a raster for reading.

    With ``verify``, the first and last block of every band are read, so a truncated file
    fails here with a clear message rather than halfway through a long job.
    """
    p = Path(path)
    if not p.exists():
        raise TrustmapError("file not found", p)
    if p.is_dir():
        raise TrustmapError("is a directory, expected a raster file", p)
    try:
        ds = rasterio.open(p)
    except RasterioIOError as exc:
        raise TrustmapError(f"not a readable raster ({_gdal_reason(exc)})", p) from None
    if verify:
        try:
            _probe_blocks(ds)
        except RasterioError as exc:
            ds.close()
            raise TrustmapError(f"corrupt or truncated raster ({_gdal_reason(exc)})", p) from None
    return ds


def _gdal_reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text.replace(" not recognized as being in a supported file format", " is not in a supported raster format")


def _probe_blocks(ds: rasterio.DatasetReader) -> None:
    bh, bw = ds.block_shapes[0]
    last_row = max(0, ((ds.height - 1) // bh) * bh)
    last_col = max(0, ((ds.width - 1) // bw) * bw)
    for win in (
        Window(0, 0, min(bw, ds.width), min(bh, ds.height)),
        Window(last_col, last_row, ds.width - last_col, ds.height - last_row),
    ):
        ds.read(window=win)


def require_crs(ds: rasterio.DatasetReader, path: str | os.PathLike | None = None) -> None:
    """Georeferenced work needs a CRS; say so plainly when it is missing."""
    if ds.crs is None:
        raise TrustmapError("has no CRS (coordinate reference system); assign one with gdal_edit.py -a_srs", path or ds.name)


def scene_info(path: str | os.PathLike) -> dict[str, Any]:
    """Everything an analyst checks before tiling a scene, as plain JSON-able values."""
    with open_raster(path) as ds:
        overviews = ds.overviews(1) if ds.count else []
        crs = ds.crs
        info: dict[str, Any] = {
            "path": str(Path(path)),
            "driver": ds.driver,
            "width": ds.width,
            "height": ds.height,
            "count": ds.count,
            "dtypes": list(ds.dtypes),
            "nodata": ds.nodata,
            "crs": crs.to_string() if crs else None,
            "crs_name": _crs_name(crs),
            "resolution": list(ds.res),
            "bounds": {"left": ds.bounds.left, "bottom": ds.bounds.bottom, "right": ds.bounds.right, "top": ds.bounds.top},
            "transform": list(ds.transform)[:6],
            "block_shapes": [list(s) for s in ds.block_shapes],
            "tiled": bool(ds.profile.get("tiled", False)),
            "interleave": ds.interleaving.value if ds.interleaving else None,
            "compression": ds.compression.value if ds.compression else None,
            "overviews": overviews,
            "band_descriptions": list(ds.descriptions),
            "colorinterp": [ci.name for ci in ds.colorinterp],
        }
    return info


def _crs_name(crs) -> str | None:
    if crs is None:
        return None
    try:
        from pyproj import CRS

        return CRS.from_user_input(crs.to_wkt()).name
    except Exception:  # pyproj is optional for naming only
        return None


def format_info(info: dict[str, Any]) -> str:
    """The human-readable form of :func:`scene_info`."""
    b = info["bounds"]
    lines = [
        f"{info['path']}  ({info['driver']})",
        f"  size        {info['width']} x {info['height']} px, {info['count']} band(s), dtype {', '.join(sorted(set(info['dtypes'])))}",
        f"  nodata      {info['nodata']}",
        f"  crs         {info['crs'] or 'none'}" + (f"  ({info['crs_name']})" if info["crs_name"] else ""),
        f"  resolution  {info['resolution'][0]:g} x {info['resolution'][1]:g}",
        f"  bounds      left {b['left']:.3f}  bottom {b['bottom']:.3f}  right {b['right']:.3f}  top {b['top']:.3f}",
        f"  blocks      {' '.join(f'{h}x{w}' for h, w in info['block_shapes'][:1])}"
        + ("  tiled" if info["tiled"] else "  striped")
        + (f", {info['compression']}" if info["compression"] else ", uncompressed")
        + (f", interleave {info['interleave']}" if info["interleave"] else ""),
        f"  overviews   {', '.join(str(o) for o in info['overviews']) or 'none'}",
    ]
    descs = [d for d in info["band_descriptions"] if d]
    if descs:
        lines.append(f"  bands       {', '.join(str(d) for d in info['band_descriptions'])}")
    return "\n".join(lines)
