"""Refine configs: defaults, the demo file, and errors that name the key at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from refine.config import RefineConfig, load_config, parse_config
from tiles.errors import TrustmapError

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "refine" / "demo.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_demo_config_loads_and_resolves_paths_against_its_folder() -> None:
    cfg = load_config(DEMO)
    assert cfg.classes == (ROOT / "configs" / "classes" / "landcover6.yaml").resolve()
    assert cfg.classes.exists()
    assert cfg.select.rounds >= 3 and 0 < cfg.select.budget <= 1
    # nothing is downloaded: 'auto' is the packaged ImageNet file, or no weights at all
    from refine.model import packaged_lite0_weights, resolve_settings

    resolved = resolve_settings(cfg.model)
    assert resolved.encoder_weights in (None, packaged_lite0_weights())
    if resolved.encoder_weights is not None:
        assert Path(resolved.encoder_weights).is_file()


def test_defaults_without_a_file() -> None:
    cfg = load_config(None)
    assert cfg == RefineConfig()
    assert cfg.strategy.score == "self_confidence" and cfg.select.unit == "fraction"
    assert cfg.strategy.objective == "value" and cfg.autocorrect.enabled


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("select: {budget: 0}", "key 'select.budget': must be > 0"),
        ("select: {budget: -0.5}", "key 'select.budget': must be > 0"),
        (
            "select: {budget: 1.5}",
            "key 'select.budget': 1.5 is a fraction of the scene and must be <= 1",
        ),
        (
            "select: {budgt: 0.1}",
            "key 'select.budgt': unknown key (check the spelling); allowed here: unit, budget, rounds, per_round",
        ),
        ("selct: {budget: 0.1}", "key 'selct': unknown key"),
        ("select: {rounds: two}", "key 'select.rounds': must be a whole number, got 'two'"),
        (
            "review: {relabel: polygon}",
            "key 'review.relabel': must be one of 'dominant' or 'pixel'",
        ),
        ("cheap: {noise: 1.0}", "key 'cheap.noise': must be < 1"),
        (
            "model: {encoder_depth: 3, decoder_channels: [8, 8]}",
            "key 'model.decoder_channels': has 2 entries",
        ),
        ("model: {arch: UNET}", "key 'model.arch': unknown architecture 'UNET'"),
        (
            "sample: {seed: 3, heldout_seed: 3}",
            "key 'sample.heldout_seed': must differ from sample.seed",
        ),
        (
            "model: {tile_size: 64, overlap: 64}",
            "key 'model.overlap': must be smaller than tile_size (64)",
        ),
        (
            "select: {budget: 0.1, per_round: 0.2}",
            "key 'select.per_round': must not exceed select.budget",
        ),
        ("select: {unit: clicks, budget: 30}", "key 'select': unit 'clicks' needs regions.cost"),
        (
            "regions: {kind: polygons}",
            "key 'regions.polygons': regions.kind 'polygons' needs a vector file",
        ),
        ("model: 3", "key 'model': must be a mapping of keys to values"),
        ("- a\n- b", "a refine config must be a mapping"),
    ],
)
def test_bad_keys_are_errors_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(TrustmapError) as err:
        load_config(path)
    assert message in str(err.value)
    assert str(err.value).startswith(str(path))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(TrustmapError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(TrustmapError, match="not valid YAML at line"):
        load_config(_write(tmp_path, "a: 1\nb: [unclosed\n"))
    with pytest.raises(TrustmapError, match="is a directory"):
        load_config(tmp_path)


def test_budget_units_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "w.pt").write_bytes(b"")
    cfg = load_config(
        _write(tmp_path, "select: {budget: 5000, unit: pixels}\nmodel: {encoder_weights: w.pt}\n")
    )
    assert cfg.select.budget == 5000 and cfg.select.unit == "pixels"
    assert cfg.model.encoder_weights == (tmp_path / "w.pt").resolve()
    clicks = parse_config(
        {"select": {"budget": 40, "unit": "clicks"}, "regions": {"cost": "dominant_clicks"}}
    )
    assert clicks.select.unit == "clicks"


def test_overrides_are_validated() -> None:
    cfg = RefineConfig().with_overrides(strategy={"score": "margin"}, select={"rounds": 2})
    assert (
        cfg.strategy.score == "margin"
        and cfg.select.rounds == 2
        and cfg.select.budget == RefineConfig().select.budget
    )
    with pytest.raises(TrustmapError, match="key 'select.rounds': must be >= 1"):
        RefineConfig().with_overrides(select={"rounds": 0})
