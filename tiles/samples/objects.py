"""The vector objects drawn on the farmland: roads, tanks and canals, villages, ribbon shops,
industrial sheds, housing layouts and trees, in paint order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.ops import substring

from tiles.samples.spectra import Mat
from tiles.samples.terrain import _Estates

# Vector object kinds, for per-pixel shading.
_PLAIN, _CROWN, _GABLE = 0, 1, 2


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
        geom: shapely.Geometry,
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
    ia, ib = (m.ravel() for m in np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1)))
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


def _village_site(line: shapely.LineString, water: shapely.Geometry, size: int) -> float:
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
        k = int(rng.integers(1, 5))
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
