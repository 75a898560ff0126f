"""Audit configs: the demo validates, relative paths follow the file, errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from calibration.config import AuditConfig, load_config, parse_config
from tiles.errors import TrustmapError

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "calibration" / "demo.yaml"


def test_demo_config_runs_the_sample_detector_as_the_issue_asks():
    cfg = load_config(DEMO)
    assert cfg.runs_model and cfg.detector.model == "sample_fasterrcnn"
    assert cfg.detector.weights == ROOT / "calibration" / "weights" / "sample_detector.pt"
    assert cfg.data.sample.split == "test" and cfg.perspectives == ["application", "modeling"]
    m = cfg.metrics_config()
    assert (m.match_mode, m.iou_threshold, m.n_boot) == ("greedy", 0.5, 200)
    assert m.dece_dims[:3] == ("confidence", "cx", "cy") and len(m.dece_bins) == len(m.dece_dims)
    assert min(cfg.sweeps.score_threshold) == 0.05 and max(cfg.sweeps.score_threshold) == 0.7
    assert min(cfg.sweeps.nms_iou) == 0.3 and max(cfg.sweeps.nms_iou) == 0.8


def test_defaults_fill_what_the_file_leaves_out():
    cfg = parse_config({})
    assert not cfg.runs_model
    m = cfg.metrics_config()
    assert m.bins == 10 and m.n_boot == 1000 and m.dece_dims == ("confidence", "cx", "cy", "w", "h")
    # sections map onto the metrics settings; sweep values come back sorted and unique
    cfg = parse_config(
        {
            "matching": {"mode": "hungarian", "iou": 0.3},
            "bootstrap": {"n": 0, "level": 0.9},
            "sweeps": {"nms_iou": [0.7, 0.3, 0.7]},
        }
    )
    m = cfg.metrics_config()
    assert (m.match_mode, m.iou_threshold, m.n_boot, m.ci_level) == ("hungarian", 0.3, 0, 0.9)
    assert cfg.sweeps.nms_iou == [0.3, 0.7]


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "w.pt").write_bytes(b"x")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "gt.json").write_text("{}")
    path = tmp_path / "cfg" / "a.yaml"
    path.write_text(
        "detector: {weights: ../w.pt}\ndata: {coco: {annotations: ../gt.json, images: ../imgs}}\n"
    )
    monkeypatch.chdir(ROOT)  # the working directory plays no part
    cfg = load_config(path)
    assert cfg.detector.weights == tmp_path / "w.pt"
    assert (
        cfg.data.coco.annotations == tmp_path / "gt.json"
        and cfg.data.coco.images == tmp_path / "imgs"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics:\n  bins: 0\n", "key 'metrics.bins': must be >= 1"),
        (
            "metrics:\n  binz: 5\n",
            "key 'metrics.binz': unknown key (check the spelling); allowed here: bins",
        ),
        (
            "metrics: {dece_dims: [confidence, cx], dece_bins: [10, 5, 5]}\n",
            "key 'metrics': dece_bins needs one bin count per entry of dece_dims (2), got 3",
        ),
        (
            "metrics: {dece_dims: [cx, confidence], dece_bins: [5, 10]}\n",
            "key 'metrics': dece_dims must start with 'confidence'",
        ),
        (
            "metrics: {dece_dims: [confidence, area], dece_bins: [10, 5]}\n",
            "key 'metrics.dece_dims[1]': must be one of 'confidence', 'cx', 'cy', 'w' or 'h', got 'area'",
        ),
        (
            "matching: {mode: nearest}\n",
            "key 'matching.mode': must be one of 'greedy', 'hungarian' or 'any', got 'nearest'",
        ),
        ("matching: {iou: 1.5}\n", "key 'matching.iou': must be <= 1"),
        ("bootstrap: {n: -1}\n", "key 'bootstrap.n': must be >= 0"),
        (
            "sweeps: {nms_iou: [0.3, 1.2]}\n",
            "key 'sweeps.nms_iou': values must lie in [0, 1], got [0.3, 1.2]",
        ),
        ("sweeps: {topk: [0, 10]}\n", "key 'sweeps.topk': top-k values must be >= 1"),
        (
            "perspectives: [application, application]\n",
            "key 'perspectives': lists a perspective twice",
        ),
        (
            "perspectives: [raw]\n",
            "key 'perspectives[0]': must be one of 'application' or 'modeling', got 'raw'",
        ),
        (
            "detector: {model: yolo}\ndata: {sample: {}}\n",
            "key 'detector.model': unknown detector 'yolo'; choose from",
        ),
        ("detector: {}\n", "'detector' and 'data' go together"),
        ("detector: {}\ndata: {}\n", "key 'data': give exactly one of 'sample' or 'coco'"),
        (
            "detector: {}\ndata: {sample: {domain: lunar}}\n",
            "key 'data.sample.domain': unknown sample domain 'lunar'",
        ),
        (
            "detector: {batch_size: 0}\ndata: {sample: {}}\n",
            "key 'detector.batch_size': must be >= 1",
        ),
        ("- just\n- a list\n", "must be a mapping of keys to values, got list"),
        ("metrics: [unclosed\n", "not valid YAML at line 2"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(TrustmapError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_missing_files_are_named_by_key(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("detector: {weights: gone.pt}\ndata: {sample: {}}\n")
    with pytest.raises(
        TrustmapError, match=r"x\.yaml: key 'detector\.weights': .*gone\.pt not found"
    ):
        load_config(path)
    path.write_text(f"detector: {{}}\ndata: {{coco: {{annotations: {path}, images: {path}}}}}\n")
    with pytest.raises(TrustmapError, match=r"key 'data\.coco\.images': .* is not a folder"):
        load_config(path)
    with pytest.raises(TrustmapError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_config_object_round_trips_through_its_json_dump():
    cfg = load_config(DEMO)
    again = AuditConfig.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg
