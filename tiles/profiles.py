"""GeoTIFF creation profiles: the one place that says how trustmap lays out a raster it writes.

Why one module: a class map, a tile and a reflectance scene each want a different layout
(block size, predictor, interleave), but a given kind must be the same wherever it is
written, and a user's ``--co KEY=VALUE`` must be applied, and checked, the same way.

- :func:`gtiff_profile`: the base (tiled where the raster is large enough, deflate,
  ``BIGTIFF=IF_SAFER``); everything else is built from it;
- :func:`class_mask_profile`: single-band uint8 codes with ``ignore`` as nodata;
- :func:`check_creation_options`: refuse options the output driver does not know, before work;
- :func:`check_raster_suffix`: refuse an output name whose suffix means another format.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.drivers import driver_from_extension
from rasterio.errors import NotGeoreferencedWarning

from tiles.errors import TrustmapError

#: Block edge of the GeoTIFFs trustmap writes, unless a caller needs another.
BLOCKSIZE = 256

#: Output suffixes each driver is written under.
DRIVER_SUFFIXES: dict[str, tuple[str, ...]] = {"GTiff": (".tif", ".tiff"), "COG": (".tif", ".tiff")}


def gtiff_profile(
    *,
    width: int,
    height: int,
    count: int,
    dtype: str | np.dtype[Any],
    crs: Any,
    transform: Affine | None,
    nodata: float | None = None,
    blocksize: int = BLOCKSIZE,
    tiled: bool | None = None,
    compress: str = "deflate",
    predictor: int | None = None,
    interleave: str | None = None,
    bigtiff: str | None = "IF_SAFER",
    **extra: Any,
) -> dict[str, Any]:
    """A GTiff profile for :func:`rasterio.open` in ``"w"`` mode.

    Tiled with ``blocksize`` blocks (a multiple of 16) when ``tiled``, or, with ``tiled=None``,
    when both edges reach ``blocksize`` (a smaller raster is written in strips, as GDAL would). ``interleave``
    defaults to ``band`` for several bands (windowed reads of one band touch one band).
    ``extra`` entries (e.g. ``photometric``, or a user's creation options) go in last.
    """
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": int(width),
        "height": int(height),
        "count": int(count),
        "dtype": np.dtype(dtype).name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "compress": compress,
        "interleave": interleave or ("band" if count > 1 else "pixel"),
    }
    if tiled or (tiled is None and width >= blocksize and height >= blocksize):
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    if predictor is not None:
        profile["predictor"] = predictor
    if bigtiff is not None:
        profile["BIGTIFF"] = bigtiff
    profile.update(extra)
    return profile


def class_mask_profile(
    *,
    width: int,
    height: int,
    crs: Any,
    transform: Affine,
    ignore: int,
    blocksize: int = BLOCKSIZE,
    **extra: Any,
) -> dict[str, Any]:
    """Single-band uint8 class codes, ``ignore`` as nodata, always tiled, deflate, no predictor.

    (Horizontal differencing does not help codes: neighbouring classes are not near in value.)
    """
    return gtiff_profile(
        width=width, height=height, count=1, dtype="uint8", crs=crs, transform=transform,
        nodata=ignore, blocksize=blocksize, tiled=True, **extra,
    )  # fmt: skip


def check_raster_suffix(
    path: str | os.PathLike[str], driver: str = "GTiff", option: str = "--output"
) -> Path:
    """Refuse an output name whose suffix GDAL reads as another format (``x.jpg`` for a GTiff)."""
    out = Path(path)
    allowed = DRIVER_SUFFIXES.get(driver, ())
    if out.suffix.lower() in allowed:
        return out
    try:
        other = driver_from_extension(out)
    except ValueError:
        other = None
    what = f"a {other} name" if other and other not in (driver, "GTiff") else "not a GeoTIFF name"
    raise TrustmapError(
        f"{option} is {what} ('{out.suffix or 'no suffix'}'); this command writes a GeoTIFF, so "
        f"use {' or '.join(allowed)}",
        out,
    )


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _gdal_warnings() -> Iterator[list[str]]:
    """GDAL's warnings during the block (rasterio logs them; it raises only on errors)."""
    handler = _Collect()
    logger = logging.getLogger("rasterio")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def check_creation_options(
    options: Mapping[str, Any],
    driver: str = "GTiff",
    base: Mapping[str, Any] | None = None,
    option: str = "--co",
) -> dict[str, str]:
    """Return ``options`` (upper-case keys, text values) if ``driver`` accepts them.

    The check asks GDAL itself: a 16 x 16 dataset is created in memory (``/vsimem/``) with
    ``base`` (dtype, count, nodata of the real output) and the options, and any warning
    GDAL gives about them ("does not support creation option", a bad value) becomes an
    error naming the option, before any work is done.
    """
    opts = {str(k).upper(): str(v) for k, v in options.items()}
    if not opts:
        return opts
    probe: dict[str, Any] = {
        "count": 1, "dtype": "uint8", "nodata": None, **(dict(base) if base else {}),
    }  # fmt: skip
    probe = {k: probe[k] for k in ("count", "dtype", "nodata")}
    name = f"/vsimem/trustmap-co-probe-{os.getpid()}-{id(opts)}.tif"
    target = name if driver != "COG" else name + ".src.tif"
    try:
        with _gdal_warnings() as messages, warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            if driver == "COG":
                with rasterio.open(target, "w", driver="GTiff", width=16, height=16, **probe) as ds:
                    ds.write(np.zeros((ds.count, 16, 16), dtype=ds.dtypes[0]))
                rasterio.shutil.copy(target, name, driver="COG", **opts)
            else:
                with rasterio.open(name, "w", driver=driver, width=16, height=16, **probe, **opts) as ds:
                    ds.write(np.zeros((ds.count, 16, 16), dtype=ds.dtypes[0]))
    except Exception as exc:  # GDAL's CPLE_* errors are not all RasterioErrors
        raise TrustmapError(
            f"{option} {_shown(opts)} refused by GDAL's {driver} driver ({_reason(str(exc))})"
        ) from None
    finally:
        for p in (name, target):
            with contextlib.suppress(Exception):
                rasterio.shutil.delete(p)
    about = [m for m in messages if any(k.lower() in m.lower() for k in opts)]
    if about:
        raise TrustmapError(f"{option} {_shown(opts)}: GDAL's {driver} driver says {_reason(about[0])}")
    return opts


def _reason(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    first = first.split(": ", 1)[1] if first.startswith("/vsimem/") and ": " in first else first
    return re.sub(r"^CPLE_\w+ in ", "", first).rstrip(".")


def _shown(opts: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in opts.items())
