"""The expert who reviews selected regions, and how the answers become a new label version.

:class:`Expert` is the slot a reviewer fills. In simulations it is
:class:`SimulatedExpert`, who answers from the ground truth; in production it is the QGIS
review queue (an analyst looks at each region and picks its class, or redraws it), which
only has to implement the same one method. The loop never sees where answers come from.

An answer per region is always its *dominant* class (what covers most of it: one click,
Cai et al. 2021); an expert may also give pixel-exact codes (a redrawn outline). Which of
the two is burnt into the labels is the loop's choice (``review.relabel``).

The simulated expert can be wrong: with probability ``error_rate`` per region they
misidentify its main cover and answer a *confusable* class instead (tree for crop, bare
soil for built-up; :func:`refine.cheap.common.confusability`), since a tired analyst mixes up
similar-looking classes, not random ones. The draw is seeded per region id, so an answer
does not depend on which other regions were reviewed with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from refine.regions import Regions
from tiles.classes import ClassSchema
from tiles.errors import TrustmapError

RelabelMode = Literal["dominant", "pixel"]


@dataclass(frozen=True)
class Corrections:
    """An expert's answers for a batch of regions.

    ``classes[k]`` is the dominant class code of ``region_ids[k]`` (the schema's ignore
    code when the expert could not tell: the region is then left as it was). ``pixels`` /
    ``pixel_codes`` optionally give pixel-exact codes (flat indices into the scene).
    """

    region_ids: np.ndarray
    classes: np.ndarray
    pixels: np.ndarray | None = None
    pixel_codes: np.ndarray | None = None
    mistaken: np.ndarray | None = None
    """Simulation only: which answers were deliberately wrong (for the report)."""

    def __post_init__(self) -> None:
        ids = np.asarray(self.region_ids, np.int64)
        cls = np.asarray(self.classes, np.uint8)
        if ids.shape != cls.shape or ids.ndim != 1:
            raise TrustmapError(f"corrections: {ids.size} region ids but {cls.size} classes")
        object.__setattr__(self, "region_ids", ids)
        object.__setattr__(self, "classes", cls)
        if (self.pixels is None) != (self.pixel_codes is None):
            raise TrustmapError("corrections: pixels and pixel_codes go together")
        if self.pixels is not None:
            px = np.asarray(self.pixels, np.int64)
            pc = np.asarray(self.pixel_codes, np.uint8)
            if px.shape != pc.shape:
                raise TrustmapError(f"corrections: {px.size} pixels but {pc.size} pixel codes")
            object.__setattr__(self, "pixels", px)
            object.__setattr__(self, "pixel_codes", pc)


@runtime_checkable
class Expert(Protocol):
    """Anyone who can review regions: a simulation, or (later) a QGIS review queue."""

    def review(
        self, region_ids: np.ndarray, regions: Regions, current_labels: np.ndarray
    ) -> Corrections:
        """Answer for each of ``region_ids``; ``current_labels`` (H, W codes) is what they see."""
        ...


class SimulatedExpert:
    """Answers from the ground truth, with an optional per-region error rate."""

    def __init__(
        self,
        truth: np.ndarray,
        schema: ClassSchema,
        error_rate: float = 0.0,
        seed: int = 0,
        pixel_exact: bool = True,
    ):
        if not 0.0 <= error_rate < 1.0:
            raise TrustmapError(f"expert error rate must be in [0, 1), got {error_rate}")
        from refine.cheap.common import confusability

        self._truth = np.asarray(truth, np.uint8)
        self.schema = schema
        self.error_rate = float(error_rate)
        self.seed = int(seed)
        self.pixel_exact = pixel_exact
        self._confuse = confusability(schema)
        self._lut = schema.code_to_index()
        self._codes = schema.index_to_code()

    def review(
        self, region_ids: np.ndarray, regions: Regions, current_labels: np.ndarray
    ) -> Corrections:
        ids = np.asarray(region_ids, np.int64)
        if self._truth.shape != regions.shape:
            raise TrustmapError(f"truth has shape {self._truth.shape}, regions {regions.shape}")
        c = self.schema.num_classes
        if ids.size == 0:
            return Corrections(ids, np.zeros(0, np.uint8))
        pix = np.flatnonzero(regions.mask(ids))
        rid = regions.labels.reshape(-1)[pix]
        order = np.full(regions.n, -1, np.int64)
        order[ids] = np.arange(ids.size)
        k = order[rid]
        tidx = self._lut[self._truth.reshape(-1)[pix]].astype(np.int64)
        known = tidx >= 0
        hist = np.bincount(k[known] * c + tidx[known], minlength=ids.size * c).reshape(ids.size, c)
        has = hist.sum(axis=1) > 0
        dominant = np.argmax(hist, axis=1)
        answer = dominant.copy()
        mistaken = np.zeros(ids.size, bool)
        if self.error_rate > 0:
            for j, region in enumerate(ids):
                if not has[j]:
                    continue
                rng = np.random.default_rng([self.seed, int(region)])
                if rng.random() < self.error_rate:
                    w = self._confuse[dominant[j]]
                    answer[j] = rng.choice(c, p=w / w.sum())
                    mistaken[j] = True
        classes = np.where(has, self._codes[answer], np.uint8(self.schema.ignore)).astype(np.uint8)
        pixels = pixel_codes = None
        if self.pixel_exact:
            # Pixel-exact answers: the truth, except that a mistaken expert calls the region's
            # main cover by the confused class.
            pixels = pix[known]
            kk = k[known]
            t = tidx[known]
            wrong = mistaken[kk] & (t == dominant[kk])
            t = np.where(wrong, answer[kk], t)
            pixel_codes = self._codes[t]
        return Corrections(ids, classes, pixels, pixel_codes, mistaken)


@dataclass(frozen=True)
class ChangeRecord:
    """Which pixels one round changed: flat index, code before and after, region id."""

    index: np.ndarray
    before: np.ndarray
    after: np.ndarray
    region: np.ndarray

    @property
    def count(self) -> int:
        return int(self.index.size)

    def summary(self) -> np.ndarray:
        """Unique (region, before, after, pixels) rows, as an int64 (N, 4) array."""
        if not self.count:
            return np.zeros((0, 4), np.int64)
        key = np.stack(
            [
                self.region.astype(np.int64),
                self.before.astype(np.int64),
                self.after.astype(np.int64),
            ],
            1,
        )
        rows, counts = np.unique(key, axis=0, return_counts=True)
        return np.column_stack([rows, counts])

    def per_class(self, schema: ClassSchema) -> dict[str, dict[str, int]]:
        """Pixels that left (``from``) and entered (``to``) each class this round."""
        names = {c.code: c.name for c in schema.classes} | {schema.ignore: "ignore"}
        out: dict[str, dict[str, int]] = {}
        for label, arr in (("from", self.before), ("to", self.after)):
            counts = np.bincount(arr, minlength=256)
            out[label] = {
                names.get(int(c), str(int(c))): int(counts[c]) for c in np.flatnonzero(counts)
            }
        return out

    def to_npz(self) -> dict[str, np.ndarray]:
        return {
            "index": self.index,
            "before": self.before,
            "after": self.after,
            "region": self.region,
        }

    @classmethod
    def from_npz(cls, data) -> ChangeRecord:
        return cls(data["index"], data["before"], data["after"], data["region"])


def apply_corrections(
    labels: np.ndarray,
    corrections: Corrections,
    regions: Regions,
    mode: RelabelMode,
    schema: ClassSchema,
) -> tuple[np.ndarray, ChangeRecord]:
    """Burn the expert's answers into a copy of ``labels``; return it and what changed.

    ``dominant``: every pixel of a reviewed region takes the region's answered class (Cai
    et al.'s dominant labelling). ``pixel``: the expert's pixel-exact codes (falls back to
    the dominant answer for an expert who gives none). Regions answered ``ignore`` stay.
    """
    if mode not in ("dominant", "pixel"):
        raise TrustmapError(f"unknown relabel mode {mode!r}; use dominant or pixel")
    out = np.array(labels, dtype=np.uint8, copy=True)
    flat = out.reshape(-1)
    allowed = np.zeros(256, bool)
    allowed[schema.codes] = True
    if mode == "pixel" and corrections.pixels is not None:
        pix, new = corrections.pixels, corrections.pixel_codes
    else:
        answer = np.full(regions.n + 1, schema.ignore, np.uint8)  # last entry: outside (-1)
        answer[corrections.region_ids] = corrections.classes
        pix = np.flatnonzero(regions.mask(corrections.region_ids))
        new = answer[regions.labels.reshape(-1)[pix]]
    bad = new[~allowed[new] & (new != schema.ignore)]
    if bad.size:
        raise TrustmapError(
            f"the expert answered unknown class code(s) {sorted(set(bad.tolist()))[:5]}"
        )
    keep = allowed[new]  # ignore = "could not tell": the pixel keeps its label
    pix, new = pix[keep], new[keep]
    changed = flat[pix] != new
    pix, new = pix[changed], new[changed]
    record = ChangeRecord(
        index=pix.astype(np.int64),
        before=flat[pix].copy(),
        after=new.astype(np.uint8),
        region=regions.labels.reshape(-1)[pix].astype(np.int32),
    )
    flat[pix] = new
    return out, record
