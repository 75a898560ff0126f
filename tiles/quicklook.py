"""RGB quick-looks of any scene: an 8-bit PNG for people, a georeferenced background for QGIS.

Why a stretch: reflectance-like uint16 values (or a dark Landsat byte scene) look black when
shown raw, so each band is stretched between its 2nd and 98th percentile over valid pixels
only (a nodata collar would otherwise pin the low end at 0). Why decimated reads: a
quick-look of a 50k-pixel scene must not load it at full resolution; rasterio reads straight
into the small output shape (and uses overviews when the file has them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.enums import ColorInterp, Resampling

from tiles.errors import TrustmapError
from tiles.io import atomic_path, check_output_file
from tiles.profiles import gtiff_profile
from tiles.raster import dataset_path, open_raster

_NAMES = {
    "red": ("red", "r", "b4_red"),
    "green": ("green", "g", "b3_green"),
    "blue": ("blue", "b", "b2_blue"),
}
_INTERP = {"red": ColorInterp.red, "green": ColorInterp.green, "blue": ColorInterp.blue}


@dataclass(frozen=True)
class Quicklook:
    """What :func:`write_quicklook` wrote and how."""

    png: Path | None
    tif: Path | None
    bands: tuple[int, int, int]  # 1-based source bands shown as R, G, B (all equal: grey)
    shape: tuple[int, int]  # rows, cols of the rendering


def pick_rgb_bands(src: rasterio.DatasetReader) -> tuple[int, int, int]:
    """R, G, B band indexes: from band descriptions or colour interpretation, else by count.

    Without metadata a 4-band scene is taken as B, G, R, NIR (so 3, 2, 1), 3 or more bands
    as R, G, B (1, 2, 3), and anything else is shown as grey from band 1.
    """
    found: dict[str, int] = {}
    for colour in ("red", "green", "blue"):
        for i, desc in enumerate(src.descriptions, start=1):
            if desc and desc.strip().lower() in _NAMES[colour]:
                found.setdefault(colour, i)
        if colour not in found:
            for i, ci in enumerate(src.colorinterp, start=1):
                if ci == _INTERP[colour]:
                    found.setdefault(colour, i)
    if len(found) == 3 and len(set(found.values())) == 3:
        return found["red"], found["green"], found["blue"]
    if src.count == 4:
        return 3, 2, 1
    if src.count >= 3:
        return 1, 2, 3
    return 1, 1, 1


def default_png(scene_path: str | os.PathLike[str]) -> Path:
    """``<stem>.quicklook.png`` beside a local scene; a remote scene needs an explicit name."""
    scene = dataset_path(scene_path)
    if not isinstance(scene, Path):
        raise TrustmapError("is not a local file, so there is no folder beside it: give -o/--output", scene)
    return scene.with_name(f"{scene.stem}.quicklook.png")


def _check_bands(bands: Sequence[int], count: int, path: str) -> tuple[int, int, int]:
    picked = tuple(int(b) for b in bands)
    if len(picked) == 1:
        picked = picked * 3
    if len(picked) != 3:
        raise TrustmapError(f"give 3 bands (R, G, B) or 1 band (grey), got {list(bands)}", path)
    bad = [b for b in picked if not 1 <= b <= count]
    if bad:
        raise TrustmapError(f"band(s) {bad} do not exist; the raster has bands 1..{count}", path)
    return picked[0], picked[1], picked[2]


def stretch(
    values: np.ndarray, valid: np.ndarray, low: float = 2.0, high: float = 98.0
) -> np.ndarray:
    """Linear percentile stretch of one band to 0..255, percentiles over ``valid`` pixels."""
    v = values[valid]
    if v.size == 0:
        return np.zeros(values.shape, np.uint8)
    lo, hi = np.percentile(v, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    out = (values.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_rgb(
    src: rasterio.DatasetReader, bands: Sequence[int] | None = None, max_size: int = 2048
) -> tuple[np.ndarray, np.ndarray, Affine, tuple[int, int, int]]:
    """A stretched RGB rendering at most ``max_size`` on its long side.

    Returns (rgb uint8 (h, w, 3), valid bool (h, w), transform of the rendering, bands used).
    """
    if max_size < 1:
        raise TrustmapError(f"max_size must be at least 1, got {max_size}", src.name)
    picked = pick_rgb_bands(src) if bands is None else _check_bands(bands, src.count, src.name)
    scale = max(src.width, src.height) / max_size
    if scale > 1:
        h, w = max(1, round(src.height / scale)), max(1, round(src.width / scale))
    else:
        h, w = src.height, src.width
    unique = list(dict.fromkeys(picked))
    resampling = Resampling.average if (h, w) != (src.height, src.width) else Resampling.nearest
    data = src.read(unique, out_shape=(len(unique), h, w), resampling=resampling)
    # GDAL's dataset mask: a pixel is nodata only where every band is (the collar, the wedge),
    # so a genuinely black value in one band stays visible.
    valid = src.dataset_mask(out_shape=(h, w), resampling=Resampling.nearest) > 0
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    layers = {b: stretch(data[k], valid) for k, b in enumerate(unique)}
    rgb = np.stack([layers[b] for b in picked], axis=-1)
    rgb[~valid] = 0
    transform = src.transform @ Affine.scale(src.width / w, src.height / h)
    return rgb, valid, transform, picked


def write_quicklook(
    scene_path: str | os.PathLike,
    out_png: str | os.PathLike | None = None,
    out_tif: str | os.PathLike | None = None,
    bands: Sequence[int] | None = None,
    max_size: int = 2048,
    creation_options: Mapping[str, Any] | None = None,
) -> Quicklook:
    """Write a stretched RGB PNG (nodata transparent) and/or a georeferenced 3-band uint8 GeoTIFF.

    The GeoTIFF keeps the scene's CRS and extent at the decimated resolution, with nodata=0
    (valid pixels are lifted to at least 1), so QGIS can use it as a light background layer.
    With neither output given, the PNG goes next to the scene as ``<stem>.quicklook.png``.
    ``creation_options`` (GDAL GTiff options) override the GeoTIFF's layout.
    """
    scene_path = dataset_path(scene_path)
    if out_png is None and out_tif is None:
        out_png = default_png(scene_path)
    for opt, out in (("--png", out_png), ("--tif", out_tif)):
        if out is not None:
            check_output_file(out, [scene_path], option=opt)
    if out_png is not None and out_tif is not None and Path(out_png).resolve() == Path(out_tif).resolve():
        raise TrustmapError("--png and --tif name the same file", out_png)
    with open_raster(scene_path) as src:
        rgb, valid, transform, picked = render_rgb(src, bands, max_size)
        crs = src.crs
    png = tif = None
    if out_png is not None:
        png = Path(out_png)
        rgba = np.dstack([rgb, np.where(valid, 255, 0).astype(np.uint8)])
        with atomic_path(png) as tmp:
            Image.fromarray(rgba, "RGBA").save(tmp, format="PNG")
    if out_tif is not None:
        tif = Path(out_tif)
        h, w = valid.shape
        data = np.where(valid[None], np.maximum(rgb.transpose(2, 0, 1), 1), 0).astype(np.uint8)
        profile = gtiff_profile(
            width=w, height=h, count=3, dtype="uint8", crs=crs, transform=transform, nodata=0,
            tiled=True, predictor=2, interleave="pixel", bigtiff=None, photometric="RGB",
            **dict(creation_options or {}),
        )  # fmt: skip
        with atomic_path(tif) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    return Quicklook(png, tif, picked, valid.shape)
