"""tiles.io: output checks, owned staging, atomic folders and whole-bundle commits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from tiles.errors import TrustmapError
from tiles.io import (
    atomic_dir,
    atomic_path,
    bundle_stage,
    check_output_dir,
    check_output_file,
    clean_stale,
    commit_bundle,
    exchange,
    resolve_inside,
    staging_dir,
)

DEAD_PID = 4_194_304 + 12345  # above Linux's pid_max: never a live process


def test_output_file_may_not_be_an_input(tmp_path):
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"x")
    os.link(scene, tmp_path / "hard.tif")
    (tmp_path / "soft.tif").symlink_to(scene)
    for out in (scene, tmp_path / "hard.tif", tmp_path / "soft.tif", tmp_path / "." / "scene.tif"):
        with pytest.raises(TrustmapError, match="is the input"):
            check_output_file(out, [scene])
    check_output_file(tmp_path / "other.tif", [scene])


def test_output_dir_may_not_contain_an_input(tmp_path):
    (tmp_path / "run" / "inputs").mkdir(parents=True)
    scene = tmp_path / "run" / "inputs" / "scene.tif"
    scene.write_bytes(b"x")
    with pytest.raises(TrustmapError, match="contains the input"):
        check_output_dir(tmp_path / "run", [scene])
    check_output_dir(tmp_path / "elsewhere", [scene])
    assert not (tmp_path / "elsewhere").exists(), "a check creates nothing"


def test_output_checks_find_unwritable_places_and_directories(tmp_path):
    with pytest.raises(TrustmapError, match="not writable"):
        check_output_file("/proc/x.gpkg")
    with pytest.raises(TrustmapError, match="is a directory"):
        check_output_file(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(TrustmapError, match="not a directory"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(TrustmapError, match="not a directory"):
        check_output_file(tmp_path / "f" / "x.tif")


def test_a_folder_replaced_whole_must_be_ours(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "audit.json").write_text("{}")
    check_output_dir(tmp_path / "mine", replaces=True, marker="audit.json")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "thesis.docx").write_text("x")
    with pytest.raises(TrustmapError, match="did not write"):
        check_output_dir(tmp_path / "theirs", replaces=True, marker="audit.json")
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", replaces=True, marker="audit.json")


def test_paths_read_from_files_stay_in_their_folder(tmp_path):
    base = tmp_path / "cut"
    (base / "tiles").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    (base / "esc").symlink_to(tmp_path)
    assert resolve_inside(base, "tiles/a.tif", base / "index.gpkg") == base / "tiles" / "a.tif"
    messages = set()
    for bad in ("../secret", "../nothing-here", "/etc/passwd", "/nonexistent", "esc/secret", "tiles/../../secret", "a\x00b", ""):
        with pytest.raises(TrustmapError, match="points outside") as err:
            resolve_inside(base, bad, base / "index.gpkg")
        messages.add(str(err.value).replace(repr(bad), "<p>"))
    assert len(messages) == 1, "the message may not reveal whether the target exists"
    assert resolve_inside(base, "/etc/passwd", "i", allow_outside=True) == type(base)("/etc/passwd")


def test_atomic_path_removes_dead_staging_only(tmp_path):
    dead = tmp_path / f".out.{DEAD_PID}.abcd1234.part.tif"
    live = tmp_path / f".out.{os.getpid()}.abcd1234.part.tif"
    other = tmp_path / f".other.{DEAD_PID}.abcd1234.part.tif"
    for p in (dead, live, other):
        p.write_bytes(b"stale")
    with atomic_path(tmp_path / "out.tif") as tmp:
        assert f".out.{os.getpid()}." in tmp.name
        tmp.write_bytes(b"new")
    assert (tmp_path / "out.tif").read_bytes() == b"new"
    assert not dead.exists() and live.exists() and other.exists()
    assert clean_stale(tmp_path, "other") == [other]


def test_atomic_path_refuses_a_directory(tmp_path):
    (tmp_path / "o.tif").mkdir()
    with pytest.raises(TrustmapError, match="is a directory"), atomic_path(tmp_path / "o.tif"):
        pass


def test_atomic_dir_swaps_in_one_step(tmp_path):
    dst = tmp_path / "audit"
    with atomic_dir(dst) as tmp:
        (tmp / "a").write_text("1")
    inode = dst.stat().st_ino
    with atomic_dir(dst) as tmp:
        (tmp / "a").write_text("2")
    assert (dst / "a").read_text() == "2" and dst.stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit"]
    with pytest.raises(RuntimeError), atomic_dir(dst) as tmp:
        (tmp / "a").write_text("3")
        raise RuntimeError
    assert (dst / "a").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit"]


def test_exchange_swaps_two_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b" / "x").write_text("b")
    if not exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("renameat2(RENAME_EXCHANGE) unsupported here")
    assert (tmp_path / "a" / "x").read_text() == "b" and (tmp_path / "b" / "x").read_text() == "a"


def _bundle(stage, text):
    (stage / "m.tif").write_text(text)
    (stage / "m.qgs").write_text(text)
    (stage / "tiles").mkdir()
    (stage / "tiles" / "t.tif").write_text(text)


def test_commit_bundle_replaces_the_bundle_and_keeps_other_files(tmp_path):
    out = tmp_path / "qgis"
    with bundle_stage(out) as stage:
        _bundle(stage, "old")
        commit_bundle(stage, out, last=["m.qgs"])
    (out / "review.qgs").write_text("the analyst's")
    (out / "notes").mkdir()
    (out / "notes" / "n.txt").write_text("keep")
    with bundle_stage(out) as stage:
        assert stage.parent == tmp_path, "staged beside the folder: one exchange commits it"
        _bundle(stage, "new")
        commit_bundle(stage, out, last=["m.qgs"])
    assert {p.name: p.read_text() for p in out.iterdir() if p.is_file()} == {
        "m.tif": "new", "m.qgs": "new", "review.qgs": "the analyst's"}  # fmt: skip
    assert (out / "tiles" / "t.tif").read_text() == "new" and (out / "notes" / "n.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qgis"], "no staging left"


def test_commit_bundle_into_the_working_directory_goes_file_by_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("k")
    with bundle_stage(tmp_path) as stage:
        _bundle(stage, "new")
        commit_bundle(stage, tmp_path, last=["m.qgs"])
    assert os.getcwd() == str(tmp_path) and (tmp_path / "m.qgs").read_text() == "new"
    assert (tmp_path / "keep.txt").read_text() == "k"


def test_a_failed_bundle_leaves_the_earlier_one(tmp_path):
    out = tmp_path / "qgis"
    with bundle_stage(out) as stage:
        _bundle(stage, "old")
        commit_bundle(stage, out)
    with pytest.raises(TrustmapError), bundle_stage(out) as stage:
        _bundle(stage, "new")
        raise TrustmapError("mask has unknown codes")
    assert (out / "m.tif").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qgis"]


def test_staging_dir_names_carry_the_pid_and_go_away(tmp_path):
    with staging_dir(tmp_path, "x") as d:
        assert d.name.startswith(f".x.{os.getpid()}.") and d.name.endswith(".part")
    assert not d.exists()


def test_deferred_signals_hold_sigterm_until_the_commit_is_done(tmp_path):
    code = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from pathlib import Path
        from tiles.console import sigterm_as_interrupt, Terminated
        from tiles.io import deferred_signals
        log = Path({str(tmp_path / 'log')!r})
        with sigterm_as_interrupt():
            try:
                with deferred_signals():
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.2)
                    log.write_text("commit finished")
                log.write_text(log.read_text() + "; not reached")
            except Terminated:
                sys.exit(143)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, proc.stderr
    assert (tmp_path / "log").read_text() == "commit finished"


def test_sigterm_unwinds_like_ctrl_c(tmp_path):
    code = textwrap.dedent(
        f"""
        import os, signal, time
        from pathlib import Path
        import click
        from tiles.console import user_errors
        from tiles.io import atomic_path

        @click.command()
        @user_errors
        def main():
            with atomic_path(Path({str(tmp_path / 'out.tif')!r})) as tmp:
                tmp.write_text("half")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)

        main()
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143 and "terminated" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_sigterm_does_not_wait_for_busy_worker_threads(tmp_path):
    code = textwrap.dedent(
        """
        import os, signal, time
        from concurrent.futures import ThreadPoolExecutor
        import click
        from tiles.console import user_errors

        @click.command()
        @user_errors
        def main():
            pool = ThreadPoolExecutor(2)
            futures = [pool.submit(time.sleep, 60) for _ in range(4)]
            os.kill(os.getpid(), signal.SIGTERM)
            futures[0].result()

        main()
        """
    )
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143 and "terminated" in proc.stderr, proc.stderr
    assert time.monotonic() - t0 < 50, "a terminated command may not wait for its worker threads"
