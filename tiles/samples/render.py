"""Rendering: bands and truth for a strip of rows, a pure function of (layout, rows)."""

from __future__ import annotations

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize
from scipy.ndimage import gaussian_filter

from tiles.samples.layout import _Layout
from tiles.samples.noise import _fbm, _hash, _u01
from tiles.samples.objects import _CROWN, _GABLE, _PLAIN
from tiles.samples.spectra import (
    _BUND_SPEC,
    _CLASS_OF,
    _FINE,
    _GAIN_SD,
    _GREEN,
    _HAZE,
    _IS_LAKE_WATER,
    _MACRO,
    _MAX_HEIGHT,
    _NOISE_SD,
    _SHADOW,
    _SPEC,
    _SUN_XY,
    _TAN_ELEV,
    _VIGOUR_AXIS,
    IGNORE,
    NODATA,
    Mat,
)
from tiles.samples.terrain import _PARCEL_BITS, _crown_shading, _parcels

HALO = 16  # extra rows each side of a strip: room for shadows (<= 12 m) and the optics blur


def _vectors(
    L: _Layout, r0: int, r1: int, mat: np.ndarray, oid: np.ndarray, micro: np.ndarray,
    height: np.ndarray, bund: np.ndarray,
) -> None:  # fmt: skip
    """Burn the vector objects (in paint order) over the parcels, in place."""
    s = L.size
    idx = np.sort(L.tree.query(shapely.box(0, r0, s, r1)))
    if idx.size == 0:
        return
    vec = rasterize(
        ((L.geoms[i], int(i) + 1) for i in idx),
        out_shape=(r1 - r0, s),
        transform=Affine.translation(0, r0),
        fill=0,
        dtype="int32",
    )
    ri, ci = np.nonzero(vec)
    j = vec[ri, ci] - 1
    mat[ri, ci] = L.v_mat[j]
    oid[ri, ci] = (1 << _PARCEL_BITS) + j
    height[ri, ci] = L.v_height[j]
    micro[ri, ci] = 0.0
    bund[ri, ci] = False
    ox = ci.astype(np.float32) + 0.5 - L.v_cx[j]  # offsets from each object's centre
    oy = ri.astype(np.float32) + (r0 + 0.5) - L.v_cy[j]
    kind = L.v_kind[j]
    sel = kind == _CROWN
    micro[ri[sel], ci[sel]], height[ri[sel], ci[sel]] = _crown_shading(
        ox[sel], oy[sel], L.v_r[j[sel]], L.v_height[j[sel]]
    )
    sel = kind == _GABLE  # two roof facets: the one facing the sun is brighter
    side = np.sign(ox[sel] * L.v_ax[j[sel]] + oy[sel] * L.v_ay[j[sel]])
    facing = np.sign(L.v_ax[j[sel]] * _SUN_XY[0] + L.v_ay[j[sel]] * _SUN_XY[1] + 1e-3)
    micro[ri[sel], ci[sel]] = 0.14 * side * facing
    # Black water tanks and clutter on flat concrete roofs.
    sel = (kind == _PLAIN) & (L.v_mat[j] == Mat.ROOF_CONCRETE)
    tank = _u01(_hash(L.seed + 41, (ri[sel] + r0) // 2, ci[sel] // 2)) < 0.025
    micro[ri[sel][tank], ci[sel][tank]] = -0.6


def _shadows(height: np.ndarray) -> np.ndarray:
    """Pixels a taller object hides from the sun: march towards the sun, compare ray heights."""
    h, w = height.shape
    shadow = np.zeros((h, w), bool)
    if not (height > 0).any():
        return shadow
    for step in range(1, int(_MAX_HEIGHT / _TAN_ELEV) + 2):
        dr, dc = round(step * _SUN_XY[1]), round(step * _SUN_XY[0])
        if dr >= h or dc >= w:
            break
        blocker = height[dr:, dc:] - np.float32(step * _TAN_ELEV)
        shadow[: h - dr, : w - dc] |= blocker > height[: h - dr, : w - dc]
    return shadow


def _render_strip(L: _Layout, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
    """Bands (4, r1-r0, size) uint16 and truth (r1-r0, size) uint8 for rows r0..r1."""
    s, seed = L.size, L.seed
    R0, R1 = max(0, r0 - HALO), min(s, r1 + HALO)
    win = shapely.box(0, R0, s, R1)
    idx = np.flatnonzero(shapely.intersects(L.est.geoms, win))
    est = rasterize(
        ((L.est.geoms[i], int(i)) for i in idx),
        out_shape=(R1 - R0, s),
        transform=Affine.translation(0, R0),
        fill=0,
        dtype="int32",
    )
    mat, oid, micro, height, bund = _parcels(L, est, R0, R1)
    del est
    _vectors(L, R0, R1, mat, oid, micro, height, bund)
    lake = _IS_LAKE_WATER[mat]
    if lake.any():
        weed = lake & (_fbm(seed + 51, R0, R1, s, (10.0, 30.0)) > 1.35)
        mat[weed] = Mat.WATER_WEED
    shadow = _shadows(height)
    del height

    fine = _fbm(seed + 61, R0, R1, s, (1.5, 3.0, 6.0))
    tex = (
        1.0
        + _MACRO[mat] * _fbm(seed + 62, R0, R1, s, (20.0, 60.0, 160.0))
        + _FINE[mat] * fine
        + micro
    )
    del fine, micro
    shift = _GREEN[mat] * (
        0.6 * _fbm(seed + 63, R0, R1, s, (15.0, 50.0, 140.0)) + 0.5 * L.obj_var[5][oid]
    )
    gain = 1.0 + _GAIN_SD[mat] * L.obj_var[0][oid]
    haze = 0.5 + 0.5 * _fbm(seed + 64, R0, R1, s, (700.0, 1600.0))
    lo, hi = r0 - R0, r1 - R0
    rows = np.arange(r0, r1)[:, None]
    cols = np.arange(s)[None, :]
    noise = (_hash(seed + 71, rows, cols), _hash(seed + 72, rows, cols))
    bands = np.empty((4, r1 - r0, s), np.uint16)
    for b in range(4):
        val = (
            _SPEC[b][mat] * gain * (1.0 + 0.05 * L.obj_var[1 + b][oid]) + shift * _VIGOUR_AXIS[b]
        ) * tex
        val[bund] = 0.5 * val[bund] + 0.5 * _BUND_SPEC[b]
        val[shadow] *= _SHADOW[b]
        val += _HAZE[b] * haze
        val = gaussian_filter(val, 0.6, mode="nearest")[lo:hi]  # the sensor's optics
        nb = noise[b // 2] >> np.uint32(16 * (b % 2))
        tri = (
            (nb & np.uint32(255)).astype(np.float32) + ((nb >> np.uint32(8)) & np.uint32(255))
        ) / 255.0 - 1.0
        val += tri * (_NOISE_SD[b] / 0.408)
        bands[b] = np.clip(np.rint(val), 1, 10000).astype(np.uint16)
    truth = _CLASS_OF[mat[lo:hi]]
    a, b_, c = L.nodata_line
    missing = (a * (cols + 0.5) + b_ * (rows + 0.5) + c) < 0
    bands[:, missing] = NODATA
    truth[missing] = IGNORE
    return bands, truth
