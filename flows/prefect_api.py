"""One Prefect API for the whole command: the configured server, or a local one started here.

Prefect's ephemeral mode gives every process its own temporary server, so process-pool
workers would each start one (~9 s) on the same SQLite file ("database is locked"). Instead
the CLI starts a single local server and exports PREFECT_API_URL, which workers inherit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def prefect_api() -> Iterator[str]:
    from flows.reaper import watch_descendants

    watch_descendants()  # whatever this command starts (server, pools, Ray) ends with it, even after SIGKILL
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no phoning home; offline machines
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:  # send the last log lines before the server goes, also those of a run that failed
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=5)
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
