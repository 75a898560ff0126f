"""The layout: everything drawn once from the seed, which the renderer reads and never changes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from tiles.samples.objects import (
    _CROWN,
    _GABLE,
    _PLAIN,
    _blob,
    _canals,
    _lakes,
    _Objects,
    _rects,
    _Road,
    _roads,
    _settlements,
)
from tiles.samples.spectra import _MAX_HEIGHT, Mat
from tiles.samples.terrain import _PARCEL_BITS, _Estates, _estates


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
    w1 = float(rng.uniform(0.05, 0.14)) * size
    la, lb, lc = [
        (1.0, -w1 / size, 0.0),
        (-1.0, w1 / size, size - w1),
        (-w1 / size, 1.0, 0.0),
        (w1 / size, -1.0, size - w1),
    ][edge]
    if rng.random() < 0.5:  # widen towards the other end instead
        la, lb, lc = [
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
        nodata_line=(la, lb, lc),
    )
