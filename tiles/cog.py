"""Cloud Optimized GeoTIFFs: the one format every trustmap raster output ends in.

A COG opens fast in QGIS at any zoom (internal overviews) and streams over HTTP. The
recipe is the one GDAL documents: write a tiled GeoTIFF in windows (bounded memory), then
let GDAL's COG driver lay it out. Class maps get NEAREST overviews, so zooming out never
invents codes that are not in the schema (averaging 1 and 3 gives 2, a different class).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from tiles.classes import ClassSchema
from tiles.errors import TrustmapError
from tiles.io import atomic_path, ensure_writable_dir, staging_dir
from tiles.profiles import class_mask_profile
from tiles.progress import progress
from tiles.raster import dataset_path, open_class_mask

DEFAULT_BLOCKSIZE = 512


def translate_to_cog(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    resampling: Resampling | str = Resampling.nearest,
    blocksize: int = DEFAULT_BLOCKSIZE,
    compress: str = "deflate",
    predictor: bool = False,
    creation_options: Mapping[str, Any] | None = None,
) -> Path:
    """Copy the raster ``src`` into a validated COG at ``dst`` (atomically).

    Overviews are always rebuilt with ``resampling`` (existing ones are ignored) so a class
    map never carries averaged overviews. The colour table, nodata and CRS travel with the
    copy. ``predictor`` helps continuous data (probabilities, reflectances), not class maps.
    ``creation_options`` (the COG driver's, e.g. ``{"COMPRESS": "ZSTD"}``) go in last.
    """
    method = resampling if isinstance(resampling, str) else resampling.name
    dst = Path(dst)
    options = {
        "BLOCKSIZE": int(blocksize),
        "COMPRESS": compress.upper(),
        "OVERVIEW_RESAMPLING": method.upper(),
        "OVERVIEWS": "IGNORE_EXISTING",
        "BIGTIFF": "IF_SAFER",
    }
    if predictor:
        options["PREDICTOR"] = "YES"
    options.update({str(k).upper(): v for k, v in (creation_options or {}).items()})
    with atomic_path(dst) as tmp:
        try:
            rasterio.shutil.copy(str(src), str(tmp), driver="COG", **options)
        except RasterioError as exc:
            raise TrustmapError(f"cannot write COG ({exc})", dst) from None
        validate_cog(tmp, report_as=dst)
    return dst


def validate_cog(path: str | os.PathLike, report_as: str | os.PathLike | None = None) -> None:
    """Raise a :class:`TrustmapError` listing rio-cogeo's findings if ``path`` is not a COG."""
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _warnings = cog_validate(str(path), quiet=True)
    if not valid:
        raise TrustmapError(
            "not a valid Cloud Optimized GeoTIFF: " + "; ".join(errors), report_as or path
        )


def write_class_cog(
    mask_path: str | os.PathLike,
    dst: str | os.PathLike,
    schema: ClassSchema,
    *,
    blocksize: int = DEFAULT_BLOCKSIZE,
) -> Path:
    """Write a label raster as a uint8 class-map COG with the schema's colour table.

    The mask is streamed block by block: pixels equal to the source's declared nodata
    become ``schema.ignore`` (that is what nodata means for labels), every code is checked
    against the schema, and the result gets nodata = ignore and NEAREST overviews. Codes
    outside the schema are an error that names all of them and the file; nothing is
    written then.
    """
    mask_path, dst = dataset_path(mask_path), Path(dst)
    with open_class_mask(mask_path, need_crs=False) as src:
        profile = class_mask_profile(
            width=src.width, height=src.height, crs=src.crs, transform=src.transform,
            ignore=schema.ignore, blocksize=blocksize,
        )  # fmt: skip
        src_nodata = src.nodata
        # Stage next to the output, not in /tmp: a scene-sized class map may not fit there.
        staging = ensure_writable_dir(dst.parent)
        with staging_dir(staging, dst.stem) as tmpdir:
            staged = tmpdir / "classes.tif"
            seen = np.zeros(0, dtype=np.int64)
            allowed = np.array([*schema.codes, schema.ignore], dtype=np.int64)
            with rasterio.open(staged, "w", **profile) as out:
                out.write_colormap(1, schema.colormap())
                blocks = -(-src.width // blocksize) * -(-src.height // blocksize)
                for window in progress(_windows(src.width, src.height, blocksize), desc="class COG",
                                       total=blocks, unit="block"):  # fmt: skip
                    block = src.read(1, window=window)
                    if src_nodata is not None and src_nodata != schema.ignore:
                        block = np.where(block == src_nodata, schema.ignore, block)
                    seen = np.union1d(seen, np.unique(block))
                    if np.isin(seen, allowed).all():  # else keep scanning, to name every bad code
                        out.write(block.astype(np.uint8), 1, window=window)
            schema.check_codes(seen, mask_path)
            return translate_to_cog(staged, dst, resampling=Resampling.nearest, blocksize=blocksize)


def _windows(width: int, height: int, step: int) -> Iterator[Window]:
    """Row-major windows of ``step`` pixels, aligned to the staged file's block layout."""
    for row in range(0, height, step):
        for col in range(0, width, step):
            yield Window(col, row, min(step, width - col), min(step, height - row))
