"""The refinement loop on a real 256² GeoTIFF scene, driven from Python.

Strategies that need no model (random, a registered oracle ranking) keep these tests fast;
the model-driven path runs end to end in tests/e2e/test_refine_cli.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from refine.cheap.crowd import CrowdConfig, simulate_crowd
from refine.config import RefineConfig
from refine.inputs import SimulationInputs, write_labels
from refine.simulation import run_simulation
from refine.strategies import STRATEGIES, RoundContext, register_strategy
from tiles.classes import load_schema
from tiles.errors import TrustmapError
from tiles.samples import make_sample

CONFIG = RefineConfig().with_overrides(
    strategy={"score": "random"},
    regions={"kind": "slic", "size": 300},
    select={"budget": 0.15, "rounds": 3},
    review={"relabel": "pixel"},
    autocorrect={"enabled": False},  # loop mechanics; auto-correction: test_autocorrect_real.py
)


@pytest.fixture(scope="module")
def data(tmp_path_factory, landcover6_path) -> SimulationInputs:
    d = tmp_path_factory.mktemp("loop")
    paths = make_sample(d / "s", size=256, seed=2)
    schema = load_schema(landcover6_path)
    with rasterio.open(paths.truth) as ds:
        truth, profile = ds.read(1), ds.profile
    stack = simulate_crowd(truth, schema, CrowdConfig(n_annotators=2, noise=0.3, seed=1))
    labels = []
    for i, lab in enumerate(stack):
        labels.append(write_labels(d / f"cheap{i}.tif", lab, profile, schema))
    return SimulationInputs(paths.scene, tuple(labels), paths.truth, classes=landcover6_path)


def _run(cfg, out, data, **kw):
    kw.setdefault("evaluate_model", False)
    kw.setdefault("export", False)
    kw.setdefault("report", False)
    return run_simulation(cfg, out, data, **kw)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_rounds_respect_budget_and_record_every_change(data, tmp_path) -> None:
    res = _run(CONFIG, tmp_path / "run", data)
    budget = res.setup["budget"]
    assert len(res.rounds) == 3
    seen: set[int] = set()
    spent = 0.0
    recall = [res.setup["labels"]["errors"]["error_recall"]]
    for r in res.rounds:
        ids = set(r["selected"]["regions"])
        assert not ids & seen  # never re-selected
        seen |= ids
        assert r["budget"]["spent"] <= r["budget"]["round_budget"] + 1e-9
        spent += r["budget"]["spent"]
        assert r["budget"]["spent_total"] == pytest.approx(spent)
        recall.append(r["labels"]["errors"]["error_recall"])
        assert r["labels"]["errors"]["introduced"] == 0  # exact expert, pixel-exact fixes
    assert spent <= budget["total"] + 1e-9 and spent > 0.8 * budget["total"]
    assert all(b >= a for a, b in zip(recall, recall[1:], strict=False)) and recall[-1] > 0
    # labels_r{r} differs from labels_r{r-1} exactly where round r's change record says
    run = tmp_path / "run"
    csv_rows = list(csv.DictReader((run / "changes.csv").open()))
    change_map = _read(run / "change_map.tif")
    for r in range(1, 4):
        before, after = (
            _read(run / "labels" / f"labels_r{r - 1}.tif"),
            _read(run / "labels" / f"labels_r{r}.tif"),
        )
        with np.load(run / "state" / f"round_{r:03d}" / "changes.npz") as z:
            idx = z["index"]
            np.testing.assert_array_equal(np.flatnonzero(before != after), np.sort(idx))
            np.testing.assert_array_equal(before.reshape(-1)[idx], z["before"])
            np.testing.assert_array_equal(after.reshape(-1)[idx], z["after"])
        assert sum(int(row["pixels"]) for row in csv_rows if int(row["round"]) == r) == idx.size
        assert (change_map.reshape(-1)[idx] == r).all()
    assert (change_map > 0).sum() == sum(r["changes"]["pixels"] for r in res.rounds)


def test_strategy_hook_sees_no_truth_and_drives_selection(data, tmp_path) -> None:
    truth = _read(data.truth)
    seen: list[RoundContext] = []

    def wrong_fraction(ctx: RoundContext) -> np.ndarray:  # what a benchmark's oracle ranking does
        seen.append(ctx)
        wrong = (ctx.labels != truth) & (truth != ctx.schema.ignore)
        per = np.bincount(
            ctx.regions.labels[ctx.valid], weights=wrong[ctx.valid], minlength=ctx.regions.n
        )
        return per / np.maximum(ctx.regions.area, 1)

    register_strategy("test_oracle", wrong_fraction, needs_model=False, replace=True)
    try:
        cfg = CONFIG.with_overrides(strategy={"score": "test_oracle", "class_balance": False})
        oracle = _run(cfg, tmp_path / "oracle", data)
        random = _run(CONFIG, tmp_path / "random", data)
    finally:
        STRATEGIES.pop("test_oracle")
    assert [c.round for c in seen] == [1, 2, 3]
    assert not any(
        isinstance(v, np.ndarray) and v.shape == truth.shape and np.array_equal(v, truth)
        for c in seen
        for v in vars(c).values()
    )
    assert seen[1].reviewed.sum() == len(oracle.rounds[0]["selected"]["regions"])
    prec = [r["review"]["precision"] for r in oracle.rounds]
    assert min(prec) > max(r["review"]["precision"] for r in random.rounds)
    assert (
        oracle.rounds[-1]["labels"]["errors"]["error_recall"]
        > random.rounds[-1]["labels"]["errors"]["error_recall"]
    )


def test_resume_after_interruption_matches_an_uninterrupted_run(data, tmp_path) -> None:
    full = _run(CONFIG, tmp_path / "full", data)
    out = tmp_path / "part"
    part = _run(CONFIG, out, data, max_rounds=1)
    assert len(part.rounds) == 1 and "report_json" not in part.outputs
    stale = out / "state" / ".round_002.abc.part"  # a commit killed half-way
    stale.mkdir()
    (stale / "labels.tif").write_bytes(b"half")
    with pytest.raises(TrustmapError, match="not empty.*--resume"):
        _run(CONFIG, out, data)
    with pytest.raises(
        TrustmapError, match="cannot resume: this run differs .* at 'config.select.rounds'"
    ):
        _run(CONFIG.with_overrides(select={"rounds": 4}), out, data, resume=True)
    done = _run(CONFIG, out, data, resume=True, report=True)
    assert not stale.exists()
    for a, b in zip(full.rounds, done.rounds, strict=True):
        assert a["selected"]["regions"] == b["selected"]["regions"]
        assert a["labels"] == json.loads(json.dumps(b["labels"]))
    np.testing.assert_array_equal(_read(full.refined), _read(done.refined))
    report = json.loads((out / "report.json").read_text())
    assert len(report["rounds"]) == 3 and report["finished"]
    again = _run(CONFIG, out, data, restart=True)  # starts over cleanly
    assert len(again.rounds) == 3 and not (out / "report.json").exists()


def _shifted(src: Path, dst: Path, dx: float) -> Path:
    with rasterio.open(src) as ds:
        profile, arr = ds.profile, ds.read()
    profile["transform"] = profile["transform"] * Affine.translation(dx, 0)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(arr)
    return dst


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("misaligned", "does not align with the scene.*tiles align"),
        ("unknown_code", r"unknown class code\(s\) \[9\]"),
        ("empty_scene", "scene is empty"),
        ("no_truth", "needs the ground truth"),
        ("missing_truth", "file not found"),
        (
            "pixel_budget",
            "key 'select.budget': 1e\\+06 pixels is more than the scene's \\d+ valid pixels",
        ),
        ("click_budget", "key 'select.budget': 5000 clicks is more than the whole scene"),
        ("strategy", "key 'strategy.score': unknown strategy 'nope'"),
    ],
)
def test_bad_inputs_fail_cleanly(data, tmp_path, case: str, message: str) -> None:
    cfg, inputs = CONFIG, data
    if case == "misaligned":
        inputs = SimulationInputs(
            data.scene,
            (_shifted(data.labels[0], tmp_path / "shift.tif", 3),),
            data.truth,
            classes=data.classes,
        )
    elif case == "unknown_code":
        with rasterio.open(data.labels[0]) as ds:
            profile, arr = ds.profile, ds.read(1)
        arr[10, 10] = 9
        with rasterio.open(tmp_path / "bad.tif", "w", **profile) as dst:
            dst.write(arr, 1)
        inputs = SimulationInputs(
            data.scene, (tmp_path / "bad.tif",), data.truth, classes=data.classes
        )
    elif case == "empty_scene":
        with rasterio.open(data.scene) as ds:
            profile = ds.profile
        with rasterio.open(tmp_path / "empty.tif", "w", **profile) as dst:
            dst.write(np.zeros((profile["count"], 256, 256), profile["dtype"]))
        inputs = SimulationInputs(
            tmp_path / "empty.tif", data.labels, data.truth, classes=data.classes
        )
    elif case == "no_truth":
        inputs = SimulationInputs(data.scene, data.labels, None, classes=data.classes)  # type: ignore[arg-type]
    elif case == "missing_truth":
        inputs = SimulationInputs(
            data.scene, data.labels, tmp_path / "gt.tif", classes=data.classes
        )
    elif case == "pixel_budget":
        cfg = CONFIG.with_overrides(select={"unit": "pixels", "budget": 1e6})
    elif case == "click_budget":
        cfg = CONFIG.with_overrides(
            select={"unit": "clicks", "budget": 5000}, regions={"cost": "dominant_clicks"}
        )
    elif case == "strategy":
        cfg = CONFIG.with_overrides(strategy={"score": "nope"})
    out = tmp_path / "out"
    with pytest.raises(TrustmapError, match=message):
        _run(cfg, out, inputs)
    _assert_nothing_written(out)


TINY_MODEL = {
    "tile_size": 128,
    "overlap": 16,
    "encoder_depth": 3,
    "decoder_channels": [16, 8, 8],
    "dropout": 0.3,
}


@pytest.mark.parametrize("score", ["bald", "self_confidence", "annotator_disagreement"])
def test_other_strategies_run_a_round(data, tmp_path, score: str) -> None:
    cfg = CONFIG.with_overrides(
        threads=1,
        model=TINY_MODEL,
        train={"crop": 64, "batch_size": 2, "steps": 2},
        strategy={"score": score, "mc_samples": 3},
        select={"rounds": 1},
    )
    res = _run(cfg, tmp_path / score, data)
    (r,) = res.rounds
    assert r["strategy"] == score and r["selected"]["count"] > 0
    assert all(v is not None for v in r["selected"]["values"])  # ranked, not random
    assert (r["times"]["predict"] > 0) == (score != "annotator_disagreement")
    if score == "bald":
        assert (tmp_path / score / "work" / "bald.tif").exists()


def test_vector_labels_are_rasterised_onto_the_scene(data, tmp_path, landcover6_path) -> None:
    import geopandas as gpd
    import shapely

    from refine.inputs import read_labels
    from tiles.raster import SceneImage

    scene = SceneImage(data.scene)
    left, top = scene.transform.c, scene.transform.f
    box = shapely.box(left + 10, top - 50, left + 40, top - 20)  # 30 x 30 m, 1 m pixels
    gpd.GeoDataFrame({"class": ["water"]}, geometry=[box], crs=scene.crs).to_file(
        tmp_path / "v.gpkg"
    )
    codes = read_labels(tmp_path / "v.gpkg", scene, load_schema(landcover6_path), "cheap labels")
    assert codes.shape == scene.shape
    assert (codes[20:50, 10:40] == 1).all() and (codes == 1).sum() == 900
    assert (codes[codes != 1] == 255).all()
