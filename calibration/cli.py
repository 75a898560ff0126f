"""The ``calibration`` command: audit whether a detector's confidence scores can be trusted."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from tiles.cli_options import output_option, overwrite_option, verbosity_options, version_option
from tiles.console import user_errors
from tiles.errors import TrustmapError
from tiles.io import refuse_existing

if TYPE_CHECKING:
    from calibration.calibrators import Mode
    from calibration.finetune import Loss
    from calibration.matching import MatchMode

_path = click.Path(path_type=Path)  # existence is checked by trustmap for clearer errors


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@version_option()
@verbosity_options
def main() -> None:
    """Detector calibration audits: do the scores mean what they say?

    \b
    Typical use:
      calibration audit --predictions coco_instances_results.json --annotations instances_val.json -o audit/
      calibration audit --config configs/calibration/demo.yaml -o audit/
    """


@main.command()
@click.option(
    "--predictions",
    type=_path,
    help="Detections: COCO results .json (detectron2's export) or .npz.",
)
@click.option("--annotations", type=_path, help="Ground truth: COCO annotations .json.")
@click.option(
    "--scene",
    type=_path,
    help="A georeferenced tile or scene (GeoTIFF): audit box files on its grid instead of COCO "
    "files; give --truth and --predictions as CSV (pixels) or GPKG/GeoJSON (map units, any CRS).",
)
@click.option(
    "--truth",
    type=_path,
    help="With --scene: ground-truth boxes (CSV xmin,ymin,xmax,ymax,label in pixels, e.g. "
    "DeepForest's; or polygons in a GPKG/GeoJSON with a 'label' column).",
)
@click.option(
    "--score-column",
    default="score",
    show_default=True,
    help="With --scene: the predictions' confidence column ('calibrated' audits a detect-scene "
    "GeoPackage's calibrated scores).",
)
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
@output_option("Output folder (audit.html, audit.json, audit.md, figures/); replaced only when complete.", dest="out_dir")
@overwrite_option
@click.option(
    "--bootstrap",
    "n_boot",
    type=click.IntRange(min=0),
    default=None,
    help="Bootstrap replicates (overrides the config; 0 = no intervals).",
)
@click.option(
    "--shift",
    "shift",
    is_flag=True,
    help="Also evaluate every corruption (15) at every severity (1-5); needs a --config that "
    "runs a detector (its 'shift' section, or defaults).",
)
@click.option(
    "--allow-outside-paths",
    "allow_outside",
    is_flag=True,
    help="Let image file_name entries of a COCO file lead out of its images folder "
    "(absolute paths, '..'); only for files you trust.",
)
@user_errors
def audit(
    predictions: Path | None,
    annotations: Path | None,
    scene: Path | None,
    truth: Path | None,
    score_column: str,
    modeling: Path | None,
    config_path: Path | None,
    out_dir: Path,
    overwrite: bool,
    n_boot: int | None,
    shift: bool,
    allow_outside: bool,
) -> None:
    """Measure calibration (ECE, D-ECE, LaECE, NLL, Brier, ... with bootstrap CIs, next to mAP),
    sweep post-processing, and write an HTML / JSON / Markdown report.

    Give either --predictions with --annotations (any detector), --scene with --truth and
    --predictions (box files on a georeferenced tile), or --config with a 'detector' and
    'data' section (a torchvision model run here).

    \b
    Examples:
      calibration audit --scene OSBS_029.tif --truth OSBS_029.csv --predictions preds.csv -o audit/
      calibration audit --scene scene.tif --truth crowns.gpkg --predictions detections.gpkg \\
          --score-column calibrated --out audit/
    """
    from calibration.audit import audit_model, audit_predictions
    from calibration.config import AuditConfig, load_config

    cfg = load_config(config_path) if config_path is not None else AuditConfig()
    if n_boot is not None:
        cfg = cfg.model_copy(update={"bootstrap": cfg.bootstrap.model_copy(update={"n": n_boot})})
    if shift:
        from calibration.config import ShiftSection

        if not cfg.runs_model:
            raise TrustmapError(
                "--shift corrupts images and runs the detector again: give a --config with 'detector' and 'data'"
            )
        if cfg.shift is None:
            cfg = cfg.model_copy(update={"shift": ShiftSection()})
    from tiles.config import paths_in
    from tiles.io import check_output_dir

    given = [p for p in (predictions, annotations, modeling, config_path, scene, truth) if p is not None]
    check_output_dir(out_dir, [*given, *paths_in(cfg)], replaces=True, marker="audit.json")
    refuse_existing([out_dir / "audit.json"], overwrite)  # an earlier audit is kept unless asked
    if scene is not None or truth is not None:
        if scene is None or truth is None or predictions is None:
            raise TrustmapError("--scene goes with --truth and --predictions (box files on that scene)")
        if annotations is not None or modeling is not None or cfg.runs_model:
            raise TrustmapError(
                "--scene audits box files: drop --annotations, --modeling-predictions and the config's detector/data"
            )
        from calibration.audit import audit_scene_files

        result = audit_scene_files(scene, truth, predictions, out_dir, cfg, score_column, config_path)
    elif predictions is not None or annotations is not None:
        if predictions is None or annotations is None:
            raise TrustmapError(
                "give both --predictions and --annotations (or a --config that runs a detector)"
            )
        result = audit_predictions(predictions, annotations, out_dir, cfg, config_path, modeling)
    elif modeling is not None:
        raise TrustmapError("--modeling-predictions goes with --predictions and --annotations")
    elif cfg.runs_model:
        result = audit_model(cfg, out_dir, config_path, allow_outside)
    else:
        raise TrustmapError(
            "nothing to audit: give --predictions and --annotations, or a --config with 'detector' and 'data'"
        )
    for f in result.data["findings"]:
        click.echo(f"- [{f['topic']}] {f['text']}")
    click.echo("")
    for kind, path in result.files.items():
        click.echo(f"{kind:<5} {path}")


@main.command()
@click.option(
    "--predictions",
    required=True,
    type=_path,
    help="Detections on the CALIBRATION split (never the test split): COCO results .json or .npz.",
)
@click.option(
    "--annotations", required=True, type=_path, help="Ground truth of that split (COCO .json)."
)
@click.option(
    "--method",
    default="auto",
    show_default=True,
    help="temperature, platt, beta, isotonic, histogram, box_logistic, or auto "
    "(the lowest cross-validated D-ECE).",
)
@click.option(
    "--classwise/--shared",
    default=False,
    show_default=True,
    help="One calibrator per class (shrunk towards the shared one) or one for all.",
)
@click.option(
    "--shrinkage",
    type=click.FloatRange(min=0.0),
    default=50.0,
    show_default=True,
    help="Class-wise: weight of a class's own calibrator is n / (n + shrinkage).",
)
@click.option(
    "--cv",
    "folds",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Folds (over images) of the cross-validation reported in the file; 0 = none.",
)
@click.option(
    "--iou",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="IoU of a correct detection.",
)
@click.option(
    "--match",
    "match_mode",
    type=click.Choice(["greedy", "hungarian", "any"]),
    default="greedy",
    show_default=True,
    help="Matching rule that decides which detections are correct.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the CV folds.")
@output_option("Calibrator JSON to write.", dest="out_path")
@overwrite_option
@user_errors
def fit(
    predictions: Path,
    annotations: Path,
    method: str,
    classwise: bool,
    shrinkage: float,
    folds: int,
    iou: float,
    match_mode: MatchMode,
    seed: int,
    out_path: Path,
    overwrite: bool,
) -> None:  # noqa: PLR0913
    """Fit a post-hoc calibrator on a calibration split and save it as JSON (no pickle).

    \b
    Example:
      calibration fit --predictions cal_results.json --annotations cal.json -o calibrator.json
      calibration apply --predictions test_results.json --calibrator calibrator.json -o calibrated.json
    """
    from calibration import calibrators as C
    from calibration.detections import Detections, GroundTruth

    refuse_existing([out_path], overwrite)

    if method != "auto":
        C.check_method(method)
    if out_path.suffix.lower() != ".json":
        raise TrustmapError("the calibrator is written as JSON: give a .json file name", out_path)
    gt = GroundTruth.from_coco_json(annotations)
    dets = Detections.load(predictions)
    mode: Mode = "classwise" if classwise else "shared"
    data = C.fit_data(dets, gt, iou, match_mode)
    cv = None
    if method == "auto":
        method, cv = C.choose(
            data,
            mode=mode,
            folds=max(folds, 2),
            seed=seed,
            shrinkage=shrinkage,
            categories=gt.categories,
        )
    elif folds:
        cv = {
            method: C.cross_validate(
                data, method, mode, folds, seed, shrinkage, categories=gt.categories
            )
        }
    cal = C.fit(dets, gt, method, mode, shrinkage, iou, match_mode, source=predictions)
    cal.cv = cv
    cal.fitted_on |= {
        "predictions": str(predictions.resolve()),
        "annotations": str(annotations.resolve()),
    }
    cal.save(out_path)
    click.echo(
        f"{method} ({mode}) fitted on {cal.fitted_on['detections']} detections, {cal.fitted_on['images']} images"
    )
    for name, r in (cv or {}).items():
        click.echo(
            f"  {name:<13} cross-validated D-ECE {r['dece_raw']:.3f} -> {r['dece']:.3f}, "
            f"ECE {r['ece_raw']:.3f} -> {r['ece']:.3f}"
        )
    click.echo(f"json  {out_path}")


@main.command()
@click.option(
    "--predictions", required=True, type=_path, help="Detections to calibrate (.json or .npz)."
)
@click.option(
    "--calibrator", required=True, type=_path, help="Calibrator JSON from `calibration fit`."
)
@click.option(
    "--annotations",
    type=_path,
    help="COCO file listing the images with width and height (needed by box_logistic).",
)
@output_option("Calibrated predictions (.json or .npz).", dest="out_path")
@overwrite_option
@user_errors
def apply(predictions: Path, calibrator: Path, annotations: Path | None, out_path: Path, overwrite: bool) -> None:
    """Rewrite a predictions file with calibrated scores (and probability vectors)."""
    from calibration.calibrators import Calibrator
    from calibration.detections import Detections, GroundTruth

    if out_path.resolve() == predictions.resolve():
        raise TrustmapError("--output must differ from --predictions (the input is kept)", out_path)
    refuse_existing([out_path], overwrite)

    cal = Calibrator.load(calibrator)
    dets = Detections.load(predictions)
    images = GroundTruth.from_coco_json(annotations) if annotations is not None else None
    if images is not None:
        dets.validate(images)
    out = cal.apply(dets, images, source=predictions)
    if out_path.resolve() == predictions.resolve():
        raise TrustmapError("--out must differ from --predictions (the input is kept)", out_path)
    out.save(out_path)
    click.echo(f"{len(out)} detections calibrated with {cal.method} ({cal.mode})")
    click.echo(f"{out_path.suffix.lstrip('.'):<5} {out_path}")


@main.command()
@click.option(
    "--model",
    default="sample_fasterrcnn",
    show_default=True,
    help="torchvision detector name (Faster R-CNN, RetinaNet or FCOS family).",
)
@click.option("--weights", type=_path, help="Local weights; default: the packaged sample detector.")
@click.option(
    "--images",
    required=True,
    type=_path,
    help="Folder the calibration annotations' file names are relative to.",
)
@click.option(
    "--annotations", required=True, type=_path, help="Calibration split ground truth (COCO .json)."
)
@click.option(
    "--test-images", type=_path, help="Images folder of a test split to report before/after on."
)
@click.option("--test-annotations", type=_path, help="Test split ground truth (COCO .json).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--lr", type=click.FloatRange(min=0.0, min_open=True), default=2.5e-4, show_default=True
)
@click.option(
    "--loss",
    type=click.Choice(["ce", "focal", "label_smoothing"]),
    default="ce",
    show_default=True,
    help="Loss of the class layer (softmax heads; RetinaNet/FCOS use torchvision's focal loss).",
)
@click.option(
    "--smoothing", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1, show_default=True
)
@click.option(
    "--train-box", is_flag=True, help="Also train roi_heads.box_predictor.bbox_pred (Faster R-CNN)."
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Early stopping on held-out D-ECE.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--allow-outside-paths",
    "allow_outside",
    is_flag=True,
    help="Let image file_name entries of the COCO files lead out of their images folder.",
)
@output_option("Checkpoint to write (.pt, weights_only-loadable).", dest="out_path")
@overwrite_option
@user_errors
def finetune(
    model: str,
    weights: Path | None,
    images: Path,
    annotations: Path,
    test_images: Path | None,
    test_annotations: Path | None,
    epochs: int,
    lr: float,
    loss: Loss,
    smoothing: float,
    train_box: bool,
    patience: int,
    seed: int,
    allow_outside: bool,
    out_path: Path,
    overwrite: bool,
) -> None:  # noqa: PLR0913
    """Fine-tune only the detector's classification layer on a calibration split, save the
    checkpoint, and report every metric and mAP before and after."""
    import json

    from calibration.adapters import images_from_coco, load_detector
    from calibration.adapters.torchvision_models import read_image

    refuse_existing([out_path], overwrite)
    from calibration.detections import GroundTruth
    from calibration.finetune import FinetuneSettings, save_checkpoint
    from calibration.finetune import finetune as run
    from calibration.metrics import MetricsConfig, compute_metrics
    from tiles.io import write_text_atomic

    if (test_images is None) != (test_annotations is None):
        raise TrustmapError("give both --test-images and --test-annotations, or neither")
    if out_path.suffix.lower() not in (".pt", ".pth"):
        raise TrustmapError("the checkpoint is a PyTorch file: give a .pt file name", out_path)
    det = load_detector(model, weights)
    gt = GroundTruth.from_coco_json(annotations)
    recs = images_from_coco(images, annotations, allow_outside)
    mcfg = MetricsConfig(n_boot=0)
    settings = FinetuneSettings(
        epochs=epochs,
        lr=lr,
        loss=loss,
        smoothing=smoothing,
        train_box=train_box,
        patience=patience,
        seed=seed,
    )
    res = run(
        det, [read_image(r.path) for r in recs], [r.image_id for r in recs], gt, settings, mcfg
    )
    cats = [
        {"id": int(c), "name": gt.categories.get(int(c), str(c))} for c in det.prob_category_ids
    ]
    save_checkpoint(res, out_path, model, cats)
    report = {
        "trained": res.trained,
        "best_epoch": res.best_epoch,
        "history": res.history,
        "settings": res.settings,
    }
    click.echo(
        f"trained {', '.join(res.trained)}; best epoch {res.best_epoch} of {len(res.history) - 1}"
    )
    for h in res.history:
        click.echo(
            f"  epoch {h['epoch']:>2}  held-out D-ECE {h['val_dece']:.4f}  mAP {h['val_map']:.4f}"
        )
    if test_images is not None:
        assert test_annotations is not None  # checked above: both or neither
        tgt = GroundTruth.from_coco_json(test_annotations)
        trecs = images_from_coco(test_images, test_annotations, allow_outside)
        keys = ("dece", "ece", "ece_debiased", "mce", "laece", "nll", "brier", "map", "ap50")
        table = {}
        for name, d in (("before", det), ("after", res.detector)):
            dets = d.candidates(trecs, batch_size=8, show_progress=False).postprocess()
            m = compute_metrics(dets, tgt, mcfg, validate=False)["metrics"]
            table[name] = {k: m[k]["value"] for k in keys if k in m}
        report["test"] = table
        click.echo(f"{'test split':<14}{'before':>9}{'after':>9}")
        for k in keys:
            b, a = table["before"].get(k), table["after"].get(k)
            if b is not None and a is not None:
                click.echo(f"{k:<14}{b:>9.4f}{a:>9.4f}")
    side = out_path.with_suffix(".json")
    write_text_atomic(side, json.dumps(report, indent=1, default=float) + "\n")
    click.echo(f"pt    {out_path}\njson  {side}")


@main.command("detect-scene")
@click.argument("scene", type=_path)
@click.option(
    "--model",
    default="sample_fasterrcnn",
    show_default=True,
    help="torchvision detector name (Faster R-CNN, RetinaNet, FCOS or SSD family).",
)
@click.option("--weights", type=_path, help="Local weights; default: the packaged sample detector.")
@click.option(
    "--calibrator",
    type=_path,
    help="Calibrator JSON from `calibration fit` (or an audit's repair/); adds calibrated "
    "confidences, and the style is graduated by them.",
)
@click.option(
    "--truth",
    type=_path,
    help="Ground-truth boxes (CSV in pixels, or GPKG/GeoJSON in any CRS): also write the "
    "scene's calibration audit.",
)
@click.option(
    "--audit-out",
    type=_path,
    help="Audit folder with --truth (default: <out stem>_audit/ next to --out).",
)
@click.option(
    "--bands",
    help="Source bands fed as R,G,B, e.g. 3,2,1 (one number: grey). Default: from the scene's "
    "colour metadata, else 3,2,1 for 4-band B,G,R,NIR scenes and 1,2,3 otherwise.",
)
@click.option(
    "--tile-size",
    type=click.IntRange(min=16),
    default=None,
    help="Tile edge in pixels. Default: the model's input size (256 for the sample detector, "
    "else 512).",
)
@click.option(
    "--overlap",
    type=click.IntRange(min=0),
    default=64,
    show_default=True,
    help="Pixels shared by neighbouring tiles; make it at least the largest object's size, "
    "so the tile that owns an object sees it whole.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Tiles per forward pass (memory grows with it, not with the scene).",
)
@click.option(
    "--score-thresh",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Per-tile score threshold (default: the model's own, 0.05 for torchvision).",
)
@click.option("--nms-iou", type=click.FloatRange(0.0, 1.0), default=None, help="Per-tile NMS IoU (default: the model's).")
@click.option("--topk", type=click.IntRange(min=0), default=None, help="Detections per tile (default: the model's).")
@click.option(
    "--config",
    "config_path",
    type=_path,
    help="With --truth: audit YAML for the scene audit (metrics, matching, bootstrap, sweeps; "
    "no detector or data section).",
)
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=0), default=None, help="Audit bootstrap replicates (0 = none).")
@output_option("GeoPackage to write (layer 'detections'); replaced only when complete.", dest="out_path")
@overwrite_option
@user_errors
def detect_scene_cmd(
    scene: Path,
    model: str,
    weights: Path | None,
    calibrator: Path | None,
    truth: Path | None,
    audit_out: Path | None,
    bands: str | None,
    tile_size: int | None,
    overlap: int,
    batch_size: int,
    score_thresh: float | None,
    nms_iou: float | None,
    topk: int | None,
    config_path: Path | None,
    n_boot: int | None,
    out_path: Path,
    overwrite: bool,
) -> None:
    """Run a detector over a GeoTIFF of any size, tile by tile, and write georeferenced boxes.

    Tiles overlap; each detection is kept by the one tile whose core (its window split at
    the middle of each overlap) holds the box centre, so objects on seams are neither lost
    nor doubled and neighbours are not merged away. The GeoPackage holds one polygon per
    detection in the scene's CRS with its class, raw and calibrated confidence, and the full
    probability vector (JSON); QGIS opens it styled by confidence. With --truth the audit
    of the scene is written too.

    \b
    Examples:
      calibration detect-scene scene.tif --calibrator calibrator.json -o detections.gpkg
      calibration detect-scene OSBS_029.tif --weights trees.pt --truth OSBS_029.csv -o trees.gpkg
      calibration detect-scene scene.tif --bands 3,2,1 --tile-size 512 --overlap 96 -o d.gpkg
    """
    from calibration.adapters import load_detector
    from calibration.adapters.torchvision_models import SAMPLE_WEIGHTS, read_checkpoint
    from calibration.calibrators import Calibrator
    from calibration.config import AuditConfig, load_config
    from calibration.scene import SceneSettings, detect_scene, parse_bands

    refuse_existing([out_path], overwrite)

    picked = parse_bands(bands)
    cfg = load_config(config_path) if config_path is not None else AuditConfig()
    if cfg.runs_model:
        raise TrustmapError(
            "detect-scene's --config sets up the scene audit only: drop its 'detector' and 'data'",
            config_path,
        )
    det = load_detector(model, weights)
    cal = Calibrator.load(calibrator) if calibrator is not None else None
    _, meta = read_checkpoint(weights if weights is not None else SAMPLE_WEIGHTS)
    categories = {int(c): str(c) for c in det.prob_category_ids}
    if cal is not None:
        categories |= {c: n for c, n in cal.categories.items() if c in categories}
    for c in meta.get("categories") or []:
        if isinstance(c, dict) and int(c.get("id", -1)) in categories:
            categories[int(c["id"])] = str(c.get("name", c["id"]))
    if tile_size is None:
        tile_size = int(meta.get("image_size", 256 if model == "sample_fasterrcnn" else 512))
    settings = SceneSettings(tile_size, overlap, batch_size, score_thresh, nms_iou, topk)
    if n_boot is not None:
        cfg = cfg.model_copy(update={"bootstrap": cfg.bootstrap.model_copy(update={"n": n_boot})})
    res = detect_scene(
        scene,
        det,
        out_path,
        categories=categories,
        settings=settings,
        bands=picked,
        calibrator=cal,
        calibrator_path=calibrator,
        truth=truth,
        audit_out=audit_out,
        audit_config=cfg,
        inputs=[weights, config_path],
    )
    info = res.info
    click.echo(
        f"{info.detections} detections on {info.tiles} tiles ({info.tiles_skipped} all-nodata "
        f"skipped), {res.plan.describe()}"
    )
    if res.audit is not None:
        for f in res.audit.data["findings"]:
            click.echo(f"- [{f['topic']}] {f['text']}")
        click.echo("")
        for kind, path in res.audit.files.items():
            click.echo(f"{kind:<5} {path}")
    click.echo(f"gpkg  {res.gpkg}")
