"""The farmland the scene is laid on: estates cut into field parcels, as formulas of the pixel grid.

Estates are large Voronoi cells, each with its own field direction, width and parcel mix. A
pixel's parcel, bund, field trees, orchard or plantation crowns and scrub follow from its
coordinates by hashing, so any strip renders without the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely

from tiles.samples.noise import _fbm, _hash, _mix, _u01
from tiles.samples.spectra import _SUN_XY, Mat

if TYPE_CHECKING:
    from tiles.samples.layout import _Layout

# Estates are the large cells fields are laid out in; each kind has its own parcel mix.
_ESTATE_KINDS: dict[str, tuple[float, dict[Mat, float]]] = {
    "fields": (
        0.66,
        {
            Mat.CROP: 0.20,
            Mat.CROP_DENSE: 0.08,
            Mat.CROP_YOUNG: 0.14,
            Mat.CROP_DRY: 0.11,
            Mat.GRASS: 0.05,
            Mat.SOIL_RED: 0.15,
            Mat.SOIL_PLOUGH: 0.14,
            Mat.SOIL_LIGHT: 0.06,
            Mat.ORCHARD: 0.03,
            Mat.PLANTATION: 0.01,
            Mat.SCRUB: 0.03,
        },
    ),
    "orchard": (0.08, {Mat.ORCHARD: 0.7, Mat.CROP_DRY: 0.1, Mat.GRASS: 0.1, Mat.SOIL_RED: 0.1}),
    "plantation": (0.04, {Mat.PLANTATION: 0.55, Mat.SOIL_RED: 0.15, Mat.SCRUB: 0.3}),
    "scrub": (
        0.11,
        {
            Mat.SCRUB: 0.6,
            Mat.GRASS: 0.15,
            Mat.CROP_DRY: 0.1,
            Mat.SOIL_LIGHT: 0.1,
            Mat.SOIL_RED: 0.05,
        },
    ),
    "fallow": (
        0.11,
        {
            Mat.SOIL_RED: 0.3,
            Mat.SOIL_LIGHT: 0.25,
            Mat.SOIL_PLOUGH: 0.2,
            Mat.CROP_DRY: 0.15,
            Mat.SCRUB: 0.1,
        },
    ),
}
_KIND_NAMES = list(_ESTATE_KINDS)

_PARCEL_BITS = 18  # parcel object ids are hashes below 2**18; vector objects come after


@dataclass
class _Estates:
    """Large Voronoi cells, each laid out in field rows of its own direction, width and crop mix."""

    geoms: np.ndarray  # shapely polygons; index = estate id
    edges: np.ndarray  # Voronoi edges (candidate tracks)
    cos: np.ndarray
    sin: np.ndarray
    width: np.ndarray  # field-row width, m
    length: np.ndarray  # field length, m
    phase: np.ndarray
    bunds: np.ndarray  # bool: fields separated by grassy bunds
    bund_trees: np.ndarray  # probability of a tree per 12 m of bund
    lut: np.ndarray  # (n, 256) uint8: parcel material by a hash byte


def _estates(rng: np.random.Generator, size: int) -> _Estates:
    pad = 250.0
    n = max(6, round((size + 2 * pad) ** 2 / 330.0**2))
    pts = rng.uniform(-pad, size + pad, size=(n, 2))
    env = shapely.box(-pad - 50, -pad - 50, size + pad + 50, size + pad + 50)
    cells = shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=env, ordered=True)
    geoms = np.array(shapely.get_parts(cells))
    edges = shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=env, only_edges=True)
    kinds = rng.choice(len(_KIND_NAMES), size=n, p=[v[0] for v in _ESTATE_KINDS.values()])
    main_dir = rng.uniform(0, np.pi)
    theta = np.where(
        rng.random(n) < 0.65, main_dir + rng.normal(0, 0.3, n), rng.uniform(0, np.pi, n)
    )
    width = rng.uniform(14, 42, n)
    length = rng.uniform(30, 110, n)
    big = np.isin(kinds, [_KIND_NAMES.index("scrub"), _KIND_NAMES.index("plantation")])
    width[big] *= 3.0
    length[big] *= 2.0
    lut = np.zeros((n, 256), dtype=np.uint8)
    for i, k in enumerate(kinds):
        mix = _ESTATE_KINDS[_KIND_NAMES[k]][1]
        p = rng.dirichlet(np.array(list(mix.values())) * 12 + 0.05)
        edges_q = np.round(np.cumsum(p) * 256).astype(int)
        lut[i] = np.array(list(mix))[
            np.searchsorted(edges_q, np.arange(256), side="right").clip(0, len(p) - 1)
        ]
    bunds = np.isin(kinds, [_KIND_NAMES.index("fields"), _KIND_NAMES.index("fallow")])
    bund_trees = np.where(bunds, rng.uniform(0, 1, n) ** 2 * 0.5, 0.0)
    f32 = np.float32
    return _Estates(
        geoms=geoms,
        edges=shapely.get_parts(edges),
        cos=np.cos(theta).astype(f32),
        sin=np.sin(theta).astype(f32),
        width=width.astype(f32),
        length=length.astype(f32),
        phase=rng.uniform(0, 1, n).astype(f32),
        bunds=bunds,
        bund_trees=bund_trees.astype(f32),
        lut=lut,
    )


def _crown_shading(
    ox: np.ndarray, oy: np.ndarray, rad: np.ndarray, height: np.ndarray | np.floating[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Dome-shaped crowns: lit on the sun side, darker at the rim; height falls off to the rim."""
    d2 = np.minimum((ox * ox + oy * oy) / (rad * rad), 1.0)
    micro = 0.35 * (ox * _SUN_XY[0] + oy * _SUN_XY[1]) / rad - 0.25 * d2
    return micro.astype(np.float32), (height * (0.55 + 0.45 * np.sqrt(1.0 - d2))).astype(np.float32)


def _parcels(L: _Layout, est: np.ndarray, r0: int, r1: int) -> tuple[np.ndarray, ...]:
    """Field parcels, bunds, bund trees, orchards, plantations, scrub: formulas of the estate grid."""
    s, seed = L.size, L.seed
    ys = (np.arange(r0, r1, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(s, dtype=np.float32) + 0.5)[None, :]
    # Warped coordinates: hand-surveyed field boundaries are never quite straight.
    X = xs + 5.0 * _fbm(seed + 11, r0, r1, s, (90.0, 240.0))
    Y = ys + 5.0 * _fbm(seed + 12, r0, r1, s, (90.0, 240.0))
    c, sn = L.est.cos[est], L.est.sin[est]
    u = X * c + Y * sn
    v = Y * c - X * sn
    del X, Y
    W = L.est.width[est]
    U = u / W + L.est.phase[est]
    rf = np.floor(U)
    fr = U - rf
    hr = _hash(seed, est, rf.astype(np.int32))
    q = np.where((hr & np.uint32(3)) == 0, 0.3 + 0.4 * _u01(_mix(hr)), 2.0).astype(np.float32)
    sub = fr > q  # a quarter of the rows are split in two unequal strips
    du = np.minimum(np.minimum(fr, 1 - fr), np.abs(fr - q)) * W
    hs = _hash(seed, hr, sub)
    length = L.est.length[est] * (0.6 + 0.9 * _u01(hs))
    V = v / length + _u01(_mix(hs))
    cf = np.floor(V)
    fv = V - cf
    dv = np.minimum(fv, 1 - fv) * length
    key = _hash(seed, hs, cf.astype(np.int32))
    oid = (key & np.uint32((1 << _PARCEL_BITS) - 1)).astype(np.int32)
    mat = L.est.lut[est, key >> np.uint32(24)]
    bund = L.est.bunds[est] & (np.minimum(du, dv) < 0.55)
    del du, dv, fr, fv, V, q, sub, hs, length
    micro = np.zeros(mat.shape, np.float32)
    height = np.zeros(mat.shape, np.float32)

    # Tillage lines in ploughed soil and young crops.
    till = (mat == Mat.SOIL_PLOUGH) | (mat == Mat.CROP_YOUNG)
    period = 2.5 + 3.0 * _u01(_mix(key[till]))
    micro[till] += 0.07 * np.sin(2 * np.pi * u[till] / period)

    # Trees on bunds (every ~12 m where present) and scattered single trees in the fields.
    k = np.round(U)
    across = (U - k) * W
    j = np.round(v / 12.0)
    along = v - j * 12.0
    ht = _hash(seed + 5, est, k.astype(np.int32), j.astype(np.int32))
    rad = 2.2 + 3.3 * _u01(_mix(ht))
    crown = (_u01(ht) < L.est.bund_trees[est]) & (across * across + along * along < rad * rad)
    cu, cv = np.floor(u / 40.0), np.floor(v / 40.0)
    hc = _hash(seed + 6, est, cu.astype(np.int32), cv.astype(np.int32))
    rad2 = 2.5 + 4.0 * _u01(_mix(hc))
    cu = (cu + 0.2 + 0.6 * _u01(_mix(hc + np.uint32(1)))) * 40.0
    cv = (cv + 0.2 + 0.6 * _u01(_mix(hc + np.uint32(2)))) * 40.0
    lone = (_u01(hc) < 0.06) & ((u - cu) ** 2 + (v - cv) ** 2 < rad2 * rad2) & ~crown
    for sel, du_, dv_, r_, h_ in (
        (crown, across, along, rad, ht),
        (lone, u - cu, v - cv, rad2, hc),
    ):
        ox = du_[sel] * c[sel] - dv_[sel] * sn[sel]
        oy = du_[sel] * sn[sel] + dv_[sel] * c[sel]
        m_, h_px = _crown_shading(ox, oy, r_[sel], 7.0 + 7.0 * _u01(_mix(h_[sel] ^ np.uint32(77))))
        micro[sel], height[sel] = m_, h_px
        mat[sel] = Mat.TREE
        oid[sel] = (_mix(h_[sel]) & np.uint32((1 << _PARCEL_BITS) - 1)).astype(np.int32)
    del k, across, along, ht, rad, cu, cv, hc, rad2, U, W

    # Orchards and plantations: crowns on a regular grid, in unwarped coordinates.
    for marker, spacing, fill in (
        (Mat.ORCHARD, None, Mat.TREE),
        (Mat.PLANTATION, 3.2, Mat.TREE_EUC),
    ):
        sel = mat == marker
        if not sel.any():
            continue
        ri, ci = np.nonzero(sel)
        kk = key[sel]
        sp: Any = (7.0 + 5.0 * _u01(_mix(kk))) if spacing is None else np.float32(spacing)
        x0, y0 = xs[0, ci], ys[ri, 0]
        u0 = x0 * c[sel] + y0 * sn[sel]
        v0 = y0 * c[sel] - x0 * sn[sel]
        a = np.mod(u0, sp) - sp / 2
        b = np.mod(v0, sp) - sp / 2
        crown_r: Any = (
            sp * (0.3 + 0.15 * _u01(_mix(kk ^ np.uint32(5))))
            if spacing is None
            else np.float32(1.9)
        )
        inside = a * a + b * b < crown_r * crown_r
        ox = a * c[sel] - b * sn[sel]
        oy = a * sn[sel] + b * c[sel]
        m_, h_px = _crown_shading(
            ox, oy, np.broadcast_to(crown_r, ox.shape), np.float32(8.0 if spacing is None else 14.0)
        )
        ground = np.where((kk & np.uint32(1)) == 0, Mat.CROP_DRY, Mat.SOIL_RED).astype(np.uint8)
        if spacing is None:
            mat[ri, ci] = np.where(inside, np.uint8(fill), ground)
        else:
            mat[ri, ci] = fill  # closed canopy: the gaps are canopy shade, not ground
        micro[ri, ci] = np.where(inside, m_, -0.3 if spacing else 0.0)
        height[ri, ci] = np.where(inside, h_px, 0.0 if spacing is None else 9.0)

    # Scrub: dry grass with bushes.
    sel = mat == Mat.SCRUB
    if sel.any():
        bush = sel & (_fbm(seed + 21, r0, r1, s, (3.0, 7.0)) > 1.1)
        mat[bush] = Mat.SHRUB
        height[bush] = 2.5
        mat[sel & ~bush] = Mat.CROP_DRY
    # Tree clumps: blobs of canopy across whatever the fields are.
    clump = _fbm(seed + 31, r0, r1, s, (12.0, 30.0, 80.0, 200.0))
    sel = clump > 1.45
    mat[sel] = Mat.TREE
    height[sel] = 8.0 + 4.0 * np.clip(clump[sel] - 1.45, 0, 1)
    micro[sel] = 0.0
    bund[sel] = False
    return mat, oid, micro, height, bund
