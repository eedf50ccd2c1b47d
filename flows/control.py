"""Where a stage's control-plane output goes: Prefect (flow and task runs, artifacts, logs) when a Prefect
API is configured, else the terminal alone, without importing Prefect or starting a temporary server
(that cost ~18 CPU s per command, more than a small input's work).

    with using(Control()):           # what `loom step` / `loom curate` do with no API configured
        stages.curate(inputs, run_id="r1")

The stage calls in flows/stages.py ask `current()` for a logger, a mapper (who runs the units) and where
artifacts go, and call the next stage through it: a Prefect subflow, or a plain call.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import tomllib

UNIT_RETRIES = 2  # a unit that failed for a reason outside Loom (storage, network, a lost Ray worker) runs again
UNIT_RETRY_DELAYS = [5, 30]
_LASTING_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_RAY_TRANSIENT = {"RayActorError", "ActorDiedError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError",
                  "OwnerDiedError", "ObjectFetchTimedOutError", "RaySystemError", "LocalRayletDiedError"}


def transient(error: BaseException) -> bool:
    """A failure of the world outside the unit, worth a retry: network and object-store I/O (OSError but a
    missing or forbidden path), timeouts, a Ray worker or node lost. A bug or bad data fails the same way
    again and is not retried."""
    for e in (error, error.__cause__, error.__context__):
        if e is None:
            continue
        if isinstance(e, (TimeoutError, ConnectionError)) or (isinstance(e, OSError)
                                                              and not isinstance(e, _LASTING_OS_ERRORS)):
            return True
        if type(e).__name__ in _RAY_TRANSIENT:
            return True
    return False


class Control:
    """The terminal-only control plane: log lines on the CLI's console, units in local processes (a unit
    that fails for a transient reason runs again), artifacts dropped (the CLI prints the summary table, and
    the work directory holds every manifest and report)."""

    def __init__(self, retry_delays: list[float] | None = None):
        self.retry_delays = UNIT_RETRY_DELAYS if retry_delays is None else retry_delays
        self._pools: dict[int, object] = {}

    def logger(self) -> logging.Logger:
        return _terminal_logger()

    def mapper(self, workers: int, ray_address: str | None = None):
        """Units in `workers` local processes: one pool for the whole command, not one per phase (starting
        and joining a pool per phase was a tenth of a short stage's wall time)."""
        from tasks.stage import pool_mapper

        if ray_address:
            raise ValueError("shard work on Ray runs through Prefect's Ray task runner: give --prefect")
        run_local = pool_mapper(lambda: self._pool(workers), workers)
        return lambda fn, keys, on_done, label="": run_local(partial(_retrying, fn, tuple(self.retry_delays)),
                                                             keys, on_done, label)

    def _pool(self, workers: int):
        if workers not in self._pools:
            from concurrent.futures import ProcessPoolExecutor

            import numpy as np
            import pyarrow as pa

            from tasks.stage import exit_with_parent

            # pyarrow looks for pandas on its first array (and imports it, unless `pyarrow_without_pandas` ran),
            # and asks numpy.ma of a numpy array (numpy imports it on first use: 11 ms): once here, inherited by
            # the forked workers, instead of once in each of them
            pa.array(np.zeros(0, dtype=bool))
            self._pools[workers] = ProcessPoolExecutor(max_workers=workers, initializer=exit_with_parent)
        return self._pools[workers]

    def close(self, interrupted: bool = False) -> None:
        """End the command's pool: after its work, or at once when the command was interrupted (a unit cut
        short stays resumable: its completion marker is written only when it ends)."""
        for pool in self._pools.values():
            if interrupted:  # its units' futures then fail as the pool breaks (cancelling them too races that)
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.kill()
            pool.shutdown(wait=not interrupted, cancel_futures=not interrupted)
        self._pools.clear()

    def call(self, name: str, **kwargs):
        """Run the stage (or gc) call `name` of flows/stages.py: here, a plain call."""
        from flows.stages import CALLS

        return CALLS[name](**kwargs)

    def table(self, table: list[dict], key: str, description: str) -> None:
        pass

    def markdown(self, markdown: str, key: str, description: str) -> None:
        pass

    records_progress = False  # progress() keeps nothing: no need to work out the share done for it

    def progress(self, percent: float, key: str, description: str, artifact_id=None):
        return None

    def logs_above(self, console) -> list:
        return []  # the terminal logger prints through the CLI's console: above its bar already


def _retrying(fn, delays: tuple[float, ...], key: str):
    """fn(key), again after each delay while it fails for a transient reason."""
    for delay in (*delays, None):
        try:
            return fn(key)
        except Exception as e:
            if delay is None or not transient(e):
                raise
            _terminal_logger().warning("unit %s failed (%s: %s); retrying in %gs", key, type(e).__name__, e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _terminal_logger() -> logging.Logger:
    logger = logging.getLogger("loom.run")
    if not logger.handlers:
        logger.addHandler(_ConsoleHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class _ConsoleHandler(logging.Handler):
    """Log lines through the CLI's rich console (above a progress bar there, none through it), as plain text."""

    def emit(self, record: logging.LogRecord) -> None:
        from rich.text import Text

        from flows.reporting import console

        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        console.print(Text(f"{stamp} | {record.levelname:<7} | {record.getMessage()}"), highlight=False)


_CURRENT: contextvars.ContextVar[Control | None] = contextvars.ContextVar("loom_control", default=None)


def current() -> Control:
    """The control plane of the running call: terminal-only inside `using(Control())`, else Prefect (a flow
    run started by the CLI, a deployment or a test)."""
    control = _CURRENT.get()
    if control is None:
        from flows.stage_flow import PrefectControl

        control = PrefectControl()
    return control


@contextmanager
def using(control: Control) -> Iterator[Control]:
    token = _CURRENT.set(control)
    try:
        yield control
    except BaseException:
        control.close(interrupted=True)
        raise
    else:
        control.close()
    finally:
        _CURRENT.reset(token)


def prefect_api_configured(environ: dict | None = None, cwd: Path | None = None) -> str | None:
    """The Prefect API URL a Prefect client here would use, read as Prefect reads it but without importing
    it: the environment, a .env or prefect.toml or pyproject.toml [tool.prefect] in the working directory,
    then the active profile (PREFECT_PROFILE, else profiles.toml's `active`)."""
    environ = os.environ if environ is None else environ
    cwd = cwd or Path.cwd()
    if environ.get("PREFECT_API_URL"):
        return environ["PREFECT_API_URL"]
    dotenv = cwd / ".env"
    if dotenv.is_file():
        for line in dotenv.read_text(errors="replace").splitlines():
            name, _, value = line.strip().partition("=")
            if name.strip() == "PREFECT_API_URL" and value.strip():
                return value.strip().strip("'\"")
    for path, section in ((cwd / "prefect.toml", ()), (cwd / "pyproject.toml", ("tool", "prefect"))):
        table = _toml(path)
        for part in (*section, "api"):
            table = table.get(part, {}) if isinstance(table, dict) else {}
        if isinstance(table, dict) and table.get("url"):
            return str(table["url"])
    home = Path(environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
    profiles = _toml(Path(environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser())
    active = environ.get("PREFECT_PROFILE") or profiles.get("active")
    profile = profiles.get("profiles", {}).get(active, {}) if active else {}
    return profile.get("PREFECT_API_URL") or None


def _toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text()) if path.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def use_prefect(choice: bool | None, ray_address: str | None = None) -> bool:
    """Whether a curation command records its runs in Prefect: as chosen (--prefect/--no-prefect,
    LOOM_PREFECT), else when a Prefect API is configured or shard work goes to Ray (prefect-ray's runner)."""
    if choice is not None:
        return choice
    return bool(ray_address) or prefect_api_configured() is not None

