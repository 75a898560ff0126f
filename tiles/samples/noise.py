"""Stateless noise: hashes of integer pixel coordinates, so any window renders the same pixels.

Every per-pixel field of the sample scene comes from here, never from a stateful generator:
that is what makes a strip a pure function of its rows and the seed.
"""

from __future__ import annotations

import numpy as np


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
