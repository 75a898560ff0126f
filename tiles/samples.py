"""The embedded sample scene: a synthetic 1 m, 4-band scene of peri-urban Bengaluru with a perfect truth.

Why synthetic: the demo, the tests and refine's benchmarks need a georeferenced scene whose
ground truth is known exactly, at any size, without shipping data. Why this much detail: the
classes must be learnable from 4 bands plus texture by a small U-Net, but not trivially, so
the scene carries the confusions real imagery has (dense crops against trees, dirt tracks and
red soil against tiled roofs, granite outcrops against concrete, weed-covered water).

How: a vector layout (estates cut into field parcels, roads, lakes, a canal, villages,
housing layouts, industrial sheds, trees) is drawn once from the seed. Pixels are then
rendered strip by strip as a pure function of (rows, layout): every noise field is a hash of
pixel coordinates, never a draw from a stateful generator. So any size renders in bounded
memory and the same seed gives the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.enums import ColorInterp
from rasterio.features import rasterize
from rasterio.windows import Window
from scipy.ndimage import gaussian_filter
from shapely.ops import substring

from tiles.classes import ClassSchema, builtin_schema_path, load_schema
from tiles.errors import TrustmapError
from tiles.io import atomic_path, ensure_writable_dir

CRS = "EPSG:32643"  # WGS 84 / UTM 43N
ORIGIN = (770000.0, 1430000.0)  # upper-left corner: south-west Bengaluru (about 77.49 E, 12.93 N)
PIXEL_M = 1.0
BAND_NAMES = ("blue", "green", "red", "nir")
NODATA = 0
IGNORE = 255
REFLECTANCE_SCALE = 1e-4  # stored value x scale = surface reflectance
STRIP = 256  # rows rendered at a time; equal to the GeoTIFF block so writes are block-aligned
HALO = 16  # extra rows each side of a strip: room for shadows (<= 12 m) and the optics blur

WATER, TREE, CROP, BUILT, SOIL, ROAD = 1, 2, 3, 4, 5, 6  # codes of configs/classes/landcover6.yaml
CLASS_CODES = (WATER, TREE, CROP, BUILT, SOIL, ROAD)

_DEFAULT_SCHEMA = builtin_schema_path("landcover6")

# Sun at ~10:30 local time: from the south-east, 55 degrees up. Unit vector towards the sun in
# pixel axes (x east, y down = south), and the rise of a sun ray per metre travelled.
_SUN_XY = np.array([0.7071, 0.7071], dtype=np.float32)
_TAN_ELEV = float(np.tan(np.radians(55.0)))
_MAX_HEIGHT = 16.0


@dataclass(frozen=True)
class SamplePaths:
    """Where :func:`make_sample` wrote its three files."""

    scene: Path
    truth: Path
    quicklook: Path


# --------------------------------------------------------------------------------------------
# Materials: what a pixel is made of. Several materials share a class; that is the point.
# --------------------------------------------------------------------------------------------


class Mat(IntEnum):
    CROP = 0
    CROP_DENSE = 1  # sugarcane / banana: spectrally close to tree canopy, but smooth
    CROP_YOUNG = 2
    CROP_DRY = 3
    GRASS = 4
    SOIL_RED = 5  # lateritic soil: reddish, like clay roof tiles
    SOIL_PLOUGH = 6
    SOIL_LIGHT = 7
    ROCK = 8  # granite sheet rock: grey, like concrete
    MUD = 9
    GROUND = 10  # trodden village ground
    TREE = 11
    TREE_EUC = 12
    SHRUB = 13
    WATER_CLEAR = 14
    WATER_TURBID = 15
    WATER_ALGAL = 16
    WATER_DARK = 17
    WATER_WEED = 18  # water hyacinth mats: water by label, vegetation by spectrum
    ROOF_CONCRETE = 19
    ROOF_TILE = 20
    ROOF_METAL = 21
    ROOF_BLUE = 22
    ROOF_DARK = 23
    PAVED = 24
    ASPHALT = 25
    CONCRETE_ROAD = 26
    DIRT_ROAD = 27  # labelled road, spectrally bare soil
    ORCHARD = 28  # parcel markers, resolved per pixel into trees and the ground between them
    PLANTATION = 29
    SCRUB = 30


class _Props(NamedTuple):
    code: int
    spec: tuple[float, float, float, float]  # B, G, R, NIR reflectance x 10000
    macro: float  # amplitude of field-scale brightness variation
    fine: float  # amplitude of metre-scale texture (crowns, clods)
    green: float  # how far the vigour field moves it along the soil <-> vegetation axis
    gain_sd: float  # spread of brightness between objects of this material


_PROPS: dict[Mat, _Props] = {
    Mat.CROP: _Props(CROP, (380, 700, 430, 3800), 0.10, 0.04, 0.45, 0.10),
    Mat.CROP_DENSE: _Props(CROP, (330, 610, 360, 4100), 0.07, 0.05, 0.15, 0.08),
    Mat.CROP_YOUNG: _Props(CROP, (620, 880, 960, 2800), 0.10, 0.05, 0.35, 0.10),
    Mat.CROP_DRY: _Props(CROP, (760, 1000, 1280, 2250), 0.10, 0.05, 0.25, 0.10),
    Mat.GRASS: _Props(CROP, (540, 860, 780, 3000), 0.12, 0.06, 0.35, 0.10),
    Mat.SOIL_RED: _Props(SOIL, (700, 1040, 1560, 2300), 0.10, 0.05, 0.10, 0.10),
    Mat.SOIL_PLOUGH: _Props(SOIL, (540, 750, 1050, 1600), 0.10, 0.07, 0.08, 0.12),
    Mat.SOIL_LIGHT: _Props(SOIL, (1000, 1300, 1650, 2200), 0.08, 0.05, 0.08, 0.10),
    Mat.ROCK: _Props(SOIL, (1300, 1420, 1530, 1800), 0.12, 0.16, 0.00, 0.10),
    Mat.MUD: _Props(SOIL, (560, 700, 850, 1200), 0.12, 0.05, 0.15, 0.10),
    Mat.GROUND: _Props(SOIL, (820, 1050, 1350, 1700), 0.08, 0.06, 0.05, 0.08),
    Mat.TREE: _Props(TREE, (310, 560, 330, 3500), 0.08, 0.30, 0.10, 0.18),
    Mat.TREE_EUC: _Props(TREE, (420, 640, 490, 2900), 0.06, 0.22, 0.05, 0.08),
    Mat.SHRUB: _Props(TREE, (420, 680, 520, 2900), 0.06, 0.18, 0.10, 0.08),
    Mat.WATER_CLEAR: _Props(WATER, (420, 480, 300, 150), 0.04, 0.01, 0.00, 0.08),
    Mat.WATER_TURBID: _Props(WATER, (520, 640, 560, 300), 0.05, 0.01, 0.00, 0.08),
    Mat.WATER_ALGAL: _Props(WATER, (360, 600, 400, 520), 0.06, 0.02, 0.05, 0.10),
    Mat.WATER_DARK: _Props(WATER, (360, 540, 400, 260), 0.05, 0.02, 0.00, 0.08),
    Mat.WATER_WEED: _Props(WATER, (420, 720, 480, 2400), 0.08, 0.10, 0.10, 0.10),
    Mat.ROOF_CONCRETE: _Props(BUILT, (1700, 1800, 1900, 2150), 0.03, 0.03, 0.00, 0.12),
    Mat.ROOF_TILE: _Props(BUILT, (900, 1100, 1800, 2250), 0.03, 0.04, 0.00, 0.10),
    Mat.ROOF_METAL: _Props(BUILT, (2300, 2400, 2450, 2600), 0.02, 0.02, 0.00, 0.10),
    Mat.ROOF_BLUE: _Props(BUILT, (1750, 1520, 1080, 1450), 0.02, 0.02, 0.00, 0.10),
    Mat.ROOF_DARK: _Props(BUILT, (780, 860, 900, 1100), 0.03, 0.03, 0.00, 0.10),
    Mat.PAVED: _Props(BUILT, (1350, 1450, 1550, 1800), 0.05, 0.03, 0.00, 0.08),
    Mat.ASPHALT: _Props(ROAD, (640, 740, 830, 960), 0.05, 0.03, 0.00, 0.08),
    Mat.CONCRETE_ROAD: _Props(ROAD, (1100, 1200, 1350, 1550), 0.05, 0.03, 0.00, 0.08),
    Mat.DIRT_ROAD: _Props(ROAD, (1050, 1330, 1750, 2250), 0.06, 0.05, 0.03, 0.08),
    Mat.ORCHARD: _Props(CROP, (840, 1060, 1340, 2250), 0.10, 0.05, 0.25, 0.10),
    Mat.PLANTATION: _Props(TREE, (420, 640, 490, 2900), 0.06, 0.22, 0.05, 0.08),
    Mat.SCRUB: _Props(CROP, (720, 980, 1200, 2350), 0.10, 0.06, 0.25, 0.10),
}
_N_MAT = len(Mat)
_CLASS_OF = np.array([_PROPS[m].code for m in Mat], dtype=np.uint8)
_SPEC = np.array([_PROPS[m].spec for m in Mat], dtype=np.float32).T.copy()  # (4, n_mat)
_MACRO = np.array([_PROPS[m].macro for m in Mat], dtype=np.float32)
_FINE = np.array([_PROPS[m].fine for m in Mat], dtype=np.float32)
_GREEN = np.array([_PROPS[m].green for m in Mat], dtype=np.float32)
_GAIN_SD = np.array([_PROPS[m].gain_sd for m in Mat], dtype=np.float32)
_IS_LAKE_WATER = np.isin(np.arange(_N_MAT), [Mat.WATER_CLEAR, Mat.WATER_TURBID, Mat.WATER_ALGAL])

_VIGOUR_AXIS = np.array([-260, -280, -720, 950], dtype=np.float32)  # soil -> green vegetation
_BUND_SPEC = np.array([700, 950, 1000, 2500], dtype=np.float32)  # grassy field bunds
_SHADOW = np.array([0.55, 0.45, 0.42, 0.36], dtype=np.float32)  # diffuse skylight is blue
_HAZE = np.array([160, 110, 70, 30], dtype=np.float32)
_NOISE_SD = np.array([22, 22, 26, 40], dtype=np.float32)

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

# Vector object kinds, for per-pixel shading.
_PLAIN, _CROWN, _GABLE = 0, 1, 2
_PARCEL_BITS = 18  # parcel object ids are hashes below 2**18; vector objects come after


# --------------------------------------------------------------------------------------------
# Stateless noise: hashes of integer coordinates, so any window renders the same pixels.
# --------------------------------------------------------------------------------------------


def _mix(h: np.ndarray) -> np.ndarray:
    """lowbias32 integer finaliser: good avalanche at a few operations per value."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def _hash(seed: int, *parts: np.ndarray | int) -> np.ndarray:
    """A uint32 hash of ``seed`` and integer arrays (broadcast); negative ints wrap."""
    h = np.asarray(np.uint32(seed & 0xFFFFFFFF))
    for p in parts:
        p = np.asarray(p)
        p = p.astype(np.uint32) if p.dtype != np.uint32 else p
        h = _mix((h + np.uint32(0x9E3779B9)) ^ p)
    return h


def _u01(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


def _value_noise(seed: int, r0: int, r1: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise in [-1, 1] with features about ``cell`` metres across (rows r0..r1)."""
    off = _u01(_hash(seed, np.array([1, 2]))) * cell
    rr = (np.arange(r0, r1) + 0.5 + off[0]) / cell
    cc = (np.arange(width) + 0.5 + off[1]) / cell
    ir, ic = np.floor(rr).astype(np.int64), np.floor(cc).astype(np.int64)
    tr, tc = (rr - ir).astype(np.float32), (cc - ic).astype(np.float32)
    tr, tc = tr * tr * (3 - 2 * tr), tc * tc * (3 - 2 * tc)  # smoothstep hides the lattice
    lr = np.arange(ir[0], ir[-1] + 2)
    lc = np.arange(ic[0], ic[-1] + 2)
    lat = _u01(_hash(seed, lr[:, None], lc[None, :])) * 2 - 1
    jc = ic - ic[0]
    a = lat[:, jc] * (1 - tc) + lat[:, jc + 1] * tc
    jr = ir - ir[0]
    return a[jr] * (1 - tr)[:, None] + a[jr + 1] * tr[:, None]


def _fbm(seed: int, r0: int, r1: int, width: int, cells: tuple[float, ...]) -> np.ndarray:
    """Multi-scale noise: octaves weighted by sqrt(cell), scaled to a std of about 1."""
    out = np.zeros((r1 - r0, width), dtype=np.float32)
    weights = np.sqrt(np.asarray(cells, dtype=np.float32))
    for k, (cell, wt) in enumerate(zip(cells, weights, strict=True)):
        out += wt * _value_noise(seed + 7919 * k, r0, r1, width, cell)
    return out * np.float32(1.0 / (0.36 * np.sqrt((weights**2).sum())))


# --------------------------------------------------------------------------------------------
# The layout: everything drawn once from the seed.
# --------------------------------------------------------------------------------------------


@dataclass
class _Objects:
    """Vector objects in paint order, with what the renderer needs to know about each."""

    geoms: list = field(default_factory=list)
    mat: list[int] = field(default_factory=list)
    height: list[float] = field(default_factory=list)
    kind: list[int] = field(default_factory=list)
    cx: list[float] = field(default_factory=list)
    cy: list[float] = field(default_factory=list)
    r: list[float] = field(default_factory=list)  # crown radius, or roof half-width
    ax: list[float] = field(default_factory=list)  # unit normal of a gable ridge
    ay: list[float] = field(default_factory=list)

    def add(
        self,
        geom,
        mat: Mat,
        height: float = 0.0,
        kind: int = _PLAIN,
        cx: float = 0.0,
        cy: float = 0.0,
        r: float = 1.0,
        ax: float = 0.0,
        ay: float = 0.0,
    ) -> None:
        self.geoms.append(geom)
        self.mat.append(int(mat))
        self.height.append(height)
        self.kind.append(kind)
        self.cx.append(cx)
        self.cy.append(cy)
        self.r.append(r)
        self.ax.append(ax)
        self.ay.append(ay)


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


@dataclass
class _Layout:
    """Everything drawn from the seed; the renderer reads it, never changes it."""

    size: int
    seed: int  # the hash seed of every per-pixel field
    est: _Estates
    geoms: np.ndarray  # vector objects, paint order
    tree: shapely.STRtree
    v_mat: np.ndarray
    v_height: np.ndarray
    v_kind: np.ndarray
    v_cx: np.ndarray
    v_cy: np.ndarray
    v_r: np.ndarray
    v_ax: np.ndarray
    v_ay: np.ndarray
    obj_var: np.ndarray  # (6, n_obj) uniform [-1, 1]: per-object gain, 4 band jitters, vigour
    nodata_line: tuple[float, float, float]  # a x + b y + c < 0 is the missing-data wedge


def _walk(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    step: float,
    max_len: float,
    turn_sd: float,
    size: int,
) -> shapely.LineString:
    """A smooth random walk (roads, canals): the turn rate itself wanders."""
    pts, p, h, dh = [start.copy()], start.copy(), heading, 0.0
    pad = 60.0
    for _ in range(int(max_len / step)):
        dh = 0.85 * dh + rng.normal(0.0, turn_sd)
        h += dh
        p = p + step * np.array([np.cos(h), np.sin(h)])
        pts.append(p.copy())
        if not (-pad <= p[0] <= size + pad and -pad <= p[1] <= size + pad):
            break
    return shapely.LineString(pts)


def _blob(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    radius: float,
    rough: float = 0.22,
    elong: float = 1.0,
    theta: float = 0.0,
    n: int = 72,
) -> shapely.Polygon:
    """An irregular closed shape: a circle whose radius is a random Fourier series."""
    phi = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in range(2, 7):
        rad += rng.normal(0, rough / k**0.8) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    rad = radius * np.clip(rad, 0.35, None)
    x, y = rad * np.cos(phi) * elong, rad * np.sin(phi)
    c, s = np.cos(theta), np.sin(theta)
    return shapely.Polygon(np.c_[cx + c * x - s * y, cy + s * x + c * y]).buffer(0)


def _rects(
    cx: np.ndarray, cy: np.ndarray, along: np.ndarray, across: np.ndarray, theta: np.ndarray
) -> np.ndarray:
    """Rotated rectangles (buildings, plots) as a shapely array, vectorised."""
    ux, uy = np.cos(theta), np.sin(theta)
    sx = np.array([1, 1, -1, -1, 1]) * 0.5
    sy = np.array([1, -1, -1, 1, 1]) * 0.5
    x = cx[:, None] + sx * along[:, None] * ux[:, None] - sy * across[:, None] * uy[:, None]
    y = cy[:, None] + sx * along[:, None] * uy[:, None] + sy * across[:, None] * ux[:, None]
    return shapely.polygons(np.stack([x, y], axis=-1))


def _tangent(line: shapely.LineString, dist: float) -> float:
    a = line.interpolate(max(dist - 2.0, 0.0))
    b = line.interpolate(min(dist + 2.0, line.length))
    return float(np.arctan2(b.y - a.y, b.x - a.x))


def _choice(rng: np.random.Generator, options: dict[Mat, float], n: int) -> np.ndarray:
    keys = list(options)
    p = np.array([options[k] for k in keys], dtype=float)
    return np.array(keys)[rng.choice(len(keys), size=n, p=p / p.sum())]


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


@dataclass
class _Road:
    line: shapely.LineString
    width: float
    mat: Mat
    kind: str  # main | secondary | track | lane


def _first_crossing(
    line: shapely.LineString, network: list[_Road], skip: float
) -> shapely.LineString:
    """Cut a new road where it first meets the network (beyond ``skip`` m from its start)."""
    if not network:
        return line
    hit = line.intersection(shapely.multilinestrings([r.line for r in network]))
    pts = shapely.get_coordinates(hit)
    if len(pts) == 0:
        return line
    d = shapely.line_locate_point(line, shapely.points(pts))
    d = d[d > skip]
    if len(d) == 0:
        return line
    return substring(line, 0.0, float(d.min()) + 2.0)


def _roads(rng: np.random.Generator, size: int, est: _Estates) -> list[_Road]:
    area = (size / 1000.0) ** 2
    roads: list[_Road] = []
    centre = np.array([size / 2, size / 2])
    n_main = max(1, round(size / 1600 + rng.uniform(-0.3, 0.5)))
    for i in range(n_main):
        side = rng.integers(4)
        t = rng.uniform(0.1, 0.9) * size
        start = [
            np.array([t, -40.0]),
            np.array([size + 40.0, t]),
            np.array([t, size + 40.0]),
            np.array([-40.0, t]),
        ][side]
        target = (
            centre + rng.uniform(-0.2, 0.2, 2) * size
            if i == 0
            else rng.uniform(0.15, 0.85, 2) * size
        )
        head = float(np.arctan2(*(target - start)[::-1]))
        line = _walk(rng, start, head, 25.0, 4 * size, 0.012, size)
        if i > 0 and rng.random() < 0.3:  # some end where they meet another main road
            line = _first_crossing(line, roads, 60.0)
        roads.append(_Road(line, rng.uniform(12, 20), Mat.ASPHALT, "main"))
    for _ in range(max(2, round(area * 4.5))):
        base = roads[rng.integers(len(roads))]
        d = rng.uniform(0.05, 0.95) * base.line.length
        p0 = base.line.interpolate(d)
        head = _tangent(base.line, d) + rng.choice([-1, 1]) * np.pi / 2 + rng.normal(0, 0.35)
        line = _walk(rng, np.array([p0.x, p0.y]), head, 15.0, rng.uniform(250, 1400), 0.035, size)
        line = _first_crossing(line, roads, 25.0)
        mat = _choice(rng, {Mat.ASPHALT: 0.6, Mat.CONCRETE_ROAD: 0.15, Mat.DIRT_ROAD: 0.25}, 1)[0]
        roads.append(_Road(line, rng.uniform(5, 9), Mat(mat), "secondary"))
    # Tracks follow estate boundaries, so they connect at the Voronoi vertices.
    box = shapely.box(-20, -20, size + 20, size + 20)
    for edge in est.edges:
        if rng.random() < 0.3 and edge.intersects(box):
            seg = shapely.segmentize(edge.intersection(box), 25.0)
            xy = shapely.get_coordinates(seg)
            if len(xy) < 2:
                continue
            xy[1:-1] += rng.normal(0, 1.2, xy[1:-1].shape)
            mat = _choice(rng, {Mat.DIRT_ROAD: 0.75, Mat.ASPHALT: 0.15, Mat.CONCRETE_ROAD: 0.1}, 1)[
                0
            ]
            roads.append(_Road(shapely.LineString(xy), rng.uniform(3, 5), Mat(mat), "track"))
    return roads


def _lakes(rng: np.random.Generator, size: int, objs: _Objects, trees: list) -> list:
    """Tanks (Bengaluru's lakes): muddy shore, a water body, weed mats, trees on the bank."""
    area = (size / 1000.0) ** 2
    lakes: list[shapely.Polygon] = []
    n = 1 + rng.poisson(area * 0.45)
    for i in range(n * 4):
        if len(lakes) >= n:
            break
        radius = min(rng.uniform(70, 230), 0.14 * size) if i == 0 else rng.uniform(50, 230)
        c = (
            rng.choice([0.27, 0.73], 2) * size + rng.normal(0, 0.03 * size, 2)
            if i == 0
            else rng.uniform(-0.05, 1.05, 2) * size
        )
        poly = _blob(
            rng,
            c[0],
            c[1],
            radius,
            rough=0.3,
            elong=rng.uniform(1, 1.8),
            theta=rng.uniform(0, np.pi),
        )
        if any(poly.buffer(40).intersects(o) for o in lakes):
            continue
        lakes.append(poly)
        shore = poly.buffer(rng.uniform(3, 14))
        objs.add(shore, Mat.MUD if rng.random() < 0.6 else Mat.GRASS)
        water = _choice(
            rng, {Mat.WATER_CLEAR: 0.3, Mat.WATER_TURBID: 0.35, Mat.WATER_ALGAL: 0.35}, 1
        )[0]
        objs.add(poly, Mat(water))
        ring = shore.buffer(5).exterior
        for d in np.arange(0, ring.length, rng.uniform(6, 12)):
            if rng.random() < 0.55:
                p = ring.interpolate(d + rng.uniform(-2, 2))
                trees.append(
                    (
                        p.x + rng.normal(0, 2),
                        p.y + rng.normal(0, 2),
                        rng.uniform(2.5, 6.5),
                        Mat.TREE,
                    )
                )
    return lakes


def _canals(rng: np.random.Generator, size: int, lakes: list, objs: _Objects, trees: list) -> list:
    """Storm-water canals (raja kaluve) linking the tanks, lined with trees."""
    out = []
    n = rng.poisson((size / 1000.0) ** 2 * 0.2) + (1 if size >= 1024 else 0)
    for _ in range(n):
        start = rng.uniform(0, size, 2)
        start[rng.integers(2)] = -50.0
        via = lakes[rng.integers(len(lakes))].centroid
        head = float(np.arctan2(via.y - start[1], via.x - start[0]))
        line = _walk(rng, start, head, 12.0, 3 * size, 0.025, size)
        width = rng.uniform(9, 22)
        poly = line.buffer(width / 2)
        objs.add(line.buffer(width / 2 + rng.uniform(2, 5)), Mat.GRASS)  # embankments
        objs.add(
            poly,
            Mat(
                _choice(rng, {Mat.WATER_DARK: 0.5, Mat.WATER_TURBID: 0.3, Mat.WATER_ALGAL: 0.2}, 1)[
                    0
                ]
            ),
        )
        out.append(poly)
        for side in (-1, 1):
            bank = line.offset_curve(side * (width / 2 + 5))
            for d in np.arange(0, bank.length, rng.uniform(7, 14)):
                if rng.random() < 0.5:
                    p = bank.interpolate(d)
                    trees.append((p.x, p.y, rng.uniform(2.5, 6), Mat.TREE))
    return out


def _village(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    theta: float,
    foot: shapely.Polygon,
    radius: float,
) -> tuple[list[shapely.LineString], tuple[np.ndarray, ...]]:
    """A dense village: a lattice of small houses, with every few rows left open for a lane.

    Lanes run down the empty lattice rows and columns, so houses crowd right up to them.
    Returns the lane centrelines and the houses (x, y, along, across, theta).
    """
    ca, cb = rng.uniform(9, 13), rng.uniform(10, 14)
    na, nb = int(rng.integers(6, 11)), int(rng.integers(4, 7))
    n = int(1.8 * radius / min(ca, cb)) + 2
    ia, ib = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1))
    ia, ib = ia.ravel(), ib.ravel()
    a, b = ia * ca, ib * cb
    c, s = np.cos(theta), np.sin(theta)
    bend_a, bend_b = rng.uniform(-0.2, 0.2, 2) / radius  # villages grow organically, not on a grid

    def to_xy(la: np.ndarray, lb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        la, lb = la + bend_b * lb**2, lb + bend_a * la**2
        return cx + la * c - lb * s, cy + la * s + lb * c

    x, y = to_xy(a, b)
    dist = np.hypot(a, b) / radius
    open_row = (ib % nb == 0) | (ia % na == 0)
    keep = shapely.contains_xy(foot, x, y) & ~open_row & (rng.random(x.size) < 1.0 - 0.35 * dist**2)
    k = int(keep.sum())
    # Some houses span two plots; the neighbour they overlap merges into one block.
    span = np.where(rng.random(k) < 0.2, 2.0, 1.0)
    houses = (
        x[keep] + (span - 1) * ca / 2 * c + rng.normal(0, 0.6, k),
        y[keep] + (span - 1) * ca / 2 * s + rng.normal(0, 0.6, k),
        span * ca - rng.uniform(0.3, 2.0, k),
        cb - rng.uniform(0.3, 2.0, k),
        theta + np.arctan(2 * bend_a * a[keep]) + rng.normal(0, 0.04, k),
    )
    lanes = []
    t = np.linspace(-2 * radius, 2 * radius, 40)
    for dirn, cell, step in ((0, cb, nb), (1, ca, na)):
        for j in range(-n // step - 1, n // step + 2):
            if j == 0 and dirn == 0:
                continue  # that row is the road the village grew along
            if rng.random() > 0.85:
                continue
            off = j * step * cell + np.cumsum(rng.normal(0, 0.12, t.size))
            la, lb = (t, off) if dirn == 0 else (off, t)
            line = shapely.LineString(np.c_[to_xy(la, lb)]).intersection(foot)
            lanes += [part for part in shapely.get_parts(line) if part.length > 20]
    return lanes, houses


@dataclass
class _Town:
    """The built-up layer before it is checked against roads and water."""

    grounds: list[tuple]  # (polygon, material): village ground, yards, cleared layouts
    houses: list[tuple]  # batches of (x, y, along, across, theta, roof materials, heights)
    trees: list[tuple]  # (x, y, radius, material)
    roads: list[_Road]  # lanes and layout streets


def _village_site(line: shapely.LineString, water, size: int) -> float:
    """Where along ``line`` the first village goes: inside the scene's core, clear of water.

    This is what guarantees built-up pixels in every scene, however small.
    """
    d = np.arange(0.0, line.length, 5.0)
    pts = shapely.line_interpolate_point(line, d)
    xy = shapely.get_coordinates(pts)
    core = ((xy > 0.2 * size) & (xy < 0.8 * size)).all(axis=1)
    clear = shapely.distance(water, pts) if not water.is_empty else np.full(d.size, np.inf)
    score = np.minimum(clear, 0.12 * size) - 0.05 * np.hypot(*(xy - size / 2).T) - 1e6 * ~core
    return float(d[np.argmax(score)])


def _settlements(
    rng: np.random.Generator, size: int, roads: list[_Road], lakes: list, est: _Estates
) -> _Town:
    """Villages on the roads, ribbon shops along them, industrial sheds, housing layouts."""
    area = (size / 1000.0) ** 2
    grounds: list[tuple] = []  # (polygon, material)
    houses: list[tuple] = []  # (x, y, along, across, theta, roof materials, heights)
    trees: list[tuple] = []
    new_roads: list[_Road] = []
    water = shapely.union_all(lakes)
    main = [r for r in roads if r.kind == "main"]
    busy = [r for r in roads if r.kind in ("main", "secondary")]
    village_roofs = {
        Mat.ROOF_TILE: 0.38,
        Mat.ROOF_CONCRETE: 0.40,
        Mat.ROOF_DARK: 0.10,
        Mat.ROOF_METAL: 0.09,
        Mat.ROOF_BLUE: 0.03,
    }

    n_vil = 1 + rng.poisson(area * 2.5)
    for i in range(n_vil * 3):
        if sum(1 for g in grounds if g[1] == Mat.GROUND) >= n_vil:
            break
        road = main[0] if i == 0 else busy[rng.integers(len(busy))]
        d = _village_site(road.line, water, size) if i == 0 else rng.uniform(0, road.line.length)
        p = road.line.interpolate(d)
        if not (0 <= p.x < size and 0 <= p.y < size):
            continue
        theta = _tangent(road.line, d)
        radius = min(rng.uniform(150, 250) if i == 0 else rng.uniform(60, 170), 0.2 * size)
        foot = _blob(rng, p.x, p.y, radius, rough=0.25, elong=rng.uniform(1.1, 1.6), theta=theta)
        if foot.intersects(water):
            foot = foot.difference(water.buffer(15))
            if foot.area < 2000:
                continue
        grounds.append((foot, Mat.GROUND))
        lanes, (hx, hy, ha, hb, ht) = _village(rng, p.x, p.y, theta, foot, radius)
        lane_mat = Mat.CONCRETE_ROAD if rng.random() < 0.6 else Mat.DIRT_ROAD
        new_roads += [_Road(line, rng.uniform(3, 4.5), lane_mat, "lane") for line in lanes]
        roof = _choice(rng, village_roofs, hx.size)
        gap = rng.random(hx.size) < 0.12  # a tree in the courtyard instead of a house
        for x, y in zip(hx[gap], hy[gap], strict=True):
            trees.append((x, y, rng.uniform(2.5, 5.5), Mat.TREE))
        keep = ~gap
        houses.append(
            (
                hx[keep],
                hy[keep],
                ha[keep],
                hb[keep],
                ht[keep],
                roof[keep],
                rng.uniform(3, 8, int(keep.sum())),
            )
        )

    # Ribbon development: shops and houses fronting the busier roads.
    ribbon_roofs = {
        Mat.ROOF_CONCRETE: 0.58,
        Mat.ROOF_METAL: 0.15,
        Mat.ROOF_BLUE: 0.05,
        Mat.ROOF_DARK: 0.12,
        Mat.ROOF_TILE: 0.10,
    }
    for road in busy:
        share = 0.5 if road.kind == "main" else 0.2
        n_runs = rng.poisson(road.line.length * share / 180.0)
        for _ in range(n_runs):
            d0 = rng.uniform(0, road.line.length)
            run = rng.uniform(60, 300)
            for side in (-1, 1):
                if rng.random() < 0.25:
                    continue
                d = d0
                while d < min(d0 + run, road.line.length):
                    front = rng.uniform(7, 20)
                    depth = rng.uniform(10, 26)
                    setback = road.width / 2 + rng.uniform(1.5, 7) + depth / 2
                    th = _tangent(road.line, d)
                    q = road.line.interpolate(d + front / 2)
                    x, y = q.x - side * setback * np.sin(th), q.y + side * setback * np.cos(th)
                    if rng.random() < 0.85:
                        houses.append(
                            (
                                np.array([x]),
                                np.array([y]),
                                np.array([front - rng.uniform(0.3, 2)]),
                                np.array([depth]),
                                np.array([th]),
                                _choice(rng, ribbon_roofs, 1),
                                rng.uniform(4, 13, 1),
                            )
                        )
                    d += front

    # Industrial compounds: paved yards and big metal or blue sheds.
    for _ in range(rng.poisson(area * 0.35)):
        road = main[rng.integers(len(main))]
        d = rng.uniform(0, road.line.length)
        th = _tangent(road.line, d)
        side = rng.choice([-1, 1])
        w, dep = rng.uniform(80, 200), rng.uniform(60, 150)
        q = road.line.interpolate(d)
        off = road.width / 2 + 8 + dep / 2
        x, y = q.x - side * off * np.sin(th), q.y + side * off * np.cos(th)
        yard = _rects(np.array([x]), np.array([y]), np.array([w]), np.array([dep]), np.array([th]))[
            0
        ]
        if yard.intersects(water) or any(yard.intersects(g) for g, _ in grounds):
            continue
        grounds.append((yard, Mat.PAVED if rng.random() < 0.6 else Mat.SOIL_LIGHT))
        k = rng.integers(1, 5)
        sx = (
            x
            + np.cos(th) * rng.uniform(-0.25, 0.25, k) * w
            - np.sin(th) * rng.uniform(-0.2, 0.2, k) * dep
        )
        sy = (
            y
            + np.sin(th) * rng.uniform(-0.25, 0.25, k) * w
            + np.cos(th) * rng.uniform(-0.2, 0.2, k) * dep
        )
        houses.append(
            (
                sx,
                sy,
                rng.uniform(0.25, 0.45, k) * w,
                rng.uniform(0.3, 0.55, k) * dep,
                np.full(k, th),
                _choice(
                    rng, {Mat.ROOF_METAL: 0.55, Mat.ROOF_BLUE: 0.3, Mat.ROOF_CONCRETE: 0.15}, k
                ),
                rng.uniform(7, 12, k),
            )
        )

    # Housing layouts: 30x40 ft sites on a street grid, a few built, most still bare.
    box = shapely.box(0, 0, size, size)
    cand = [
        i for i, g in enumerate(est.geoms) if g.centroid.within(box) and not g.intersects(water)
    ]
    for i in rng.permutation(cand)[: rng.poisson(area * 0.3)]:
        ctr = est.geoms[i].centroid
        th = float(np.arctan2(est.sin[i], est.cos[i]))
        block = _rects(
            np.array([ctr.x]),
            np.array([ctr.y]),
            rng.uniform(140, 320, 1),
            rng.uniform(140, 320, 1),
            np.array([th]),
        )[0]
        foot = est.geoms[i].buffer(-6).intersection(block)
        if foot.is_empty or foot.area < 5000 or any(foot.intersects(g) for g, _ in grounds):
            continue
        grounds.append((foot, Mat.SOIL_LIGHT if rng.random() < 0.5 else Mat.SOIL_RED))
        c, s = est.cos[i], est.sin[i]
        ext = np.sqrt(foot.area) * 1.2
        block_u, street = 2 * 12.2 + 7.5, 7.5
        block_v = rng.integers(8, 14) * 9.1 + street
        streets = []
        for k in np.arange(-ext, ext, block_u):
            streets.append(((-ext, k), (ext, k)))
        for k in np.arange(-ext, ext, block_v):
            streets.append(((k, -ext), (k, ext)))
        mat = Mat.ASPHALT if rng.random() < 0.5 else Mat.CONCRETE_ROAD
        for (a0, b0), (a1, b1) in streets:
            seg = shapely.LineString(
                [
                    (ctr.x + a0 * c - b0 * s, ctr.y + a0 * s + b0 * c),
                    (ctr.x + a1 * c - b1 * s, ctr.y + a1 * s + b1 * c),
                ]
            ).intersection(foot)
            for part in shapely.get_parts(seg):
                if part.length > 15:
                    new_roads.append(_Road(part, street, mat, "lane"))
        # Plots: two rows per block, 9.1 m frontage, 12.2 m deep.
        ua = np.concatenate(
            [np.arange(-ext, ext, block_u) + street / 2 + 6.1 + j * 12.2 for j in (0, 1)]
        )
        va = np.concatenate(
            [
                np.arange(-ext, ext, block_v)[:, None]
                + street / 2
                + 4.55
                + np.arange((block_v - street) // 9.1)[None, :] * 9.1
            ]
        ).ravel()
        A, B = np.meshgrid(va, ua)
        A, B = A.ravel(), B.ravel()
        x = ctr.x + A * c - B * s
        y = ctr.y + A * s + B * c
        built = shapely.contains_xy(foot.buffer(-8), x, y) & (
            rng.random(x.size) < rng.uniform(0.12, 0.45)
        )
        k = int(built.sum())
        houses.append(
            (
                x[built],
                y[built],
                rng.uniform(6.5, 8.3, k),
                rng.uniform(8.5, 11, k),
                np.full(k, th),
                _choice(
                    rng,
                    {
                        Mat.ROOF_CONCRETE: 0.75,
                        Mat.ROOF_METAL: 0.1,
                        Mat.ROOF_BLUE: 0.08,
                        Mat.ROOF_TILE: 0.07,
                    },
                    k,
                ),
                rng.uniform(3, 10, k),
            )
        )
    return _Town(grounds, houses, trees, new_roads)


def _layout(size: int, seed: int) -> _Layout:
    rng = np.random.default_rng(seed)
    hseed = int(rng.integers(2**31))
    area = (size / 1000.0) ** 2
    est = _estates(rng, size)
    objs = _Objects()
    trees: list[tuple] = []

    for _ in range(rng.poisson(area * 0.6)):  # granite outcrops
        c = rng.uniform(0, size, 2)
        objs.add(_blob(rng, c[0], c[1], rng.uniform(15, 55), rough=0.35), Mat.ROCK)
    roads = _roads(rng, size, est)
    lakes = _lakes(rng, size, objs, trees)
    canals = _canals(rng, size, lakes, objs, trees)
    wet = shapely.union_all(lakes).buffer(8)
    dry_tracks = []
    for road in roads:  # tracks stop at the water's edge; bigger roads cross on bunds and bridges
        if road.kind == "track" and road.line.intersects(wet):
            dry_tracks += [
                _Road(part, road.width, road.mat, road.kind)
                for part in shapely.get_parts(road.line.difference(wet))
                if part.length > 20
            ]
        else:
            dry_tracks.append(road)
    roads = dry_tracks
    town = _settlements(rng, size, roads, lakes, est)
    roads = roads + town.roads
    trees += town.trees
    for geom, mat in town.grounds:
        objs.add(geom, mat)

    order = {"track": 0, "lane": 1, "secondary": 2, "main": 3}
    road_polys = []
    for road in sorted(roads, key=lambda r: order[r.kind]):
        if road.kind in ("main", "secondary"):
            shoulder = road.line.buffer(road.width / 2 + (2.5 if road.kind == "main" else 1.0))
            objs.add(shoulder, Mat.SOIL_LIGHT if road.kind == "main" else Mat.DIRT_ROAD)
            road_polys.append(shoulder)
        poly = road.line.buffer(road.width / 2)
        objs.add(poly, road.mat)
        road_polys.append(poly)
        if road.kind in ("main", "secondary") and rng.random() < 0.6:  # avenue trees
            for side in (-1, 1):
                edge = road.line.offset_curve(side * (road.width / 2 + rng.uniform(2, 4)))
                spacing = rng.uniform(9, 16)
                for d in np.arange(0, edge.length, spacing):
                    if rng.random() < 0.6:
                        p = edge.interpolate(d)
                        trees.append((p.x, p.y, rng.uniform(3, 6.5), Mat.TREE))

    # Buildings, minus any that would sit on a road or in water.
    blockers = shapely.STRtree(np.array(road_polys + lakes + canals, dtype=object))
    for hx, hy, ha, hb, ht, roof, hh in town.houses:
        if hx.size == 0:
            continue
        polys = _rects(hx, hy, ha, hb, ht)
        hit = np.unique(blockers.query(polys, predicate="intersects")[0])
        keep = np.ones(hx.size, bool)
        keep[hit] = False
        for j in np.flatnonzero(keep):
            gable = roof[j] in (Mat.ROOF_TILE, Mat.ROOF_METAL) and rng.random() < 0.7
            # ridge along the long side; the facets face across it
            th = ht[j] if ha[j] >= hb[j] else ht[j] + np.pi / 2
            objs.add(
                polys[j],
                Mat(roof[j]),
                float(hh[j]),
                _GABLE if gable else _PLAIN,
                float(hx[j]),
                float(hy[j]),
                float(min(ha[j], hb[j]) / 2),
                float(-np.sin(th)),
                float(np.cos(th)),
            )
    buildings = shapely.STRtree(
        np.array([g for g, h in zip(objs.geoms, objs.height, strict=True) if h > 0], dtype=object)
    )
    if trees:
        t = np.array([(x, y, r) for x, y, r, _ in trees])
        pts = shapely.points(t[:, :2])
        bad = np.unique(
            np.r_[
                buildings.query(pts, predicate="intersects")[0],
                shapely.STRtree(np.array(lakes + canals, dtype=object)).query(
                    pts, predicate="intersects"
                )[0],
            ]
        ).astype(int)
        ok = np.ones(len(trees), bool)
        ok[bad] = False
        crowns = shapely.buffer(pts, t[:, 2], quad_segs=4)
        for j in np.flatnonzero(ok):
            objs.add(
                crowns[j],
                trees[j][3],
                float(rng.uniform(6, _MAX_HEIGHT - 2)),
                _CROWN,
                float(t[j, 0]),
                float(t[j, 1]),
                float(t[j, 2]),
            )

    geoms = np.array(objs.geoms, dtype=object)
    n_obj = (1 << _PARCEL_BITS) + len(geoms) + 1
    # Missing-data wedge along one edge, as where a scene's footprint ends.
    edge = int(rng.integers(4))
    w1 = rng.uniform(0.05, 0.14) * size
    a, b, c = [
        (1.0, -w1 / size, 0.0),
        (-1.0, w1 / size, size - w1),
        (-w1 / size, 1.0, 0.0),
        (w1 / size, -1.0, size - w1),
    ][edge]
    if rng.random() < 0.5:  # widen towards the other end instead
        a, b, c = [
            (1.0, w1 / size, -w1),
            (-1.0, -w1 / size, size),
            (w1 / size, 1.0, -w1),
            (-w1 / size, -1.0, size),
        ][edge]
    return _Layout(
        size=size,
        seed=hseed,
        est=est,
        geoms=geoms,
        tree=shapely.STRtree(geoms),
        v_mat=np.array(objs.mat, dtype=np.uint8),
        v_height=np.array(objs.height, dtype=np.float32),
        v_kind=np.array(objs.kind, dtype=np.uint8),
        v_cx=np.array(objs.cx, dtype=np.float32),
        v_cy=np.array(objs.cy, dtype=np.float32),
        v_r=np.array(objs.r, dtype=np.float32),
        v_ax=np.array(objs.ax, dtype=np.float32),
        v_ay=np.array(objs.ay, dtype=np.float32),
        obj_var=rng.uniform(-1, 1, size=(n_obj, 6)).astype(np.float32).T.copy(),
        nodata_line=(a, b, c),
    )


# --------------------------------------------------------------------------------------------
# Rendering: a pure function of (layout, rows).
# --------------------------------------------------------------------------------------------


def _crown_shading(ox: np.ndarray, oy: np.ndarray, rad: np.ndarray, height: np.ndarray):
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
        sp = (7.0 + 5.0 * _u01(_mix(kk))) if spacing is None else np.float32(spacing)
        x0, y0 = xs[0, ci], ys[ri, 0]
        u0 = x0 * c[sel] + y0 * sn[sel]
        v0 = y0 * c[sel] - x0 * sn[sel]
        a = np.mod(u0, sp) - sp / 2
        b = np.mod(v0, sp) - sp / 2
        rad = (
            sp * (0.3 + 0.15 * _u01(_mix(kk ^ np.uint32(5))))
            if spacing is None
            else np.float32(1.9)
        )
        inside = a * a + b * b < rad * rad
        ox = a * c[sel] - b * sn[sel]
        oy = a * sn[sel] + b * c[sel]
        m_, h_px = _crown_shading(
            ox, oy, np.broadcast_to(rad, ox.shape), np.float32(8.0 if spacing is None else 14.0)
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


def _vectors(L: _Layout, r0: int, r1: int, mat, oid, micro, height, bund) -> None:
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
        for r0, r1, bands, labels in _strips(size, seed):
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
