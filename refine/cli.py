"""The ``refine`` command: simulated label refinement on the sample scene or your own data."""

from __future__ import annotations

from pathlib import Path

import click

from tiles.console import user_errors
from tiles.errors import TrustmapError

_path = click.Path(path_type=Path)  # existence is checked by trustmap for clearer errors


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="trustmap")
def main() -> None:
    """Find and fix wrong land-cover labels under an annotation budget.

    \b
    Typical use:
      refine simulate --config configs/refine/demo.yaml --out demo_out/refine
      refine simulate --scene S.tif --labels CHEAP.tif --truth GT.tif --classes classes.yaml --out run1
    """


@main.command()
@click.option(
    "--config", "config_path", type=_path, help="Run settings (YAML); see configs/refine/demo.yaml."
)
@click.option("--out", "out_dir", required=True, type=_path, help="Output directory of the run.")
@click.option(
    "--scene", type=_path, help="Your scene (GeoTIFF). Without it, the sample scene is generated."
)
@click.option(
    "--labels",
    "labels",
    multiple=True,
    type=_path,
    help="Cheap labels: a raster on the scene grid, or a vector file (rasterised onto it); "
    "repeat for several sources (fused).",
)
@click.option(
    "--truth",
    type=_path,
    help="Ground truth on the scene grid: answers the simulated expert, scores the labels.",
)
@click.option("--classes", type=_path, help="Class schema YAML (default: the config's `classes`).")
@click.option("--heldout-scene", type=_path, help="Another scene to measure the model's mIoU on.")
@click.option("--heldout-truth", type=_path, help="Ground truth of --heldout-scene.")
@click.option(
    "--strategy", help="Override strategy.score (default self_confidence; e.g. net_gain, disagreement, margin, entropy, bald, random)."
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run in --out from its last complete round.",
)
@click.option("--restart", is_flag=True, help="Delete the earlier run in --out and start over.")
@click.option("--no-export", is_flag=True, help="Skip the QGIS bundle (qgis/).")
@user_errors
def simulate(
    config_path: Path | None,
    out_dir: Path,
    scene: Path | None,
    labels: tuple[Path, ...],
    truth: Path | None,
    classes: Path | None,
    heldout_scene: Path | None,
    heldout_truth: Path | None,
    strategy: str | None,
    resume: bool,
    restart: bool,
    no_export: bool,
) -> None:
    """Simulate rounds of model-guided expert review and report how much the labels improve.

    \b
    The expert is simulated from the ground truth, which is used for answers and scoring
    only, never for training. Writes into --out: labels/labels_r*.tif (one per round),
    changes.csv and change_map.tif (what changed, when), qgis/ (refined mask, polygons and a
    QGIS project), report.html and report.json.
    """
    from refine.config import load_config

    config = load_config(config_path)
    if strategy:
        config = config.with_overrides(strategy={"score": strategy})
    # Before the heavy imports and any work: --out may not hold an input.
    _check_out(out_dir, config, config_path, scene, labels, truth, classes, heldout_scene, heldout_truth)
    from refine.loop import SimulationInputs, run_simulation

    if scene is None:
        given = [name for name, v in (("--labels", labels), ("--truth", truth), ("--heldout-scene", heldout_scene),
                                      ("--heldout-truth", heldout_truth)) if v]  # fmt: skip
        if given:
            raise TrustmapError(
                f"{', '.join(given)} need --scene (without --scene the sample scene is generated)"
            )
        inputs = None
        if classes is not None:
            config = config.with_overrides(classes=classes)
    else:
        if not labels:
            raise TrustmapError(
                "--scene needs at least one --labels raster (the cheap labels to refine)"
            )
        if truth is None:
            raise TrustmapError(
                "ground truth missing: simulate needs --truth GT.tif (the simulated expert answers from it "
                "and the refined labels are scored against it)"
            )
        inputs = SimulationInputs(
            scene, tuple(labels), truth, heldout_scene, heldout_truth, classes
        )
    created = not out_dir.exists()
    fresh = created or restart or not any(out_dir.iterdir())
    try:
        result = run_simulation(
            config, out_dir, inputs, config_source=config_path, resume=resume, restart=restart,
            export=not no_export, echo=lambda msg: click.echo(msg, err=True),
        )  # fmt: skip
    except Exception:
        # A new run that fails before its first round is committed leaves nothing behind.
        if fresh and not any((out_dir / "state").glob("round_*")):
            from refine.session import RunDir

            RunDir(out_dir).discard(created)
        raise
    click.echo(result.report["summary"]["sentence"])
    for key in ("report_html", "report_json", "qgis_project", "change_map", "changes_csv"):
        if key in result.outputs:
            click.echo(f"{key:<14} {result.outputs[key]}")
    click.echo(f"{'refined':<14} {result.refined}")


def _check_out(out_dir: Path, config, config_path: Path | None, *inputs) -> None:
    """Before any work: --out may not be, or hold, an input (--restart would delete it)."""
    from tiles.config import paths_in
    from tiles.io import check_output_dir

    given = [p for v in inputs for p in (v if isinstance(v, tuple) else (v,)) if p is not None]
    check_output_dir(out_dir, [*given, config_path, *paths_in(config)])
    weights = getattr(getattr(config, "model", None), "encoder_weights", None)
    if isinstance(weights, Path) and not weights.is_file():
        raise TrustmapError(
            "key 'model.encoder_weights': file not found" if not weights.exists()
            else "key 'model.encoder_weights': not a file",
            config_path or weights,
        )


if __name__ == "__main__":  # pragma: no cover
    main()
