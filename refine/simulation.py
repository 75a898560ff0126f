"""The simulation driver: a refinement whose expert is simulated from the ground truth.

Per round ``r`` (1..R), starting from label version ``r - 1``, :class:`refine.rounds.Refinement`
**proposes** (trains the model on the current labels, predicts, ranks the regions with the
configured strategy from :mod:`refine.strategies`, picks what fits the budget), the
:class:`~refine.oracle.SimulatedExpert` answers, and the round **applies** the answers
(burnt into label version ``r``, auto-correction of the unreviewed pixels) and commits it to
``DIR/state/`` (:mod:`refine.session`), so an interrupted run resumes from its last complete
round. An analyst's workspace (:mod:`refine.workspace`) runs the same proposal and the same
answers, with days between them.

**The truth never reaches training.** :func:`run_simulation` reads the truth into two
objects only: the simulated expert (which answers region queries) and an
:class:`~refine.evaluation.Evaluator` (which returns numbers). The round receives those two
objects and the current label array; the model's ``fit`` takes a label array and nothing
else.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from refine.config import RefineConfig, config_error
from refine.evaluation import Evaluator, SimulationResult
from refine.inputs import (
    SimulationInputs,
    fuse_sources,
    load_inputs,
    prepare_sample,
    write_labels,
)
from refine.oracle import Expert, SimulatedExpert
from refine.regions import Regions
from refine.rounds import Refinement, round_schema
from refine.session import RunDir
from refine.strategies import (
    get_strategy,
)
from tiles.classes import ClassSchema, load_schema

Echo = Callable[[str], None]
STEPS = ("train", "predict", "score", "select", "review")



# --- the whole simulation --------------------------------------------------------------------------
def _review_project(
    run: RunDir, bundle: Any, schema: ClassSchema, rounds: int, auto: Path | None = None
) -> Path:
    """``qgis/review.qgs``: what changed when, the auto-corrections (a layer of their own),
    the refined labels as half-transparent polygons over the scene; the refined and cheap
    label rasters are there, switched off, to compare."""
    from tiles.qgis import ProjectLayer, write_project

    changes = round_schema(max(rounds, 1))
    layers = [  # first on top: where the expert changed something, over the refined labels
        ProjectLayer(run.root / "change_map.tif", "changed in round (expert)", "raster", schema=changes),
        *([ProjectLayer(auto, "auto-corrected (model)", "raster", schema=schema)] if auto else []),
        ProjectLayer(
            bundle.polygons, "refined labels (polygons)", "vector", schema=schema, layer="polygons"
        ),
        ProjectLayer(bundle.mask, "refined labels", "raster", schema=schema, visible=False),
        ProjectLayer(run.labels / "labels_r0.tif", "cheap labels (start)", "raster", schema=schema, visible=False),
    ]
    if bundle.quicklook is not None:
        layers.append(ProjectLayer(bundle.quicklook, "scene quick-look", "raster"))
    return write_project(run.qgis / "review.qgs", layers, title="trustmap refine: review")


def _check_budget_fits(
    config: RefineConfig, valid_pixels: int, source: str | os.PathLike | None
) -> None:
    """A pixel budget larger than the scene is an error before any work (clicks: at setup)."""
    sel = config.select
    if sel.unit == "pixels" and sel.budget > valid_pixels:
        raise config_error(
            "select.budget",
            f"{sel.budget:g} pixels is more than the scene's {valid_pixels} valid pixels",
            source,
        )


@RunDir.closes_on_exit  # the run folder stays locked for exactly this call
def run_simulation(
    config: RefineConfig,
    out_dir: str | os.PathLike,
    inputs: SimulationInputs | None = None,
    *,
    config_source: str | os.PathLike | None = None,
    resume: bool = False,
    restart: bool = False,
    expert: Expert | None = None,
    regions: Regions | None = None,
    evaluate_model: bool = True,
    export: bool = True,
    report: bool = True,
    echo: Echo | None = None,
    max_rounds: int | None = None,
    initial_model: str | os.PathLike | None = None,
) -> SimulationResult:
    """Run (or resume) a simulated refinement into ``out_dir`` and write its outputs.

    ``inputs=None`` generates the sample scene and cheap labels from ``config``. ``expert``
    replaces the simulated one (it must implement :class:`refine.oracle.Expert`);
    ``regions`` reuses regions built elsewhere (benchmarks). ``evaluate_model=False`` skips
    the held-out evaluation and, for strategies that need no model, all training.
    ``max_rounds`` stops after that many rounds *in this call* (for tests of resuming).
    ``export``/``report`` turn off the QGIS bundle and the HTML/JSON report.
    ``initial_model`` is a checkpoint already trained on the starting labels: round 1 uses
    it instead of training (a benchmark shares one round-1 model between strategies).
    """
    t_start = time.perf_counter()
    echo = echo or (lambda _: None)
    strategy = get_strategy(config.strategy.score, config_source)
    if strategy.needs_mc and config.model.dropout <= 0:
        raise config_error("model.dropout", "BALD (MC dropout) needs dropout > 0", config_source)
    identity = {
        "config": config.to_json_dict(),
        "inputs": inputs.to_dict() if inputs is not None else "sample",
        "expert": type(expert).__name__ if expert is not None else "SimulatedExpert",
    }
    schema = data = None
    if inputs is not None:  # the user's files: check them all before anything is written
        schema = load_schema(inputs.classes or config.classes)
        data = load_inputs(inputs, schema)
        _check_budget_fits(config, int(data.valid.sum()), config_source)
    created = not Path(out_dir).exists()
    run = RunDir.open(out_dir, identity, resume=resume, restart=restart)
    fresh = not run.setup_dir.exists()
    try:
        if inputs is None:
            inputs = prepare_sample(config, run.inputs, echo)
        if data is None:
            schema = load_schema(inputs.classes or config.classes)
            data = load_inputs(inputs, schema)
        start = fuse_sources(data.sources, schema, config.cheap.fusion)
        start[~data.valid] = schema.ignore
        if expert is None:
            expert = SimulatedExpert(data.truth, schema, config.review.expert_error, config.review.seed,
                                     pixel_exact=config.review.relabel == "pixel")  # fmt: skip
        evaluator = Evaluator(data.truth, start, schema, data.heldout if evaluate_model else None)
        data.truth = None  # from here on, only the expert and the evaluator hold it
        loop = Refinement(
            config, schema, run, data.scene, data.valid, data.sources if data.sources.shape[0] > 1 else None,
            expert, evaluator, strategy, source=config_source, evaluate_model=evaluate_model, echo=echo,
            initial_model=initial_model,
        )  # fmt: skip
        loop.setup(start, data.sources, regions)
    except BaseException:
        if fresh:
            run.discard(created)
        raise
    if loop.records:
        echo(f"resuming after round {len(loop.records)}")
    done_now = 0
    while loop.can_continue():
        if max_rounds is not None and done_now >= max_rounds:
            break
        loop.run_round()
        done_now += 1
    finished = not loop.can_continue()
    if finished:
        loop.finish_training()
    outputs = {"labels": run.labels, "changes_csv": run.root / "changes.csv", "state": run.state}
    refined = run.labels / f"labels_r{len(loop.records)}.tif"
    if finished:
        outputs["change_map"] = loop.write_change_map()
        if loop.autocorrect and loop.auto is not None:
            from tiles.qgis import write_raster_style

            outputs["autocorrections"] = write_labels(
                run.root / "autocorrections.tif", loop.auto, loop.profile, schema,
                "auto-corrections of the last round (ignore = not auto-corrected)",
            )  # fmt: skip
            write_raster_style(outputs["autocorrections"], schema)
        loop.write_changes_csv()  # from the state: a kill after the last commit left an old one
        if export:
            from tiles.qgis import export_qgis

            bundle = export_qgis(
                refined, schema, run.qgis, scene_path=inputs.scene, name="refined", min_area=4.0
            )
            outputs["qgis_project"] = _review_project(
                run, bundle, schema, len(loop.records), outputs.get("autocorrections")
            )
            outputs["qgis_refined_project"] = bundle.project
            outputs["qgis_mask"] = bundle.mask
            outputs["qgis_polygons"] = bundle.polygons
    if report and finished:
        outputs["report_json"], outputs["report_html"] = (
            run.root / "report.json",
            run.root / "report.html",
        )
    from refine.report import build_report, change_map_png, write_report

    maps = None
    if report and finished and loop.records:
        auto = loop.auto if loop.auto is not None else np.full(loop.change_map.shape, schema.ignore, np.uint8)
        maps = change_map_png(inputs.scene, loop.regions.labels, loop.reviewed, loop.change_map > 0,
                              auto != schema.ignore)  # fmt: skip
    rep = build_report(
        config=config, inputs=inputs, schema=schema, setup=loop.setup_record, rounds=loop.records,
        final=loop.final_record, outputs=outputs, finished=finished, seconds=time.perf_counter() - t_start,
        strategy=strategy.name, maps=maps,
    )  # fmt: skip
    if report and finished:
        write_report(rep, run.root)
    return SimulationResult(
        run.root, loop.setup_record, loop.records, loop.final_record, rep, refined, outputs
    )
