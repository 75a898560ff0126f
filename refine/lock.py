"""One trustmap command at a time per folder: an exclusive ``flock`` on ``folder/.trustmap.lock``.

Why ``flock``: the kernel drops the lock when the holder's file is closed, and that includes a
``kill -9``, a crash or a power cut, so a stale lock can never block anyone and no PID
heuristics are needed for correctness. The small JSON inside the file (PID, command, host,
start time) is only there for the message that tells a second command who holds the folder.

The lock file is never deleted on release (unlinking a lock file that others may have open is
a race); a holder may delete it together with its folder (:meth:`refine.session.RunDir.discard`).
Whoever takes the lock checks that the file it locked is still the one at the path, so a lock
file deleted in between is never "held" twice.

Within one process the lock is re-entrant for the thread that holds it (a command that calls
another on the same folder); another thread or a forked child is refused like another process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from tiles.errors import TrustmapError

LOCK_FILE = ".trustmap.lock"
_ATTEMPTS = 20  # the lock file replaced under us this often in a row: give up


@dataclasses.dataclass(frozen=True)
class LockInfo:
    """Who holds a folder: written into the lock file, read back for the refusal message."""

    pid: int
    command: str
    host: str
    started: str  # UTC, ISO 8601 to the second: 2026-12-04T01:20:03Z

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LockInfo | None:
        """The holder's record, or None if it is missing, partial or not ours."""
        try:
            data = json.loads(text)
            return cls(
                int(data["pid"]), str(data["command"]), str(data["host"]), str(data["started"])
            )
        except (ValueError, TypeError, KeyError):
            return None


@dataclasses.dataclass
class _Held:
    info: LockInfo
    pid: int
    thread: int
    depth: int = 1


_registry = threading.Lock()
_held: dict[tuple[int, int], _Held] = {}  # (st_dev, st_ino) of the folder -> this process's lock


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0
    return True


def _busy(folder: Path, holder: LockInfo | None) -> TrustmapError:
    """The refusal: one line naming the folder and, when the file says it, the holder."""
    if holder is None:
        who = "another trustmap command (it has not written its details yet)"
    else:
        where = "" if holder.host == socket.gethostname() else f" on {holder.host}"
        who = f"PID {holder.pid}{where} ({holder.command}, started {holder.started})"
    return TrustmapError(f"in use by {who}; wait for it to finish or stop it", folder)


def _read_holder(fd: int) -> LockInfo | None:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
    except OSError:
        return None
    info = LockInfo.from_json(text)
    if info is not None and info.host == socket.gethostname() and not _alive(info.pid):
        return None  # a killed earlier holder's record: the new holder is still writing its own
    return info


def _folder_key(folder: Path) -> tuple[int, int]:
    try:
        st = folder.stat()
    except FileNotFoundError:
        raise TrustmapError("cannot lock: the folder does not exist", folder) from None
    except OSError as exc:
        raise TrustmapError(f"cannot lock: {exc.strerror or exc}", folder) from None
    if not folder.is_dir():
        raise TrustmapError("cannot lock: not a folder", folder)
    return st.st_dev, st.st_ino


def _acquire(folder: Path, command: str) -> tuple[int, LockInfo]:
    """Open, lock and fill the lock file; refuse (with the holder's details) if it is held."""
    path = folder / LOCK_FILE
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            raise TrustmapError("cannot lock: the folder does not exist", folder) from None
        except OSError as exc:
            raise TrustmapError(
                f"cannot create the lock file ({exc.strerror or exc})", path
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise _busy(folder, holder) from None
            raise TrustmapError(f"cannot lock the folder ({exc.strerror or exc})", path) from None
        try:  # deleted or replaced between our open and our flock: lock the file that is there now
            same = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        info = LockInfo(os.getpid(), command, socket.gethostname(), _now())
        try:
            data = info.to_json().encode("utf-8")
            old = os.fstat(fd).st_size
            # one write, padded over the old record: a reader sees old or new, never nothing
            os.pwrite(fd, data.ljust(old, b" "), 0)
            os.ftruncate(fd, len(data))
        except OSError as exc:
            os.close(fd)
            raise TrustmapError(
                f"cannot write the lock file ({exc.strerror or exc})", path
            ) from None
        return fd, info
    raise TrustmapError("cannot lock: the lock file keeps being replaced", path)


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)  # a later reader finds no stale holder while the next one starts
    os.close(fd)  # closing drops the flock


@contextlib.contextmanager
def exclusive(folder: Path, command: str) -> Iterator[LockInfo]:
    """Hold ``folder`` for ``command`` (e.g. ``"refine import"``) until the block ends.

    ``folder`` must exist. If another process (or another thread of this one) holds it,
    raise :class:`TrustmapError` naming the folder, the holder's PID, command and start time.
    """
    folder = Path(folder)
    key = _folder_key(folder)
    me = threading.get_ident()
    with _registry:
        held = _held.get(key)
        if held is not None and held.pid == os.getpid() and held.thread == me:
            held.depth += 1
        elif held is not None and held.pid == os.getpid():
            raise _busy(folder, held.info)
        else:
            held = None
    if held is not None:  # re-entered by the holding thread: the outermost block releases
        try:
            yield held.info
        finally:
            with _registry:
                held.depth -= 1
        return
    fd, info = _acquire(folder, command)
    with _registry:
        _held[key] = _Held(info, os.getpid(), me)
    try:
        yield info
    finally:
        with _registry:
            _held.pop(key, None)
        _release(fd)
