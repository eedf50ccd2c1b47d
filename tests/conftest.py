"""Shared fixtures: real data from ../shared/data and one real Prefect server for the whole session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Isolate Prefect's home (SQLite database, settings) from the developer's before prefect is imported.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="loom-test-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    import shutil

    has_gpu = shutil.which("nvidia-smi") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU"))


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.exists():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def prefect_server():
    """One local Prefect API server for every test that runs flows (start-up costs ~10 s)."""
    from flows.prefect_api import prefect_api

    with prefect_api() as url:
        yield url
