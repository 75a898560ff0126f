"""The raster access layer: open and inspect scenes and class masks, with errors that name
the file and say what is wrong.

Paths are local files or anything GDAL opens: ``/vsizip/…``, ``/vsicurl/…``, other ``/vsi``
handlers and URLs (``https://…``, ``s3://…``). Those are kept as ``str`` (``pathlib`` would
turn ``https://`` into ``https:/``) and not checked for existence: only opening can tell, and
then the error names the path with GDAL's reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from tiles.errors import TrustmapError

if TYPE_CHECKING:
    from tiles.align import SceneGrid

#: Suffixes read as vector files (by pyogrio) everywhere in trustmap; anything else is a raster.
VECTOR_SUFFIXES = frozenset(
    {".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".sqlite"}
)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_gdal_path(path: str | os.PathLike[str]) -> bool:
    """True for a GDAL virtual path (``/vsi…``) or a URL, which are not local files."""
    text = os.fspath(path)
    return text.startswith("/vsi") or bool(_URL.match(text))


def dataset_path(path: str | os.PathLike[str]) -> str | Path:
    """``path`` as :class:`Path` when local, as ``str`` when a GDAL path or URL."""
    text = os.fspath(path)
    return text if is_gdal_path(text) else Path(text)


def open_raster(path: str | os.PathLike[str], verify: bool = True) -> rasterio.DatasetReader:
    """Open a raster for reading.

    With ``verify``, the first and last block of every band are read, so a truncated file
    fails here with a clear message rather than halfway through a long job.
    """
    p = dataset_path(path)
    if isinstance(p, Path):
        if not p.exists():
            raise TrustmapError("file not found", p)
        if p.is_dir():
            raise TrustmapError("is a directory, expected a raster file", p)
    try:
        ds = rasterio.open(p)
    except RasterioIOError as exc:
        what = "not a readable raster" if isinstance(p, Path) else "cannot open this GDAL path or URL"
        raise TrustmapError(f"{what} ({_gdal_reason(exc)})", p) from None
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


def require_crs(ds: rasterio.DatasetReader, path: str | os.PathLike[str] | None = None) -> None:
    """Georeferenced work needs a CRS; say so plainly when it is missing."""
    if ds.crs is None:
        raise TrustmapError("has no CRS (coordinate reference system); assign one with gdal_edit.py -a_srs", path or ds.name)


def scene_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything an analyst checks before tiling a scene, as plain JSON-able values.

    The keys and values of ``rio info`` (``crs``, ``transform`` as 9 numbers, ``res``,
    ``bounds`` as a list, ``dtype``, ``count``, ``width``, ``height``, ``nodata``, ``lnglat``
    and the rest of the profile), so scripts written against one read the other, plus
    trustmap's extras: ``path``, ``crs_name``, ``dtypes``, ``block_shapes``, ``overviews``.
    """
    with open_raster(path) as ds:
        info: dict[str, Any] = {
            k: v for k, v in ds.profile.items() if isinstance(v, str | int | float | bool | None)
        }
        crs = ds.crs
        epsg = crs.to_epsg() if crs else None
        info.update(
            {
                "driver": ds.driver,
                "dtype": ds.dtypes[0] if ds.count else None,
                "count": ds.count,
                "width": ds.width,
                "height": ds.height,
                "nodata": ds.nodata,
                "shape": [ds.height, ds.width],
                "crs": (f"EPSG:{epsg}" if epsg else crs.to_string()) if crs else None,
                "transform": list(ds.transform),
                "res": list(ds.res),
                "bounds": list(ds.bounds),
                "colorinterp": [ci.name for ci in ds.colorinterp],
                "units": [u or None for u in ds.units],
                "descriptions": list(ds.descriptions),
                "indexes": list(ds.indexes),
                "mask_flags": [[flag.name for flag in flags] for flags in ds.mask_flag_enums],
                "tiled": bool(ds.profile.get("tiled", False)),
                "interleave": ds.interleaving.value.lower() if ds.interleaving else None,
            }
        )
        if crs:
            info["lnglat"] = list(ds.lnglat())
        # trustmap's extras
        info.update(
            {
                "path": os.fspath(dataset_path(path)),
                "crs_name": _crs_name(crs),
                "dtypes": list(ds.dtypes),
                "block_shapes": [list(s) for s in ds.block_shapes],
                "compression": ds.compression.value if ds.compression else None,
                "overviews": ds.overviews(1) if ds.count else [],
            }
        )
    return dict(sorted(info.items()))


def _crs_name(crs: CRS | None) -> str | None:
    if crs is None:
        return None
    try:
        from pyproj import CRS

        return CRS.from_user_input(crs.to_wkt()).name
    except Exception:  # pyproj is optional for naming only
        return None


def format_info(info: dict[str, Any]) -> str:
    """The human-readable form of :func:`scene_info`."""
    left, bottom, right, top = info["bounds"]
    lines = [
        f"{info['path']}  ({info['driver']})",
        f"  size        {info['width']} x {info['height']} px, {info['count']} band(s), dtype {', '.join(sorted(set(info['dtypes'])))}",
        f"  nodata      {info['nodata']}",
        f"  crs         {info['crs'] or 'none'}" + (f"  ({info['crs_name']})" if info["crs_name"] else ""),
        f"  resolution  {info['res'][0]:g} x {info['res'][1]:g}",
        f"  bounds      left {left:.3f}  bottom {bottom:.3f}  right {right:.3f}  top {top:.3f}",
        f"  blocks      {' '.join(f'{h}x{w}' for h, w in info['block_shapes'][:1])}"
        + ("  tiled" if info["tiled"] else "  striped")
        + (f", {info['compression']}" if info["compression"] else ", uncompressed")
        + (f", interleave {info['interleave']}" if info["interleave"] else ""),
        f"  overviews   {', '.join(str(o) for o in info['overviews']) or 'none'}",
    ]
    if any(info["descriptions"]):
        lines.append(f"  bands       {', '.join(str(d) for d in info['descriptions'])}")
    return "\n".join(lines)


def open_class_mask(
    path: str | os.PathLike[str],
    grid: SceneGrid | Mapping[str, Any] | rasterio.DatasetReader | None = None,
    verify: bool = True,
    role: str = "class mask",
    need_crs: bool = True,
) -> rasterio.DatasetReader:
    """Open a class mask: one band of integer codes, with a CRS, optionally on ``grid``.

    ``grid`` (a :class:`tiles.align.SceneGrid`, an open dataset or a profile with ``crs``,
    ``transform``, ``width``, ``height``) is the pixel grid the mask must be on: same CRS,
    same size, same transform (to a thousandth of a pixel). Each failed check is one error
    naming the file, what it has and what was expected. ``role`` names the mask in messages
    ("label raster", "truth"). ``need_crs=False`` accepts a mask without a CRS (only when no
    ``grid`` is given: a grid match needs one). Codes are not checked here (that needs a schema:
    :meth:`tiles.classes.ClassSchema.check_codes`).
    """
    ds = open_raster(path, verify=verify)
    try:
        if need_crs or grid is not None:
            require_crs(ds, path)
        if ds.count != 1:
            raise TrustmapError(
                f"a {role} must have one band, this raster has {ds.count} (one class code per pixel)",
                path,
            )
        if not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer):
            raise TrustmapError(
                f"a {role} must hold integer class codes (uint8), this raster is {ds.dtypes[0]}", path
            )
        if grid is not None:
            check_same_grid(ds, grid, path, role)
    except BaseException:
        ds.close()
        raise
    return ds


def _grid_parts(grid: Any) -> tuple[CRS | None, Any, int, int, str]:
    if isinstance(grid, Mapping):
        return (
            CRS.from_user_input(grid["crs"]) if grid.get("crs") else None,
            grid["transform"], int(grid["width"]), int(grid["height"]), str(grid.get("name", "the scene")),
        )  # fmt: skip
    return grid.crs, grid.transform, int(grid.width), int(grid.height), str(grid.name)


def check_same_grid(
    ds: rasterio.DatasetReader, grid: Any, path: str | os.PathLike[str], role: str = "raster"
) -> None:
    """Raise unless ``ds`` lies on ``grid`` pixel for pixel (CRS, size, transform)."""
    crs, transform, width, height, name = _grid_parts(grid)
    if crs is not None and ds.crs != crs:
        raise TrustmapError(
            f"{role} is in {ds.crs.to_string()}, {name} in {crs.to_string()}; put it on the scene "
            "grid first (tiles align)",
            path,
        )
    if (ds.width, ds.height) != (width, height):
        raise TrustmapError(
            f"{role} is {ds.width}x{ds.height} pixels, {name} {width}x{height}; put it on the "
            "scene grid first (tiles align)",
            path,
        )
    if not ds.transform.almost_equals(transform, precision=1e-3 * max(abs(transform.a), abs(transform.e), 1e-12)):
        raise TrustmapError(
            f"{role} has transform {tuple(ds.transform)[:6]}, {name} {tuple(transform)[:6]} "
            "(a different extent or resolution); put it on the scene grid first (tiles align)",
            path,
        )


# --- scenes read by window ------------------------------------------------------------------
IN_MEMORY_PIXELS = 1 << 26
"""Scenes up to this many pixels (64 Mpx) are read once and kept in memory."""


class SceneImage:
    """A multi-band scene read by window; cached in memory when it is small enough.

    ``valid`` follows GDAL's dataset mask (nodata value, mask band or alpha), so every
    trustmap step agrees on which pixels exist.
    """

    def __init__(self, path: str | os.PathLike[str], cache: bool | None = None) -> None:
        self.path = Path(path)
        with open_raster(self.path) as ds:
            if ds.count < 1:
                raise TrustmapError("raster has no bands", self.path)
            self.count, self.height, self.width = ds.count, ds.height, ds.width
            self.crs, self.transform = ds.crs, ds.transform
            self.dtype = ds.dtypes[0]
        self._bands: np.ndarray | None = None
        self._valid: np.ndarray | None = None
        if cache if cache is not None else self.height * self.width <= IN_MEMORY_PIXELS:
            self._load()

    def _load(self) -> None:
        with rasterio.open(self.path) as ds:
            self._bands = ds.read()
            self._valid = ds.dataset_mask() > 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def cached(self) -> bool:
        return self._bands is not None

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(bands (B, h, w), valid (h, w)) for a window inside the scene."""
        if self._bands is not None and self._valid is not None:
            rows, cols = window.toslices()
            return self._bands[:, rows, cols], self._valid[rows, cols]
        with rasterio.open(self.path) as ds:
            return ds.read(window=window), ds.dataset_mask(window=window) > 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole scene in memory (bands, valid): for superpixels and small scenes."""
        if self._bands is None:
            self._load()
        assert self._bands is not None and self._valid is not None
        return self._bands, self._valid

    def valid_mask(self) -> np.ndarray:
        """(H, W) bool; read block by block when the scene is not cached."""
        if self._valid is not None:
            return self._valid
        out = np.zeros(self.shape, bool)
        with rasterio.open(self.path) as ds:
            for _, win in ds.block_windows(1):
                out[win.toslices()] = ds.dataset_mask(window=win) > 0
        return out

    def overview(self, edge: int) -> tuple[np.ndarray, np.ndarray]:
        """A nearest-neighbour decimated copy of at most ``edge`` pixels per side."""
        if self._bands is not None and self._valid is not None:
            step = max(1, -(-max(self.height, self.width) // edge))
            return self._bands[:, ::step, ::step], self._valid[::step, ::step]
        scale = max(1.0, max(self.height, self.width) / edge)
        h, w = max(1, int(self.height / scale)), max(1, int(self.width / scale))
        with rasterio.open(self.path) as ds:
            bands = ds.read(out_shape=(ds.count, h, w))
            valid = ds.dataset_mask(out_shape=(h, w)) > 0
        return bands, valid
