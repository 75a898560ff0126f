"""Cheap labels made from a real truth mask by the mistakes real annotators make.

:mod:`refine.cheap.crowd` and :mod:`refine.cheap.spectral` simulate cheap labels on trustmap's synthetic scene. On a real scene
with a hand-drawn truth, these edits turn the truth into what a hurried crowd worker would
have drawn, each a pure function of (truth, rng):

* :func:`shift_boundaries`: each class's outline dilated or eroded by a few pixels (sloppy
  tracing, a systematic offset);
* :func:`erase_small_objects`: small connected segments filled with their surroundings
  (missed cars, sheds, narrow paths);
* :func:`swap_segments`: whole connected segments given another class, usually the one
  that surrounds them (a field taken for bare land, a pool for a roof);
* :func:`simulate_edits`: all three, with segment swaps added until a target wrong-pixel
  rate is reached.

The fourth realistic source, the output of a model trained on another scene, needs a model
and lives in the benchmark (``scripts/bench_refine.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from refine.cheap.common import noise_rate
from tiles.classes import ClassSchema
from tiles.errors import TrustmapError


def _nearest_other(labels: np.ndarray, replace: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """For pixels in ``replace``, the label of the nearest pixel in ``keep``."""
    if not replace.any() or not keep.any():
        return labels.copy()
    _, (ri, ci) = ndimage.distance_transform_edt(~keep, return_indices=True)
    out = labels.copy()
    out[replace] = labels[ri[replace], ci[replace]]
    return out


def shift_boundaries(
    truth: np.ndarray,
    schema: ClassSchema,
    rng: np.random.Generator,
    max_shift: int = 3,
) -> np.ndarray:
    """Dilate or erode each class by 1..``max_shift`` px (in a random class order)."""
    out = truth.copy()
    ig = schema.ignore
    for code in rng.permutation(schema.codes):
        r = int(rng.integers(1, max_shift + 1))
        mask = out == code
        if not mask.any():
            continue
        st = ndimage.generate_binary_structure(2, 1)
        if rng.random() < 0.5:  # dilate: the class grows over its neighbours (not over ignore)
            grown = ndimage.binary_dilation(mask, st, iterations=r) & (out != ig)
            out[grown] = code
        else:  # erode: the neighbours grow into it
            core = ndimage.binary_erosion(mask, st, iterations=r, border_value=1)
            rim = mask & ~core
            out = _nearest_other(out, rim, (out != code) & (out != ig))
    return out


def _components(labels: np.ndarray, schema: ClassSchema) -> tuple[np.ndarray, int]:
    """Connected segments of one class each (8-connected), numbered 1..n over all classes."""
    seg = np.zeros(labels.shape, np.int32)
    n = 0
    for code in schema.codes:
        lab, k = ndimage.label(labels == code, structure=np.ones((3, 3)))
        seg[lab > 0] = lab[lab > 0] + n
        n += k
    return seg, n


def erase_small_objects(
    truth: np.ndarray,
    schema: ClassSchema,
    rng: np.random.Generator,
    max_area: int = 300,
    probability: float = 0.6,
) -> np.ndarray:
    """Fill segments smaller than ``max_area`` px with their surroundings, each with ``probability``."""
    seg, n = _components(truth, schema)
    if n == 0:
        return truth.copy()
    area = np.bincount(seg.ravel(), minlength=n + 1)
    pick = (area < max_area) & (rng.random(n + 1) < probability)
    pick[0] = False
    gone = pick[seg]
    return _nearest_other(truth, gone, ~gone & (truth != schema.ignore))


def _surrounding_class(labels: np.ndarray, seg: np.ndarray, ids: np.ndarray, ignore: int) -> dict[int, int]:
    """The most common other class on the 1-px ring around each segment in ``ids``."""
    out: dict[int, int] = {}
    objs = ndimage.find_objects(seg)
    for i in ids.tolist():
        sl = objs[i - 1]
        if sl is None:
            continue
        sl = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
        m = seg[sl] == i
        ring = ndimage.binary_dilation(m) & ~m
        vals = labels[sl][ring]
        vals = vals[vals != ignore]
        if vals.size:
            out[i] = int(np.bincount(vals).argmax())
    return out


def swap_segments(
    labels: np.ndarray,
    truth: np.ndarray,
    schema: ClassSchema,
    rng: np.random.Generator,
    target: float,
    max_share: float = 0.05,
    surround: float = 0.7,
) -> np.ndarray:
    """Give whole segments of ``labels`` another class until ``target`` of the pixels are wrong.

    A segment takes the class that surrounds it with probability ``surround``, otherwise a
    random other class. Segments larger than ``max_share`` of the scene are never swapped
    (nobody mistakes the whole desert for water).
    """
    out = labels.copy()
    seg, n = _components(truth, schema)
    if n == 0:
        return out
    area = np.bincount(seg.ravel(), minlength=n + 1)
    total = int(np.count_nonzero(truth != schema.ignore))
    ids = np.flatnonzero((area > 0) & (area <= max_share * total))
    ids = ids[ids > 0]
    rng.shuffle(ids)
    around = _surrounding_class(truth, seg, ids, schema.ignore)
    codes = np.asarray(schema.codes)
    for i in ids.tolist():
        if noise_rate(out, truth, schema.ignore) >= target:
            break
        own = int(truth[seg == i][0])
        new = around.get(i)
        if new is None or rng.random() >= surround:
            others = codes[codes != own]
            new = int(rng.choice(others))
        out[seg == i] = new
    return out


@dataclass(frozen=True)
class EditNoise:
    """Settings of :func:`simulate_edits`."""

    noise: float = 0.2
    max_shift: int = 3
    small_area: int = 300
    erase_probability: float = 0.6
    seed: int = 0


def simulate_edits(truth: np.ndarray, schema: ClassSchema, cfg: EditNoise) -> np.ndarray:
    """Boundary shifts, erased small objects, then segment swaps up to ``cfg.noise`` wrong."""
    if not 0.0 <= cfg.noise < 1.0:
        raise TrustmapError(f"noise rate must be in [0, 1), got {cfg.noise}")
    truth = np.asarray(truth, np.uint8)
    rng = np.random.default_rng([cfg.seed, 0xED17])
    out = shift_boundaries(truth, schema, rng, cfg.max_shift)
    out = erase_small_objects(out, schema, rng, cfg.small_area, cfg.erase_probability)
    if noise_rate(out, truth, schema.ignore) < cfg.noise:
        out = swap_segments(out, truth, schema, rng, cfg.noise)
    out[truth == schema.ignore] = schema.ignore
    return out


def write_simulated_edits(
    truth_path: str | os.PathLike, out_path: str | os.PathLike, schema: ClassSchema, cfg: EditNoise
) -> Path:
    """Cheap labels made by :func:`simulate_edits` from a truth raster, written on its grid
    (for trying a workspace, or a simulation, on a scene that has a truth)."""
    import rasterio

    from tiles.io import atomic_path

    with rasterio.open(truth_path) as ds:
        truth, profile = ds.read(1), ds.profile
    out = Path(out_path)
    with atomic_path(out) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(simulate_edits(truth, schema, cfg), 1)
    return out
