"""The ``calibration`` command: audit whether a detector's confidence scores can be trusted."""

from __future__ import annotations

from pathlib import Path

import click

from tiles.console import user_errors
from tiles.errors import TrustmapError

_path = click.Path(path_type=Path)  # existence is checked by trustmap for clearer errors


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="trustmap")
def main() -> None:
    """Detector calibration audits: do the scores mean what they say?

    \b
    Typical use:
      calibration audit --predictions coco_instances_results.json --annotations instances_val.json --out audit/
      calibration audit --config configs/calibration/demo.yaml --out audit/
    """


@main.command()
@click.option(
    "--predictions",
    type=_path,
    help="Detections: COCO results .json (detectron2's export) or .npz.",
)
@click.option("--annotations", type=_path, help="Ground truth: COCO annotations .json.")
@click.option(
    "--modeling-predictions",
    "modeling",
    type=_path,
    help="Optional second file: the same detector's outputs before score threshold, NMS and "
    "top-k (the 'modeling' perspective); --predictions is then the 'application' one.",
)
@click.option(
    "--config",
    "config_path",
    type=_path,
    help="Audit YAML: a detector and data to run, and/or metric, bootstrap and sweep settings.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=_path,
    help="Output folder (audit.html, audit.json, audit.md, figures/); replaced only when complete.",
)
@click.option(
    "--bootstrap",
    "n_boot",
    type=click.IntRange(min=0),
    default=None,
    help="Bootstrap replicates (overrides the config; 0 = no intervals).",
)
@user_errors
def audit(
    predictions: Path | None,
    annotations: Path | None,
    modeling: Path | None,
    config_path: Path | None,
    out_dir: Path,
    n_boot: int | None,
) -> None:
    """Measure calibration (ECE, D-ECE, LaECE, NLL, Brier, ... with bootstrap CIs, next to mAP),
    sweep post-processing, and write an HTML / JSON / Markdown report.

    Give either --predictions with --annotations (any detector), or --config with a
    'detector' and 'data' section (a torchvision model run here).
    """
    from calibration.audit import audit_model, audit_predictions
    from calibration.config import AuditConfig, load_config

    cfg = load_config(config_path) if config_path is not None else AuditConfig()
    if n_boot is not None:
        cfg = cfg.model_copy(update={"bootstrap": cfg.bootstrap.model_copy(update={"n": n_boot})})
    from tiles.config import paths_in
    from tiles.io import check_output_dir

    given = [p for p in (predictions, annotations, config_path) if p is not None]
    check_output_dir(out_dir, [*given, *paths_in(cfg)], replaces=True, marker="audit.json")
    if predictions is not None or annotations is not None:
        if predictions is None or annotations is None:
            raise TrustmapError(
                "give both --predictions and --annotations (or a --config that runs a detector)"
            )
        result = audit_predictions(predictions, annotations, out_dir, cfg, config_path, modeling)
    elif modeling is not None:
        raise TrustmapError("--modeling-predictions goes with --predictions and --annotations")
    elif cfg.runs_model:
        result = audit_model(cfg, out_dir, config_path)
    else:
        raise TrustmapError(
            "nothing to audit: give --predictions and --annotations, or a --config with 'detector' and 'data'"
        )
    for f in result.data["findings"]:
        click.echo(f"- [{f['topic']}] {f['text']}")
    click.echo("")
    for kind, path in result.files.items():
        click.echo(f"{kind:<5} {path}")
