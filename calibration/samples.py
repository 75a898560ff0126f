"""A deterministic synthetic aerial detection set: the calibration audit's embedded default.

Real aerial detection sets cannot ship with the package, and an audit needs a detector whose
data it can regenerate exactly (train / calibration / test splits, and a shifted domain for
out-of-distribution checks). Each image is drawn from its own random stream seeded by
``(seed, domain, split, index)``, so a split's first images do not change when more are asked
for, and the same arguments always give the same PNG and JSON bytes.

Scenes: multi-scale noise terrain, striped fields, roads, lakes and rivers, trees; objects
(vehicles on roads and in parking lots, buildings with shadows, storage tanks, ships on water)
at several sizes and any orientation; hard negatives that look like objects but are not
(soft round bright patches like tanks without rim or shadow, car-sized rocks, wave crests on
water). Boxes are COCO ``[x, y, w, h]`` axis-aligned hulls of the drawn polygons, in pixel
coordinates where pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon as fill_polygon

from tiles.errors import TrustmapError
from tiles.io import atomic_dir, ensure_writable_dir, write_text_atomic

CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "vehicle", "supercategory": "object"},
    {"id": 2, "name": "building", "supercategory": "object"},
    {"id": 3, "name": "storage tank", "supercategory": "object"},
    {"id": 4, "name": "ship", "supercategory": "object"},
)
#: Objects the sample detector never saw; drawn (and annotated) only in an ``unseen`` domain.
UNSEEN_CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 5, "name": "aircraft", "supercategory": "object"},
)
SPLITS = ("train", "cal", "test")

VEHICLE, BUILDING, TANK, SHIP, AIRCRAFT = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Domain:
    """The look of a scene family; a second domain is the cheap out-of-distribution hook."""

    name: str
    ground: tuple[tuple[float, float, float], tuple[float, float, float]]  # noise low / high
    fields: tuple[tuple[float, float, float], ...]
    water: tuple[float, float, float]
    road: tuple[float, float, float]
    tree: tuple[float, float, float]
    unseen_objects: bool = False  # draw aircraft (category 5, unknown to the sample detector)
    known_objects: bool = True  # False: none of the known classes (out-of-distribution images)


DOMAINS: dict[str, Domain] = {
    "temperate": Domain(
        "temperate",
        ground=((62, 88, 48), (118, 132, 82)),
        fields=((150, 140, 90), (96, 126, 60), (170, 160, 120), (80, 110, 52), (128, 100, 70)),
        water=(38, 62, 82),
        road=(92, 92, 96),
        tree=(34, 58, 30),
    ),
    "arid": Domain(
        "arid",
        ground=((170, 140, 100), (222, 196, 150)),
        fields=((196, 170, 120), (150, 130, 90), (210, 186, 140)),
        water=(52, 96, 110),
        road=(120, 110, 100),
        tree=(96, 100, 60),
    ),
}
DOMAINS["arid_unseen"] = replace(DOMAINS["arid"], name="arid_unseen", unseen_objects=True)
#: Out-of-distribution images: aircraft and clutter only, none of the four known classes.
DOMAINS["ood"] = replace(DOMAINS["arid"], name="ood", unseen_objects=True, known_objects=False)

_CAR_COLOURS = np.array(
    [
        (235, 235, 235),
        (30, 30, 34),
        (170, 30, 30),
        (40, 60, 150),
        (160, 165, 170),
        (200, 180, 60),
        (96, 96, 100),
        (70, 72, 76),
    ],  # the last two are asphalt-grey: hard to see on roads
    dtype=np.float32,
)


def make_detection_set(
    out_dir: str | Path,
    n_train: int = 400,
    n_cal: int = 200,
    n_test: int = 200,
    size: int = 256,
    seed: int = 0,
    domain: str = "temperate",
) -> dict[str, Path]:
    """Write ``<split>/NNNNNN.png`` images and ``<split>.json`` COCO files into ``out_dir``.

    Returns ``{split: annotations json}``. COCO ``file_name`` is relative to ``out_dir``, so
    ``out_dir`` is the images root for every split.
    """
    counts = {"train": n_train, "cal": n_cal, "test": n_test}
    return {
        s: make_split(out_dir, s, n, size=size, seed=seed, domain=domain)
        for s, n in counts.items()
        if n > 0
    }


def make_split(
    out_dir: str | Path,
    split: str,
    n: int,
    size: int = 256,
    seed: int = 0,
    domain: str = "temperate",
) -> Path:
    """Write one split (images and its COCO json) and return the json's path."""
    if domain not in DOMAINS:
        raise TrustmapError(f"unknown sample domain {domain!r}; choose from {sorted(DOMAINS)}")
    if size < 64:
        raise TrustmapError(f"sample image size must be at least 64 pixels, got {size}")
    if n < 0:
        raise TrustmapError(f"number of {split} images must be >= 0, got {n}")
    out = ensure_writable_dir(out_dir)
    dom = DOMAINS[domain]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    with atomic_dir(out / split) as tmp:
        for i in range(n):
            rng = np.random.default_rng(
                [seed, zlib.crc32(dom.name.encode()), zlib.crc32(split.encode()), i]
            )
            pixels, objects = render_scene(rng, size, dom)
            name = f"{i + 1:06d}.png"
            Image.fromarray(pixels).save(tmp / name, compress_level=6)
            images.append(
                {"id": i + 1, "file_name": f"{split}/{name}", "width": size, "height": size}
            )
            for cat, poly in objects:
                annotations.append(_annotation(len(annotations) + 1, i + 1, cat, poly))
    categories = list(CATEGORIES) + (list(UNSEEN_CATEGORIES) if dom.unseen_objects else [])
    coco = {
        "info": {
            "description": f"trustmap synthetic aerial detection set ({split})",
            "seed": seed,
            "domain": dom.name,
            "size": size,
            "version": 1,
        },
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    dst = out / f"{split}.json"
    write_text_atomic(dst, json.dumps(coco, separators=(",", ":")) + "\n")
    return dst


def _annotation(ann_id: int, image_id: int, cat: int, poly: np.ndarray) -> dict[str, Any]:
    x0, y0 = poly.min(axis=0)
    x1, y1 = poly.max(axis=0)
    x, y = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": [
            round(float(x0), 2),
            round(float(y0), 2),
            round(float(x1 - x0), 2),
            round(float(y1 - y0), 2),
        ],
        "area": round(area, 2),
        "iscrowd": 0,
        "segmentation": [[round(float(v), 2) for v in poly.reshape(-1)]],
    }


# --------------------------------------------------------------------------- drawing


class _Canvas:
    """A float RGB image plus the masks that object placement needs."""

    def __init__(self, size: int):
        self.size = size
        self.img = np.zeros((size, size, 3), np.float32)
        self.taken = np.zeros((size, size), bool)  # objects and hard negatives
        self.water = np.zeros((size, size), bool)
        self.road = np.zeros((size, size), bool)
        self.lot = np.zeros((size, size), bool)
        self.road_angle = np.zeros((size, size), np.float32)  # direction of the road under a pixel

    def mask(self, poly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels whose centres lie inside ``poly`` (x, y in continuous pixel coordinates)."""
        return fill_polygon(poly[:, 1] - 0.5, poly[:, 0] - 0.5, (self.size, self.size))

    def paint(
        self, poly: np.ndarray, colour: ArrayLike, alpha: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        rr, cc = self.mask(poly)
        self.img[rr, cc] = (1 - alpha) * self.img[rr, cc] + alpha * np.asarray(colour, np.float32)
        return rr, cc

    def shade(self, poly: np.ndarray, factor: float) -> None:
        rr, cc = self.mask(poly)
        self.img[rr, cc] *= factor

    def free(
        self,
        poly: np.ndarray,
        margin: int = 2,
        within: np.ndarray | None = None,
        avoid: np.ndarray | None = None,
    ) -> bool:
        """Is the polygon inside the image, clear of other objects (and inside ``within``)?"""
        x0, y0 = np.floor(poly.min(axis=0)).astype(int) - margin
        x1, y1 = np.ceil(poly.max(axis=0)).astype(int) + margin
        if x0 < 1 or y0 < 1 or x1 > self.size - 1 or y1 > self.size - 1:
            return False
        if self.taken[y0:y1, x0:x1].any() or (avoid is not None and avoid[y0:y1, x0:x1].any()):
            return False
        if within is not None:
            rr, cc = self.mask(poly)
            return bool(rr.size) and bool(within[rr, cc].all())
        return True

    def claim(self, poly: np.ndarray, margin: int = 2) -> None:
        x0, y0 = np.floor(poly.min(axis=0)).astype(int) - margin
        x1, y1 = np.ceil(poly.max(axis=0)).astype(int) + margin
        self.taken[max(y0, 0) : y1, max(x0, 0) : x1] = True


def _xy(point: np.ndarray) -> tuple[float, float]:
    """A point's (x, y), e.g. to pass as the centre of :func:`_rect`."""
    x, y = point
    return x, y


def _rect(cx: float, cy: float, length: float, width: float, angle: float) -> np.ndarray:
    return _place(
        np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]) * [length, width],
        cx,
        cy,
        angle,
    )


def _place(local: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return local @ np.array([[c, s], [-s, c]]) + [cx, cy]


def _circle(cx: float, cy: float, r: float, n: int = 20) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _noise(rng: np.random.Generator, size: int, cells: tuple[int, ...]) -> np.ndarray:
    """Multi-scale value noise in [0, 1]: bilinear-upsampled random grids, halving amplitude.

    scipy's single-threaded zoom, not a BLAS matmul: on a shared machine BLAS threads
    spin-wait and make this 50x slower.
    """
    out = np.zeros((size, size), np.float32)
    amp = 1.0
    for g in cells:
        grid = rng.random((g + 1, g + 1), dtype=np.float32)
        out += (
            amp
            * ndimage.zoom(grid, size / (g + 1), order=1, grid_mode=True, mode="nearest")[
                :size, :size
            ]
        )
        amp *= 0.5
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def render_scene(
    rng: np.random.Generator, size: int, dom: Domain
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one scene; return ``(uint8 HxWx3, [(category_id, polygon (n,2) x/y)])``."""
    cv = _Canvas(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    n = _noise(rng, size, (3, 7, 15, 31))
    lo, hi = np.asarray(dom.ground, np.float32)
    cv.img[:] = lo + (hi - lo) * n[..., None]
    cv.img *= (0.92 + 0.16 * _noise(rng, size, (5, 11)))[..., None]  # soil moisture / hue patches

    for _ in range(rng.integers(0, 5)):  # fields: rotated striped parcels
        ang = rng.uniform(0, np.pi)
        fx, fy = rng.uniform(0, size, 2)
        f_len, f_wid = rng.uniform(0.25, 0.6, 2) * size
        poly = _rect(fx, fy, f_len, f_wid, ang)
        rr, cc = cv.mask(poly)
        period = rng.uniform(4, 9)
        stripes = np.sin(
            2 * np.pi * (xx[rr, cc] * math.cos(ang) + yy[rr, cc] * math.sin(ang)) / period
        )
        colour = np.asarray(dom.fields[rng.integers(len(dom.fields))], np.float32)
        cv.img[rr, cc] = colour * (1 + 0.06 * stripes[:, None]) * (0.9 + 0.2 * n[rr, cc, None])

    road_angles: list[float] = []
    for _ in range(rng.choice(4, p=[0.25, 0.4, 0.25, 0.1])):  # straight roads across the scene
        ang = rng.uniform(0, np.pi)
        width = rng.uniform(5, 9)
        rx, ry = rng.uniform(0.2, 0.8, 2) * size
        poly = _rect(rx, ry, 3 * size, width, ang)
        rr, cc = cv.paint(poly, np.asarray(dom.road) * rng.uniform(0.9, 1.1))
        cv.road[rr, cc] = True
        cv.road_angle[rr, cc] = ang
        road_angles.append(ang)

    if rng.random() < 0.45:  # water: a lake from thresholded noise, or a river band
        if rng.random() < 0.5:
            wet = _noise(rng, size, (2, 5)) > rng.uniform(0.5, 0.65)
        else:
            ang, width = rng.uniform(0, np.pi), rng.uniform(0.15, 0.35) * size
            d = (xx - size / 2) * math.sin(ang) - (yy - size / 2) * math.cos(ang)
            d += 12 * np.sin(
                2 * np.pi * ((xx * math.cos(ang) + yy * math.sin(ang)) / size + rng.random())
            )
            wet = np.abs(d - rng.uniform(-0.3, 0.3) * size) < width / 2
        wet = ndimage.binary_opening(wet, iterations=2)
        ripple = _noise(rng, size, (15, 31))
        cv.img[wet] = np.asarray(dom.water, np.float32) * (0.9 + 0.2 * ripple[wet, None])
        cv.water = wet
        cv.road &= ~wet

    sun = rng.uniform(0, 2 * np.pi)
    shadow = np.array([math.cos(sun), math.sin(sun)])
    objects: list[tuple[int, np.ndarray]] = []
    land = ~cv.water

    if rng.random() < 0.3 and dom.known_objects:  # a parking lot with rows of cars
        ang = rng.uniform(0, np.pi)
        lx, ly = rng.uniform(0.25, 0.75, 2) * size
        lot = _rect(lx, ly, rng.uniform(50, 90), rng.uniform(32, 56), ang)
        if cv.free(lot, within=land):
            rr, cc = cv.paint(lot, np.asarray(dom.road) * 1.15)
            cv.lot[rr, cc] = True
            for u in np.arange(-40, 41, rng.uniform(6.5, 8.5)):
                for v in (-9.0, 9.0):
                    if rng.random() < 0.55:
                        cx, cy = _place(np.array([[u, v]]), 0, 0, ang)[0] + lot.mean(axis=0)
                        _vehicle(
                            cv,
                            rng,
                            objects,
                            cx,
                            cy,
                            ang + np.pi / 2 + rng.normal(0, 0.08),
                            shadow,
                            lot=True,
                        )

    for _ in range(
        rng.integers(0, 9) if dom.known_objects else 0
    ):  # buildings: rectangles and L shapes, gable or flat roofs
        for _try in range(12):
            length, width = rng.uniform(12, 40), rng.uniform(9, 28)
            ang = (
                rng.uniform(0, np.pi)
                if rng.random() < 0.5
                else (road_angles[0] if road_angles else 0.0)
            )
            cx, cy = rng.uniform(0, size, 2)
            if rng.random() < 0.3:
                a, b = rng.uniform(0.4, 0.7) * length, rng.uniform(0.4, 0.7) * width
                local = np.array(
                    [[0, 0], [length, 0], [length, b], [a, b], [a, width], [0, width]]
                ) - [length / 2, width / 2]
                poly = _place(local, cx, cy, ang)
            else:
                poly = _rect(cx, cy, length, width, ang)
            if cv.free(poly, margin=3, within=land, avoid=cv.road | cv.lot):
                cv.shade(poly + shadow * rng.uniform(3, 6), 0.5)
                roof = rng.choice(
                    [(150, 60, 50), (120, 120, 125), (175, 165, 150), (90, 70, 60), (200, 200, 205)]
                )
                roof = np.asarray(roof, np.float32) * rng.uniform(0.85, 1.1)
                cv.paint(poly, roof)
                if len(poly) == 4 and rng.random() < 0.6:  # gable: one half darker
                    cv.shade(
                        _rect(cx, cy, length, width / 2, ang)
                        + _place(np.array([[0, width / 4]]), 0, 0, ang),
                        0.78,
                    )
                cv.claim(poly, 3)
                objects.append((BUILDING, poly))
                break

    n_tanks = rng.choice([0, 0, 1, 2, 3, 4, 6])
    if n_tanks and dom.known_objects:  # tank farm: tanks on a small grid
        r = rng.uniform(5, 13)
        ox, oy = rng.uniform(0.15, 0.85, 2) * size
        ang = rng.uniform(0, np.pi)
        for k in range(n_tanks):
            cx, cy = _place(np.array([[(k % 3) * 2.6 * r, (k // 3) * 2.6 * r]]), ox, oy, ang)[0]
            poly = _circle(cx, cy, r * rng.uniform(0.85, 1.1))
            if cv.free(poly, within=land, avoid=cv.road | cv.lot):
                cv.shade(poly + shadow * rng.uniform(2, 4), 0.5)
                shade = rng.uniform(190, 235)
                cv.paint(poly, (shade, shade, shade * 0.98))
                cv.paint(
                    _circle(cx, cy, r * 0.62), (shade * 0.85,) * 3, alpha=0.6
                )  # floating roof ring
                cv.paint(_circle(cx, cy, r * 0.5), (shade,) * 3)
                cv.claim(poly)
                objects.append((TANK, poly))

    for _ in range(
        rng.integers(0, 10) if dom.known_objects else 0
    ):  # vehicles on roads, along the road
        rr, cc = np.nonzero(cv.road)
        if not rr.size:
            break
        k = int(rng.integers(rr.size))
        ang = float(cv.road_angle[rr[k], cc[k]])
        _vehicle(
            cv,
            rng,
            objects,
            cc[k] + 0.5,
            rr[k] + 0.5,
            ang + rng.choice([0, np.pi]),
            shadow,
            on_road=True,
        )

    for _ in range(
        rng.integers(0, 4) if dom.known_objects else 0
    ):  # a few vehicles parked anywhere on land
        vx, vy = rng.uniform(0, size, 2)
        _vehicle(cv, rng, objects, vx, vy, rng.uniform(0, 2 * np.pi), shadow)

    if cv.water.any():
        for _ in range(
            rng.integers(0, 6) if dom.known_objects else 0
        ):  # ships with a wake, fully on water
            length = rng.uniform(12, 44)
            width = length * rng.uniform(0.22, 0.34)
            ang = rng.uniform(0, 2 * np.pi)
            rr, cc = np.nonzero(cv.water)
            k = int(rng.integers(rr.size))
            local = np.array([[-0.5, -0.5], [0.25, -0.5], [0.5, 0.0], [0.25, 0.5], [-0.5, 0.5]]) * [
                length,
                width,
            ]
            poly = _place(local, cc[k] + 0.5, rr[k] + 0.5, ang)
            wake = _place(
                np.array(
                    [
                        [-0.5 * length, -0.4 * width],
                        [-1.6 * length, -0.9 * width],
                        [-1.6 * length, 0.9 * width],
                        [-0.5 * length, 0.4 * width],
                    ]
                ),
                cc[k] + 0.5,
                rr[k] + 0.5,
                ang,
            )
            if cv.free(poly, margin=3, within=cv.water):
                if rng.random() < 0.6:
                    cv.paint(wake, (200, 210, 215), alpha=0.25)
                deck = rng.uniform(150, 235)
                cv.paint(poly, (deck, deck, deck * rng.uniform(0.9, 1.0)))
                cv.paint(
                    _rect(
                        *_xy(
                            _place(np.array([[-0.15 * length, 0]]), cc[k] + 0.5, rr[k] + 0.5, ang)[
                                0
                            ]
                        ),
                        0.25 * length,
                        0.55 * width,
                        ang,
                    ),
                    (deck * 0.7,) * 3,
                )  # superstructure
                cv.claim(poly, 3)
                objects.append((SHIP, poly))
        for _ in range(rng.integers(0, 8)):  # hard negatives: wave crests on water
            rr, cc = np.nonzero(cv.water)
            k = int(rng.integers(rr.size))
            poly = _rect(
                cc[k] + 0.5,
                rr[k] + 0.5,
                rng.uniform(4, 10),
                rng.uniform(1, 2.5),
                rng.uniform(0, np.pi),
            )
            if cv.free(poly, within=cv.water):
                cv.paint(poly, (210, 220, 225), alpha=rng.uniform(0.4, 0.8))
                cv.claim(poly)

    for _ in range(
        rng.integers(0, 4)
    ):  # hard negatives: soft bright round patches (no rim, no shadow)
        r = rng.uniform(5, 13)
        cx, cy = rng.uniform(0, size, 2)
        poly = _circle(cx, cy, r)
        if cv.free(poly, within=land):
            blob = np.exp(-(((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2) / (2 * (0.6 * r) ** 2)))[
                ..., None
            ]
            cv.img += blob * (rng.uniform(150, 215) - cv.img) * rng.uniform(0.7, 0.95)
            cv.claim(poly)

    for _ in range(rng.integers(0, 8)):  # hard negatives: car-sized rocks, irregular outlines
        t = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(6, 10)))
        rad = rng.uniform(3, 7) * rng.uniform(0.6, 1.0, t.size)
        cx, cy = rng.uniform(0, size, 2)
        poly = np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=1)
        if cv.free(poly, within=land, avoid=cv.road):
            g = rng.uniform(95, 170)
            cv.paint(poly, (g, g * 0.95, g * 0.88))
            cv.claim(poly)

    if dom.unseen_objects:
        for _ in range(
            rng.integers(0, 3)
        ):  # aircraft: fuselage plus wings, unknown to the detector
            span = rng.uniform(18, 40)
            cx, cy, ang = *rng.uniform(0, size, 2), rng.uniform(0, 2 * np.pi)
            body = _rect(cx, cy, span, span * 0.14, ang)
            wings = _rect(cx, cy, span * 0.2, span, ang)
            tail = _place(
                np.array(
                    [
                        [-0.45 * span, -0.2 * span],
                        [-0.38 * span, -0.2 * span],
                        [-0.38 * span, 0.2 * span],
                        [-0.45 * span, 0.2 * span],
                    ]
                ),
                cx,
                cy,
                ang,
            )
            hull = np.concatenate([body, wings, tail])
            if cv.free(hull, within=land):
                for part in (body, wings, tail):
                    cv.shade(part + shadow * 3, 0.55)
                for part in (body, wings, tail):
                    cv.paint(part, (225, 225, 228))
                cv.claim(hull)
                x0, y0 = hull.min(axis=0)
                x1, y1 = hull.max(axis=0)
                objects.append((AIRCRAFT, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])))

    free_land = land & ~cv.taken & ~cv.road & ~cv.lot
    for _ in range(rng.integers(0, 40)):  # trees: clutter with shadows
        cx, cy = rng.uniform(0, size, 2)
        if free_land[min(int(cy), size - 1), min(int(cx), size - 1)]:
            r = rng.uniform(2, 5)
            cv.shade(_circle(cx, cy, r, 10) + shadow * 2, 0.6)
            cv.paint(_circle(cx, cy, r, 10), np.asarray(dom.tree) * rng.uniform(0.8, 1.2))

    img = ndimage.gaussian_filter(cv.img, sigma=(0.6, 0.6, 0))  # sensor blur
    haze = rng.uniform(0.0, 0.35) if rng.random() < 0.4 else 0.0  # atmosphere: lower contrast
    img = (1 - haze) * img * rng.uniform(0.85, 1.1) + haze * np.float32(185.0)
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), objects


def _vehicle(
    cv: _Canvas,
    rng: np.random.Generator,
    objects: list[tuple[int, np.ndarray]],
    cx: float,
    cy: float,
    ang: float,
    shadow: np.ndarray,
    on_road: bool = False,
    lot: bool = False,
) -> None:
    length = rng.uniform(8, 15)
    width = length * rng.uniform(0.42, 0.5)
    if on_road:  # keep to a lane: shift sideways from the sampled road pixel
        off = rng.uniform(-1.5, 1.5)
        cx, cy = cx - off * math.sin(ang), cy + off * math.cos(ang)
    poly = _rect(cx, cy, length, width, ang)
    within = cv.lot if lot else (cv.road if on_road else ~cv.water)
    avoid = None if (lot or on_road) else (cv.road | cv.lot)
    if not cv.free(poly, margin=1, within=within, avoid=avoid):
        return
    cv.shade(poly + shadow * 1.5, 0.6)
    colour = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))] * rng.uniform(0.85, 1.1)
    cv.paint(poly, colour)
    front = _place(np.array([[0.12 * length, 0]]), cx, cy, ang)[0]
    cv.paint(_rect(*_xy(front), 0.18 * length, 0.8 * width, ang), (25, 30, 40), alpha=0.8)  # windscreen
    cv.claim(poly, 1)
    objects.append((VEHICLE, poly))


# --------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class SampleScene:
    """A georeferenced mosaic of sample images and its truth boxes (scene pixels, xyxy)."""

    path: Path
    xyxy: np.ndarray
    labels: np.ndarray  # category names
    cell: int  # pixel size of one sample image in the mosaic


def write_sample_scene(
    path: str | Path,
    cells: int = 4,
    size: int = 256,
    seed: int = 0,
    domain: str = "temperate",
    pool: int | None = None,
    crs: str = "EPSG:32643",
    pixel: float = 0.5,
    origin: tuple[float, float] = (300_000.0, 2_000_000.0),
    bands: str = "rgb",
) -> SampleScene:
    """Write a ``cells x cells`` mosaic of sample images as one GeoTIFF; return its truth.

    Why a mosaic: the sample detector knows this imagery, so a scene built from it has
    objects the detector finds, at known places, including every object that a tile grid's
    seams cut through (the mosaic's pitch, ``size``, is not the grid's stride). ``pool``
    distinct images are cycled (default: all distinct), so very large benchmark scenes cost
    little to make; the file is written one row of images at a time. ``bands="bgrn"``
    writes 4 bands B, G, R, NIR (NIR = mean of R and G) with no colour metadata, the layout
    of trustmap's own scenes. Truth boxes are clipped to their image's cell; those left with
    under half their area are dropped.
    """
    import rasterio
    from affine import Affine

    from tiles.io import atomic_path

    if domain not in DOMAINS:
        raise TrustmapError(f"unknown sample domain {domain!r}; choose from {sorted(DOMAINS)}")
    if bands not in ("rgb", "bgrn"):
        raise TrustmapError(f"bands must be 'rgb' or 'bgrn', got {bands!r}")
    dom = DOMAINS[domain]
    n_pool = cells * cells if pool is None else max(1, min(int(pool), cells * cells))
    cache: dict[int, tuple[np.ndarray, list[tuple[int, np.ndarray]]]] = {}

    def image(k: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        if k not in cache:
            rng = np.random.default_rng([seed, zlib.crc32(dom.name.encode()), zlib.crc32(b"scene"), k])
            cache[k] = render_scene(rng, size, dom)
        return cache[k]

    side = cells * size
    profile = dict(
        driver="GTiff", width=side, height=side, count=3 if bands == "rgb" else 4, dtype="uint8",
        crs=crs, transform=Affine(pixel, 0, origin[0], 0, -pixel, origin[1]), tiled=True,
        blockxsize=256, blockysize=256, compress="deflate", interleave="pixel",
        photometric="rgb" if bands == "rgb" else "minisblack",  # 4 bands: no colour metadata
    )  # fmt: skip
    boxes, labels = [], []
    names = {c["id"]: c["name"] for c in (*CATEGORIES, *UNSEEN_CATEGORIES)}
    p = Path(path)
    with atomic_path(p) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for r in range(cells):
            strip = np.zeros((size, side, 3), np.uint8)
            for c in range(cells):
                k = (r * cells + c) % n_pool if pool is None else (r * 7 + c * 3) % n_pool
                pixels, objects = image(k)
                strip[:, c * size : (c + 1) * size] = pixels
                for cat, poly in objects:
                    x0, y0 = poly.min(axis=0)
                    x1, y1 = poly.max(axis=0)
                    cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
                    cx1, cy1 = min(x1, float(size)), min(y1, float(size))
                    if cx1 - cx0 < 3 or cy1 - cy0 < 3 or (cx1 - cx0) * (cy1 - cy0) < 0.5 * (x1 - x0) * (y1 - y0):
                        continue
                    boxes.append([cx0 + c * size, cy0 + r * size, cx1 + c * size, cy1 + r * size])
                    labels.append(names[cat])
            data = strip.transpose(2, 0, 1)
            if bands == "bgrn":
                nir = ((data[0].astype(np.uint16) + data[1]) // 2).astype(np.uint8)
                data = np.stack([data[2], data[1], data[0], nir])
            dst.write(data, window=rasterio.windows.Window(0, r * size, side, size))
    return SampleScene(p, np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels, dtype=str), size)


def write_truth_gpkg(scene: SampleScene, path: str | Path, crs: str | None = None) -> Path:
    """The scene's truth boxes as polygons (column ``label``) in the scene's CRS or ``crs``."""
    import geopandas as gpd
    import rasterio
    import shapely

    from tiles.io import atomic_path

    with rasterio.open(scene.path) as src:
        t, scene_crs = src.transform, src.crs
    x0, y0, x1, y1 = scene.xyxy.T
    mx0, my0 = t * (x0, y0)
    mx1, my1 = t * (x1, y1)
    geoms = shapely.box(np.minimum(mx0, mx1), np.minimum(my0, my1), np.maximum(mx0, mx1), np.maximum(my0, my1))
    gdf = gpd.GeoDataFrame({"label": scene.labels}, geometry=geoms, crs=scene_crs)
    if crs is not None:
        gdf = gdf.to_crs(crs)
    with atomic_path(Path(path)) as tmp:
        gdf.to_file(tmp, layer="truth", driver="GPKG")
    return Path(path)
