"""Small georeferenced fixtures for the tiles tests: a scene, labels in another CRS, vectors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize

from tiles.align import SceneGrid
from tiles.classes import ClassSchema, load_schema

SCENE_CRS = "EPSG:32618"
SCENE_RES = 30.0
SCENE_ORIGIN = (300_000.0, 4_500_000.0)  # upper-left corner, UTM 18N
SCENE_SHAPE = (48, 64)  # rows, cols


def write_raster(
    path: Path,
    data: np.ndarray,
    crs: str | None,
    transform: Affine,
    nodata: float | None = None,
) -> Path:
    """Write a (bands, rows, cols) or (rows, cols) array as a GeoTIFF."""
    arr = data if data.ndim == 3 else data[None]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=arr.shape[2],
        height=arr.shape[1],
        count=arr.shape[0],
        dtype=arr.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(arr)
    return path


@pytest.fixture(scope="session")
def schema(landcover6_path) -> ClassSchema:
    return load_schema(landcover6_path)


@pytest.fixture(scope="session")
def scene_transform() -> Affine:
    return Affine(SCENE_RES, 0.0, SCENE_ORIGIN[0], 0.0, -SCENE_RES, SCENE_ORIGIN[1])


@pytest.fixture(scope="session")
def scene_grid(scene_transform) -> SceneGrid:
    """The test scene's grid: 64 x 48 px of 30 m, upper-left (300000, 4500000) in UTM 18N."""
    return SceneGrid(
        rasterio.crs.CRS.from_user_input(SCENE_CRS), scene_transform, SCENE_SHAPE[1], SCENE_SHAPE[0]
    )


@pytest.fixture(scope="session")
def scene_profile(scene_transform) -> dict:
    """The scene grid alone: what align needs to know about a scene."""
    return {
        "crs": SCENE_CRS,
        "transform": scene_transform,
        "height": SCENE_SHAPE[0],
        "width": SCENE_SHAPE[1],
    }


@pytest.fixture(scope="session")
def scene_path(tmp_path_factory, scene_transform) -> Path:
    """A 3-band uint8 scene, 64 x 48 px of 30 m in UTM 18N."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, size=(3, *SCENE_SHAPE), dtype=np.uint8)
    return write_raster(
        tmp_path_factory.mktemp("scene") / "scene.tif", data, SCENE_CRS, scene_transform
    )


@pytest.fixture(scope="session")
def truth_polygons(scene_transform) -> gpd.GeoDataFrame:
    """Class polygons in the scene CRS: water on the left, tree on the right, a built-up block."""
    x0, y0 = SCENE_ORIGIN
    w, h = SCENE_SHAPE[1] * SCENE_RES, SCENE_SHAPE[0] * SCENE_RES
    water = shapely.box(x0, y0 - h, x0 + 0.4 * w, y0)
    tree = shapely.box(x0 + 0.4 * w, y0 - h, x0 + w, y0)
    built = shapely.Point(x0 + 0.7 * w, y0 - 0.5 * h).buffer(0.2 * h)
    return gpd.GeoDataFrame(
        {"Class": ["water", "tree", "built-up"], "code": [1, 2, 4]},
        geometry=[water, tree.difference(built), built],
        crs=SCENE_CRS,
    )


@pytest.fixture(scope="session")
def truth_labels(truth_polygons, schema) -> np.ndarray:
    """``truth_polygons`` burnt straight onto the scene grid: what alignment should give."""
    return rasterize(
        zip(truth_polygons.geometry, truth_polygons["code"], strict=True),
        out_shape=SCENE_SHAPE,
        transform=Affine(SCENE_RES, 0.0, SCENE_ORIGIN[0], 0.0, -SCENE_RES, SCENE_ORIGIN[1]),
        fill=schema.ignore,
        dtype=np.uint8,
    )


@pytest.fixture(scope="session")
def vector_labels(tmp_path_factory, truth_polygons) -> Path:
    """``truth_polygons`` in WGS84, as a GeoPackage with the class as a name in 'Class'."""
    path = tmp_path_factory.mktemp("vector") / "labels.gpkg"
    truth_polygons.to_crs("EPSG:4326").to_file(path, layer="labels", driver="GPKG")
    return path


@pytest.fixture(scope="session")
def label_raster(tmp_path_factory, truth_polygons) -> Path:
    """``truth_polygons`` as a finer uint8 raster in WGS84, nodata 0 in a stripe of rows."""
    wgs = truth_polygons.to_crs("EPSG:4326")
    left, bottom, right, top = wgs.total_bounds
    res = (right - left) / 256
    transform = Affine(res, 0.0, left, 0.0, -res, top)
    shape = (int(np.ceil((top - bottom) / res)), 256)
    data = rasterize(
        zip(wgs.geometry, wgs["code"], strict=True),
        out_shape=shape,
        transform=transform,
        fill=0,
        dtype=np.uint8,
    )
    data[:8] = 0  # a nodata stripe along the top
    return write_raster(
        tmp_path_factory.mktemp("raster") / "labels.tif", data, "EPSG:4326", transform, nodata=0
    )


@pytest.fixture(scope="session")
def raster_writer() -> Callable[..., Path]:
    """write_raster(path, data, crs, transform, nodata=None), for tests that make their own."""
    return write_raster


@pytest.fixture
def make_raster(tmp_path, scene_transform) -> Callable[..., Path]:
    """Write an array as a GeoTIFF under tmp_path, on the scene grid unless told otherwise."""

    def make(
        name: str,
        data: np.ndarray,
        crs: str | None = SCENE_CRS,
        transform: Affine | None = None,
        nodata: float | None = None,
    ) -> Path:
        return write_raster(tmp_path / name, data, crs, transform or scene_transform, nodata)

    return make


@pytest.fixture(scope="session")
def rgb_byte(real_data) -> Path:
    """rasterio's RGB.byte.tif: real UTM 18N georeferencing with a nodata collar."""
    return real_data / "RGB.byte.tif"
