"""Progress inside a unit of work: documents and bytes read so far, for the progress bar and the Prefect
progress artifact while a long unit runs (a unit is a shard: minutes of work on big corpora).

The stage runner gives each unit a meter (`metering`); readers call `unit_progress` as they go (Parquet
batches in `tasks.shards.iter_batches`, ingest's sink as it writes); the meter writes a small JSON file in
the stage's work directory at most once a second, wherever the unit runs (a local process, a Ray node on
shared storage). The flow sums those files (`read_progress`). Counts only: never text.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

PROGRESS_DIR = "progress"
FLUSH_EVERY_S = 1.0


class UnitMeter:
    """Rows and bytes a unit has read, per source file: a file read twice (a stage that decides, then
    copies) counts once, by its furthest pass."""

    def __init__(self, path: Path, only_under: Path | None):
        self.path, self.only_under = path, only_under
        self.done: dict[str, list[int]] = {}  # source -> [rows, bytes] of finished passes' best
        self.current: dict[str, list[int]] = {}  # source -> [rows, bytes] of the pass now reading
        self.last_flush = 0.0

    def add(self, source, rows: int, nbytes: int, restart: bool = False) -> None:
        source = str(source)
        if self.only_under is not None and Path(source).parent != self.only_under:
            return
        if restart:  # a new pass over the same file
            best = self.done.get(source, [0, 0])
            now = self.current.pop(source, [0, 0])
            self.done[source] = max(best, now)
        counts = self.current.setdefault(source, [0, 0])
        counts[0] += rows
        counts[1] += nbytes
        if time.monotonic() - self.last_flush >= FLUSH_EVERY_S:
            self.flush()

    def totals(self) -> tuple[int, int]:
        rows = nbytes = 0
        for source in set(self.done) | set(self.current):
            best = max(self.done.get(source, [0, 0]), self.current.get(source, [0, 0]))
            rows, nbytes = rows + best[0], nbytes + best[1]
        return rows, nbytes

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        rows, nbytes = self.totals()
        with contextlib.suppress(OSError):  # progress is a courtesy: never fail a unit over it
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"rows": rows, "bytes": nbytes}))
            tmp.replace(self.path)


_meter: UnitMeter | None = None


@contextlib.contextmanager
def metering(path: Path, only_under: Path | None):
    """A meter for the unit that runs inside this block (one unit at a time per process)."""
    global _meter
    previous, _meter = _meter, UnitMeter(path, only_under)
    try:
        yield _meter
    finally:
        _meter.flush()
        _meter = previous


def unit_progress(source, rows: int, nbytes: int, restart: bool = False) -> None:
    """Count `rows` documents (`nbytes` bytes) read from `source` by the running unit, if one is metered."""
    if _meter is not None:
        _meter.add(source, rows, nbytes, restart)


def read_progress(work_dir: Path, phase: str) -> tuple[int, int]:
    """Rows and bytes read so far by the units of `phase` (finished or running)."""
    rows = nbytes = 0
    for path in (Path(work_dir) / PROGRESS_DIR).glob(f"{phase}-*.json"):
        with contextlib.suppress(OSError, ValueError):
            got = json.loads(path.read_text())
            rows, nbytes = rows + int(got["rows"]), nbytes + int(got["bytes"])
    return rows, nbytes


def progress_file(work_dir: Path, phase: str, key: str) -> Path:
    return Path(work_dir) / PROGRESS_DIR / f"{phase}-{key.replace('/', '_')}.json"
