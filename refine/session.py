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

Every ``state/`` entry is staged in a hidden folder and renamed into place
(:func:`tiles.io.atomic_dir`), so a round is either fully recorded or absent: a run killed
at any moment resumes from its last complete round with ``resume=True``. The derived files
(labels/, changes.csv, reports) are rewritten from the state, each atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tiles.errors import TrustmapError
from tiles.io import atomic_dir, ensure_writable_dir, remove_path, umask, write_text_atomic

RUN_FILE = "run.json"
RUN_FORMAT = "trustmap.refine.run/1"
_ROUND = re.compile(r"^round_(\d{3,})$")
OWNED = ("run.json", "inputs", "state", "labels", "work", "qgis", "changes.csv", "change_map.tif",
         "change_map.qml", "change_map.tif.aux.xml", "autocorrections.tif", "autocorrections.qml",
         "autocorrections.tif.aux.xml", "report.json", "report.html")  # fmt: skip


class RunDir:
    """A refinement run's folder and its committed state."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.inputs = self.root / "inputs"
        self.state = self.root / "state"
        self.labels = self.root / "labels"
        self.work = self.root / "work"
        self.qgis = self.root / "qgis"

    # --- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        root: str | os.PathLike,
        identity: dict[str, Any],
        resume: bool = False,
        restart: bool = False,
    ) -> RunDir:
        """Prepare ``root`` for a run described by ``identity`` (config and inputs).

        A missing or empty folder starts a new run. A non-empty one needs ``resume`` (carry
        on; ``identity`` must match the interrupted run's) or ``restart`` (delete the
        earlier run's files, which must be a refine run's, and start over).
        """
        if resume and restart:
            raise TrustmapError("choose either --resume or --restart, not both")
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise TrustmapError("output path exists and is not a directory", root)
        run = cls(root)
        entries = [p for p in root.iterdir()] if root.exists() else []
        previous = run.read_identity() if (root / RUN_FILE).exists() else None
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
            diff = _first_difference(previous.get("identity", {}), _jsonable(identity))
            if diff is not None:
                raise TrustmapError(
                    f"cannot resume: this run differs from the interrupted one at '{diff}'; "
                    "use --restart to start over with the new settings",
                    root,
                )
            for stale in [*root.glob(".*.part*"), *run.state.glob(".*.part*")]:  # a killed commit
                remove_path(stale)
            ensure_writable_dir(root)
            return run
        if restart and entries:
            if previous is None:
                raise TrustmapError(
                    f"refusing to --restart: the folder holds files but no {RUN_FILE}, so it is not "
                    "a refine run (nothing was deleted)",
                    root,
                )
            run.clear()
        ensure_writable_dir(root)
        write_text_atomic(
            root / RUN_FILE,
            json.dumps({"format": RUN_FORMAT, "identity": _jsonable(identity)}, indent=2) + "\n",
        )
        return run

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
        """Delete what a refine run writes (and nothing else) from the folder.

        run.json goes last, so a restart interrupted half-way still looks like a run and can
        be restarted again.
        """
        for name in OWNED[::-1]:
            remove_path(self.root / name)
        for hidden in self.root.glob(".*.part*"):  # staging left by a killed process
            remove_path(hidden)

    def discard(self, created: bool) -> None:
        """Undo a new run that failed before its first commit: no partial output stays."""
        self.clear()
        if created:
            with contextlib.suppress(OSError):
                self.root.rmdir()  # only if empty

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
        """Expose a label version as labels/labels_r{r}.tif (a hard link when possible)."""
        ensure_writable_dir(self.labels)
        dst = self.labels / f"labels_r{r}.tif"
        tmp = self.labels / f".labels_r{r}.tif.part"
        remove_path(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, dst)
        return dst

    def scratch(self) -> Path:
        return ensure_writable_dir(self.work)


def write_record(folder: Path, record: dict[str, Any]) -> Path:
    """Write a JSON record into a staged state folder."""
    path = folder / "record.json"
    path.write_text(
        json.dumps(_jsonable(record), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    return path


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays, paths and tuples converted."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN; null reads as "not defined"
    if isinstance(obj, Path):
        return str(obj)
    return obj


def jsonable(obj: Any) -> Any:
    """Public alias of the JSON conversion used for records and reports."""
    return _jsonable(obj)


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
