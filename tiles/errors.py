"""The one exception type that users see.

Every command catches :class:`TrustmapError` at the top, prints its one-line message and
exits non-zero. Messages name the file (or config key) at fault and the problem.
"""

from __future__ import annotations

from os import PathLike


class TrustmapError(Exception):
    """A user-facing error about an input, an output or a setting."""

    def __init__(self, problem: str, path: str | PathLike | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem
