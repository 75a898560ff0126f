"""What every trustmap command shares: one-line errors, exit codes and progress bars."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click
from tqdm.auto import tqdm

from tiles.errors import TrustmapError

T = TypeVar("T")


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`TrustmapError` (and a few library errors) into one line and exit 1.

    Tracebacks are for bugs; a bad input file is not a bug. Set ``TRUSTMAP_DEBUG=1`` to
    see the traceback anyway.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import os

        try:
            return func(*args, **kwargs)
        except TrustmapError as exc:
            if os.environ.get("TRUSTMAP_DEBUG"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: no partial output was kept", err=True)
            sys.exit(130)

    return wrapper


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """A tqdm bar on stderr, shown only on a terminal (quiet in CI and logs)."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=None, leave=False, dynamic_ncols=True)
