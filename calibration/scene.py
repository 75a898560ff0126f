"""A detector over a whole georeferenced scene: tiled inference in bounded memory, merged by
ownership, calibrated per tile.

Why tiles: a detector takes images of a few hundred pixels; a scene has tens of thousands
on a side. ``tiles.TileGrid`` cuts it into overlapping windows that cover every pixel, and
each window is read, normalised and detected on its own: the work on a tile is a pure
function of ``(window, ScenePlan, detector, settings)``, so memory does not grow with the
scene and the tiles can later be mapped over workers in any order.

Why ownership, not NMS across seams: an object near a seam is seen by two or four tiles.
Each tile has a *core* (its window split at the middle of every overlap, the cores
partition the scene), and a detection is kept only by the tile whose core holds its box
centre. An object no larger than the overlap is seen whole by the tile that owns its
centre, and a neighbour that sees it cut by its window edge places that partial box's
centre within ``overlap / 2`` of the edge, outside its own core; so every object is
counted once, and neighbouring objects, which NMS across seams would merge, both survive.

Why a scene-wide stretch: 8-bit scenes are divided by 255 as the detector was trained;
other types get a 2-98 % stretch per band computed once from a decimated read of the whole
scene, so every tile sees the same mapping (a per-tile stretch would change brightness from
tile to tile and break the pure-function property).

Why calibrate per tile: a calibrator is fitted on detections of whole training images, and
the box-conditioned one reads box position and size relative to that image; here the image
the detector saw is the tile, so the features are relative to the tile.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import torch
from rasterio.enums import MaskFlags, Resampling
from rasterio.windows import Window

from calibration.detections import Detections, GroundTruth
from tiles.errors import TrustmapError
from tiles.grid import Tile, TileGrid
from tiles.raster import open_raster, require_crs

if TYPE_CHECKING:
    from calibration.adapters.torchvision_models import TorchvisionDetector
    from calibration.audit import AuditResult
    from calibration.calibrators import Calibrator
    from calibration.config import AuditConfig

#: Longest side of the decimated read that sets the stretch of non-8-bit scenes.
STRETCH_SAMPLE = 1024
STRETCH_PERCENTILES = (2.0, 98.0)
#: Bounds of GDAL's block cache while tiles are read (MB). Its default, 5 % of the machine's
#: memory, fills with every block ever read, so memory would grow with the scene; reading
#: tiles row by row only revisits the blocks of the current and the previous tile row.
GDAL_CACHE_MIN_MB, GDAL_CACHE_MAX_MB = 16, 512


# --------------------------------------------------------------------------- bands


@dataclass(frozen=True)
class ScenePlan:
    """How a scene's pixels become the detector's RGB input; fixed before the first tile."""

    path: Path
    width: int
    height: int
    crs: Any
    transform: Any
    bands: tuple[int, int, int]  # 1-based source bands fed as R, G, B
    how: str  # "given", "colour metadata / band order" (pick_rgb_bands)
    lo: tuple[float, ...] | None = None  # per fed band; None: 8-bit, divided by 255
    hi: tuple[float, ...] | None = None
    masked: bool = True  # the scene has nodata or a mask; False: every pixel is valid
    row_bytes: int = 0  # bytes of one pixel row of the fed bands, as GDAL caches them
    block_height: int = 256

    def describe(self) -> str:
        scale = "/255" if self.lo is None else "2-98 % stretch over the scene"
        return f"bands {','.join(map(str, self.bands))} as R,G,B ({self.how}; {scale})"


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """``"3,2,1"`` -> (3, 2, 1); ``"1"`` -> (1, 1, 1) (grey); None stays None."""
    if text is None or not str(text).strip():
        return None
    try:
        picked = tuple(int(p) for p in str(text).replace(" ", "").split(","))
    except ValueError:
        raise TrustmapError(f"--bands takes 3 band numbers like 3,2,1 (or one, for grey), got {text!r}") from None
    if len(picked) == 1:
        picked = picked * 3
    if len(picked) != 3:
        raise TrustmapError(f"--bands takes 3 band numbers (R,G,B) or one (grey), got {text!r}")
    return picked


def plan_scene(path: str | os.PathLike, bands: Sequence[int] | None = None) -> ScenePlan:
    """Open the scene, check what a georeferenced run needs, and fix its band mapping.

    Errors (one line, naming the scene): not a raster, no CRS, fewer than three bands for
    an RGB detector without ``bands`` saying which to repeat, a band that does not exist.
    """
    from tiles.quicklook import pick_rgb_bands

    p = Path(path)
    with open_raster(p) as src:
        require_crs(src, p)
        if bands is None:
            if src.count < 3:
                raise TrustmapError(
                    f"has {src.count} band(s), but the detector takes 3 (R, G, B); "
                    f"pass --bands {','.join(['1'] * 3)} to feed band 1 as grey",
                    p,
                )
            picked, how = pick_rgb_bands(src), "picked from colour metadata or band order"
        else:
            given = tuple(int(b) for b in bands)
            if len(given) == 1:
                given = given * 3
            if len(given) != 3:
                raise TrustmapError(f"give 3 bands (R, G, B) or one (grey), got {list(bands)}", p)
            picked = (given[0], given[1], given[2])
            bad = [b for b in picked if not 1 <= b <= src.count]
            if bad:
                raise TrustmapError(f"band(s) {bad} do not exist; the scene has bands 1..{src.count}", p)
            how = "given"
        lo = hi = None
        if any(src.dtypes[b - 1] != "uint8" for b in picked):
            lo, hi = _scene_stretch(src, picked)
        masked = any(MaskFlags.all_valid not in flags for flags in src.mask_flag_enums)
        # all bands: a pixel-interleaved file caches whole pixels even when three bands are read
        row_bytes = src.width * sum(np.dtype(t).itemsize for t in src.dtypes)
        return ScenePlan(p, src.width, src.height, src.crs, src.transform, picked, how, lo, hi,
                         masked, row_bytes, int(src.block_shapes[0][0]))  # fmt: skip


def gdal_cache_bytes(plan: ScenePlan, tile_size: int) -> int:
    """Block cache for row-major tile reads: two tile rows of blocks (the current one and the
    overlap rows of the previous one), within the bounds above."""
    rows = 2 * (min(tile_size, plan.height) + plan.block_height)
    want = plan.row_bytes * rows
    return int(min(max(want, GDAL_CACHE_MIN_MB * 2**20), GDAL_CACHE_MAX_MB * 2**20))


def _scene_stretch(
    src: rasterio.DatasetReader, bands: tuple[int, int, int]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per fed band, the 2nd and 98th percentile of valid pixels in a decimated read."""
    scale = max(src.width, src.height) / STRETCH_SAMPLE
    h, w = (max(1, round(src.height / scale)), max(1, round(src.width / scale))) if scale > 1 else (src.height, src.width)
    data = src.read(list(bands), out_shape=(3, h, w), resampling=Resampling.nearest).astype(np.float64)
    valid = src.dataset_mask(out_shape=(h, w), resampling=Resampling.nearest) > 0
    valid &= np.isfinite(data).all(axis=0)
    lo, hi = [], []
    for b in range(3):
        v = data[b][valid]
        a, z = np.percentile(v, STRETCH_PERCENTILES) if v.size else (0.0, 1.0)
        lo.append(float(a))
        hi.append(float(z) if z > a else float(a) + 1.0)
    return tuple(lo), tuple(hi)


def read_tile(src: rasterio.DatasetReader, window: Window, plan: ScenePlan) -> tuple[torch.Tensor, bool]:
    """The detector's (3, h, w) float input in [0, 1] for one window, and whether any pixel is valid.

    Nodata pixels (GDAL's dataset mask: nodata in every band) become 0. A pure function of
    the window and the plan.
    """
    unique = list(dict.fromkeys(plan.bands))
    raw = src.read(unique, window=window)
    valid = src.dataset_mask(window=window) > 0 if plan.masked else np.ones(raw.shape[1:], bool)
    layer = {b: raw[k] for k, b in enumerate(unique)}
    data = np.stack([layer[b] for b in plan.bands]).astype(np.float32)
    if plan.lo is None:
        data /= 255.0
    else:
        lo = np.asarray(plan.lo, np.float32)[:, None, None]
        hi = np.asarray(plan.hi, np.float32)[:, None, None]
        data = np.clip((data - lo) / (hi - lo), 0.0, 1.0)
        data[~np.isfinite(data)] = 0.0
    data[:, ~valid] = 0.0
    return torch.from_numpy(np.ascontiguousarray(data)), bool(valid.any())


# --------------------------------------------------------------------------- tiles -> detections


@dataclass(frozen=True)
class SceneSettings:
    """Tiling and post-processing of a scene run (None: the detector's own setting)."""

    tile_size: int = 256
    overlap: int = 64
    batch_size: int = 4
    score_thresh: float | None = None
    nms_iou: float | None = None
    topk: int | None = None


def tile_detections(
    detector: Any,
    images: Sequence[torch.Tensor],
    tiles: Sequence[Tile],
    settings: SceneSettings,
    calibrator: Any = None,
) -> tuple[Detections, np.ndarray | None]:
    """Detect on a batch of tiles, keep what each tile owns, return it in scene pixels.

    Returns the owned detections (``image_id`` = tile index, boxes in scene pixel
    coordinates, raw scores and probabilities) and, with a calibrator, their calibrated
    scores. A pure function of its inputs.
    """
    cands = detector.candidates_for_tensors(list(images), [t.index for t in tiles])
    dets = cands.postprocess(settings.score_thresh, settings.nms_iou, settings.topk)
    by_index = {t.index: t for t in tiles}
    calibrated = None
    if calibrator is not None and len(dets):
        sizes = {t.index: (int(t.window.width), int(t.window.height)) for t in tiles}
        calibrated = calibrate_in_tiles(calibrator, dets, sizes)
    keep = owned(dets, by_index)
    dets = dets.subset(keep)
    if calibrated is not None:
        calibrated = calibrated[keep]
    off = np.array([[by_index[int(i)].window.col_off, by_index[int(i)].window.row_off] for i in dets.image_id], np.float64).reshape(-1, 2)
    bbox = dets.bbox.copy()
    bbox[:, :2] += off
    return replace(dets, bbox=bbox, proposal_index=None, logits=None), calibrated


def owned(dets: Detections, tiles: dict[int, Tile]) -> np.ndarray:
    """Rows (tile-local boxes, ``image_id`` = tile index) whose box centre lies in their tile's core.

    Pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``, so a core ``[c0, c1) x [r0, r1)`` in
    pixels is the same half-open interval in continuous coordinates, and the cores of a
    grid partition the scene: every centre has exactly one owner.
    """
    n = len(dets)
    if n == 0:
        return np.zeros(0, bool)
    t = [tiles[int(i)] for i in dets.image_id]
    col0 = np.array([x.window.col_off for x in t], np.float64)
    row0 = np.array([x.window.row_off for x in t], np.float64)
    c0 = np.array([x.core.col_off for x in t], np.float64)
    r0 = np.array([x.core.row_off for x in t], np.float64)
    c1 = c0 + np.array([x.core.width for x in t], np.float64)
    r1 = r0 + np.array([x.core.height for x in t], np.float64)
    cx = col0 + dets.bbox[:, 0] + dets.bbox[:, 2] / 2
    cy = row0 + dets.bbox[:, 1] + dets.bbox[:, 3] / 2
    return (cx >= c0) & (cx < c1) & (cy >= r0) & (cy < r1)


def calibrate_in_tiles(calibrator: Any, dets: Detections, sizes: dict[int, tuple[int, int]]) -> np.ndarray:
    """Calibrated scores of tile-local detections; box features relative to each tile."""
    gt = GroundTruth.from_coco(
        {
            "images": [{"id": i, "file_name": f"tile_{i}", "width": w, "height": h} for i, (w, h) in sizes.items()],
            "annotations": [],
            "categories": [{"id": int(c), "name": str(n)} for c, n in sorted(calibrator.categories.items())],
        }
    )
    return calibrator.apply(dets, gt).score


def check_calibrator(calibrator: Any, detector: Any, path: str | os.PathLike) -> None:
    """A calibrator must know every class the detector predicts (else its scores are meaningless)."""
    have = set(int(c) for c in detector.prob_category_ids)
    known = set(int(c) for c in calibrator.categories)
    if not have <= known:
        raise TrustmapError(
            f"calibrator was fitted on classes {_names(calibrator.categories)} but the detector "
            f"predicts category ids {sorted(have)}; fit it on this detector's predictions",
            path,
        )


def _names(categories: dict[int, str]) -> str:
    return ", ".join(f"{c} {n}" for c, n in sorted(categories.items()))


# --------------------------------------------------------------------------- the run


@dataclass
class SceneChunk:
    """Owned detections of some tiles (scene pixels) with their calibrated scores."""

    dets: Detections
    calibrated: np.ndarray | None
    tiles_done: int
    tiles_skipped: int


@dataclass
class SceneRunInfo:
    """What a run did, for the command's summary and the audit's inputs."""

    tiles: int = 0
    tiles_skipped: int = 0  # all-nodata tiles, never run
    detections: int = 0
    grid: str = ""


def run_tiles(
    plan: ScenePlan,
    detector: Any,
    settings: SceneSettings,
    calibrator: Any = None,
    show_progress: bool = True,
) -> Iterator[SceneChunk]:
    """Detect over the whole scene, batch by batch of tiles, yielding what each batch owns.

    Memory is one batch of tiles plus the detections of that batch: the caller streams them
    to disk.
    """
    from tiles.console import progress

    grid = TileGrid(plan.height, plan.width, settings.tile_size, settings.overlap)
    if settings.batch_size < 1:
        raise TrustmapError(f"batch size must be >= 1, got {settings.batch_size}")
    tiles_iter = (
        progress(iter(grid), desc=f"detect-scene ({len(grid)} tiles)", total=len(grid), unit="tile")
        if show_progress
        else iter(grid)
    )
    with rasterio.Env(GDAL_CACHEMAX=gdal_cache_bytes(plan, settings.tile_size)), rasterio.open(plan.path) as src:
        batch: list[Tile] = []
        images: list[torch.Tensor] = []
        skipped = 0
        for tile in tiles_iter:
            img, any_valid = read_tile(src, tile.window, plan)
            if not any_valid:
                skipped += 1
                continue
            batch.append(tile)
            images.append(img)
            if len(batch) == settings.batch_size:
                dets, cal = tile_detections(detector, images, batch, settings, calibrator)
                yield SceneChunk(dets, cal, len(batch), skipped)
                batch, images, skipped = [], [], 0
        if batch or skipped:
            if batch:
                dets, cal = tile_detections(detector, images, batch, settings, calibrator)
            else:
                dets, cal = Detections.empty(), None
            yield SceneChunk(dets, cal, len(batch), skipped)


def grid_for(plan: ScenePlan, settings: SceneSettings) -> TileGrid:
    """The tile grid a run uses (checked up front: size and overlap errors before any work)."""
    return TileGrid(plan.height, plan.width, settings.tile_size, settings.overlap, plan.transform, plan.crs)


# --------------------------------------------------------------------------- the command


@dataclass
class SceneResult:
    """What ``detect_scene`` wrote."""

    gpkg: Path
    plan: ScenePlan
    info: SceneRunInfo
    audit: Any = None  # calibration.audit.AuditResult with --truth


def detect_scene(
    scene: str | os.PathLike,
    detector: Any,
    out: str | os.PathLike,
    *,
    categories: dict[int, str],
    settings: SceneSettings | None = None,
    bands: Sequence[int] | None = None,
    calibrator: Any = None,
    calibrator_path: str | os.PathLike | None = None,
    truth: str | os.PathLike | None = None,
    audit_out: str | os.PathLike | None = None,
    audit_config: Any = None,
    inputs: Sequence[str | os.PathLike | None] = (),
    show_progress: bool = True,
) -> SceneResult:
    """Run ``detector`` over ``scene`` and write ``out`` (GeoPackage), plus the audit with ``truth``.

    Every input is checked before the first tile (scene, bands, grid, calibrator classes,
    truth boxes and their CRS, output paths); the GeoPackage is staged and renamed, and the
    audit folder staged and exchanged, only after everything succeeded.
    """
    from tiles.io import atomic_path, check_output_dir, check_output_file

    settings = settings or SceneSettings()
    out = Path(out)
    if out.suffix.lower() != ".gpkg":
        raise TrustmapError("the detections are written as a GeoPackage: give a .gpkg file name", out)
    plan = plan_scene(scene, bands)
    grid = grid_for(plan, settings)
    if calibrator is not None:
        check_calibrator(calibrator, detector, calibrator_path or "calibrator")
    all_inputs = [plan.path, calibrator_path, truth, *inputs]
    check_output_file(out, all_inputs)
    gt = None
    if truth is not None:
        from calibration.audit import _check_out
        from calibration.boxfiles import ground_truth, scene_truth

        gt = ground_truth(scene_truth(plan.path, truth), categories, truth)
        audit_out = Path(audit_out) if audit_out is not None else out.with_name(f"{out.stem}_audit")
        check_output_dir(audit_out, [*all_inputs, out], replaces=True, marker="audit.json")
        _check_out(audit_out)
    from calibration.scene_gpkg import DetectionWriter, prob_column_names

    info = SceneRunInfo(grid=repr(grid))
    kept: list[Detections] = []
    kept_cal: list[np.ndarray] = []
    prob_names = prob_column_names(categories, detector.prob_category_ids, detector.softmax)
    log = _Progress(len(grid), show_progress)
    with atomic_path(out) as tmp:
        writer = DetectionWriter(tmp, plan.crs, plan.transform, categories, prob_names, calibrator is not None)
        for chunk in run_tiles(plan, detector, settings, calibrator, show_progress):
            writer.write(chunk.dets, chunk.calibrated)
            info.tiles += chunk.tiles_done
            info.tiles_skipped += chunk.tiles_skipped
            info.detections += len(chunk.dets)
            log.update(chunk.tiles_done + chunk.tiles_skipped, info.detections)
            if gt is not None and len(chunk.dets):
                kept.append(chunk.dets)
                if chunk.calibrated is not None:
                    kept_cal.append(chunk.calibrated)
        writer.finish(
            f"trustmap detect-scene: {detector.name} on {plan.path.name}, "
            f"graduated by {'calibrated' if calibrator is not None else 'raw'} confidence"
        )
        result = SceneResult(out, plan, info)
        if gt is not None:
            assert audit_out is not None and truth is not None  # set with gt
            result.audit = _audit(gt, kept, kept_cal, calibrator, detector, plan, settings, audit_out, audit_config, truth, out)
    return result


def _audit(
    gt: GroundTruth,
    kept: list[Detections],
    kept_cal: list[np.ndarray],
    calibrator: Calibrator | None,
    detector: TorchvisionDetector,
    plan: ScenePlan,
    settings: SceneSettings,
    audit_out: str | os.PathLike,
    cfg: AuditConfig | None,
    truth: str | os.PathLike,
    out: Path,
) -> AuditResult:
    """The scene audit: raw scores and, with a calibrator, calibrated ones (one image: the scene)."""
    from calibration.audit import audit_detections

    dets = Detections.concat(kept) if kept else _empty_like(detector)
    dets = replace(dets, image_id=np.ones(len(dets), np.int64), source=f"{detector.name} on {plan.path.name}")
    perspectives = {"application": dets}
    if calibrator is not None:
        from calibration.calibrators import _with_scores

        cal = np.concatenate(kept_cal) if kept_cal else np.zeros(0)
        perspectives["calibrated"] = _with_scores(dets, cal, tuple(sorted(calibrator.categories)))
    inputs = {
        "mode": "scene",
        "scene": str(plan.path.resolve()),
        "truth": str(Path(truth).resolve()),
        "detections_gpkg": str(out.resolve()),
        "detector": {"model": detector.name, "category_ids": list(detector.prob_category_ids)},
        "tiling": {"tile_size": settings.tile_size, "overlap": settings.overlap, "merge": "ownership (box centre in the tile's core)"},
        "bands": plan.describe(),
        **({"calibrator": calibrator.method} if calibrator is not None else {}),
    }
    return audit_detections(perspectives, gt, audit_out, cfg, inputs)


def _empty_like(detector: Any) -> Detections:
    c = len(detector.prob_category_ids) + (1 if detector.softmax else 0)
    return Detections(
        image_id=np.zeros(0, np.int64),
        bbox=np.zeros((0, 4)),
        category_id=np.zeros(0, np.int64),
        score=np.zeros(0),
        probs=np.zeros((0, c)),
        prob_category_ids=detector.prob_category_ids,
    )


class _Progress:
    """Log lines every ``every_s`` seconds when stderr is not a terminal (tqdm covers terminals)."""

    def __init__(self, total: int, enabled: bool, every_s: float = 30.0):
        import sys
        import time

        self.total, self.done = total, 0
        self.enabled = enabled and not sys.stderr.isatty()
        self.every_s, self.t0 = every_s, time.monotonic()
        self.last = self.t0

    def update(self, n: int, detections: int) -> None:
        import sys
        import time

        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self.last >= self.every_s or self.done == self.total):
            self.last = now
            print(
                f"detect-scene: {self.done}/{self.total} tiles, {detections} detections, {now - self.t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
