"""Shared test setup: offline hub, headless Qt, paths to the shared data."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
for var in ("PROJ_LIB", "PROJ_DATA"):
    os.environ.pop(var, None)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEOVLM_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared test data not found at {DATA} (set GEOVLM_SHARED)")
    return DATA
