"""The run directory of a refinement: what is in it, and how a run resumes after a crash.

Layout of ``DIR`` (everything trustmap writes there; nothing else is ever deleted)::

    run.json            what was run: config, inputs, versions (written first)
    inputs/             generated sample scene, truth and cheap labels (sample mode)
    state/setup/        regions and the starting labels (committed once)
    state/round_001/    one folder per completed round: record.json, labels.tif,
                        model.pt, changes.npz, reviewed.npy
    state/final/        the last training on the refined labels (when configured)
    labels/             labels_r0.tif ... labels_rN.tif (hard links into state/)
    work/               scratch (probabilities of the current round)
    changes.csv, change_map.tif (+ .qml), autocorrections.tif (+ .qml), qgis/, report.json,
    report.html
    .trustmap.lock      held (``flock``) by the command working in the folder (:mod:`refine.lock`)

Every ``state/`` entry is staged in a hidden folder and renamed into place
(:func:`tiles.io.atomic_dir`), so a round is either fully recorded or absent: a run killed
at any moment resumes from its last complete round with ``resume=True``. The derived files
(labels/, changes.csv, reports) are rewritten from the state, each atomically; a resume
republishes every committed round's labels, since a kill can fall between a commit and its
publication.

One command at a time: :meth:`RunDir.open` takes the folder's lock before it deletes or
writes anything, and refuses a second ``--resume`` or ``--restart`` while a run is in
progress (the message names the holder's PID and start). Under the lock it removes the
staging that killed processes left (hidden names that carry a dead PID, see
:mod:`tiles.io`); staging of a live process is never touched.
"""

from __future__ import annotations

import contextlib
import contextvars
import filecmp
import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from refine.lock import LOCK_FILE, LockInfo, exclusive
from tiles.errors import TrustmapError
from tiles.io import (
    _STAGING,  # the staging-name pattern (hidden name, creator's PID, random part, .part/.old)
    atomic_dir,
    atomic_path,
    ensure_writable_dir,
    is_stale_staging,
    jsonable,
    remove_path,
    umask,
    write_text_atomic,
)

RUN_FILE = "run.json"
RUN_FORMAT = "trustmap.refine.run/1"
_ROUND = re.compile(r"^round_(\d{3,})$")
OWNED = ("run.json", "inputs", "state", "labels", "work", "qgis", "changes.csv", "change_map.tif",
         "change_map.qml", "change_map.tif.aux.xml", "autocorrections.tif", "autocorrections.qml",
         "autocorrections.tif.aux.xml", "report.json", "report.html")  # fmt: skip
COMMAND = "refine simulate"
# Staging of older trustmaps, without a PID in the name: removed only where they made it.
_LEGACY_PART = re.compile(r"^\..+\.part")  # .round_002.x.part, .labels_r3.tif.part
_LEGACY_EXPORT = re.compile(r"^\.[^.].*\.export\.[a-z0-9_]{8}$")  # qgis/.refined.export.k2j4h5g6
_P = ParamSpec("_P")
_R = TypeVar("_R")
_scope: contextvars.ContextVar[list[RunDir] | None] = contextvars.ContextVar(
    "trustmap_run_scope", default=None
)
_opened_here: set[str] = set()  # run folders this process opened (and so may discard)


class RunDir:
    """A refinement run's folder and its committed state."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.inputs = self.root / "inputs"
        self.state = self.root / "state"
        self.labels = self.root / "labels"
        self.work = self.root / "work"
        self.qgis = self.root / "qgis"
        self.lock: LockInfo | None = None  # set while this object holds the folder
        self._held = contextlib.ExitStack()

    # --- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        root: str | os.PathLike,
        identity: dict[str, Any],
        resume: bool = False,
        restart: bool = False,
        command: str = COMMAND,
    ) -> RunDir:
        """Prepare ``root`` for a run described by ``identity`` (config and inputs), and lock it.

        A missing or empty folder starts a new run. A non-empty one needs ``resume`` (carry
        on; ``identity`` must match the interrupted run's) or ``restart`` (delete the
        earlier run's files, which must be a refine run's, and start over). Either is
        refused while another command holds the folder. The lock is held until
        :meth:`close` (or the end of a :meth:`closes_on_exit` call, or a ``with`` block).
        """
        if resume and restart:
            raise TrustmapError("choose either --resume or --restart, not both")
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise TrustmapError("output path exists and is not a directory", root)
        created = not root.exists()
        ensure_writable_dir(root)  # the lock lives in the folder: the only write before it
        run = cls(root)
        had_lock_file = (root / LOCK_FILE).exists()
        try:
            run.lock = run._held.enter_context(exclusive(root, command))
        except BaseException:
            if created:  # in use by whoever created it at the same moment: rmdir fails then
                with contextlib.suppress(OSError):
                    root.rmdir()
            raise
        try:
            run._prepare(identity, resume, restart)
        except BaseException:
            if not had_lock_file:  # refused: leave the folder as it was (still ours to do)
                remove_path(root / LOCK_FILE)
                if created:
                    with contextlib.suppress(OSError):
                        root.rmdir()
            run.close()
            raise
        _opened_here.add(os.path.realpath(root))
        if (scope := _scope.get()) is not None:
            scope.append(run)
        return run

    def _prepare(self, identity: dict[str, Any], resume: bool, restart: bool) -> None:
        """The checks and deletions of :meth:`open`, all under the lock."""
        root = self.root
        entries = [p for p in root.iterdir() if p.name != LOCK_FILE and not is_stale_staging(p)]
        previous = self.read_identity() if (root / RUN_FILE).exists() else None
        if entries and not resume and not restart:
            kind = "an earlier refine run" if previous is not None else "files"
            raise TrustmapError(
                f"output directory is not empty (it holds {kind}); pass --resume to continue the "
                "run in it, --restart to start it over, or choose another --out",
                root,
            )
        if resume and entries:
            if previous is None:
                raise TrustmapError(
                    f"nothing to resume: no {RUN_FILE} from an earlier refine run here", root
                )
            diff = _first_difference(previous.get("identity", {}), jsonable(identity))
            if diff is not None:
                raise TrustmapError(
                    f"cannot resume: this run differs from the interrupted one at '{diff}'; "
                    "use --restart to start over with the new settings",
                    root,
                )
            self.clean_staging()
            self.republish_labels()
            return
        if restart and entries and previous is None:
            raise TrustmapError(
                f"refusing to --restart: the folder holds files but no {RUN_FILE}, so it is not "
                "a refine run (nothing was deleted)",
                root,
            )
        self.clear()  # a restart; or a new run in a folder holding only dead staging
        write_text_atomic(
            root / RUN_FILE,
            json.dumps({"format": RUN_FORMAT, "identity": jsonable(identity)}, indent=2) + "\n",
        )

    def close(self) -> None:
        """Release the folder's lock (idempotent)."""
        self.lock = None
        self._held.close()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def closes_on_exit(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        """Decorator: every run folder that ``fn`` opens is closed (unlocked) when it returns or
        raises, so the lock lasts exactly one call of a driver like ``run_simulation``."""

        @functools.wraps(fn)
        def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            opened: list[RunDir] = []
            token = _scope.set(opened)
            try:
                return fn(*args, **kwargs)
            finally:
                _scope.reset(token)
                for run in reversed(opened):
                    run.close()

        return call

    def read_identity(self) -> dict[str, Any] | None:
        path = self.root / RUN_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise TrustmapError(
                f"{RUN_FILE} is unreadable; use --restart to start over", path
            ) from None
        if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
            raise TrustmapError(
                f"not a trustmap refine run record (expected format {RUN_FORMAT})", path
            )
        return data

    def clear(self) -> None:
        """Delete what a refine run writes (and nothing else) from the folder (under the lock).

        run.json goes last, so a restart interrupted half-way still looks like a run and can
        be restarted again.
        """
        self.clean_staging()
        for name in OWNED[::-1]:
            remove_path(self.root / name)

    def discard(self, created: bool) -> None:
        """Undo a new run that failed before its first commit: no partial output stays.

        Only a run this process opened, and only while no other command holds the folder: a
        command refused because the folder was in use must not delete the holder's files.
        """
        if os.path.realpath(self.root) not in _opened_here or not self.root.is_dir():
            return
        try:
            with exclusive(self.root, COMMAND):  # re-entrant when called inside the run
                self.clear()
                remove_path(self.root / LOCK_FILE)
                if created:
                    with contextlib.suppress(OSError):
                        self.root.rmdir()  # only if empty
        except TrustmapError:
            return  # another command holds (or removed) the folder now: it is not ours to undo

    def clean_staging(self) -> list[Path]:
        """Remove the staging that killed trustmap processes left in this run folder.

        Only hidden staging names (:mod:`tiles.io`'s ``.<name>.<pid>.<random>.part…`` and
        ``.old``) whose PID is gone, and the PID-less names of older trustmaps where they
        made them (``.<name>….part`` at the top, in state/ and labels/; ``.<name>.export.*``
        in qgis/); only in the run's own folders, never following links. Call it under the
        lock (no other command is then writing here).
        """
        removed: list[Path] = []
        tops = [self.root] + [
            p for name in OWNED if (p := self.root / name).is_dir() and not p.is_symlink()
        ]
        legacy = {self.root: _LEGACY_PART, self.state: _LEGACY_PART, self.labels: _LEGACY_PART,
                  self.qgis: _LEGACY_EXPORT}  # fmt: skip
        for top in tops:
            for parent, dirs, files in os.walk(top, followlinks=False):
                here = Path(parent)
                for name in [*dirs, *files]:
                    entry = here / name
                    old = legacy.get(here)
                    if is_stale_staging(entry) or (
                        old is not None and not _STAGING.match(name) and old.match(name)
                    ):
                        remove_path(entry)
                        removed.append(entry)
                if here == self.root:
                    dirs.clear()  # the top level only; its owned folders are walked on their own
                else:
                    dirs[:] = [d for d in dirs if (here / d).exists() and not _STAGING.match(d)]
        return removed

    # --- committed state ----------------------------------------------------------------------------
    def round_dir(self, r: int) -> Path:
        return self.state / f"round_{r:03d}"

    @property
    def setup_dir(self) -> Path:
        return self.state / "setup"

    @property
    def final_dir(self) -> Path:
        return self.state / "final"

    def completed_rounds(self) -> list[int]:
        """Rounds with a committed state folder, in order (gaps are impossible by design)."""
        if not self.state.exists():
            return []
        out = sorted(
            int(m.group(1))
            for p in self.state.iterdir()
            if (m := _ROUND.match(p.name)) and p.is_dir()
        )
        for expect, got in enumerate(out, start=1):
            if expect != got:
                raise TrustmapError(
                    f"round folders are not consecutive (round {expect} missing)", self.state
                )
        return out

    @contextlib.contextmanager
    def commit(self, name: str) -> Iterator[Path]:
        """Stage a state folder (``setup``, ``round_003``, ``final``); it appears only on success."""
        ensure_writable_dir(self.state)
        with atomic_dir(self.state / name) as tmp:
            yield tmp
            tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private; state is shared like any output

    def read_record(self, folder: Path) -> dict[str, Any]:
        path = folder / "record.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise TrustmapError(
                "state record is unreadable; use --restart to start over", path
            ) from None

    def publish_labels(self, r: int, source: Path) -> Path:
        """Expose a label version as labels/labels_r{r}.tif (a hard link when possible).

        Idempotent: a file that already is (or equals) ``source`` is left alone.
        """
        ensure_writable_dir(self.labels)
        dst = self.labels / f"labels_r{r}.tif"
        if dst.is_file() and (os.path.samefile(source, dst) or filecmp.cmp(source, dst, False)):
            return dst  # renaming a link onto its own file would leave the staging behind
        with atomic_path(dst) as tmp:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        return dst

    def republish_labels(self) -> list[Path]:
        """Publish the labels of the setup and of every committed round again.

        A run killed between a round's commit and its publication has the round in state/
        but no labels/labels_rN.tif; resuming must not skip it.
        """
        out = []
        if (self.setup_dir / "labels.tif").is_file():
            out.append(self.publish_labels(0, self.setup_dir / "labels.tif"))
        for r in self.completed_rounds():
            source = self.round_dir(r) / "labels.tif"
            if not source.is_file():
                raise TrustmapError(
                    "committed round has no labels.tif; use --restart to start over", source.parent
                )
            out.append(self.publish_labels(r, source))
        return out

    def scratch(self) -> Path:
        return ensure_writable_dir(self.work)


def write_record(folder: Path, record: dict[str, Any]) -> Path:
    """Write a JSON record into a staged state folder."""
    path = folder / "record.json"
    path.write_text(
        json.dumps(jsonable(record), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    return path


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            sub = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                return sub
            found = _first_difference(a[key], b[key], sub)
            if found is not None:
                return found
        return None
    return None if a == b else (prefix or "(top level)")
