"""The audit's YAML config: what to run, on which data, and how to measure it.

One file describes a whole audit so that it can be re-run and reviewed: the detector (a
torchvision model name and a local weights file), the data (the synthetic sample set,
generated on the fly, or a COCO set on disk), the perspectives, matching, metric bins, the
bootstrap and the post-processing sweeps. Every section is validated with unknown keys
rejected, and errors name the key at fault (``demo.yaml: key 'metrics.bins': ...``).

Relative paths in the file are resolved against the file's own folder, so an audit config
means the same thing whatever directory it is run from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from calibration.metrics.config import BinningConfig, MetricsConfig
from tiles.config import read_yaml, validate
from tiles.errors import TrustmapError

Perspective = Literal["application", "modeling"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectorSection(_Section):
    """A torchvision detector by name with local weights (nothing is ever downloaded)."""

    model: str = "sample_fasterrcnn"
    weights: Path | None = Field(
        default=None, description="State dict or checkpoint; None = packaged sample weights."
    )
    num_classes: int | None = Field(
        default=None, ge=2, description="With background; None = read from the weights."
    )
    category_ids: list[int] | None = Field(
        default=None, description="Dataset category of labels 1..K; None = from the checkpoint."
    )
    batch_size: int = Field(default=4, ge=1)
    min_score: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Candidates at or below are dropped for good."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Builder keywords, e.g. rpn_post_nms_top_n_test."
    )

    @field_validator("model")
    @classmethod
    def _known(cls, v: str) -> str:
        from calibration.adapters.torchvision_models import MODELS

        if v not in MODELS:
            raise ValueError(f"unknown detector {v!r}; choose from {', '.join(sorted(MODELS))}")
        return v


class SampleData(_Section):
    """The synthetic aerial set of :mod:`calibration.samples`, generated into the output folder."""

    split: Literal["train", "cal", "test"] = "test"
    n_images: int = Field(default=100, ge=1, le=100_000)
    seed: int = 0
    size: int = Field(default=256, ge=64)
    domain: str = "temperate"

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        from calibration.samples import DOMAINS

        if v not in DOMAINS:
            raise ValueError(f"unknown sample domain {v!r}; choose from {sorted(DOMAINS)}")
        return v


class CocoData(_Section):
    """A COCO annotations file and the folder its ``file_name`` entries are relative to."""

    annotations: Path
    images: Path


class DataSection(_Section):
    sample: SampleData | None = None
    coco: CocoData | None = None

    @model_validator(mode="after")
    def _one(self) -> DataSection:
        if (self.sample is None) == (self.coco is None):
            raise ValueError("give exactly one of 'sample' or 'coco'")
        return self


class PostprocessSection(_Section):
    """The "application" perspective's post-processing; None keeps the model's own setting."""

    score_thresh: float | None = Field(default=None, ge=0.0, le=1.0)
    nms_iou: float | None = Field(default=None, ge=0.0, le=1.0)
    topk: int | None = Field(default=None, ge=1)
    max_per_image: int | None = Field(
        default=1000, ge=1, description="Modeling perspective: rows kept per image."
    )


class MatchingSection(_Section):
    mode: Literal["greedy", "hungarian", "any"] = "greedy"
    iou: float = Field(default=0.5, ge=0.0, le=1.0)


class BootstrapSection(_Section):
    n: int = Field(default=1000, ge=0, description="Replicates over images; 0 = no intervals.")
    level: float = Field(default=0.95, gt=0.0, lt=1.0)
    seed: int = 0


class SweepsSection(_Section):
    """Post-processing settings to re-apply without a new forward pass (empty = no sweep)."""

    score_threshold: list[float] = Field(
        default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    )
    nms_iou: list[float] = Field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    topk: list[int] = Field(default_factory=list)

    @field_validator("score_threshold", "nms_iou")
    @classmethod
    def _unit(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= x <= 1.0 for x in v):
            raise ValueError(f"values must lie in [0, 1], got {v}")
        return sorted(set(v))

    @field_validator("topk")
    @classmethod
    def _topk(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError(f"top-k values must be >= 1, got {v}")
        return sorted(set(v))


class ShiftSection(_Section):
    """Distribution shift: every corruption at every severity on (the first) test images."""

    corruptions: list[str] | None = Field(default=None, description="None = all 15 of COCO-C.")
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    n_images: int | None = Field(default=None, ge=1, description="First N test images; None = all.")
    seed: int = 0

    @field_validator("corruptions")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            from calibration.shift import CORRUPTIONS

            bad = [c for c in v if c not in CORRUPTIONS]
            if bad:
                raise ValueError(
                    f"unknown corruption {bad[0]!r}; choose from {', '.join(CORRUPTIONS)}"
                )
        return v

    @field_validator("severities")
    @classmethod
    def _sev(cls, v: list[int]) -> list[int]:
        if not v or any(s not in (1, 2, 3, 4, 5) for s in v):
            raise ValueError(f"severities must be among 1-5, got {v}")
        return sorted(set(v))


class OODSection(_Section):
    """Out-of-distribution images (none of the known classes): sample 'ood' domain or a COCO set."""

    sample: SampleData | None = None
    coco: CocoData | None = None
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="Operating score threshold.")

    @model_validator(mode="after")
    def _one(self) -> OODSection:
        if self.sample is not None and self.coco is not None:
            raise ValueError("give one of 'sample' or 'coco'")
        if self.sample is None and self.coco is None:
            self.sample = SampleData(split="test", n_images=30, domain="ood")
        return self


class FinetuneSection(_Section):
    """Last-layer fine-tuning on the calibration split (see calibration.finetune)."""

    epochs: int = Field(default=10, ge=1)
    lr: float = Field(default=2.5e-4, gt=0.0)
    loss: Literal["ce", "focal", "label_smoothing"] = "ce"
    smoothing: float = Field(default=0.1, ge=0.0, lt=1.0)
    focal_gamma: float = Field(default=2.0, ge=0.0)
    train_box: bool = Field(
        default=False, description="Also train roi_heads.box_predictor.bbox_pred."
    )
    patience: int = Field(default=3, ge=1, description="Epochs without a better validation D-ECE.")
    val_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)
    seed: int = 0


class RepairSection(_Section):
    """Repairs fitted on a calibration split and judged on the test split (and under shift)."""

    calibration: DataSection = Field(
        default_factory=lambda: DataSection(sample=SampleData(split="cal", n_images=100))
    )
    methods: list[str] = Field(
        default_factory=lambda: [
            "temperature",
            "platt",
            "beta",
            "isotonic",
            "histogram",
            "box_logistic",
        ]
    )
    mode: Literal["shared", "classwise"] = "shared"
    shrinkage: float = Field(default=50.0, ge=0.0)
    cv_folds: int = Field(default=5, ge=2)
    finetune: FinetuneSection | None = None

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        from calibration.calibrators import METHODS

        bad = [m for m in v if m not in METHODS]
        if bad:
            raise ValueError(f"unknown calibrator {bad[0]!r}; choose from {', '.join(METHODS)}")
        return list(dict.fromkeys(v))


def _both_perspectives() -> list[Perspective]:
    return ["application", "modeling"]


class AuditConfig(_Section):
    """A whole audit. ``detector`` and ``data`` go together; without them the audit reads a
    predictions file given on the command line and uses the rest of the file's settings."""

    title: str | None = None
    detector: DetectorSection | None = None
    data: DataSection | None = None
    perspectives: list[Perspective] = Field(default_factory=_both_perspectives, min_length=1)
    postprocess: PostprocessSection = Field(default_factory=PostprocessSection)
    matching: MatchingSection = Field(default_factory=MatchingSection)
    metrics: BinningConfig = Field(default_factory=BinningConfig)
    bootstrap: BootstrapSection = Field(default_factory=BootstrapSection)
    sweeps: SweepsSection = Field(default_factory=SweepsSection)
    shift: ShiftSection | None = None
    ood: OODSection | None = None
    repair: RepairSection | None = None

    @field_validator("perspectives")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"lists a perspective twice: {v}")
        return v

    @model_validator(mode="after")
    def _model_needs_data(self) -> AuditConfig:
        if (self.detector is None) != (self.data is None):
            raise ValueError(
                "'detector' and 'data' go together: give both (run a model) or neither (--predictions)"
            )
        return self

    @model_validator(mode="after")
    def _extras_need_model(self) -> AuditConfig:
        extra = [k for k in ("shift", "ood", "repair") if getattr(self, k) is not None]
        if extra and self.detector is None:
            raise ValueError(
                f"'{extra[0]}' runs the detector again: it needs the 'detector' and 'data' sections"
            )
        return self

    @property
    def runs_model(self) -> bool:
        return self.detector is not None

    def metrics_config(self) -> MetricsConfig:
        """The settings :func:`calibration.metrics.compute_metrics` takes."""
        return MetricsConfig(
            **self.metrics.model_dump(),
            match_mode=self.matching.mode,
            iou_threshold=self.matching.iou,
            n_boot=self.bootstrap.n,
            ci_level=self.bootstrap.level,
            seed=self.bootstrap.seed,
        )

    def resolve_paths(self, base: str | os.PathLike[str]) -> AuditConfig:
        """A copy with relative paths made absolute against ``base`` (the config's folder)."""
        root = Path(base)
        fix = lambda p: p if p is None or p.is_absolute() else (root / p).resolve()  # noqa: E731
        out = self.model_copy(deep=True)
        if out.detector is not None:
            out.detector.weights = fix(out.detector.weights)
        for sec in (
            out.data,
            out.ood,
            out.repair.calibration if out.repair is not None else None,
        ):
            if sec is not None and sec.coco is not None:
                sec.coco.annotations = fix(sec.coco.annotations)
                sec.coco.images = fix(sec.coco.images)
        return out


def parse_config(data: Any, source: str | os.PathLike[str] | None = None) -> AuditConfig:
    """Validate a mapping; the first error becomes one line naming the key at fault."""
    return validate(AuditConfig, data, source, "calibration audit config")


def load_config(path: str | os.PathLike[str]) -> AuditConfig:
    """Read and validate an audit YAML, with its relative paths resolved against its folder."""
    p = Path(path)
    data = read_yaml(p)
    cfg = parse_config(data, p).resolve_paths(p.parent.resolve())
    check_paths(cfg, p)
    return cfg


def check_paths(cfg: AuditConfig, source: str | os.PathLike[str] | None = None) -> None:
    """Fail early, naming the key, when a file the audit needs is not there."""
    wanted: list[tuple[str, Path | None, bool]] = []
    if cfg.detector is not None:
        wanted.append(("detector.weights", cfg.detector.weights, False))
    if cfg.data is not None and cfg.data.coco is not None:
        wanted += [
            ("data.coco.annotations", cfg.data.coco.annotations, False),
            ("data.coco.images", cfg.data.coco.images, True),
        ]
    for key, path, is_dir in wanted:
        if path is None:
            continue
        if not path.exists():
            raise TrustmapError(f"key '{key}': {path} not found", source)
        if is_dir != path.is_dir():
            raise TrustmapError(
                f"key '{key}': {path} is {'not ' if is_dir else ''}a folder", source
            )
