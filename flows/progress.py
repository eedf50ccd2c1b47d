"""A stage's progress while it runs: documents and MB read so far (the units' meters, tasks/progress.py),
units done, on the terminal's bar and in a Prefect progress artifact."""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import time
from pathlib import Path

from rich.console import Console

from flows.reporting import artifact_key, console
from tasks.progress import read_progress


class StageProgress:
    """Progress of a stage: documents and MB read so far (the units' meters, tasks/progress.py) and units
    done, as a Prefect progress artifact (documents of the upstream stage's total where known, else units),
    a log line every `log_every_s` and per finished phase, and a bar on a terminal, with Prefect's own log
    lines printed above it instead of through it."""

    def __init__(self, stage: str, run_id: str, logger=None, work_dir: Path | None = None,
                 total_rows: int | None = None, log_every_s: float = 30.0, control=None):
        self.stage, self.run_id, self.logger, self.control = stage, run_id, logger, control
        self.work_dir, self.total_rows, self.log_every_s = work_dir, total_rows, log_every_s
        self.artifact_id = None
        self._shown = -1.0
        self.phases: dict[str, tuple[int, int]] = {}
        self.phase = ""
        self._bar = self._task = None
        self._consoles: list = []
        self._last_log = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._shown_lock = threading.Lock()
        self._watcher = None
        if work_dir is not None:  # in a copy of this context: the flow run's, so its artifact stays the run's
            self._watcher = threading.Thread(target=contextvars.copy_context().run, args=(self._watch,), daemon=True)
            self._watcher.start()

    def __call__(self, stage: str, phase: str, done: int, total: int) -> None:
        with self._lock:
            self.phases[phase], self.phase = (done, total), phase
        self._show()
        if self.logger and done == total:
            self.logger.info("%s %s: %d/%d units done%s", stage, phase, done, total, self._documents())

    def _read(self) -> tuple[int, int]:
        return read_progress(self.work_dir, self.phase) if self.work_dir is not None and self.phase else (0, 0)

    def _documents(self) -> str:
        text = self._amount(*self._read())
        return f", {text}" if text else ""

    def _amount(self, rows: int, nbytes: int) -> str:
        """'1,200/5,000 documents, 3.1 MB' (of the upstream stage's total where known); '' before any."""
        of = f"/{self.total_rows:,}" if self.total_rows else ""
        return f"{rows:,}{of} documents, {nbytes / 1e6:,.1f} MB" if rows else ""

    def _watch(self) -> None:
        while not self._stop.wait(2.0):
            self._show()
            if self.logger and time.monotonic() - self._last_log >= self.log_every_s and self.phase:
                self._last_log = time.monotonic()
                done, total = self.phases.get(self.phase, (0, 0))
                self.logger.info("%s %s: %d/%d units%s", self.stage, self.phase, done, total, self._documents())

    def _show(self) -> None:
        if not sys.stderr.isatty() and not getattr(self.control, "records_progress", False):
            return  # neither a bar nor an artifact to update: the units' meters are not read (a glob per unit)
        with self._lock:  # a consistent view of the phases; the reads and API calls below need no lock
            phases, phase = dict(self.phases), self.phase
        rows, nbytes = self._read()
        if self.total_rows and rows:  # documents of the whole input, when the upstream stage says how many
            percent = 100.0 * min(1.0, rows / self.total_rows)
            if phases and all(d == t for d, t in phases.values()):
                percent = 100.0
        else:
            percent = 100.0 * sum(d for d, _ in phases.values()) / max(1, sum(t for _, t in phases.values()))
        with self._shown_lock:  # the watcher thread and the stage's own thread both show
            if self.artifact_id is None or abs(percent - self._shown) >= 1.0 or percent == 100.0 != self._shown:
                self._artifact(percent)  # an API call: only when the share moved by a point or more
                self._shown = percent
            if sys.stderr.isatty() and phase:
                self._terminal(phase, phases[phase], rows, nbytes)

    def _artifact(self, percent: float) -> None:
        if self.control is None:
            return
        with contextlib.suppress(Exception):  # progress is a courtesy; never fail a stage over it
            self.artifact_id = self.control.progress(percent, key=artifact_key(self.run_id, self.stage, "progress"),
                                                     description=f"{self.stage} of run {self.run_id}",
                                                     artifact_id=self.artifact_id)

    def _terminal(self, phase: str, units: tuple[int, int], rows: int, nbytes: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if self._bar is None:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("units {task.fields[documents]}"), TimeElapsedColumn(),
                                 console=console, transient=True)
            self._bar.start()
            self._consoles = self.control.logs_above(console) if self.control is not None else []
        done, total = units
        documents = self._amount(rows, nbytes)
        description = f"{self.stage} {phase}"
        if self._task is None or self._bar.tasks[self._task].description != description:
            self._task = self._bar.add_task(description, total=total, documents=documents)
        self._bar.update(self._task, completed=done, total=total, documents=documents)

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        if self._bar is not None:
            self._bar.stop()
        for handler, original in self._consoles:
            handler.console = original


class _TextOnly:
    """Prints a log line through the CLI's console as plain text (no markup read into it)."""

    def __init__(self, target: Console):
        self.target = target

    def print(self, message, **kwargs) -> None:
        from rich.text import Text

        self.target.print(message if not isinstance(message, str) else Text(message), **kwargs)


def prefect_logs_above(target: Console) -> list:
    """Point Prefect's console log handlers at `target` while a bar is shown there, so each log line is
    printed above the bar (rich keeps a live display below what its console prints); returns how to undo it."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    swapped = []
    for handler in {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}:
        swapped.append((handler, handler.console))
        handler.console = _TextOnly(target)
    return swapped
