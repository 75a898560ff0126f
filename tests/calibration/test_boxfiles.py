"""calibration.boxfiles: scored DeepForest-style CSVs and GIS polygons on a georeferenced tile."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from calibration.boxfiles import categories_for, read_scored_boxes, scene_truth, to_detections
from tiles.errors import TrustmapError

ROOT = Path(__file__).resolve().parents[2]
OSBS = ROOT / "tests" / "data" / "OSBS_029.tif"
OSBS_CSV = ROOT / "tests" / "data" / "OSBS_029.csv"

HEADER = "xmin,ymin,xmax,ymax,label,score"


def _csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


def test_deepforest_predictions_csv_reads_its_rows_only(tmp_path) -> None:
    p = _csv(tmp_path / "p.csv", f"""
image_path,{HEADER}
OSBS_029.tif,10,20,40,60,Tree,0.9
other.tif,0,0,5,5,Tree,0.8
data/OSBS_029.tif,380,380,420,410,Tree,0.25
""")  # fmt: skip
    b = read_scored_boxes(OSBS, p)
    assert len(b) == 2  # other.tif skipped; a folder before the name still matches
    np.testing.assert_array_equal(b.xyxy, [[10, 20, 40, 60], [380, 380, 400, 400]])  # clipped to 400x400
    np.testing.assert_array_equal(b.scores, [0.9, 0.25])
    d = to_detections(b, {1: "Tree"})
    assert d.category_id.tolist() == [1, 1] and d.bbox[0].tolist() == [10, 20, 30, 40]


def test_probs_column_becomes_the_probability_vector(tmp_path) -> None:
    probs = json.dumps({"Tree": 0.7, "background": 0.3}).replace('"', '""')
    p = _csv(tmp_path / "p.csv", f'{HEADER},probs\n1,1,9,9,Tree,0.7,"{probs}"')
    d = to_detections(read_scored_boxes(OSBS, p), {1: "Tree"})
    assert d.probs.tolist() == [[0.7, 0.3]] and d.prob_category_ids == (1,)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("xmin,ymin,xmax,ymax,label\n1,1,5,5,Tree", "lacks column(s) ['score']"),
        (f"{HEADER}\n1,1,5,5,Tree,1.5", "line 2: score 1.5 is not a probability"),
        (f"{HEADER}\n5,1,5,5,Tree,0.5", "line 2: box [5.0, 1.0, 5.0, 5.0] has xmax <= xmin"),
        (f"{HEADER}\n1,1,5,5,Tree,0.5\n500,500,520,520,Tree,0.5", "line 3: box [500.0, 500.0, 520.0, 520.0] lies wholly outside the 400x400 scene"),
        (f"{HEADER},probs\n1,1,5,5,Tree,0.5,nope", "line 2: 'probs' is not JSON"),
    ],
)  # fmt: skip
def test_bad_predictions_csv_names_the_line(tmp_path, text, says) -> None:
    p = _csv(tmp_path / "bad.csv", text)
    with pytest.raises(TrustmapError) as err:
        read_scored_boxes(OSBS, p)
    assert says in str(err.value) and str(p) in str(err.value)


def test_vector_predictions_in_another_crs_land_on_the_pixels(tmp_path) -> None:
    with rasterio.open(OSBS) as src:
        t = src.transform
    px = np.array([[10.0, 20.0, 40.0, 60.0], [200.0, 150.0, 260.0, 190.0]])
    polys = [shapely.box(*(t * (x0, y1)), *(t * (x1, y0))) for x0, y0, x1, y1 in px]
    path = tmp_path / "p.geojson"
    gpd.GeoDataFrame({"label": ["Tree", "Snag"], "score": [0.6, 0.4]}, geometry=polys, crs="EPSG:32617").to_crs(4326).to_file(path)
    b = read_scored_boxes(OSBS, path)
    np.testing.assert_allclose(b.xyxy, px, atol=0.05)  # 5 mm at 0.1 m pixels after two reprojections
    assert categories_for(scene_truth(OSBS, OSBS_CSV).labels, b.labels) == {1: "Snag", 2: "Tree"}


def test_truth_that_misses_the_scene_is_an_error_naming_both_crs(tmp_path) -> None:
    with rasterio.open(OSBS) as src:
        b = src.bounds
    path = tmp_path / "t.gpkg"
    box = shapely.box(b.left + 5, b.bottom + 5, b.left + 10, b.bottom + 10)
    gpd.GeoDataFrame({"label": ["Tree"]}, geometry=[box], crs="EPSG:32618").to_file(path)  # one zone east
    with pytest.raises(TrustmapError) as err:
        scene_truth(OSBS, path)
    msg = str(err.value)
    assert "no box lies on the scene OSBS_029.tif" in msg and "EPSG:32618" in msg and "EPSG:32617" in msg
    assert str(path) in msg and "\n" not in msg
