"""What every trustmap command shares: one-line errors, exit codes and signals (progress: :mod:`tiles.progress`).

Exit codes: 0 done; 1 a problem with an input, an output or a setting (one line on stderr,
``path: problem``), also an internal error (one line that says it is a bug); 2 a usage error
(click's own); 130 interrupted (SIGINT); 143 terminated (SIGTERM). In every failing case the
staging is removed and earlier outputs are as they were.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import click

from tiles.errors import TrustmapError
from tiles.progress import (
    progress as progress,  # re-exported: refine and calibration import it here
)

BUG_HINT = "this is a bug in trustmap, please report it; set TRUSTMAP_DEBUG=1 to see the traceback"


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so the same clean-up runs as for Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM unwinds the stack like Ctrl-C (staging is removed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not settable here (embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def describe_error(exc: BaseException) -> str | None:
    """The one-line ``path: problem`` form of an error caused by the user's files or system.

    None when ``exc`` is not such an error (then it is a bug).
    """
    if isinstance(exc, TrustmapError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory (the input is larger than this machine can hold)"
    if isinstance(exc, OSError):
        reason = exc.strerror or (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        where = exc.filename if exc.filename is not None else None
        if where is not None and exc.filename2 is not None:
            where = f"{exc.filename} -> {exc.filename2}"
        return f"{where}: {reason}" if where is not None else reason
    try:  # GDAL / OGR errors that are not OSError subclasses
        from rasterio.errors import RasterioError

        if isinstance(exc, RasterioError):
            return _first_line(exc)
    except ImportError:  # pragma: no cover
        pass
    try:
        from pyogrio.errors import DataLayerError, DataSourceError, FieldError, GeometryError

        if isinstance(exc, DataLayerError | DataSourceError | FieldError | GeometryError):
            return _first_line(exc)
    except ImportError:  # pragma: no cover
        pass
    return None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else exc.__class__.__name__


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run a click command so that nothing ends in a traceback.

    * :class:`TrustmapError`, OS and I/O errors (and GDAL's): one line ``error: path:
      problem``, exit 1;
    * any other exception: one line that names it and says it is a bug, exit 1;
    * SIGINT / SIGTERM: staging removed, exit 130 / 143.

    Set ``TRUSTMAP_DEBUG=1`` to get the traceback instead.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(os.environ.get("TRUSTMAP_DEBUG"))
        try:
            with sigterm_as_interrupt():
                return func(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Terminated:
            click.echo("terminated: no partial output was kept", err=True)
            _exit_now(143)
        except KeyboardInterrupt:
            click.echo("interrupted: no partial output was kept", err=True)
            sys.exit(130)
        except Exception as exc:
            if debug:
                raise
            line = describe_error(exc)
            if line is None:
                line = f"internal error ({exc.__class__.__name__}: {_first_line(exc)}); {BUG_HINT}"
            click.echo(f"error: {line}", err=True)
            sys.exit(1)

    return wrapper


def _exit_now(code: int) -> None:
    """Exit after SIGTERM without waiting for worker threads to drain their queues.

    The staging is already gone (the stack has unwound); joining thread pools at interpreter
    exit could keep a terminated process computing for minutes.
    """
    if threading.active_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)

