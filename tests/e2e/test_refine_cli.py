"""`refine simulate` end to end through click: sample scene, real model, outputs, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from refine import loop
from refine.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMALL = f"""
classes: {ROOT / "configs" / "classes" / "landcover6.yaml"}
sample: {{size: 256, seed: 0, heldout_size: 256, heldout_seed: 1}}
cheap: {{source: crowd, noise: 0.3, annotators: 3, fusion: dawid_skene}}
model: {{tile_size: 128, overlap: 16, decoder_channels: [16, 8, 8]}}
train: {{crop: 64, batch_size: 4, steps: 15, finetune_steps: 5}}
strategy: {{score: disagreement}}
regions: {{kind: slic, size: 300}}
select: {{budget: 0.12, rounds: 2}}
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(SMALL, encoding="utf-8")
    return path


def _simulate(*args: str):
    return CliRunner().invoke(main, ["simulate", *args], catch_exceptions=False)


def test_simulate_interrupted_then_resumed(config, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    real_round = loop.Refinement.run_round

    def interrupted(self):  # Ctrl-C in the middle of round 2
        if len(self.records) == 1:
            raise KeyboardInterrupt
        return real_round(self)

    monkeypatch.setattr(loop.Refinement, "run_round", interrupted)
    res = _simulate("--config", str(config), "--out", str(out))
    assert res.exit_code == 130, res.output
    assert (out / "state" / "round_001" / "record.json").exists()
    assert not (out / "state" / "round_002").exists() and not (out / "report.json").exists()
    monkeypatch.setattr(loop.Refinement, "run_round", real_round)

    res = _simulate("--config", str(config), "--out", str(out))
    assert res.exit_code == 1 and "not empty" in res.output and "--resume" in res.output

    res = _simulate("--config", str(config), "--out", str(out), "--resume")
    assert res.exit_code == 0, res.output
    assert "The refined labels beat the cheap ones" in res.output

    report = json.loads((out / "report.json").read_text())
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    budget = report["budget"]
    assert sum(r["budget"]["spent"] for r in rounds) <= budget["total"] + 1e-9
    assert rounds[-1]["budget"]["spent_fraction"] <= report["config"]["select"]["budget"] + 1e-9
    recall = [report["cheap"]["start"]["errors"]["error_recall"]] + [
        r["labels"]["errors"]["error_recall"] for r in rounds
    ]
    assert all(b >= a for a, b in zip(recall, recall[1:], strict=False))
    s = report["summary"]
    assert s["beats_cheap"] and s["refined_miou"] >= s["cheap_miou"]
    assert s["refined_miou"] == rounds[-1]["labels"]["scores"]["miou"]
    assert all(r["model"]["heldout"]["miou"] is not None for r in rounds)  # held-out sample scene
    assert report["final_model"]["model"]["trained_on_spent"] == rounds[-1]["budget"]["spent_total"]
    assert set(rounds[0]["times"]) >= {"train", "predict", "score", "select", "review"}

    # outputs: labels per round, change map, QGIS bundle, self-contained HTML
    for r in range(3):
        assert (out / "labels" / f"labels_r{r}.tif").exists()
    with rasterio.open(out / "change_map.tif") as ds:
        changed = ds.read(1)
    assert set(np.unique(changed)) <= {0, 1, 2} and (changed > 0).sum() == sum(
        r["changes"]["pixels"] for r in rounds
    )
    assert (out / "change_map.qml").exists() and (out / "changes.csv").exists()
    for name in ("refined.qgs", "refined.tif", "refined.qml", "refined_polygons.gpkg"):
        assert (out / "qgis" / name).exists()
    html = (out / "report.html").read_text()
    assert (
        "data:image/png;base64," in html
        and "<script" not in html
        and s["sentence"].split(":")[0] in html
    )
