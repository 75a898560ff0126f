"""The one settings object of the metrics.

:class:`BinningConfig` holds how the metrics are binned and computed; it is also the
``metrics:`` section of the audit YAML (:class:`calibration.config.AuditConfig`), so the
defaults live in one place. :class:`MetricsConfig` adds what the audit YAML sets in its
other sections (matching, bootstrap) and is what :func:`calibration.metrics.compute_metrics`
takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tiles.errors import TrustmapError

BoxDim = Literal["confidence", "cx", "cy", "w", "h"]
BOX_DIMS: tuple[BoxDim, ...] = ("confidence", "cx", "cy", "w", "h")
#: ``ap_backend="auto"`` asks pycocotools (the reference) up to this many detections and
#: uses trustmap's own, proven-equal AP above, where pycocotools' evaluate alone takes
#: ~10 CPU seconds per million detections (plus its loadRes).
AP_AUTO_LIMIT = 50_000
#: Default D-ECE bins: 10 for the confidence, 5 for each box dimension.
DECE_DEFAULT_BINS = {"confidence": 10, "cx": 5, "cy": 5, "w": 5, "h": 5}


class BinningConfig(BaseModel):
    """How the metrics bin and count (the audit YAML's ``metrics:`` section)."""

    model_config = ConfigDict(extra="forbid")

    bins: int = Field(
        default=10, ge=1, description="Bins of ECE/MCE/ACE and the top-label/classwise errors."
    )
    bin_strategy: Literal["width", "mass"] = "width"
    norm: Literal["l1", "l2"] = Field(
        default="l1", description="Norm of ECE/ACE (top-label and classwise use classwise_norm)."
    )
    classwise_norm: Literal["l1", "l2"] = Field(
        default="l2", description="Huseljic et al. use L2 with 10 bins."
    )
    dece_dims: tuple[BoxDim, ...] = BOX_DIMS
    dece_bins: tuple[int, ...] | None = Field(
        default=None,
        description="One bin count per dece_dims entry; None = 10 for confidence, 5 else.",
    )
    laece_bins: int = Field(default=25, ge=1)
    laece_tau: float = Field(
        default=0.0, ge=0.0, le=1.0, description="TP IoU threshold of LaECE/LaACE; 0 = any overlap."
    )
    ap_backend: Literal["auto", "pycocotools", "trustmap"] = Field(
        default="auto",
        description="Who computes AP/AP50: pycocotools (also its 12 summary numbers), "
        "trustmap's own AP (equal to pycocotools' to 1e-12, without its evaluate), or auto: "
        f"pycocotools up to {AP_AUTO_LIMIT:,} detections, trustmap above.",
    )
    ap_max_dets: int = Field(default=100, ge=1)
    ap_score_bins: int = Field(default=100, ge=2, description="Score bins of the bootstrapped AP.")
    min_images: int = Field(
        default=10,
        ge=1,
        description="Fewer images: no bootstrap interval and the verdict 'too few to tell'.",
    )
    min_detections: int = Field(
        default=50, ge=1, description="Fewer detections: the verdict is 'too few to tell'."
    )

    @model_validator(mode="after")
    def _dims_and_bins(self) -> BinningConfig:
        dims = list(self.dece_dims)
        if dims[:1] != ["confidence"]:
            raise ValueError(f"dece_dims must start with 'confidence', got {dims}")
        if len(set(dims)) != len(dims):
            raise ValueError(f"dece_dims lists a dimension twice: {dims}")
        if self.dece_bins is None:
            self.dece_bins = tuple(DECE_DEFAULT_BINS[d] for d in dims)
        if any(b < 1 for b in self.dece_bins):
            raise ValueError(f"every bin count must be >= 1, got {list(self.dece_bins)}")
        if len(self.dece_bins) != len(dims):
            raise ValueError(
                f"dece_bins needs one bin count per entry of dece_dims ({len(dims)}), "
                f"got {len(self.dece_bins)}"
            )
        return self

    @property
    def dece_bin_counts(self) -> tuple[int, ...]:
        """``dece_bins`` as validation leaves it: one count per ``dece_dims`` entry."""
        assert self.dece_bins is not None  # filled in by _dims_and_bins
        return self.dece_bins


class MetricsConfig(BinningConfig):
    """Settings of :func:`calibration.metrics.compute_metrics` (validated; unknown keys are errors)."""

    match_mode: Literal["greedy", "hungarian", "any"] = "greedy"
    iou_threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="TP threshold for ECE, D-ECE, NLL, Brier."
    )
    n_boot: int = Field(
        default=1000, ge=0, description="Bootstrap replicates over images; 0 = no intervals."
    )
    ci_level: float = Field(default=0.95, gt=0.0, lt=1.0)
    ci_method: Literal["shifted", "bc", "percentile"] = Field(
        default="shifted",
        description="'shifted' (default): the replicates' spread around their median, placed "
        "at the estimate, so the interval always contains it (binned errors are biased upward "
        "on resamples, which moves plain percentile intervals off the value); 'percentile' and "
        "'bc' (bias-corrected) as in calibration.bootstrap.interval. ci_z0 flags the bias.",
    )
    seed: int | None = 0


def load_config(
    config: MetricsConfig | Mapping[str, Any] | None, source: str | None = None
) -> MetricsConfig:
    """Validate a config mapping, turning pydantic's errors into one TrustmapError line."""
    if isinstance(config, MetricsConfig):
        return config
    try:
        return MetricsConfig.model_validate(dict(config or {}))
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(x) for x in e["loc"]) or "config"
        raise TrustmapError(f"metrics config: {where}: {e['msg']}", source) from None
