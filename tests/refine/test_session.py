"""The run folder of ``refine simulate`` under crashes and concurrency: a second command is
refused while a run holds the folder (and deletes nothing), a round committed but never
published is published on resume, and the staging of killed processes is cleaned up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from refine.cheap.crowd import CrowdConfig, simulate_crowd
from refine.cli import main
from refine.config import RefineConfig
from refine.inputs import SimulationInputs, write_labels
from refine.session import RunDir
from refine.simulation import run_simulation
from tiles.classes import load_schema
from tiles.errors import TrustmapError
from tiles.samples import make_sample

ROOT = Path(__file__).resolve().parents[2]
CONFIG = RefineConfig().with_overrides(
    strategy={"score": "random"},
    regions={"kind": "slic", "size": 300},
    select={"budget": 0.15, "rounds": 2},
    review={"relabel": "pixel"},
    autocorrect={"enabled": False},
)
# A second process that opens a run folder as `refine simulate --resume` does, then waits.
HOLDER = """
import json, sys
from pathlib import Path
from refine.session import RunDir
folder = Path(sys.argv[1])
identity = json.loads((folder / "run.json").read_text())["identity"]
run = RunDir.open(folder, identity, resume=True)
print(run.lock.pid, run.lock.started, flush=True)
sys.stdin.read()
"""
# A process killed while it stages outputs in every place trustmap stages them.
STAGER = """
import sys
from contextlib import ExitStack
from pathlib import Path
from refine.session import RunDir
from tiles.io import atomic_dir, atomic_path, bundle_stage
run = RunDir(Path(sys.argv[1]))
with ExitStack() as stack:
    (stack.enter_context(atomic_path(run.work / "probs.tif"))).write_bytes(b"half a raster")
    (stack.enter_context(bundle_stage(run.qgis)) / "refined.tif").write_bytes(b"half")
    (stack.enter_context(atomic_dir(run.round_dir(3))) / "labels.tif").write_bytes(b"half")
    (stack.enter_context(atomic_path(run.root / "changes.csv"))).write_text("round")
    print("staged", flush=True)
    sys.stdin.read()
"""


def _spawn(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    made: list[subprocess.Popen] = []
    yield made
    for p in made:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def _ready(p: subprocess.Popen) -> list[str]:
    line = p.stdout.readline()
    assert line, p.stderr.read()
    return line.split()


def _release(p: subprocess.Popen) -> None:
    p.stdin.close()
    assert p.wait(timeout=10) == 0, p.stderr.read()


@pytest.fixture(scope="module")
def data(tmp_path_factory, landcover6_path) -> SimulationInputs:
    d = tmp_path_factory.mktemp("session")
    paths = make_sample(d / "s", size=256, seed=2)
    schema = load_schema(landcover6_path)
    with rasterio.open(paths.truth) as ds:
        truth, profile = ds.read(1), ds.profile
    stack = simulate_crowd(truth, schema, CrowdConfig(n_annotators=2, noise=0.3, seed=1))
    labels = [
        write_labels(d / f"cheap{i}.tif", lab, profile, schema) for i, lab in enumerate(stack)
    ]
    return SimulationInputs(paths.scene, tuple(labels), paths.truth, classes=landcover6_path)


def _run(out: Path, data: SimulationInputs, **kw):
    return run_simulation(CONFIG, out, data, evaluate_model=False, export=False, report=False, **kw)


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (but the lock), with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".trustmap.lock"
    }


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def full(data, tmp_path_factory) -> Path:
    """An uninterrupted run: what every interrupted one must end up as."""
    out = tmp_path_factory.mktemp("full") / "run"
    res = _run(out, data)
    assert len(res.rounds) == 2
    return out


def test_a_run_in_progress_refuses_a_second_resume_and_a_restart(data, tmp_path, procs) -> None:
    out = tmp_path / "run"
    _run(out, data, max_rounds=1)
    holder = _spawn(HOLDER, str(out))
    procs.append(holder)
    pid, started = _ready(holder)
    assert int(pid) == holder.pid
    before = _tree(out)
    busy = (
        f"{out}: in use by PID {pid} (refine simulate, started {started}); "
        "wait for it to finish or stop it"
    )
    for flags in ({"resume": True}, {"restart": True}, {}):
        with pytest.raises(TrustmapError) as err:
            _run(out, data, **flags)
        assert str(err.value) == busy
    assert _tree(out) == before  # nothing deleted, nothing written
    _release(holder)
    done = _run(out, data, resume=True)  # free again once the holder is done
    assert len(done.rounds) == 2 and (out / "labels" / "labels_r2.tif").exists()


def test_the_cli_refused_while_in_use_deletes_nothing(tmp_path, procs) -> None:
    """The CLI undoes a new run that fails; one refused because the folder is in use is not its own."""
    out = tmp_path / "run"
    run = RunDir.open(out, {"config": "someone else's"})
    with run.commit("setup") as tmp:
        (tmp / "labels.tif").write_bytes(b"labels r0")
    run.close()
    holder = _spawn(HOLDER, str(out))
    procs.append(holder)
    pid, started = _ready(holder)
    before = _tree(out)
    for flag in ("--restart", "--resume"):
        res = CliRunner().invoke(main, ["simulate", "--out", str(out), flag])
        assert res.exit_code == 1, res.output
        assert res.output == (
            f"error: {out}: in use by PID {pid} (refine simulate, started {started}); "
            "wait for it to finish or stop it\n"
        )
        assert _tree(out) == before
    _release(holder)


def test_a_round_committed_but_not_published_is_published_on_resume(
    data, full, tmp_path, monkeypatch
) -> None:
    """Killed right after round 2 (the last) was renamed into state/: no labels_r2.tif yet, and
    changes.csv still of round 1. The resume has no round left to run, and must still publish."""
    out = tmp_path / "run"
    publish = RunDir.publish_labels

    def killed_after_the_commit_of_round_2(self: RunDir, r: int, source: Path) -> Path:
        if r == 2:
            raise KeyboardInterrupt  # where a kill -9 would land
        return publish(self, r, source)

    with monkeypatch.context() as mp:
        mp.setattr(RunDir, "publish_labels", killed_after_the_commit_of_round_2)
        with pytest.raises(KeyboardInterrupt):
            _run(out, data)
    assert (out / "state" / "round_002" / "record.json").exists()
    assert not (out / "labels" / "labels_r2.tif").exists()
    (out / "labels" / "labels_r1.tif").unlink()  # and an earlier one lost too
    done = _run(out, data, resume=True)
    for r in (0, 1, 2):
        published = out / "labels" / f"labels_r{r}.tif"
        committed = out / "state" / ("setup" if r == 0 else f"round_{r:03d}") / "labels.tif"
        assert os.path.samefile(published, committed)
        np.testing.assert_array_equal(_read(published), _read(full / "labels" / published.name))
    assert done.refined == out / "labels" / "labels_r2.tif"
    assert (out / "changes.csv").read_text() == (full / "changes.csv").read_text()
    assert "\n2," in (out / "changes.csv").read_text()
    links = {p.name: p.stat().st_ino for p in (out / "labels").iterdir()}
    RunDir.open(out, json.loads((out / "run.json").read_text())["identity"], resume=True).close()
    again = {p.name: p.stat().st_ino for p in (out / "labels").iterdir()}
    assert again == links  # republishing is idempotent: same files, no staging left behind


def test_staging_of_a_killed_process_is_removed_and_a_live_ones_kept(tmp_path, procs) -> None:
    out = tmp_path / "run"
    identity = {"config": "x"}
    RunDir.open(out, identity).close()
    for sub in ("work", "qgis", "state", "labels"):
        (out / sub).mkdir()
    stager = _spawn(STAGER, str(out))
    procs.append(stager)
    assert _ready(stager) == ["staged"]
    os.kill(stager.pid, signal.SIGKILL)  # mid-way: every staging name carries its PID
    assert stager.wait(timeout=10) == -signal.SIGKILL
    dead = {p for p in out.rglob(f".*.{stager.pid}.*")}
    assert {p.parent.name for p in dead} >= {"work", "state", out.name}
    assert any(p.name.startswith(".probs.") and p.name.endswith(".part.tif") for p in dead)
    live = subprocess.Popen(["sleep", "30"])
    procs.append(live)
    kept = [
        out / "work" / f".probs.{live.pid}.abcd.part.tif",  # a live process's staging
        out / "work" / ".notes.part",  # PID-less in work/: not provably ours
        out / "mine.txt",  # the user's own files
        tmp_path / f".run.{stager.pid}.zz.part",  # outside the run folder
    ]
    for p in kept:
        p.write_text("keep")
    legacy = out / "labels" / ".labels_r1.tif.part"  # an older trustmap's publication staging
    legacy.write_text("old")
    old_export = out / "qgis" / ".refined.export.k2j4h5g6"  # and its QGIS export staging
    (old_export / "sub").mkdir(parents=True)
    run = RunDir.open(out, identity, resume=True)
    run.close()
    assert not [p for p in dead if p.exists()] and not legacy.exists() and not old_export.exists()
    assert all(p.exists() for p in kept)
    assert not list(out.rglob(f"*{stager.pid}*"))


def test_refusals_leave_the_folder_as_it_was(tmp_path) -> None:
    """A folder that is not ours gets no lock file; one holding only dead staging is empty."""
    users = tmp_path / "documents"
    users.mkdir()
    (users / "thesis.docx").write_text("precious")
    with pytest.raises(TrustmapError, match="not empty"):
        RunDir.open(users, {"config": "x"})
    with pytest.raises(TrustmapError, match="refusing to --restart"):
        RunDir.open(users, {"config": "x"}, restart=True)
    assert sorted(p.name for p in users.iterdir()) == ["thesis.docx"]

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / f".run.{gone.stdout.strip()}.q1w2.part.json").write_text("{")  # a killed first write
    with RunDir.open(empty, {"config": "x"}) as run:
        assert run.lock is not None and run.lock.pid == os.getpid()
        assert sorted(p.name for p in empty.iterdir()) == [".trustmap.lock", "run.json"]
    assert run.lock is None


def test_discard_undoes_only_a_run_this_process_opened(tmp_path) -> None:
    out = tmp_path / "new"
    with RunDir.open(out, {"config": "x"}) as run:
        run.discard(created=True)  # inside the run: the lock is re-entered, and all goes
    assert not out.exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text("{}")
    RunDir(other).discard(created=False)  # never opened here: not ours to delete
    assert (other / "run.json").exists()
