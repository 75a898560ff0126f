"""The workspace commands through click's CliRunner: help that explains, one-line errors that
name the file or the flag, non-zero exits, and nothing written on refusal."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import rasterio
from click.testing import CliRunner

from refine.cli import main
from refine.config import parse_config
from refine.workspace import init_workspace

FAST = {"regions": {"kind": "grid", "size": 400}, "strategy": {"score": "random"}, "autocorrect": {"enabled": False}}


@pytest.fixture(scope="module")
def made(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = real_data / "dubai"
    root = tmp_path_factory.mktemp("cli_ws")
    with rasterio.open(d / "t2_007_truth.tif") as ds:  # labels as cheap as can be: the truth itself
        profile, data = ds.profile, ds.read(1)
    with rasterio.open(root / "cheap.tif", "w", **profile) as dst:
        dst.write(data, 1)
    init_workspace(root / "ws", d / "t2_007_scene.tif", [root / "cheap.tif"], d / "classes.yaml", parse_config(FAST))
    return {"root": root, "ws": root / "ws", "scene": d / "t2_007_scene.tif", "classes": d / "classes.yaml"}


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("cmd", ["init", "train", "select", "import", "status", "export", "run"])
def test_every_workspace_command_explains_itself(cmd: str) -> None:
    res = run(cmd, "--help")
    assert res.exit_code == 0 and "--workspace" in res.output and len(res.output.splitlines()) > 5


def test_select_and_import_and_status_through_the_cli(made, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(made["ws"], ws)
    res = run("select", "--workspace", str(ws), "--budget", "20 regions")
    assert res.exit_code == 0 and "round 1: 20 regions" in res.output
    res = run("import", "--workspace", str(ws), "--all-reviewed")
    assert res.exit_code == 0 and "labels v0: 0 corrections" in res.output
    res = run("status", "--workspace", str(ws))
    assert res.exit_code == 0 and "reviewed 20" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "--workspace", "{tmp}/nowhere"], "nowhere: workspace not found (create one with `refine init`)"),
        (["status", "--workspace", "{tmp}"], "not a refine workspace: no session.gpkg"),
        (["select", "--workspace", "{ws}", "--budget", "lots"], "--budget 'lots': give a share"),
        (["train", "--workspace", "{ws}", "--scene", "{tmp}/none.tif"], "pass its new path with --scene"),
        (["init", "{tmp}/none.tif", "--labels", "{tmp}/none.tif", "--classes", "{classes}", "--workspace", "{tmp}/w"],
         "none.tif: scene not found"),
        (["import", "--workspace", "{ws}", "--edits", "{tmp}/edits.gpkg"], "edits.gpkg: edits file not found"),
        (["export", "--workspace", "{ws}", "-o", "{ws}/out"], "choose a folder outside it"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_1(made, tmp_path: Path, args: list[str], message: str) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(made["ws"], ws)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    fill = {"tmp": str(tmp_path), "ws": str(ws), "classes": str(made["classes"])}
    res = CliRunner().invoke(main, [a.format(**fill) for a in args])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], res.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.name != ".trustmap.lock") == [
        p for p in before if p.name != ".trustmap.lock"
    ]


def test_select_before_any_training_says_what_to_run(made, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(made["ws"], ws)
    res = CliRunner().invoke(main, ["select", "--workspace", str(ws), "--budget", "2%", "--strategy", "self_confidence"])
    assert res.exit_code == 1 and "run `refine train` first" in res.output
