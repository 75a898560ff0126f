"""Distribution shift and out-of-distribution measures for the calibration audit.

**Corruptions.** The 15 corruptions of COCO-C (Michaelis et al. 2019, after Hendrycks &
Dietterich's ImageNet-C) at severities 1-5, built on albumentations 2 transforms (frost,
which albumentations lacks, is trustmap's own blend). Each
severity maps to fixed parameters (``CORRUPTIONS``; the table with its sources is in
``docs/corruptions.md``), and the random part of a corruption (noise, snow flakes, the
elastic field) is seeded by ``(seed, corruption, severity, image id)``, so the same call
gives the same pixels. Parameters follow ImageNet-C's where albumentations has the same
operation (noise levels, defocus radius, glass-blur sigma/delta/iterations, zoom factors,
JPEG quality, pixelate factor, contrast factor, brightness shift); motion blur, fog, snow and
elastic use albumentations' own models, with severities set to rise over the same visual range.

**OOD.** Given detections on images that contain none of the known classes, every detection
is a false positive: :func:`ood_measures` reports the distribution of their confidence and
entropy, false positives per image above the operating threshold, and the AUROC of
in-distribution against OOD detections by max score and by (negative) entropy.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from calibration.detections import Detections
from tiles.errors import TrustmapError

if TYPE_CHECKING:
    from albumentations import ImageOnlyTransform

SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Corruption:
    """One corruption: its family, the parameter of each severity, and how to build it."""

    name: str
    family: str
    params: tuple[Any, ...]  # one entry per severity 1..5
    build: Callable[[Any, np.ndarray], Any] | None  # (param, image) -> albumentations transform
    source: str  # where the numbers come from
    apply: Callable[[Any, np.ndarray, np.random.Generator], np.ndarray] | None = None  # own code


def _a() -> ModuleType:
    import albumentations as A

    return A


def _contrast(c: float, img: np.ndarray) -> ImageOnlyTransform:
    # ImageNet-C: (x - mean) * c + mean. albumentations scales around 0 (x * alpha + beta * 255),
    # so the mean of this image sets beta: alpha = c, beta = (1 - c) * mean / 255.
    beta = float((1.0 - c) * img.mean() / 255.0)
    return _a().RandomBrightnessContrast(
        brightness_limit=(beta, beta), contrast_limit=(c - 1.0, c - 1.0), p=1.0
    )


def _downscale(c: float, img: np.ndarray) -> ImageOnlyTransform:
    import cv2

    return _a().Downscale(
        scale_range=(c, c),
        interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST},
        p=1.0,
    )


def _frost(c: tuple[float, float], img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Frost (own code: albumentations has none, and ImageNet-C's frost photographs do not
    ship): ImageNet-C's blend ``c0 * image + c1 * frost`` with a procedural ice layer,
    multi-scale noise sharpened into crystals with a cold tint."""
    from scipy import ndimage

    h, w = img.shape[:2]
    layer = np.zeros((h, w), np.float64)
    for cell, weight in ((32, 0.45), (12, 0.3), (4, 0.25)):
        g = rng.random((h // cell + 2, w // cell + 2))
        layer += weight * ndimage.zoom(g, cell, order=1)[:h, :w]
    layer += 0.5 * ndimage.gaussian_filter(rng.random((h, w)) > 0.985, 0.8)  # crystals
    layer = np.clip((layer - layer.min()) / max(np.ptp(layer), 1e-9), 0, 1) ** 0.7
    frost = 255.0 * layer[..., None] * np.array([0.86, 0.93, 1.0])
    return np.clip(c[0] * img.astype(np.float64) + c[1] * frost, 0, 255).astype(np.uint8)


def _build_table() -> dict[str, Corruption]:
    A = _a  # resolved lazily: importing albumentations takes a second
    t: list[Corruption] = [
        Corruption(
            "gaussian_noise", "noise", (0.08, 0.12, 0.18, 0.26, 0.38),
            lambda c, im: A().GaussNoise(std_range=(c, c), mean_range=(0.0, 0.0), p=1.0),
            "ImageNet-C std (fraction of 255)",
        ),
        Corruption(
            "shot_noise", "noise", (60, 25, 12, 5, 3),
            lambda c, im: A().ShotNoise(scale_range=(1.0 / c, 1.0 / c), p=1.0),
            "ImageNet-C photons per unit intensity (albumentations counts in linear light)",
        ),
        Corruption(
            "impulse_noise", "noise", (0.03, 0.06, 0.09, 0.17, 0.27),
            lambda c, im: A().SaltAndPepper(amount=(c, c), salt_vs_pepper=(0.5, 0.5), p=1.0),
            "ImageNet-C salt-and-pepper amount",
        ),
        Corruption(
            "defocus_blur", "blur", ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
            lambda c, im: A().Defocus(radius=(c[0], c[0]), alias_blur=(c[1], c[1]), p=1.0),
            "ImageNet-C (radius, alias blur)",
        ),
        Corruption(
            "glass_blur", "blur", ((0.7, 1, 2), (0.9, 2, 1), (1.0, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
            lambda c, im: A().GlassBlur(sigma=c[0], max_delta=c[1], iterations=c[2], mode="fast", p=1.0),
            "ImageNet-C (sigma, max delta, iterations)",
        ),
        Corruption(
            "motion_blur", "blur", (7, 11, 17, 25, 31),
            lambda c, im: A().MotionBlur(blur_limit=(c, c), allow_shifted=False, p=1.0),
            "kernel 2 sigma + 1 from ImageNet-C's sigmas 3, 5, 8, 12, 15",
        ),
        Corruption(
            "zoom_blur", "blur", ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)),
            lambda c, im: A().ZoomBlur(max_factor=(c[0], c[0]), step_factor=(c[1], c[1]), p=1.0),
            "ImageNet-C (max zoom, step)",
        ),
        Corruption(
            "snow", "weather", (0.1, 0.2, 0.3, 0.4, 0.5),
            lambda c, im: A().RandomSnow(snow_point_range=(c, c), brightness_coeff=2.0, method="texture", p=1.0),
            "albumentations snow cover fraction (ImageNet-C's snow layer has no counterpart)",
        ),
        Corruption(
            "frost", "weather", ((1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
            None, "ImageNet-C (image, frost) blend weights; procedural frost layer (own code)", _frost,
        ),
        Corruption(
            "fog", "weather", (0.2, 0.35, 0.5, 0.65, 0.8),
            lambda c, im: A().RandomFog(fog_coef_range=(c, c), alpha_coef=0.1, p=1.0),
            "albumentations fog intensity (ImageNet-C uses a plasma fractal)",
        ),
        Corruption(
            "brightness", "weather", (0.1, 0.2, 0.3, 0.4, 0.5),
            lambda c, im: A().RandomBrightnessContrast(brightness_limit=(c, c), contrast_limit=(0.0, 0.0), p=1.0),
            "ImageNet-C shift (added to RGB here, to HSV value there)",
        ),
        Corruption("contrast", "weather", (0.4, 0.3, 0.2, 0.1, 0.05), _contrast, "ImageNet-C factor around the mean"),
        Corruption(
            "elastic_transform", "digital", (20, 40, 60, 80, 100),
            lambda c, im: A().ElasticTransform(alpha=c, sigma=4.0, p=1.0),
            "albumentations alpha (pixels) at sigma 4: displacements ~0.8-4 px; boxes are kept, as in COCO-C",
        ),
        Corruption(
            "jpeg_compression", "digital", (25, 18, 15, 10, 7),
            lambda c, im: A().ImageCompression(quality_range=(c, c), p=1.0),
            "ImageNet-C JPEG quality",
        ),
        Corruption("pixelate", "digital", (0.6, 0.5, 0.4, 0.3, 0.25), _downscale, "ImageNet-C resize factor"),
    ]  # fmt: skip
    return {c.name: c for c in t}


CORRUPTIONS: dict[str, Corruption] = _build_table()
#: Short names for the report's heatmaps.
SHORT = {
    "gaussian_noise": "gauss",
    "shot_noise": "shot",
    "impulse_noise": "impulse",
    "defocus_blur": "defocus",
    "glass_blur": "glass",
    "motion_blur": "motion",
    "zoom_blur": "zoom",
    "snow": "snow",
    "frost": "frost",
    "fog": "fog",
    "brightness": "bright",
    "contrast": "contrast",
    "elastic_transform": "elastic",
    "jpeg_compression": "jpeg",
    "pixelate": "pixelate",
}


def check_corruptions(names: Sequence[str] | None, source: Any = None) -> list[str]:
    """Validated corruption names (None = all 15, in COCO-C's order)."""
    if names is None:
        return list(CORRUPTIONS)
    bad = [n for n in names if n not in CORRUPTIONS]
    if bad:
        raise TrustmapError(
            f"unknown corruption {bad[0]!r}; choose from {', '.join(CORRUPTIONS)}", source
        )
    return list(dict.fromkeys(names))


def corrupt(
    image: np.ndarray, name: str, severity: int, seed: int = 0, image_id: int = 0
) -> np.ndarray:
    """``image`` (H, W, 3 uint8) under corruption ``name`` at ``severity`` (1-5), deterministic
    in ``(seed, name, severity, image_id)``."""
    c = check_corruptions([name])[0]
    if severity not in SEVERITIES:
        raise TrustmapError(f"corruption severity must be 1-5, got {severity!r}")
    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise TrustmapError(f"corruptions take H x W x 3 uint8 images, got {img.dtype} {img.shape}")
    corr = CORRUPTIONS[c]
    s = [int(seed), zlib.crc32(c.encode()), int(severity), int(image_id)]
    ss = int(np.random.SeedSequence(s).generate_state(1)[0])
    if corr.apply is not None:
        out = corr.apply(corr.params[severity - 1], img, np.random.default_rng(ss))
    else:
        assert corr.build is not None  # a corruption has its own apply or an albumentations build
        t = corr.build(corr.params[severity - 1], img)
        out = _a().Compose([t], seed=ss)(image=img)["image"]
    return np.ascontiguousarray(out, dtype=np.uint8)


def parameter_table() -> list[dict[str, Any]]:
    """Rows of the documented parameter table (name, family, severity 1..5, source)."""
    return [
        {"name": c.name, "family": c.family, "params": list(c.params), "source": c.source}
        for c in CORRUPTIONS.values()
    ]


def load_uint8(records: Sequence[Any]) -> list[np.ndarray]:
    """The images of ``records`` (``ImageRecord``) as H x W x 3 uint8, read once for a sweep."""
    from calibration.adapters.torchvision_models import read_image

    return [
        (read_image(r.path).permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        for r in records
    ]


def shifted_candidates(
    detector: Any,
    images: Sequence[np.ndarray],
    image_ids: Sequence[int],
    name: str,
    severity: int,
    seed: int = 0,
    batch_size: int = 8,
) -> Any:
    """The detector's :class:`~calibration.adapters.Candidates` on corrupted copies of
    ``images`` (uint8, from :func:`load_uint8`); nothing is written to disk."""
    import torch

    parts = []
    for a in range(0, len(images), batch_size):
        ts = [
            torch.from_numpy(corrupt(im, name, severity, seed, int(i)))
            .permute(2, 0, 1)
            .float()
            .div_(255.0)
            for im, i in zip(images[a : a + batch_size], image_ids[a : a + batch_size], strict=True)
        ]
        parts.extend(detector.image_candidates(ts, list(image_ids[a : a + batch_size])))
    return detector.wrap(parts)


# --------------------------------------------------------------------------- OOD


def entropy(probs: np.ndarray) -> np.ndarray:
    """Predictive entropy (nats) of each row; a sigmoid head's K columns are each a binary
    distribution, summed (the review's mean predictive entropy uses the softmax form)."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    rows = p.sum(1)
    if np.allclose(rows, 1.0, atol=1e-3):
        return -(p * np.log(p)).sum(1)
    q = np.clip(1.0 - p, 1e-12, 1.0)
    return -(p * np.log(p) + q * np.log(q)).sum(1)


def auroc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney); None if empty."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if not len(pos) or not len(neg):
        return None
    from scipy.stats import rankdata

    r = rankdata(np.r_[pos, neg])
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _summary(x: np.ndarray) -> dict[str, Any]:
    if not len(x):
        return {"n": 0}
    q = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "n": int(len(x)),
        "mean": float(x.mean()),
        "quantiles": dict(zip(("p5", "p25", "p50", "p75", "p95"), q.tolist(), strict=True)),
    }


def ood_measures(
    in_dist: Detections,
    ood: Detections,
    n_ood_images: int,
    threshold: float = 0.5,
    category_ids: Sequence[int] | None = None,
    hist_bins: int = 20,
) -> dict[str, Any]:
    """Confidence and entropy of detections on OOD images against in-distribution ones.

    ``threshold``: the operating score threshold for false positives per image. Entropy
    needs probability vectors (``probs`` or ``logits``); without them only scores are used.
    """
    s_in, s_ood = in_dist.score.astype(np.float64), ood.score.astype(np.float64)
    p_in, p_ood = in_dist.class_probabilities(category_ids), ood.class_probabilities(category_ids)
    out: dict[str, Any] = {
        "threshold": threshold,
        "images": int(n_ood_images),
        "detections": int(len(ood)),
        "fp_per_image": float((s_ood > threshold).sum() / max(n_ood_images, 1)),
        "fp_per_image_by_threshold": {
            f"{t:g}": float((s_ood > t).sum() / max(n_ood_images, 1))
            for t in (0.05, 0.3, 0.5, 0.7, 0.9)
        },
        "confidence": {"in": _summary(s_in), "ood": _summary(s_ood)},
        "auroc_max_score": auroc(s_in, s_ood),
        "hist_edges": np.linspace(0, 1, hist_bins + 1).tolist(),
        "hist_confidence": {
            "in": np.histogram(s_in, hist_bins, (0, 1))[0].tolist(),
            "ood": np.histogram(s_ood, hist_bins, (0, 1))[0].tolist(),
        },
    }
    if p_in is not None and p_ood is not None:
        h_in, h_ood = entropy(p_in), entropy(p_ood)
        out["entropy"] = {"in": _summary(h_in), "ood": _summary(h_ood)}
        out["auroc_entropy"] = auroc(-h_in, -h_ood)  # low entropy = in-distribution
        hi = float(max(h_in.max() if len(h_in) else 1.0, h_ood.max() if len(h_ood) else 1.0, 1e-6))
        out["hist_entropy_edges"] = np.linspace(0, hi, hist_bins + 1).tolist()
        out["hist_entropy"] = {
            "in": np.histogram(h_in, hist_bins, (0, hi))[0].tolist(),
            "ood": np.histogram(h_ood, hist_bins, (0, hi))[0].tolist(),
        }
    return out


def severity_summary(
    grid: Mapping[str, Mapping[str, Mapping[str, Any]]], key: str
) -> dict[int, float | None]:
    """Mean of ``key`` over corruptions at each severity (the heatmap's bottom row)."""
    out: dict[int, float | None] = {}
    for s in SEVERITIES:
        vals = [
            g[str(s)][key] for g in grid.values() if str(s) in g and g[str(s)].get(key) is not None
        ]
        out[s] = float(np.mean(vals)) if vals else None
    return out


__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "auroc",
    "check_corruptions",
    "corrupt",
    "entropy",
    "ood_measures",
    "parameter_table",
]
