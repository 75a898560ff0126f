"""Safe output: check it before the work, stage it, commit it in one step.

The rules every trustmap command follows (``docs/architecture.md``, "Output rules"):

* **Inputs are never outputs.** :func:`check_output_file` / :func:`check_output_dir` run
  before any work and refuse an output path that is, or contains, one of the command's
  inputs (resolved, and compared with :func:`os.path.samefile`, so links count), an output
  file that is a directory, a place that cannot be written, and a folder the command would
  replace but did not create.
* **No partial output.** Files are written to a hidden temporary sibling and renamed
  (:func:`atomic_path`); folders are staged and swapped into place (:func:`atomic_dir`);
  multi-file bundles are staged and committed as a whole (:func:`commit_bundle`), by
  exchanging two folders with ``renameat2(RENAME_EXCHANGE)`` where the OS has it.
* **Staging is owned.** Every hidden staging name carries the creating process id
  (``.<name>.<pid>.<random>.part…``). A later command writing the same output removes
  staging left by processes that no longer exist (a SIGKILL, a power cut); it never touches
  staging of a live process.
* **Signals.** SIGINT and SIGTERM unwind like an exception (:mod:`tiles.console`), so the
  staging is removed; during the final renames both are deferred (:func:`deferred_signals`)
  so a commit is never cut in half by them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tiles.errors import TrustmapError

_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.(?:part|old)")


# --- checks that run before the work ---------------------------------------------------------------
def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(path)).resolve()


def _same_or_inside(inp: Path, out: Path) -> bool:
    """Is input ``inp`` the output ``out``, or inside it (``out`` a folder)?"""
    with contextlib.suppress(OSError):
        if inp.exists() and out.exists() and os.path.samefile(inp, out):
            return True
    ri, ro = _resolved(inp), _resolved(out)
    return ri == ro or ro in ri.parents


def refuse_inputs(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], option: str = "--out") -> None:
    """Raise if ``out`` is, or contains, one of ``inputs`` (None entries are skipped)."""
    out = Path(out)
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp)
        if _same_or_inside(inp, out):
            what = "contains" if out.is_dir() and _resolved(inp) != _resolved(out) else "is"
            raise TrustmapError(
                f"{option} {what} the input {inp}; refusing to overwrite an input (choose another {option})",
                out,
            )


def refuse_existing(
    paths: Iterable[str | os.PathLike[str]], overwrite: bool, option: str = "--output"
) -> None:
    """The overwrite policy of every command: existing output is replaced only with ``--overwrite``.

    ``paths`` are the files (or marker files of a bundle) the command would replace; the first
    that exists is named in the error. Links count as existing, even dangling ones.
    """
    if overwrite:
        return
    for p in paths:
        path = Path(p)
        if path.exists() or path.is_symlink():
            raise TrustmapError(
                f"{option} exists; pass --overwrite to replace it (or choose another {option})", path
            )


def _nearest_existing(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path, shown: Path) -> None:
    """Create and remove a file in ``folder``: the only honest writability test (root, /proc)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".trustmap-probe.", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise TrustmapError(f"not writable ({exc.strerror or exc})", shown) from None


def check_output_file(
    path: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    option: str = "--out",
) -> Path:
    """Check, before any work, that a file can be written at ``path`` without harm."""
    out = Path(path)
    refuse_inputs(out, inputs, option)
    if out.is_dir():
        raise TrustmapError(f"{option} is a directory; give a file name", out)
    if out.name in ("", ".", ".."):
        raise TrustmapError(f"{option} must name a file", out)
    base = _nearest_existing(out.parent)
    if not base.is_dir():
        raise TrustmapError(f"cannot write here ({base} is not a directory)", out)
    _probe(base, out)
    return out


def check_output_dir(
    path: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    option: str = "--out",
    replaces: bool = False,
    marker: str | None = None,
) -> Path:
    """Check, before any work, that an output folder can be written without harm.

    ``replaces``: the command swaps the whole folder; then an existing non-empty folder must
    hold ``marker`` (a file only this command writes), else it is not ours to replace.
    """
    out = Path(path)
    refuse_inputs(out, inputs, option)
    if out.exists() and not out.is_dir():
        raise TrustmapError(f"{option} exists and is not a directory", out)
    if replaces and out.is_dir():
        entries = [p for p in out.iterdir() if not _STAGING.match(p.name)]
        if entries and (marker is None or not (out / marker).is_file()):
            raise TrustmapError(
                f"{option} is a folder that this command did not write (no {marker}); it would be "
                "replaced as a whole, so choose a new or empty folder",
                out,
            )
    base = _nearest_existing(out)
    if not base.is_dir():
        raise TrustmapError(f"cannot write here ({base} is not a directory)", out)
    _probe(base, out)
    return out


def resolve_inside(
    base: str | os.PathLike, rel: str, source: str | os.PathLike, what: str = "path", allow_outside: bool = False
) -> Path:
    """``rel`` (read from the file ``source``) resolved against ``base``; refuse escapes.

    Absolute paths and ``..`` (or links) leading out of ``base`` are refused unless
    ``allow_outside``. The message is the same whether or not the target exists.
    """
    base = Path(base)
    text = str(rel)
    p = Path(text)
    if allow_outside:
        return p if p.is_absolute() else base / p
    target = base / p

    def inside(root: Path, x: Path) -> bool:
        return x == root or root in x.parents

    if (
        not text
        or "\x00" in text
        or p.is_absolute()
        or not inside(Path(os.path.abspath(base)), Path(os.path.normpath(os.path.join(os.path.abspath(base), text))))
        or not inside(_resolved(base), _resolved(target))
    ):
        raise TrustmapError(
            f"{what} {text!r} points outside the file's folder; refusing to follow it "
            "(pass --allow-outside-paths if you trust this file)",
            source,
        )
    return target


# --- staging ------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def is_stale_staging(path: str | os.PathLike[str]) -> bool:
    """Is ``path`` trustmap staging (``.<name>.<pid>.<random>.part`` / ``.old``) whose
    creating process no longer exists? Commands clean such leftovers under their lock."""
    m = _STAGING.match(Path(path).name)
    return m is not None and not _pid_alive(int(m["pid"]))


def clean_stale(parent: str | os.PathLike, name: str) -> list[Path]:
    """Remove staging for output ``name`` in ``parent`` left by processes that are gone."""
    removed: list[Path] = []
    parent = Path(parent)
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _STAGING.match(entry.name)
        if m and m["name"] == name and not _pid_alive(int(m["pid"])):
            remove_path(entry)
            removed.append(entry)
    return removed


def _stage_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that we can write into it."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrustmapError(f"cannot create output directory ({exc.strerror})", out) from None
    if not out.is_dir():
        raise TrustmapError("output path exists and is not a directory", out)
    if not os.access(out, os.W_OK | os.X_OK):
        raise TrustmapError("output directory is not writable", out)
    return out


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``dst``; rename it onto ``dst`` on success.

    The temporary file keeps ``dst``'s suffix (or ``suffix``) so that drivers which pick
    a format from the extension still work. On any exception the temporary is removed and
    ``dst`` is left untouched.
    """
    dst = Path(dst)
    if dst.is_dir():
        raise TrustmapError("output path is a directory; give a file name", dst)
    ensure_writable_dir(dst.parent)
    clean_stale(dst.parent, dst.stem)
    sfx = suffix if suffix is not None else "".join(dst.suffixes) or ""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_stage_prefix(dst.stem), suffix=f".part{sfx}", dir=dst.parent)
    except OSError as exc:
        raise TrustmapError(f"cannot write here ({exc.strerror or exc})", dst) from None
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # drivers want to create the file themselves
    try:
        yield tmp
        with deferred_signals():
            os.replace(tmp, dst)
    except BaseException:
        remove_path(tmp)
        raise
    finally:
        for side in tmp.parent.glob(glob_escape(tmp.name) + ".*"):  # e.g. GDAL .aux.xml next to a temp
            remove_path(side)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike, name: str) -> Iterator[Path]:
    """A hidden scratch folder ``.<name>.<pid>.<random>.part`` in ``parent``, removed on exit."""
    parent = ensure_writable_dir(parent)
    clean_stale(parent, name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_stage_prefix(name), suffix=".part", dir=parent))
    except OSError as exc:
        raise TrustmapError(f"cannot write here ({exc.strerror or exc})", parent / name) from None
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700; the result should look like a normal mkdir
    try:
        yield tmp
    finally:
        remove_path(tmp)


@contextlib.contextmanager
def bundle_stage(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Staging for a bundle that :func:`commit_bundle` will move into ``out_dir``.

    A sibling of ``out_dir`` when its parent is writable (then the commit is one folder
    exchange), otherwise a hidden folder inside ``out_dir``.
    """
    out_dir = Path(out_dir)
    parent = ensure_writable_dir(Path(os.path.abspath(out_dir)).parent)
    try:
        _probe(parent, out_dir)
        ctx = staging_dir(parent, out_dir.name)
    except TrustmapError:
        ctx = staging_dir(ensure_writable_dir(out_dir), out_dir.name)
    with ctx as stage:
        yield stage


@contextlib.contextmanager
def atomic_dir(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``dst``; swap it into place on success."""
    dst = Path(dst)
    ensure_writable_dir(dst.parent)
    clean_stale(dst.parent, dst.name)
    with contextlib.suppress(FileNotFoundError):  # left by an older trustmap's two-step swap
        remove_path(dst.with_name(f".{dst.name}.old"))
    tmp = Path(tempfile.mkdtemp(prefix=_stage_prefix(dst.name), suffix=".part", dir=dst.parent))
    tmp.chmod(0o777 & ~umask())
    try:
        yield tmp
        with deferred_signals():
            swap_into_place(tmp, dst)
    except BaseException:
        remove_path(tmp)
        raise


def swap_into_place(new: Path, dst: Path) -> None:
    """Put folder ``new`` at ``dst`` in one step (the old ``dst`` is removed afterwards)."""
    if not dst.exists() and not dst.is_symlink():
        os.replace(new, dst)
        return
    if dst.is_dir() and not dst.is_symlink() and exchange(new, dst):
        remove_path(new)  # now holds the old content
        return
    old = Path(tempfile.mkdtemp(prefix=_stage_prefix(dst.name), suffix=".old", dir=dst.parent))
    os.rmdir(old)
    os.replace(dst, old)
    os.replace(new, dst)
    remove_path(old)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.EBUSY, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def commit_bundle(stage: Path, out_dir: Path, last: Iterable[str] = ()) -> None:
    """Move every entry of ``stage`` into ``out_dir`` as one step.

    ``out_dir``'s other entries are kept (hard-linked into the new folder). The new folder is
    exchanged with the old one atomically, so a reader (or a SIGKILL) sees either the whole
    old bundle or the whole new one. Where that is impossible (``out_dir`` is the working
    directory, a link or a mount point; no hard links) the entries are renamed one by one
    with signals deferred, ``last`` ones last (e.g. a project file that points at the rest).
    """
    out_dir = Path(out_dir)
    names = {p.name for p in stage.iterdir()}
    order = sorted(names, key=lambda n: (n in set(last), n))
    cwd = _resolved(Path.cwd())
    whole = (
        _resolved(stage.parent) == _resolved(Path(os.path.abspath(out_dir)).parent)
        and not out_dir.is_symlink()
        and not (out_dir.exists() and (cwd == _resolved(out_dir) or _resolved(out_dir) in cwd.parents))
    )
    if whole and out_dir.is_dir():
        try:
            for entry in out_dir.iterdir():
                if entry.name not in names and not _STAGING.match(entry.name):
                    _link_tree(entry, stage / entry.name)
        except OSError:
            whole = False
    with deferred_signals():
        if whole and not out_dir.exists():
            os.replace(stage, out_dir)
            stage.mkdir()  # the caller's staging context removes it
            return
        if whole and exchange(stage, out_dir):
            return  # stage now holds the old folder; the caller's context removes it
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in order:
            src, dst = stage / name, out_dir / name
            if src.is_dir() and dst.is_dir() and not dst.is_symlink():
                swap_into_place(src, dst)
            else:
                if dst.is_dir() and not dst.is_symlink():
                    remove_path(dst)
                os.replace(src, dst)


def _link_tree(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=os.link)
    else:
        os.link(src, dst)


# --- signals -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (a commit is a few renames).

    Done with Python-level handlers, not the signal mask: numpy's and GDAL's threads do not
    share the main thread's mask, and a process-directed signal may land on any of them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: object) -> None:
        caught.append(signum)

    previous: dict[int, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, hold)
    except (ValueError, OSError):  # pragma: no cover - not settable (embedded interpreter)
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(caught):
            handler = previous.get(signum)
            if callable(handler):
                handler(signum, None)  # e.g. raises KeyboardInterrupt / Terminated now
            elif handler in (signal.SIG_DFL, None):
                os.kill(os.getpid(), signum)


def write_text_atomic(dst: str | os.PathLike, text: str) -> Path:
    """Write a small text file atomically."""
    with atomic_path(dst) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dst)


def umask() -> int:
    """The process umask (read without changing it), for permissions of files we create."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_path(path: Path) -> None:
    """Remove a file, link or directory tree; missing is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays to Python, NaN and inf to None (strict JSON
    has no NaN; null reads as "not defined"), mapping keys to strings, paths to str."""
    import math
    from collections.abc import Mapping

    import numpy as np

    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj
