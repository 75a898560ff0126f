"""Options shared by the ``tiles``, ``refine`` and ``calibration`` CLIs, spelt as ``rio`` spells them.

Why one module: the same thing must be asked for the same way in every command (``-o`` is the
output, ``--overwrite`` allows replacing it, ``-v``/``-q`` set how much is logged), and the
policy behind an option (what counts as "existing output") must not drift between CLIs.

The API, all click decorators unless noted:

- :func:`output_option`: ``-o/--output PATH``; also accepts the older ``--out`` (hidden);
- :func:`overwrite_option`: ``--overwrite``; pair it with :func:`tiles.io.refuse_existing`;
- :func:`classes_option`, :func:`seed_option`, :func:`config_option`;
- :func:`verbosity_options`: ``-v/--verbose`` and ``-q/--quiet`` (counted), for the group;
  they call :func:`configure_logging` on the loggers the CLI names;
- :func:`version_option`: ``--version``, also printing GDAL, rasterio and torch versions;
- :func:`creation_options`: ``--co KEY=VALUE`` (repeatable) as a dict for raster outputs;
- :func:`renamed_option`: keep an old option name working, hidden, under a new one;
- :class:`DatasetPath` (a click type): a local path as :class:`~pathlib.Path`, a GDAL path
  (``/vsizip/…``, ``/vsicurl/…``) or URL kept as ``str``, so ``https://`` is not mangled.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from tiles.raster import is_gdal_path

F = TypeVar("F", bound=Callable[..., Any])

#: Loggers the verbosity options set: the three packages (progress lines log under tiles).
PACKAGE_LOGGERS = ("tiles", "refine", "calibration")


class DatasetPath(click.ParamType):
    """A dataset to read: a local file as :class:`Path`, or a GDAL path / URL kept as ``str``.

    Existence is not checked here: trustmap's readers say "file not found" with the path, and
    a remote dataset can only be checked by opening it.
    """

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if isinstance(value, Path):
            return value
        text = os.fspath(value)
        return text if is_gdal_path(text) else Path(text)


DATASET = DatasetPath()
_PATH = click.Path(path_type=Path)


def renamed_option(
    old: str, new: str, dest: str, deprecated: bool = True, **attrs: Any
) -> Callable[[F], F]:
    """Accept the old spelling ``old`` (hidden from --help) as the option or argument ``dest``.

    Giving both with different values is a usage error. With ``deprecated`` a one-line
    warning names the new spelling. Apply it *below* the decorator that defines ``dest``.
    """
    alias_dest = "_alias_" + old.lstrip("-").replace("-", "_")

    def decorator(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = kwargs.pop(alias_dest, None)
            if value is not None:
                current = kwargs.get(dest)
                if current is not None and current != value:
                    raise click.UsageError(f"{old} and {new} name different values; give only {new}")
                if deprecated:
                    logging.getLogger("tiles.cli").warning("%s is deprecated; use %s", old, new)
                kwargs[dest] = value
            return f(*args, **kwargs)

        return click.option(old, alias_dest, hidden=True, default=None, **attrs)(wrapper)  # type: ignore[return-value]

    return decorator


def require(kwargs: dict[str, Any], dest: str, spelling: str, kind: str = "option") -> None:
    """Raise click's "Missing option" usage error if ``dest`` got no value (exit code 2)."""
    if kwargs.get(dest) is None:
        raise click.UsageError(f"Missing {kind} {spelling}.")


def output_option(
    help: str = "Output file.", required: bool = True, dest: str = "output"
) -> Callable[[F], F]:
    """``-o/--output PATH`` (and the older ``--out``); a usage error when required and missing."""

    def decorator(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if required:
                require(kwargs, dest, "'-o' / '--output'")
            return f(*args, **kwargs)

        inner = renamed_option("--out", "-o/--output", dest, deprecated=False, type=_PATH)(wrapper)
        opt = click.option(
            "-o", "--output", dest, type=_PATH, default=None, help=help + (" [required]" if required else "")
        )
        return cast(F, opt(inner))

    return decorator


def overwrite_option(f: F) -> F:
    """``--overwrite``: without it a command refuses to replace output that already exists."""
    return click.option(
        "--overwrite", is_flag=True, help="Replace existing output (default: refuse to)."
    )(f)


def classes_option(required: bool = True, help: str = "Class schema YAML.") -> Callable[[F], F]:
    """``--classes PATH``: the class schema every label is checked against."""
    return click.option("--classes", "classes_path", required=required, type=_PATH, help=help)


def seed_option(default: int = 0, help: str = "Random seed: same seed, same output.") -> Callable[[F], F]:
    """``--seed INT``."""
    return click.option("--seed", default=default, show_default=True, type=int, help=help)


def config_option(required: bool = False, help: str = "Run configuration (YAML).") -> Callable[[F], F]:
    """``--config PATH``: a YAML file, validated by the command (errors name file and key)."""
    return click.option("--config", "config_path", required=required, type=_PATH, help=help)


def configure_logging(verbosity: int, loggers: Sequence[str] = PACKAGE_LOGGERS) -> None:
    """Log to stderr at INFO (progress lines), DEBUG with ``-v``, WARNING with ``-q``, ERROR with ``-qq``.

    One handler on the package loggers (not the root), so libraries we call keep their own
    levels; records still propagate (pytest's caplog sees them); calling it again only
    changes the level.
    """
    level = max(logging.DEBUG, min(logging.CRITICAL, logging.INFO - 10 * verbosity))
    for name in loggers:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
            logger.addHandler(handler)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (click's CliRunner swaps it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def verbosity_options(f: F | None = None, *, loggers: Sequence[str] = PACKAGE_LOGGERS) -> Any:
    """``-v/--verbose`` and ``-q/--quiet``, counted, setting the ``loggers`` the CLI owns.

    Use bare (``@verbosity_options``: all three packages) or with the loggers
    (``@verbosity_options(loggers=("tiles",))``, as ``tiles`` does, so that running it
    in-process leaves refine's and calibration's logging alone). ``-q`` also hides bars.
    """

    def set_verbosity(ctx: click.Context, param: click.Parameter, value: int) -> int:
        ctx.meta[f"trustmap.{param.name}"] = value
        verbose = ctx.meta.get("trustmap.verbose", 0)
        quiet = ctx.meta.get("trustmap.quiet", 0)
        configure_logging(int(verbose) - int(quiet), loggers)
        return value

    def decorator(f: F) -> F:
        f = click.option(
            "-q", "--quiet", count=True, expose_value=False, callback=set_verbosity,
            help="Log less: -q warnings only (no progress), -qq errors only.",
        )(f)  # fmt: skip
        return click.option(
            "-v", "--verbose", count=True, expose_value=False, callback=set_verbosity,
            help="Log more (debug messages).",
        )(f)  # fmt: skip

    return decorator(f) if f is not None else decorator


def versions(package: str = "trustmap") -> str:
    """``package``'s version and those of GDAL, rasterio and torch, one per line.

    torch is looked up in the installed distributions, not imported (seconds saved), and may
    be absent.
    """
    import rasterio

    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return "\n".join(
        [
            f"{package} {dist(package)}",
            f"GDAL {rasterio.__gdal_version__}",
            f"rasterio {rasterio.__version__}",
            f"torch {dist('torch')}",
        ]
    )


def version_option(package: str = "trustmap") -> Callable[[F], F]:
    """``--version``: print :func:`versions` and exit."""

    def show(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo(versions(package))
            ctx.exit()

    return click.option(
        "--version", is_flag=True, expose_value=False, is_eager=True, callback=show,
        help="Show the versions of trustmap, GDAL, rasterio and torch, and exit.",
    )  # fmt: skip


def _parse_creation_options(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", ctx=ctx, param=param)
        out[key.strip().upper()] = value.strip()
    return out


def creation_options(f: F) -> F:
    """``--co KEY=VALUE`` (repeatable): GDAL creation options of the raster output, as a dict.

    Keys are upper-cased (GDAL's are case-insensitive); the command checks them against the
    output driver before any work (:func:`tiles.profiles.check_creation_options`).
    """
    return click.option(
        "--co", "creation_options", multiple=True, metavar="KEY=VALUE",
        callback=_parse_creation_options,
        help="GDAL creation option of the raster output, e.g. --co COMPRESS=ZSTD (repeatable).",
    )(f)  # fmt: skip
