"""The sample scene as arrays or as GeoTIFFs: strips streamed in bounded memory, georeferenced,
styled, atomically written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from tiles.classes import ClassSchema, builtin_schema_path, load_schema
from tiles.errors import TrustmapError
from tiles.io import atomic_path, ensure_writable_dir
from tiles.progress import progress
from tiles.samples.layout import _layout
from tiles.samples.render import _render_strip
from tiles.samples.spectra import BAND_NAMES, CLASS_CODES, IGNORE, NODATA, REFLECTANCE_SCALE

CRS = "EPSG:32643"  # WGS 84 / UTM 43N
ORIGIN = (770000.0, 1430000.0)  # upper-left corner: south-west Bengaluru (about 77.49 E, 12.93 N)
PIXEL_M = 1.0

STRIP = 256  # rows rendered at a time; equal to the GeoTIFF block so writes are block-aligned

_DEFAULT_SCHEMA = builtin_schema_path("landcover6")


@dataclass(frozen=True)
class SamplePaths:
    """Where :func:`make_sample` wrote its three files."""

    scene: Path
    truth: Path
    quicklook: Path


def _check_size(size: int) -> None:
    if not 256 <= int(size) <= 65536:
        raise TrustmapError(f"sample size must be between 256 and 65536 pixels, got {size}")


def _strips(size: int, seed: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    _check_size(size)
    layout = _layout(int(size), int(seed))
    for r0 in range(0, size, STRIP):
        r1 = min(size, r0 + STRIP)
        bands, truth = _render_strip(layout, r0, r1)
        yield r0, r1, bands, truth


def generate_scene_arrays(size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample scene in memory: bands uint16 (4, H, W) B,G,R,NIR; truth uint8; valid bool.

    For tests and benchmarks; :func:`make_sample` writes the same pixels to disk strip by
    strip without holding the whole scene.
    """
    bands = np.empty((4, size, size), np.uint16)
    truth = np.empty((size, size), np.uint8)
    for r0, r1, b, t in _strips(size, seed):
        bands[:, r0:r1] = b
        truth[r0:r1] = t
    return bands, truth, truth != IGNORE


def scene_transform() -> Affine:
    """Pixel -> EPSG:32643 metres for the sample scene (north-up, 1 m)."""
    return Affine(PIXEL_M, 0.0, ORIGIN[0], 0.0, -PIXEL_M, ORIGIN[1])


def _gtiff_profile(size: int, count: int, dtype: str, nodata: int) -> dict:
    return dict(
        driver="GTiff",
        width=size,
        height=size,
        count=count,
        dtype=dtype,
        crs=CRS,
        transform=scene_transform(),
        nodata=nodata,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        predictor=2,
        interleave="pixel",
    )


def _schema(schema_path: str | os.PathLike | None) -> ClassSchema:
    path = Path(schema_path) if schema_path is not None else _DEFAULT_SCHEMA
    schema = load_schema(path)
    missing = sorted(set(CLASS_CODES) - set(schema.codes))
    if missing:
        raise TrustmapError(
            f"the sample scene uses class codes {list(CLASS_CODES)}; schema lacks {missing}", path
        )
    if schema.ignore != IGNORE:
        raise TrustmapError(
            f"the sample scene marks nodata with ignore={IGNORE}; schema says {schema.ignore}", path
        )
    return schema


def _write_rasters(scene: Path, truth: Path, size: int, seed: int, schema: ClassSchema) -> None:
    """Stream the strips into both GeoTIFFs, so memory stays bounded at any size."""
    tag = f"size={size} seed={seed}"
    scene_profile = _gtiff_profile(size, 4, "uint16", NODATA)
    with (
        rasterio.open(scene, "w", photometric="MINISBLACK", **scene_profile) as dst,
        rasterio.open(truth, "w", **_gtiff_profile(size, 1, "uint8", IGNORE)) as lab,
    ):
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.nir]
        dst.descriptions = BAND_NAMES
        dst.scales = (REFLECTANCE_SCALE,) * 4
        dst.offsets = (0.0,) * 4
        dst.update_tags(TRUSTMAP_SAMPLE=tag, UNITS="surface reflectance x 10000")
        lab.write_colormap(1, schema.colormap())
        lab.set_band_description(1, "class")
        names = ", ".join(f"{c.code}={c.name}" for c in schema.classes)
        lab.update_tags(TRUSTMAP_SAMPLE=tag, CLASSES=names)
        strips = progress(_strips(size, seed), desc="sample", total=-(-size // STRIP), unit="strip")
        for r0, r1, bands, labels in strips:
            win = Window(0, r0, size, r1 - r0)
            dst.write(bands, window=win)
            lab.write(labels, 1, window=win)


def make_sample(
    out_dir: str | os.PathLike,
    size: int = 2048,
    seed: int = 0,
    schema_path: str | os.PathLike | None = None,
) -> SamplePaths:
    """Write ``scene.tif`` (4-band uint16), ``truth.tif`` (uint8 classes) and ``quicklook.png``.

    Each file appears atomically; the same (size, seed) gives byte-identical files.
    """
    from tiles.quicklook import write_quicklook

    _check_size(size)
    schema = _schema(schema_path)
    out = ensure_writable_dir(out_dir)
    paths = SamplePaths(out / "scene.tif", out / "truth.tif", out / "quicklook.png")
    with atomic_path(paths.scene) as scene_tmp, atomic_path(paths.truth) as truth_tmp:
        _write_rasters(scene_tmp, truth_tmp, size, seed, schema)
    write_quicklook(paths.scene, out_png=paths.quicklook)
    return paths
