"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the same examples every time (a red run must be reproducible); locally hypothesis
# keeps exploring new ones.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT / "tests" / "data"  # small real files, copied in (sources in its README.md)
LANDCOVER6 = ROOT / "configs" / "classes" / "landcover6.yaml"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real georeferenced files in tests/data (part of the repository, so any clone has them)."""
    names = ("RGB.byte.tif", "OSBS_029.tif", "OSBS_029.csv")
    missing = [n for n in names if not (REAL_DATA / n).exists()]
    if missing:
        pytest.fail(f"real test data missing in {REAL_DATA}: {', '.join(missing)}")
    return REAL_DATA


@pytest.fixture(scope="session")
def landcover6_path() -> Path:
    return LANDCOVER6
