"""The folder lock: refused while a real second process holds it, free again after ``kill -9``."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from refine.lock import LOCK_FILE, LockInfo, exclusive
from tiles.errors import TrustmapError

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import sys
from pathlib import Path
from refine.lock import exclusive
with exclusive(Path(sys.argv[1]), sys.argv[2]) as info:
    print(info.pid, info.started, flush=True)
    sys.stdin.read()  # hold until the test closes our stdin (or kills us)
"""


class Holder:
    """A second process that takes the lock and keeps it until released or killed."""

    def __init__(self, folder: Path, command: str = "refine import"):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder), command],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=ROOT, env=env,
        )  # fmt: skip
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        pid, self.started = line.split()
        assert int(pid) == self.proc.pid

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=10) == 0, self.proc.stderr.read()

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if not stream.closed:
                stream.close()


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for h in made:
        h.cleanup()


def test_holder_details_are_written_and_the_lock_is_released(tmp_path: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    with exclusive(tmp_path, "refine simulate") as info:
        assert isinstance(info, LockInfo)
        assert (info.pid, info.command, info.host) == (
            os.getpid(),
            "refine simulate",
            socket.gethostname(),
        )
        started = datetime.strptime(info.started, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert before <= started <= datetime.now(UTC) + timedelta(seconds=1)
        on_disk = json.loads((tmp_path / LOCK_FILE).read_text())
        assert on_disk == {"pid": info.pid, "command": info.command, "host": info.host,
                           "started": info.started}  # fmt: skip
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.pid = 1  # type: ignore[misc]
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: no stale holder to misreport
    with exclusive(tmp_path, "refine status") as again:  # and free for the next command
        assert again.command == "refine status"


def test_a_second_process_is_refused_with_the_holders_pid_command_and_start(
    tmp_path: Path, holders: list[Holder]
) -> None:
    folder = tmp_path / "ws"
    folder.mkdir()
    h = Holder(folder, "refine import")
    holders.append(h)
    with pytest.raises(TrustmapError) as err, exclusive(folder, "refine select"):
        pytest.fail("the lock was taken twice")
    message = str(err.value)
    assert message == (
        f"{folder}: in use by PID {h.proc.pid} (refine import, started {h.started}); "
        "wait for it to finish or stop it"
    )
    assert "\n" not in message and err.value.path == str(folder)
    h.release()
    with exclusive(folder, "refine select") as info:
        assert info.pid == os.getpid()


def test_a_kill_9_holder_leaves_the_folder_free(tmp_path: Path, holders: list[Holder]) -> None:
    h = Holder(tmp_path, "refine train")
    holders.append(h)
    busy = rf"in use by PID {h.proc.pid} \(refine train"
    with pytest.raises(TrustmapError, match=busy), exclusive(tmp_path, "refine select"):
        pass
    h.kill9()
    stale = json.loads((tmp_path / LOCK_FILE).read_text())
    assert stale["pid"] == h.proc.pid  # the killed holder's record is still there ...
    with exclusive(tmp_path, "refine select") as info:  # ... and does not matter
        assert info.pid == os.getpid()
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_the_lock_is_released_when_the_block_raises(tmp_path: Path, holders: list[Holder]) -> None:
    with pytest.raises(KeyboardInterrupt), exclusive(tmp_path, "refine import"):
        raise KeyboardInterrupt
    h = Holder(tmp_path, "refine export")  # another process can take it now
    holders.append(h)
    h.release()


def test_a_missing_folder_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    gone = rf"^{re.escape(str(missing))}: cannot lock: the folder does not exist$"
    with pytest.raises(TrustmapError, match=gone), exclusive(missing, "refine import"):
        pass
    assert not missing.exists()
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(TrustmapError, match="cannot lock: not a folder"), exclusive(afile, "x"):
        pass


def test_reentrant_for_the_holding_thread_refused_for_another(tmp_path: Path) -> None:
    with exclusive(tmp_path, "refine run") as outer:
        with exclusive(tmp_path, "refine train") as inner:
            assert inner == outer  # the outer command stays the holder of record
        errors: list[str] = []

        def other() -> None:
            try:
                with exclusive(tmp_path, "refine status"):
                    errors.append("taken twice")
            except TrustmapError as exc:
                errors.append(str(exc))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(errors) == 1 and f"in use by PID {os.getpid()} (refine run" in errors[0]
        assert json.loads((tmp_path / LOCK_FILE).read_text())["command"] == "refine run"
    assert (tmp_path / LOCK_FILE).read_text() == ""  # the outermost block released it


def test_a_lock_file_deleted_between_open_and_flock_is_not_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder may delete the lock file with its folder just as we open it: we must then lock
    the file that is at the path, not the deleted one (else two commands would both hold it)."""
    real_flock, calls = fcntl.flock, []

    def flock_after_a_delete(fd: int, op: int) -> None:
        calls.append(op)
        if len(calls) == 1:
            (tmp_path / LOCK_FILE).unlink()  # what a holder's discard does
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_delete)
    with exclusive(tmp_path, "refine simulate") as info:
        assert len(calls) == 2  # the deleted file was let go and the new one locked
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == info.pid
