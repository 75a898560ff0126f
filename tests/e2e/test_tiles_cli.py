"""The `tiles` command as an analyst runs it: real processes, real files, one-line errors."""

import json
import os
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
    tiles("cut", real_data / "RGB.byte.tif", "--tile-size", 300, "--overlap", 40, "-o", tmp_path / "t")
    tiles("stitch", tmp_path / "t" / "index.gpkg", "-o", tmp_path / "back.tif")
    with rasterio.open(real_data / "RGB.byte.tif") as a, rasterio.open(tmp_path / "back.tif") as b:
        assert np.array_equal(a.read(), b.read()) and a.transform == b.transform


def test_old_spellings_still_work_and_say_what_replaces_them(real_data, tmp_path):
    """--out, --size (cut) and --scene are hidden aliases, so existing scripts keep running."""
    proc = tiles("cut", real_data / "RGB.byte.tif", "--size", 400, "--overlap", 0, "--out", tmp_path / "t")
    assert "--size is deprecated; use --tile-size" in proc.stderr
    assert len(list((tmp_path / "t" / "tiles").iterdir())) == 4  # 791 x 718 in 400 px tiles
    tiles("stitch", tmp_path / "t" / "index.gpkg", "--out", tmp_path / "back.tif")
    assert (tmp_path / "back.tif").is_file()
    assert "--out " not in tiles("stitch", "--help").stdout and "--scene" not in tiles("align", "--help").stdout


def test_version_names_gdal_rasterio_and_torch():
    import importlib.metadata

    out = tiles("--version").stdout.splitlines()
    assert out[0] == f"trustmap {importlib.metadata.version('trustmap')}"
    assert out[1] == f"GDAL {rasterio.__gdal_version__}" and out[2] == f"rasterio {rasterio.__version__}"
    assert out[3] == f"torch {importlib.metadata.version('torch')}"


def test_existing_output_is_replaced_only_with_overwrite(real_data, tmp_path):
    out = tmp_path / "q.tif"
    tiles("quicklook", real_data / "RGB.byte.tif", "--tif", out, "--max-size", 64)
    first = out.read_bytes()
    proc = tiles("quicklook", real_data / "RGB.byte.tif", "--tif", out, "--max-size", 32, ok=False)
    assert proc.returncode == 1 and "--tif exists; pass --overwrite" in proc.stderr
    assert out.read_bytes() == first
    tiles("quicklook", real_data / "RGB.byte.tif", "--tif", out, "--max-size", 32, "--overwrite")
    with rasterio.open(out) as ds:
        assert max(ds.shape) == 32


def test_progress_is_logged_as_lines_when_stderr_is_not_a_terminal(tmp_path):
    """A pipe gets periodic one-line entries (here every 0 s, i.e. every strip), no bar."""
    env = {**os.environ, "TRUSTMAP_PROGRESS_SECONDS": "0"}
    proc = subprocess.run([str(BIN / "tiles"), "sample", "-o", str(tmp_path / "s"), "--size", "512"],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "INFO: sample: 1/2 strip(s) (50 %)" in lines[0] and "\r" not in proc.stderr
    assert lines[-1].startswith("INFO: sample: 2 strip(s) done in ")
    quiet = subprocess.run([str(BIN / "tiles"), "-q", "sample", "-o", str(tmp_path / "s2"), "--size", "256"],
                           capture_output=True, text=True, env=env)  # fmt: skip
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_zipped_scene_is_read_through_vsizip(real_data, tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "s.zip", "w") as zf:
        zf.write(real_data / "RGB.byte.tif", "RGB.byte.tif")
    info = json.loads(tiles("info", f"/vsizip/{tmp_path}/s.zip/RGB.byte.tif", "--json").stdout)
    assert info["width"] == 791 and info["lnglat"][0] == pytest.approx(-77.7579, abs=1e-3)
    tiles("cut", f"/vsizip/{tmp_path}/s.zip/RGB.byte.tif", "--tile-size", 512, "-o", tmp_path / "t")
    assert (tmp_path / "t" / "index.gpkg").is_file()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["info", "{tmp}/missing.tif"], "missing.tif: file not found"),
        (["info", "{tmp}/notes.txt"], "notes.txt: not a readable raster"),
        (["cut", "{data}/RGB.byte.tif", "--tile-size", "64", "--overlap", "64", "-o", "{tmp}/o"], "larger than the overlap"),
        (["stitch", "{tmp}/notes.txt", "-o", "{tmp}/o.tif"], "notes.txt: not a trustmap tile index"),
        (["info", "https://127.0.0.1:9/scene.tif"], "https://127.0.0.1:9/scene.tif: cannot open"),
        (["cut", "{data}/RGB.byte.tif", "-o", "{tmp}/o", "--co", "NOPE=1"], "--co NOPE=1"),
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
