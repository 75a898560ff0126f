"""End-to-end fixtures: drive the real QGIS through tests/e2e/qgis_probe.py.

PyQGIS lives in the system interpreter (Debian's python3-qgis), not in the venv, so QGIS
runs in a subprocess. Tests marked ``qgis`` are skipped only when that interpreter cannot
import ``qgis.core``; the reason says which interpreter was tried. Point
``TRUSTMAP_QGIS_PYTHON`` at another interpreter (e.g. a conda QGIS) to use it instead.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

PROBE = Path(__file__).with_name("qgis_probe.py")
QGIS_PYTHON = os.environ.get("TRUSTMAP_QGIS_PYTHON", "/usr/bin/python3")


def _qgis_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    env.setdefault("XDG_RUNTIME_DIR", "/tmp")
    return env


@functools.cache
def qgis_unavailable() -> str | None:
    """None if QGIS_PYTHON can import qgis.core, else why not."""
    if not Path(QGIS_PYTHON).exists():
        return f"{QGIS_PYTHON} not found (set TRUSTMAP_QGIS_PYTHON to a Python with PyQGIS)"
    try:
        res = subprocess.run(
            [QGIS_PYTHON, "-c", "import qgis.core"],
            env=_qgis_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{QGIS_PYTHON} could not be run ({exc})"
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no error output"])[-1]
        return f"{QGIS_PYTHON} cannot import qgis.core: {last}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("qgis")]
    if not marked:
        return
    reason = qgis_unavailable()
    if reason:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))


ProbeRunner = Callable[[dict[str, Any], Path], dict[str, Any]]


@pytest.fixture(scope="session")
def qgis() -> ProbeRunner:
    """Run qgis_probe.py with a spec (see its docstring) in ``workdir``; return its JSON.

    Skips (with the reason) when PyQGIS is unavailable; fails with QGIS's stderr when the
    probe itself fails.
    """
    reason = qgis_unavailable()
    if reason:
        pytest.skip(reason)

    def run(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
        spec_path, out_path = workdir / "probe_spec.json", workdir / "probe_out.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        res = subprocess.run(
            [QGIS_PYTHON, str(PROBE), str(spec_path), str(out_path)],
            env=_qgis_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if res.returncode != 0 or not out_path.exists():
            pytest.fail(f"qgis_probe.py failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
        return json.loads(out_path.read_text(encoding="utf-8"))

    return run
