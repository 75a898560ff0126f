"""tiles.boxes: box files onto a raster's pixel grid (real NEON tile and DeepForest boxes)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from shapely.geometry import Point, box

from tiles.boxes import read_boxes, to_coco
from tiles.errors import TrustmapError

DATA = Path(__file__).resolve().parents[1] / "data"  # tests/data (see its README)
TIF, CSV = DATA / "OSBS_029.tif", DATA / "OSBS_029.csv"
# The real OSBS_029 files live in tests/data; a missing file fails, never skips.


@pytest.fixture(scope="module")
def csv_boxes() -> pd.DataFrame:
    return pd.read_csv(CSV)


def _map_polygons(df: pd.DataFrame) -> gpd.GeoDataFrame:
    """The CSV's pixel boxes as polygons in the raster's CRS (via the forward geotransform)."""
    with rasterio.open(TIF) as ds:
        t, crs = ds.transform, ds.crs
    geoms = []
    for r in df.itertuples():
        x0, y0 = t @ (r.xmin, r.ymin)
        x1, y1 = t @ (r.xmax, r.ymax)
        geoms.append(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    return gpd.GeoDataFrame({"label": df["label"].to_numpy()}, geometry=geoms, crs=crs)


def test_csv_of_the_real_tile(csv_boxes):
    table = read_boxes(TIF, CSV)
    assert (table.width, table.height, table.file_name) == (400, 400, "OSBS_029.tif")
    assert len(table) == 61 == len(csv_boxes)
    np.testing.assert_array_equal(
        table.xyxy, csv_boxes[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float)
    )
    coco = to_coco([table])
    assert coco["categories"] == [{"id": 1, "name": "Tree"}]
    a = coco["annotations"][0]
    assert (
        a["bbox"] == [203.0, 67.0, 24.0, 23.0] and a["area"] == 24.0 * 23.0 and a["image_id"] == 1
    )


def test_gpkg_in_raster_crs_gives_the_csv_boxes(tmp_path, csv_boxes):
    path = tmp_path / "trees.gpkg"
    _map_polygons(csv_boxes).to_file(path)
    table = read_boxes(TIF, path)
    np.testing.assert_allclose(
        table.xyxy, csv_boxes[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float), atol=1e-6
    )


def test_geojson_in_wgs84_is_reprojected(tmp_path, csv_boxes):
    path = tmp_path / "trees.geojson"
    _map_polygons(csv_boxes).to_crs(4326).to_file(path)
    table = read_boxes(TIF, path)
    # UTM -> WGS84 -> UTM bends box edges slightly; densified edges keep it under a centimetre
    np.testing.assert_allclose(
        table.xyxy, csv_boxes[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float), atol=0.05
    )


def test_vector_boxes_are_clipped_and_outside_ones_dropped(tmp_path):
    with rasterio.open(TIF) as ds:
        b, crs = ds.bounds, ds.crs
    polys = [
        box(b.left - 1.0, b.top - 2.0, b.left + 1.0, b.top - 1.0),  # half outside, left edge
        box(b.right + 5.0, b.top - 2.0, b.right + 6.0, b.top - 1.0),  # wholly outside
    ]
    path = tmp_path / "edge.gpkg"
    gpd.GeoDataFrame({"label": ["Tree", "Tree"]}, geometry=polys, crs=crs).to_file(path)
    table = read_boxes(TIF, path)
    np.testing.assert_allclose(table.xyxy, [[0.0, 10.0, 10.0, 20.0]], atol=1e-6)  # 0.1 m pixels
    with pytest.raises(TrustmapError, match="feature 0: box .* lies outside the 400x400 raster"):
        read_boxes(TIF, path, outside="error")


def test_to_coco_with_given_categories_and_unknown_label(csv_boxes):
    table = read_boxes(TIF, CSV)
    coco = to_coco([table, table], categories={7: "Tree"}, first_image_id=10)
    assert [im["id"] for im in coco["images"]] == [10, 11]
    assert {a["category_id"] for a in coco["annotations"]} == {7}
    assert len(coco["annotations"]) == 122
    with pytest.raises(TrustmapError, match=r"labels \['Tree'\] .* not among the categories"):
        to_coco([table], categories={1: "Shrub"})


def _write_csv(tmp_path, text: str) -> Path:
    p = tmp_path / "b.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "image_path,xmin,ymin,xmax,label\nOSBS_029.tif,1,2,3,Tree\n",
            r"lacks column\(s\) \['ymax'\]",
        ),
        (
            "image_path,xmin,ymin,xmax,ymax,label\nOSBS_029.tif,1,2,0,5,Tree\n",
            "line 2: box .* xmax <= xmin",
        ),
        (
            "image_path,xmin,ymin,xmax,ymax,label\nOSBS_029.tif,1,2,3,4,Tree\nOSBS_029.tif,390,2,410,5,Tree\n",
            "line 3: box .* outside the 400x400 raster",
        ),
        (
            "image_path,xmin,ymin,xmax,ymax,label\nOSBS_029.tif,a,2,3,4,Tree\n",
            "line 2: box coordinates .* not numbers",
        ),
        (
            "image_path,xmin,ymin,xmax,ymax,label\nother.tif,1,2,3,4,Tree\n",
            "no boxes for image 'OSBS_029.tif'",
        ),
        ("", "not a readable CSV"),
    ],
)
def test_bad_csv(tmp_path, text, message):
    with pytest.raises(TrustmapError, match=message) as err:
        read_boxes(TIF, _write_csv(tmp_path, text))
    assert "b.csv" in str(err.value)


def test_csv_rows_of_other_images_are_skipped(tmp_path):
    p = _write_csv(
        tmp_path,
        "image_path,xmin,ymin,xmax,ymax,label\nother.tif,1,2,3,4,Tree\ndir/OSBS_029.tif,5,6,7,8,Tree\n",
    )
    np.testing.assert_array_equal(read_boxes(TIF, p).xyxy, [[5, 6, 7, 8]])


def test_bad_vector_files(tmp_path):
    with rasterio.open(TIF) as ds:
        crs, b = ds.crs, ds.bounds
    pts = tmp_path / "points.gpkg"
    gpd.GeoDataFrame({"label": ["Tree"]}, geometry=[Point(b.left + 1, b.top - 1)], crs=crs).to_file(
        pts
    )
    with pytest.raises(TrustmapError, match="feature 0: is not a polygon"):
        read_boxes(TIF, pts)
    nocrs = tmp_path / "nocrs.gpkg"
    gpd.GeoDataFrame(
        {"label": ["Tree"]}, geometry=[box(b.left, b.top - 2, b.left + 2, b.top)]
    ).to_file(nocrs)
    with pytest.raises(TrustmapError, match="no CRS"):
        read_boxes(TIF, nocrs)
    with pytest.raises(TrustmapError, match="lacks the label column 'species'"):
        read_boxes(TIF, nocrs, label_column="species")
    broken = tmp_path / "broken.gpkg"
    broken.write_bytes(b"SQLite format 3\x00 not really")
    with pytest.raises(TrustmapError, match="broken.gpkg: not a readable vector file"):
        read_boxes(TIF, broken)


def test_missing_files(tmp_path):
    with pytest.raises(TrustmapError, match="nothere.csv: file not found"):
        read_boxes(TIF, tmp_path / "nothere.csv")
    with pytest.raises(TrustmapError, match="nothere.tif: file not found"):
        read_boxes(tmp_path / "nothere.tif", CSV)
    with pytest.raises(TrustmapError, match="unknown box file type '.txt'"):
        (tmp_path / "b.txt").write_text("x")
        read_boxes(TIF, tmp_path / "b.txt")
