"""Shared fixtures: real data from ../shared/data and one real Prefect server for the whole session."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Isolate Prefect's home (SQLite database, settings) from the developer's before prefect is imported.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="loom-test-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

# Prefect configures logging when first imported, and logging.config.dictConfig closes every handler made
# before: absl's (imported by rouge_score) then closes the stream it holds, which under pytest is the capture
# file. Importing Prefect here, before any test, makes that happen once and first, whatever order tests run in.
with contextlib.suppress(ImportError):  # a machine that only runs the gpu tests (benchmarks/gpu.py)
    import prefect.main  # noqa: F401


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


@contextmanager
def _prefect_server_process(home: Path, extra_env: dict | None = None) -> Iterator[str]:
    """`prefect server start` on loopback in its own process and Prefect home (its database: SQLite in
    `home`, or what PREFECT_API_DATABASE_CONNECTION_URL in `extra_env` names). While it runs, this process
    and the ones it starts use it (PREFECT_API_URL); yields the API URL."""
    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": url, **(extra_env or {})}  # UI_API_URL: where the UI in a browser finds the API
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError("prefect server did not start:\n" + (home / "server.log").read_text()[-3000:])
        time.sleep(1)
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def start_prefect_server():
    """A context manager: `with start_prefect_server(home, env) as api_url:` runs `prefect server start`."""
    return _prefect_server_process
