"""`refine simulate` end to end through click: sample scene, real model, outputs, resume,
and the review project opened in the real QGIS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from refine import rounds as refine_rounds
from refine.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMALL = f"""
classes: {ROOT / "configs" / "classes" / "landcover6.yaml"}
sample: {{size: 256, seed: 0, heldout_size: 256, heldout_seed: 1}}
cheap: {{source: crowd, noise: 0.3, annotators: 3, fusion: dawid_skene}}
threads: 1
model: {{tile_size: 128, overlap: 16, encoder_depth: 3, decoder_channels: [16, 8, 8]}}
train: {{crop: 64, batch_size: 4, steps: 15, finetune_steps: 5}}
strategy: {{score: disagreement}}
regions: {{kind: slic, size: 300}}
select: {{budget: 0.12, rounds: 2}}
"""


def _simulate(*args: str):
    return CliRunner().invoke(main, ["simulate", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A simulate run interrupted by Ctrl-C in round 2, refused without a flag, then resumed."""
    base = tmp_path_factory.mktemp("refine")
    config, out = base / "small.yaml", base / "run"
    config.write_text(SMALL, encoding="utf-8")
    real_round = refine_rounds.Refinement.run_round

    def interrupted(self):
        if len(self.records) == 1:
            raise KeyboardInterrupt
        return real_round(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(refine_rounds.Refinement, "run_round", interrupted)
        res = _simulate("--config", str(config), "--out", str(out))
    assert res.exit_code == 130, res.output
    assert (out / "state" / "round_001" / "record.json").exists()
    assert not (out / "state" / "round_002").exists() and not (out / "report.json").exists()

    res = _simulate("--config", str(config), "--out", str(out))
    assert res.exit_code == 1 and "not empty" in res.output and "--resume" in res.output

    res = _simulate("--config", str(config), "--out", str(out), "--resume")
    assert res.exit_code == 0, res.output
    assert "The refined labels beat the cheap ones" in res.output
    return out


def test_report_numbers_are_consistent(run: Path) -> None:
    report = json.loads((run / "report.json").read_text())
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    budget = report["budget"]
    assert sum(r["budget"]["spent"] for r in rounds) <= budget["total"] + 1e-9
    assert rounds[-1]["budget"]["spent_fraction"] <= report["config"]["select"]["budget"] + 1e-9
    start = report["cheap"]["start"]["errors"]["error_recall"]
    recall = [start] + [r["labels"]["errors"]["error_recall"] for r in rounds]
    assert all(b >= a for a, b in zip(recall, recall[1:], strict=False))
    s = report["summary"]
    assert s["beats_cheap"] and s["refined_miou"] >= s["cheap_miou"]
    assert s["refined_miou"] == rounds[-1]["labels"]["scores"]["miou"]
    assert all(r["model"]["heldout"]["miou"] is not None for r in rounds)  # held-out sample scene
    final = report["final_model"]["model"]
    assert final["trained_on_spent"] == rounds[-1]["budget"]["spent_total"]
    assert set(rounds[0]["times"]) >= {"train", "predict", "score", "select", "review"}


def test_outputs_exist_and_agree(run: Path) -> None:
    report = json.loads((run / "report.json").read_text())
    for r in range(3):
        assert (run / "labels" / f"labels_r{r}.tif").exists()
    with rasterio.open(run / "change_map.tif") as ds:
        changed = ds.read(1)
    assert set(np.unique(changed)) <= {0, 1, 2}
    assert (changed > 0).sum() == sum(r["changes"]["pixels"] for r in report["rounds"])
    assert (run / "change_map.qml").exists() and (run / "changes.csv").exists()
    for name in (
        "review.qgs",
        "refined.qgs",
        "refined.tif",
        "refined.qml",
        "refined_polygons.gpkg",
    ):
        assert (run / "qgis" / name).exists()
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html
    outputs = html.split("<h2>Outputs</h2>")[1].split("</ul>")[0]
    assert "<code>labels</code>" in outputs and str(run) not in outputs  # relative to the report
    assert "Where the labels changed" in html and "Net change" in report["summary"]["sentence"]
    assert "tu-efficientnet_lite0" in report["encoder"] and report["config"]["model"]["encoder"] != "auto"
    assert report["summary"]["sentence"].split(":")[0] in html


@pytest.mark.qgis
def test_review_project_opens_styled_in_qgis(run: Path, qgis, tmp_path: Path) -> None:
    spec = {"projects": {"review": {"path": str(run / "qgis" / "review.qgs")}}}
    project = qgis(spec, tmp_path)["projects"]["review"]
    assert project["read"], project.get("error")
    layers = {layer["name"]: layer for layer in project["layers"]}
    assert list(layers)[0] == "changed in round (expert)"
    assert all(layer["valid"] for layer in layers.values())
    rounds = [c["label"] for c in layers["changed in round (expert)"]["classes"]]
    assert rounds == ["changed in round 1", "changed in round 2"]
    assert layers["refined labels"]["renderer"] == "paletted"
    assert layers["refined labels (polygons)"]["renderer"] == "categorizedSymbol"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scene", "s.tif", "--labels", "l.tif"], "ground truth missing: simulate needs --truth"),
        (["--scene", "s.tif", "--truth", "t.tif"], "--scene needs at least one --labels"),
        (["--labels", "l.tif"], "--labels need --scene"),
        (["--resume", "--restart"], "either --resume or --restart"),
        (["--config", "missing.yaml"], "missing.yaml: config file not found"),
        (["--strategy", "best"], "key 'strategy.score': unknown strategy 'best'"),
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["simulate", "--out", str(out), *args])
    assert res.exit_code == 1
    assert res.output.startswith("error: ") and message in res.output
    assert "Traceback" not in res.output and not out.exists()
