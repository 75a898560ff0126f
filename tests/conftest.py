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
SHARED_DATA = ROOT.parent / "shared" / "data"
LANDCOVER6 = ROOT / "configs" / "classes" / "landcover6.yaml"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real georeferenced files in ../shared/data (CI has the same folder)."""
    if not (SHARED_DATA / "RGB.byte.tif").exists():
        pytest.fail(f"real test data missing: {SHARED_DATA} (expected beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def landcover6_path() -> Path:
    return LANDCOVER6
