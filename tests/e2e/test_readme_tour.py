"""README.md's "A tour", run as written: its bash blocks, as real processes.

The commands are taken from README.md itself, so the tour cannot drift from the code. The
test changes only sizes (and where ``work/`` is), through exact substitutions listed below;
each one must still match the README, so a reworded tour fails here with the substitution
to update, never by silently running the full-size commands. The whole tour then runs as one
bash script (``set -e``): every command consumes what the earlier ones made.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TOUR_HEADING = "## A tour"

# (README text, what the test runs instead): smaller scene, tiles, refine runs and audit.
SIZE_SUBSTITUTIONS = [
    ("tiles sample -o work/sample --size 2048", "tiles sample -o work/sample --size 512"),
    ("--tile-size 512 --overlap 64", "--tile-size 256 --overlap 32"),
    ("--config configs/refine/demo.yaml", "--config {tmp}/refine_demo_small.yaml"),
    ("refine simulate --scene", "refine simulate --config {tmp}/refine_mine_small.yaml --scene"),
    ("--config configs/calibration/demo.yaml", "--config {tmp}/calibration_demo_small.yaml"),
    ("calibration audit --predictions", "calibration audit --bootstrap 20 --predictions"),
    ("refine init work/", "refine init --config {tmp}/refine_mine_small.yaml work/"),
]

# What the refine and calibration demo configs are shrunk to (every other key as in the demo).
REFINE_SMALL = {
    "threads": 1,
    "final_train": False,
    "sample": {"size": 256, "heldout_size": 256},
    "model": {"tile_size": 128, "overlap": 16, "encoder_depth": 3, "decoder_channels": [16, 8, 8]},
    "train": {"crop": 64, "batch_size": 4, "steps": 6, "finetune_steps": 3},
    "regions": {"size": 300},
    "select": {"rounds": 2},
}
CALIBRATION_SMALL = {
    "data": {"sample": {"n_images": 12, "size": 128}},
    "bootstrap": {"n": 20},
    "shift": {"corruptions": ["fog"], "severities": [3], "n_images": 4},
    "ood": {"sample": {"n_images": 4, "size": 128}},
    "repair": {
        "calibration": {"sample": {"n_images": 12, "size": 128}},
        "methods": ["platt"],
        "cv_folds": 2,
        "finetune": {"epochs": 1},
    },
}


def tour_blocks(text: str) -> list[str]:
    """The ```bash blocks of the tour section (up to the next ``## `` heading)."""
    start = text.index(TOUR_HEADING)
    end = text.find("\n## ", start + len(TOUR_HEADING))
    section = text[start : end if end >= 0 else None]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def tour_commands(script: str) -> list[str]:
    """One string per command: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", script)
    out = []
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if line:
            out.append(line)
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def _small_config(src: Path, over: dict, dst: Path, path_keys: list[tuple[str, ...]]) -> None:
    """``src`` with ``over`` merged in and the relative paths at ``path_keys`` made absolute
    (the copy lives elsewhere, and relative paths are read against the config's folder)."""
    cfg = _merge(yaml.safe_load(src.read_text(encoding="utf-8")), over)
    for keys in path_keys:
        node = cfg
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = str((src.parent / node[keys[-1]]).resolve())
    dst.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")


def test_the_tour_is_there_and_has_no_placeholders() -> None:
    commands = tour_commands("\n".join(tour_blocks(README.read_text(encoding="utf-8"))))
    assert len(commands) >= 10, commands
    tools = {c.split()[0] for c in commands}
    assert {"tiles", "refine", "calibration"} <= tools, tools
    for c in commands:
        # every input is a file of the repository or one an earlier command wrote into work/
        assert not re.search(r"\b(my_|S\.tif|CHEAP|GT\.tif|instances\.json|coco_instances)", c), c


def test_readme_tour_runs_as_written(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    script = "\n".join(tour_blocks(text))
    for old, _ in SIZE_SUBSTITUTIONS:
        assert old in script, f"README tour no longer contains {old!r}: update SIZE_SUBSTITUTIONS"
    for old, new in SIZE_SUBSTITUTIONS:
        script = script.replace(old, new.format(tmp=tmp_path))
    # work/ goes to the test's folder; everything else (configs/, .venv) is the checkout's.
    script = re.sub(r"(?<![\w/.-])work/", f"{tmp_path}/work/", script)
    venv = ROOT / ".venv"
    if Path(sys.prefix).resolve() != venv.resolve():
        # tests run from another environment (e.g. `pip install -e .` into one's own): use it
        assert "source .venv/bin/activate" in script
        script = script.replace(
            "source .venv/bin/activate", f'export PATH="{Path(sys.executable).parent}:$PATH"'
        )

    _small_config(
        ROOT / "configs/refine/demo.yaml",
        REFINE_SMALL,
        tmp_path / "refine_demo_small.yaml",
        [("classes",)],
    )
    mine = {k: v for k, v in REFINE_SMALL.items() if k != "sample"}
    (tmp_path / "refine_mine_small.yaml").write_text(yaml.safe_dump(mine), encoding="utf-8")
    _small_config(
        ROOT / "configs/calibration/demo.yaml",
        CALIBRATION_SMALL,
        tmp_path / "calibration_demo_small.yaml",
        [("detector", "weights")],
    )

    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    res = subprocess.run(
        ["bash", "-c", "PS4='+ [${SECONDS}s] '\nset -eo pipefail -x\n" + script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # about 1.5 min alone on 2 cores; far longer on a busy machine
    )
    log = (res.stdout + res.stderr)[-6000:]
    print("\n".join(ln for ln in res.stderr.splitlines() if ln.startswith("+ [")))  # -rP: timings
    assert res.returncode == 0, f"the tour stopped (exit {res.returncode}):\n{log}"

    work = tmp_path / "work"
    # 2: "bit-identical", as the comment says
    with rasterio.open(work / "sample/scene.tif") as a, rasterio.open(work / "restitched.tif") as b:
        assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
        assert np.array_equal(a.read(), b.read())
    # 3: the truth's polygons put back onto the grid are the truth again
    with rasterio.open(work / "sample/truth.tif") as t, rasterio.open(work / "labels.tif") as lab:
        assert np.array_equal(t.read(1), lab.read(1))
    # 4, 5, 6: what a person opens next
    assert list((work / "qgis").glob("*.qgs")), log
    for run in ("refine", "refine_mine"):
        assert (work / run / "report.html").stat().st_size > 0, log
    for run in ("audit_demo", "audit"):
        assert (work / run / "audit.html").stat().st_size > 0, log
    # 7: a workspace with its first queue, and an export that opens in QGIS
    assert (work / "review" / "review.qgs").is_file() and (work / "review_out" / "refined_review.qgs").is_file()


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("a --x 1 \\\n      --y 2   # note\n# only a comment\n\nb", ["a --x 1 --y 2", "b"]),
        ("  # indented comment\nc", ["c"]),
    ],
)
def test_tour_commands_parsing(script: str, expected: list[str]) -> None:
    assert tour_commands(script) == expected
