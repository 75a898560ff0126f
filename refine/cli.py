"""The ``refine`` command: simulated label refinement on the sample scene or your own data."""

from __future__ import annotations

from pathlib import Path

import click

from tiles.cli_options import output_option, overwrite_option, verbosity_options, version_option
from tiles.console import user_errors
from tiles.errors import TrustmapError

_path = click.Path(path_type=Path)  # existence is checked by trustmap for clearer errors


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@version_option()
@verbosity_options
def main() -> None:
    """Find and fix wrong land-cover labels under an annotation budget.

    \b
    With your own cheap labels, you are the expert (a workspace, reviewed in QGIS):
      refine init SCENE.tif --labels CHEAP.tif --classes classes.yaml --workspace WS
      refine run --workspace WS --budget 2%     # train, then queue 2 % of the scene
      (open WS/review.qgs in QGIS, answer the queue, save)
      refine import --workspace WS              # then run again, round after round
      refine export --workspace WS -o OUT       # refined labels, styled for QGIS; a report

    \b
    To measure how much review helps, against a truth (a simulated expert):
      refine simulate --config configs/refine/demo.yaml -o demo_out/refine
      refine simulate --scene S.tif --labels CHEAP.tif --truth GT.tif --classes classes.yaml -o run1
    """


@main.command()
@click.option(
    "--config", "config_path", type=_path, help="Run settings (YAML); see configs/refine/demo.yaml."
)
@output_option("Output directory of the run.", dest="out_dir")
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
    help="Continue an interrupted run in -o from its last complete round.",
)
@click.option("--restart", is_flag=True, help="Delete the earlier run in -o and start over.")
@overwrite_option
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
    overwrite: bool,
    no_export: bool,
) -> None:
    """Simulate rounds of model-guided expert review and report how much the labels improve.

    \b
    The expert is simulated from the ground truth, which is used for answers and scoring
    only, never for training. Writes into -o: labels/labels_r*.tif (one per round),
    changes.csv and change_map.tif (what changed, when), qgis/ (refined mask, polygons and a
    QGIS project), report.html and report.json.
    """
    from refine.config import load_config

    restart = restart or overwrite  # one policy for every CLI: replace existing output only when asked
    config = load_config(config_path)
    if strategy:
        config = config.with_overrides(strategy={"score": strategy})
    # Before the heavy imports and any work: --out may not hold an input.
    _check_out(out_dir, config, config_path, scene, labels, truth, classes, heldout_scene, heldout_truth)
    from refine.inputs import SimulationInputs
    from refine.simulation import run_simulation

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
            export=not no_export, echo=_echo,
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


# --- the analyst's workspace -----------------------------------------------------------------------
def _echo(msg: str) -> None:
    from tiles.progress import quiet

    if not quiet():
        click.echo(msg, err=True)


_workspace_option = click.option(
    "--workspace", "-w", "workspace", required=True, type=_path,
    help="The workspace folder (made by `refine init`).",
)  # fmt: skip
_scene_option = click.option(
    "--scene", "scene", type=_path, default=None,
    help="The workspace's scene at a new path (when it has moved since `refine init`).",
)  # fmt: skip


def _open(workspace: Path, scene: Path | None = None):
    from refine.workspace import Workspace

    return Workspace.open(workspace, scene)


@main.command()
@click.argument("scene", type=_path)
@click.option("--labels", "labels", multiple=True, required=True, type=_path,
              help="Cheap labels: a raster on the scene grid or a vector file; repeat to fuse several.")
@click.option("--classes", required=True, type=_path, help="Class schema YAML (codes, names, colours).")
@_workspace_option
@click.option("--config", "config_path", type=_path,
              help="Settings (YAML, as for simulate); the defaults are the benchmark's choice.")
@user_errors
def init(scene: Path, labels: tuple[Path, ...], classes: Path, workspace: Path, config_path: Path | None) -> None:
    """Create a review workspace for SCENE and its cheap labels (no ground truth needed).

    \b
    Then, round after round:
      refine train  -w WS            # learn from the current labels
      refine select -w WS --budget 2%   # build the review queue (open WS/review.qgs in QGIS)
      refine import -w WS            # fold the analyst's corrections in
      refine export -w WS -o OUT     # the refined labels, styled for QGIS, and a report
    """
    from refine.config import load_config
    from refine.workspace import init_workspace

    if not scene.exists():
        raise TrustmapError("scene not found", scene)
    for p in (*labels, classes):
        if not p.exists():
            raise TrustmapError("file not found", p)
    config = load_config(config_path)
    ws = init_workspace(workspace, scene, list(labels), classes, config, echo=_echo)
    click.echo(f"workspace {ws.root} ready; next: refine train --workspace {ws.root}")


@main.command()
@_workspace_option
@_scene_option
@click.option("--fresh", is_flag=True, help="Train a new model instead of fine-tuning the latest.")
@user_errors
def train(workspace: Path, scene: Path | None, fresh: bool) -> None:
    """Train (or fine-tune) the model on the workspace's current labels."""
    from refine.workspace import train_workspace

    info = train_workspace(_open(workspace, scene), echo=_echo, fresh=fresh)
    click.echo(f"model {info['model']}: {info['path']}")


@main.command()
@_workspace_option
@_scene_option
@click.option("--budget", required=True,
              help="How much to queue: a share of the scene (2%), an area (1.5ha, 5000m2), pixels (20000px) "
                   "or a number of regions (50).")
@click.option("--strategy", help="Region ranking (default: the workspace config's strategy.score).")
@user_errors
def select(workspace: Path, scene: Path | None, budget: str, strategy: str | None) -> None:
    """Build the next review queue with the latest model, and write the QGIS project.

    \b
    In QGIS (open WS/review.qgs), for each polygon of `review queue`:
      set corrected_class to the right class (code or name), or
      tick `reviewed` if the label was right, or type `skip`;
    and draw polygons with a `class` in `corrections (draw here)`. Save, then `refine import`.
    """
    from refine.review import parse_budget, select_queue

    b = parse_budget(budget)
    result = select_queue(_open(workspace, scene), b, strategy=strategy, echo=_echo)
    click.echo(f"round {result.round}: {result.queued} regions, {result.suggestions} suggestions; {result.project}")


@main.command("import")
@_workspace_option
@_scene_option
@click.option("--author", help="Who made the edits (default: your user name; a `author` field wins).")
@click.option("--all-reviewed", is_flag=True,
              help="Every queued region left without a class counts as reviewed, its label right.")
@click.option("--edits", type=_path, help="Also import polygons from this vector file (any CRS).")
@click.option("--class-field", default="class", show_default=True, help="Class field of --edits.")
@user_errors
def import_(workspace: Path, scene: Path | None, author: str | None, all_reviewed: bool,
            edits: Path | None, class_field: str) -> None:
    """Fold the analyst's edits (queue answers, drawn corrections) into a new label version.

    Safe to run any number of times: edits already imported are not applied again.
    """
    from refine.imports import import_edits

    r = import_edits(_open(workspace, scene), author=author, all_reviewed=all_reviewed,
                     edits_file=edits, class_field=class_field, echo=_echo)  # fmt: skip
    click.echo(f"labels v{r.version}: {r.imported} corrections, {r.pixels_changed} px changed, "
               f"{len(r.invalid)} edits refused")  # fmt: skip


@main.command()
@_workspace_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@user_errors
def status(workspace: Path, as_json: bool) -> None:
    """Rounds, budget spent, pixels changed per class, and the queue."""
    import json as _json

    from refine.workspace import format_status, workspace_status

    st = workspace_status(_open(workspace))
    click.echo(_json.dumps(st, indent=2, default=str) if as_json else format_status(st))


@main.command()
@_workspace_option
@_scene_option
@output_option("Output folder.")
@overwrite_option
@user_errors
def export(workspace: Path, scene: Path | None, output: Path, overwrite: bool) -> None:
    """Write the refined labels (styled COG, polygons, QGIS project), change map and report."""
    from refine.export import export_workspace

    out = export_workspace(_open(workspace, scene), output, overwrite=overwrite, echo=_echo)
    for k, v in out.items():
        click.echo(f"{k:<11} {v}")


@main.command()
@_workspace_option
@_scene_option
@click.option("--budget", required=True, help="As for `refine select`.")
@click.option("--strategy", help="As for `refine select`.")
@user_errors
def run(workspace: Path, scene: Path | None, budget: str, strategy: str | None) -> None:
    """One round in one command: train on the current labels, then select the queue."""
    from refine.review import parse_budget, select_queue
    from refine.workspace import train_workspace

    b = parse_budget(budget)
    ws = _open(workspace, scene)
    train_workspace(ws, echo=_echo)
    result = select_queue(ws, b, strategy=strategy, echo=_echo)
    click.echo(f"round {result.round}: {result.queued} regions, {result.suggestions} suggestions; {result.project}")


if __name__ == "__main__":  # pragma: no cover
    main()
