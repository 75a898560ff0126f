"""Progress for long steps: a tqdm bar on a terminal, periodic log lines everywhere else.

Why both: a bar is what a person at a terminal wants, but in a CI log or behind ``| tee`` a
bar is either invisible (tqdm disables itself) or a wall of carriage returns, and a six-minute
step looks hung. When stderr is not a terminal, :func:`progress` therefore writes one INFO
line to the ``tiles.progress`` logger every :data:`LOG_EVERY_S` seconds (and a closing line
if it wrote any), so short steps stay silent and long ones report steadily.

The lines reach the user through whatever logging the application set up; the three CLIs set
it up with ``-v``/``-q`` (:func:`tiles.cli_options.configure_logging`). ``-q`` (the trustmap
loggers set above INFO) silences the bar too. With logging left unconfigured, as in a library
call, the bar still shows on a terminal and the log lines go nowhere, as Python's logging does
for any library.

Usage, wrapping an iterable or counting by hand::

    for window in progress(windows, desc="align", unit="window"):
        ...
    with Progress(total=4, desc="export-qgis", unit="step") as bar:
        ...; bar.update()
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Seconds between two log lines when stderr is not a terminal (``TRUSTMAP_PROGRESS_SECONDS``).
LOG_EVERY_S = 10.0


def _log_every() -> float:
    try:
        return max(0.0, float(os.environ.get("TRUSTMAP_PROGRESS_SECONDS", LOG_EVERY_S)))
    except ValueError:
        return LOG_EVERY_S


def quiet() -> bool:
    """True when the trustmap loggers were explicitly set above INFO (``-q``).

    Only an explicitly set level counts: unconfigured logging (root at WARNING by default)
    must not hide a library caller's bars.
    """
    logger: logging.Logger | None = log
    while logger is not None and logger is not logging.root:
        if logger.level:
            return logger.level > logging.INFO
        logger = logger.parent
    return False


def _on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _fmt_s(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Counts the done units of one step and shows them as a bar or as log lines."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it") -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self._start = time.monotonic()
        self._last_log = self._start
        self._logged = False
        self._every = _log_every()
        self._bar: tqdm | None = None
        if not quiet() and _on_terminal():
            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """``n`` more units are done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_log >= self._every and log.isEnabledFor(logging.INFO) and not quiet():
            self._last_log = now
            self._logged = True
            log.info("%s", self._line(now))

    def _line(self, now: float, done: bool = False) -> str:
        elapsed = now - self._start
        if done:
            return f"{self.desc}: {self.n} {self.unit}(s) done in {_fmt_s(elapsed)}"
        if self.total:
            left = elapsed / self.n * (self.total - self.n) if self.n else float("nan")
            eta = f", about {_fmt_s(left)} left" if self.n else ""
            return (
                f"{self.desc}: {self.n}/{self.total} {self.unit}(s) ({100 * self.n / self.total:.0f} %), "
                f"{_fmt_s(elapsed)} elapsed{eta}"
            )
        return f"{self.desc}: {self.n} {self.unit}(s), {_fmt_s(elapsed)} elapsed"

    def close(self) -> None:
        """End the step: remove the bar, or log a closing line if any line was logged."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._logged:
            self._logged = False
            log.info("%s", self._line(time.monotonic(), done=True))

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        elif self._bar is not None:  # a failed step gets no "done" line
            self._bar.close()
            self._bar = None


def progress(
    iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """Yield from ``iterable`` while showing progress (see the module docstring)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total=total, desc=desc, unit=unit) as bar:
        for item in iterable:
            yield item
            bar.update()
