"""calibration.scene: tiled detection over scenes, merged by ownership, and its band handling.

The seam tests run the real sample detector over a 1024x1024 mosaic of sample images (25
tiles of 256 px, overlap 64): the mosaic's pitch (256) is not the grid's stride (192), so the
grid's core boundaries cut through objects. The oracle test needs no model: a "detector"
that returns every object clipped to its tile, as a real one returns objects cut by the
tile edge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from torchvision.ops import box_iou

from calibration.adapters import load_detector
from calibration.calibrators import Calibrator
from calibration.detections import Detections
from calibration.samples import write_sample_scene
from calibration.scene import (
    SceneSettings,
    check_calibrator,
    grid_for,
    owned,
    parse_bands,
    plan_scene,
    read_tile,
    run_tiles,
)
from tiles.errors import TrustmapError
from tiles.grid import TileGrid

NAMES = {1: "vehicle", 2: "building", 3: "storage tank", 4: "ship"}
SETTINGS = SceneSettings(tile_size=256, overlap=64, batch_size=5)


@pytest.fixture(scope="module")
def detector():
    return load_detector("sample_fasterrcnn")


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    return write_sample_scene(tmp_path_factory.mktemp("scene") / "mosaic.tif", cells=4)


def _xyxy(d: Detections) -> np.ndarray:
    return np.column_stack([d.bbox[:, :2], d.bbox[:, :2] + d.bbox[:, 2:]])


def _matches(truth_xyxy, truth_labels, dets: Detections, min_score: float = 0.5) -> np.ndarray:
    """Per truth object: how many detections of its class with score >= min_score overlap it at IoU >= 0.5."""
    keep = dets.score >= min_score
    if not keep.any():
        return np.zeros(len(truth_xyxy), int)
    iou = box_iou(torch.tensor(truth_xyxy), torch.tensor(_xyxy(dets)[keep])).numpy()
    labels = np.array([NAMES[int(c)] for c in dets.category_id[keep]])
    return ((iou >= 0.5) & (truth_labels[:, None] == labels[None])).sum(axis=1)


def _seam_objects(xyxy: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Objects cut by a core boundary (the line where ownership passes to the next tile)."""
    cut = np.zeros(len(xyxy), bool)
    for lo, _ in grid.col_cores[1:]:
        cut |= (xyxy[:, 0] < lo) & (xyxy[:, 2] > lo)
    for lo, _ in grid.row_cores[1:]:
        cut |= (xyxy[:, 1] < lo) & (xyxy[:, 3] > lo)
    return cut


def _run(plan, detector, settings=SETTINGS, calibrator=None):
    chunks = list(run_tiles(plan, detector, settings, calibrator, show_progress=False))
    dets = Detections.concat([c.dets for c in chunks if len(c.dets)])
    cal = [c.calibrated for c in chunks if c.calibrated is not None]
    return dets, (np.concatenate(cal) if cal else None), sum(c.tiles_done for c in chunks)


def test_ownership_keeps_every_object_once_even_when_tiles_see_it_cut() -> None:
    rng = np.random.default_rng(3)
    grid = TileGrid(1000, 1000, 256, 64)
    assert len(grid) >= 16
    # 400 objects up to 40 px (< overlap), a third of them centred on a core boundary
    size = rng.uniform(6, 40, (400, 2))
    centre = rng.uniform(0, 1000, (400, 2))
    bounds = [lo for lo, _ in grid.col_cores[1:]]
    centre[:130, 0] = rng.choice(bounds, 130) + rng.uniform(-3, 3, 130)
    truth = np.clip(np.column_stack([centre - size / 2, centre + size / 2]), 0, 1000)
    truth = truth[(truth[:, 2] - truth[:, 0] > 2) & (truth[:, 3] - truth[:, 1] > 2)]
    ids, boxes = [], []
    for t in grid:  # the oracle: every object visible in the window, clipped by the window edge
        c0, r0 = t.window.col_off, t.window.row_off
        local = truth - [c0, r0, c0, r0]
        local = np.clip(local, 0, [t.window.width, t.window.height] * 2)
        vis = (local[:, 2] - local[:, 0] >= 1) & (local[:, 3] - local[:, 1] >= 1)
        ids.append(np.full(vis.sum(), t.index))
        boxes.append(local[vis])
    xyxy = np.concatenate(boxes)
    dets = Detections(
        image_id=np.concatenate(ids), bbox=np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]]),
        category_id=np.ones(len(xyxy), np.int64), score=np.ones(len(xyxy)),
    )  # fmt: skip
    keep = owned(dets, {t.index: t for t in grid})
    kept = dets.subset(keep)
    off = np.array([[grid[int(i)].window.col_off, grid[int(i)].window.row_off] for i in kept.image_id])
    scene = _xyxy(kept) + np.hstack([off, off])
    # every object exactly once, and whole: the owner saw it uncut
    iou = box_iou(torch.tensor(truth), torch.tensor(scene)).numpy()
    assert len(scene) == len(truth)
    assert (iou > 0.999).sum(axis=1).tolist() == [1] * len(truth)
    # without ownership the cut copies would remain: many objects counted two to four times
    assert len(dets) > 1.3 * len(truth)


def test_no_object_lost_or_doubled_at_seams(mosaic, detector) -> None:
    plan = plan_scene(mosaic.path)
    grid = grid_for(plan, SETTINGS)
    assert len(grid) == 25
    dets, _, tiles = _run(plan, detector)
    assert tiles == 25
    seam = _seam_objects(mosaic.xyxy, grid)
    assert seam.sum() >= 10, "the scene must put objects across the seams"
    tiled = _matches(mosaic.xyxy, mosaic.labels, dets)
    # the reference: each 256 px sample image alone, as the detector was trained
    with rasterio.open(mosaic.path) as src:
        pixels = src.read().astype(np.float32) / 255.0
    cells = [(r, c) for r in range(4) for c in range(4)]
    ims = [torch.from_numpy(pixels[:, r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256].copy()) for r, c in cells]
    ref = detector.candidates_for_tensors(ims, list(range(16))).postprocess()
    ref.bbox[:, :2] += np.array([[cells[i][1] * 256, cells[i][0] * 256] for i in ref.image_id])
    alone = _matches(mosaic.xyxy, mosaic.labels, ref)
    assert (tiled > 1).sum() == 0, "an object was detected twice"
    lost = np.flatnonzero(seam & (alone >= 1) & (tiled == 0))
    assert lost.size == 0, f"seam objects found alone but lost tiled: {mosaic.xyxy[lost].tolist()}"
    assert (tiled[seam] >= 1).sum() >= 0.8 * seam.sum()
    # same-class detections overlapping at IoU > 0.5 across tiles would be seam duplicates
    strong = dets.subset(dets.score >= 0.3)
    iou = box_iou(torch.tensor(_xyxy(strong)), torch.tensor(_xyxy(strong))).numpy()
    same = strong.category_id[:, None] == strong.category_id[None]
    other_tile = strong.image_id[:, None] != strong.image_id[None]
    assert not (np.triu(iou > 0.5, 1) & same & other_tile).any()


def test_four_band_bgrn_scene_is_fed_as_rgb(tmp_path, detector) -> None:
    rgb = write_sample_scene(tmp_path / "rgb.tif", cells=2, seed=4)
    bgrn = write_sample_scene(tmp_path / "bgrn.tif", cells=2, seed=4, bands="bgrn")
    p_rgb, p_bgrn = plan_scene(rgb.path), plan_scene(bgrn.path)
    assert p_bgrn.bands == (3, 2, 1) and p_rgb.bands == (1, 2, 3)
    with rasterio.open(rgb.path) as a, rasterio.open(bgrn.path) as b:
        win = rasterio.windows.Window(100, 50, 256, 256)
        assert torch.equal(read_tile(a, win, p_rgb)[0], read_tile(b, win, p_bgrn)[0])
    d_rgb, _, _ = _run(p_rgb, detector)
    d_bgrn, _, _ = _run(p_bgrn, detector)
    assert len(d_rgb) > 0 and d_rgb == d_bgrn
    # the old behaviour, "the first three bands" (B, G, R as R, G, B), finds other things
    d_first, _, _ = _run(plan_scene(bgrn.path, bands=(1, 2, 3)), detector)
    assert d_first != d_bgrn
    found_rgb = (_matches(rgb.xyxy, rgb.labels, d_rgb) >= 1).sum()
    found_first = (_matches(rgb.xyxy, rgb.labels, d_first) >= 1).sum()
    assert found_first < found_rgb


def test_sixteen_bit_scene_gets_one_stretch_for_all_tiles(tmp_path) -> None:
    path = tmp_path / "u16.tif"
    data = np.stack([np.full((300, 300), v, np.uint16) for v in (1000, 2000, 3000, 4000)])
    data[:, :, 150:] += 1000  # right half brighter in every band
    with rasterio.open(path, "w", driver="GTiff", width=300, height=300, count=4, dtype="uint16",
                       crs="EPSG:32633", transform=Affine(1, 0, 0, 0, -1, 300)) as dst:  # fmt: skip
        dst.write(data)
    plan = plan_scene(path)
    assert plan.bands == (3, 2, 1) and plan.lo is not None
    with rasterio.open(path) as src:
        left, _ = read_tile(src, rasterio.windows.Window(0, 0, 100, 100), plan)
        right, _ = read_tile(src, rasterio.windows.Window(200, 0, 100, 100), plan)
    assert float(left.max()) == 0.0 and float(right.min()) == 1.0  # not re-stretched per tile


def test_bad_scene_inputs_are_one_line_errors_naming_the_file(tmp_path) -> None:
    grey = tmp_path / "grey.tif"
    with rasterio.open(grey, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(1, 0, 0, 0, -1, 64)) as dst:  # fmt: skip
        dst.write(np.zeros((1, 64, 64), np.uint8))
    with pytest.raises(TrustmapError, match="has 1 band") as err:
        plan_scene(grey)
    assert str(grey) in str(err.value) and "\n" not in str(err.value)
    assert plan_scene(grey, bands=(1,)).bands == (1, 1, 1)  # grey on request
    with pytest.raises(TrustmapError, match=r"band\(s\) \[4\] do not exist"):
        plan_scene(grey, bands=(4, 1, 1))
    assert parse_bands("3, 2, 1") == (3, 2, 1) and parse_bands("2") == (2, 2, 2)
    with pytest.raises(TrustmapError, match="--bands"):
        parse_bands("red")


def test_calibrated_scores_and_calibrator_classes(mosaic, detector) -> None:
    cal = Calibrator("platt", "shared", {"a": 0.5, "b": -0.2}, dict(NAMES))
    plan = plan_scene(mosaic.path)
    small = SceneSettings(256, 64, 4, score_thresh=0.3)
    dets, calibrated, _ = _run(plan, detector, small, cal)
    assert calibrated is not None and len(calibrated) == len(dets) > 0
    expected = cal.calibrate(dets.score, None, dets.category_id)
    np.testing.assert_allclose(calibrated, expected)
    other = Calibrator("platt", "shared", {"a": 1.0, "b": 0.0}, {1: "Tree"})
    with pytest.raises(TrustmapError, match="fitted on classes 1 Tree") as err:
        check_calibrator(other, detector, Path("trees.json"))
    assert "trees.json" in str(err.value)
