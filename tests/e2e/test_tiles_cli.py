"""The `tiles` command as an analyst runs it: real processes, real files, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

BIN = Path(sys.executable).parent


def tiles(*args, ok=True):
    proc = subprocess.run([str(BIN / "tiles"), *map(str, args)], capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_explains_every_command():
    out = tiles("--help").stdout
    for cmd in ("info", "sample", "quicklook", "cut", "stitch", "align", "vectorize", "export-qgis"):
        assert cmd in out
    assert "--overlap" in tiles("cut", "--help").stdout


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "tiles", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "export-qgis" in proc.stdout


def test_info_json_on_real_data(real_data):
    info = json.loads(tiles("info", real_data / "RGB.byte.tif", "--json").stdout)
    assert info["crs"] == "EPSG:32618" and info["width"] == 791


def test_cut_and_stitch_round_trip_via_cli(real_data, tmp_path):
    tiles("cut", real_data / "RGB.byte.tif", "--size", 300, "--overlap", 40, "--out", tmp_path / "t")
    tiles("stitch", tmp_path / "t" / "index.gpkg", "--out", tmp_path / "back.tif")
    with rasterio.open(real_data / "RGB.byte.tif") as a, rasterio.open(tmp_path / "back.tif") as b:
        assert np.array_equal(a.read(), b.read()) and a.transform == b.transform


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["info", "{tmp}/missing.tif"], "missing.tif: file not found"),
        (["info", "{tmp}/notes.txt"], "notes.txt: not a readable raster"),
        (["cut", "{data}/RGB.byte.tif", "--size", "64", "--overlap", "64", "--out", "{tmp}/o"], "larger than the overlap"),
        (["stitch", "{tmp}/notes.txt", "--out", "{tmp}/o.tif"], "notes.txt: not a trustmap tile index"),
    ],
)
def test_bad_input_gives_one_line_error_and_nonzero_exit(real_data, tmp_path, args, needle):
    (tmp_path / "notes.txt").write_text("not a raster")
    argv = [a.format(tmp=tmp_path, data=real_data) for a in args]
    proc = tiles(*argv, ok=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.tif").exists()
