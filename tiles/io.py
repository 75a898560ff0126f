"""Atomic output: write to a temporary sibling, then rename.

A crash, a Ctrl-C or a failed check never leaves a half-written file under the final
name, and an earlier good output is only replaced once the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tiles.errors import TrustmapError


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
    ensure_writable_dir(dst.parent)
    sfx = suffix if suffix is not None else "".join(dst.suffixes) or ""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=f".part{sfx}", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # drivers want to create the file themselves
    try:
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        remove_path(tmp)
        raise
    finally:
        for side in tmp.parent.glob(tmp.name + ".*"):  # e.g. GDAL .aux.xml next to a temp
            remove_path(side)


@contextlib.contextmanager
def atomic_dir(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``dst``; swap it into place on success."""
    dst = Path(dst)
    ensure_writable_dir(dst.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700; the result should look like a normal mkdir
    try:
        yield tmp
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old")
            remove_path(old)
            os.replace(dst, old)
            os.replace(tmp, dst)
            remove_path(old)
        else:
            os.replace(tmp, dst)
    except BaseException:
        remove_path(tmp)
        raise


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
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
