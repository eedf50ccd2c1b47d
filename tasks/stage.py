"""The life of a stage: plan units of work, run each unit once (resumably), write the manifest.

A stage is a small class (datatrove style) configured by a pydantic model. It names its
phases; for each phase it plans unit keys (usually input shard names) and runs one unit at a
time. `run_stage` skips a stage whose manifest matches its input and config, resumes a killed
stage from its per-unit completion markers, and writes `_manifest.json` last.

Who runs the units is the caller's choice: `run_stage` takes a *mapper*. `local_mapper` uses
local processes; the Prefect flows pass one that maps a Prefect task over the units.

    from tasks.exact_dedup import ExactDedup
    run_stage(ExactDedup(), run_id="r1", stage_dir=Path("out"), inputs=["in/01_ingest"])
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel

from tasks.allocator import keep_freed_memory
from tasks.layout import STAGES
from tasks.lock import StageLock
from tasks.manifest import (
    MANIFEST,
    StageManifest,
    config_hash,
    manifest_fingerprint,
    now_iso,
    read_manifest,
    write_json_atomic,
    write_manifest,
)
from tasks.progress import metering, progress_file
from tasks.retention import GC_MARKER
from tasks.shards import INTERMEDIATE_CODEC, REJECTS_DIR, REMOVED_DIR, list_shards

WORK_DIR = "_work"  # spill files and per-unit completion markers; removed once the manifest is written
ATTEMPT = "attempt.json"

UnitResult = dict  # rows_in, rows_out, removed{}, rejected{}, outputs[], stats{}
# mapper(fn, keys, on_done, label): call fn(key) for every key, anywhere, and on_done(key, result) as each ends
Mapper = Callable[[Callable[[str], UnitResult], list[str], Callable[[str, UnitResult], None], str], None]
ProgressCallback = Callable[[str, str, int, int], None]  # stage, phase, done, total


@dataclass
class StageContext:
    """Where a stage reads and writes; passed to every unit (must pickle)."""

    stage: str
    run_id: str
    stage_dir: Path
    inputs: list[str]
    codec: str = INTERMEDIATE_CODEC  # of the document shards it writes (publish's final ones: zstd)

    @property
    def work_dir(self) -> Path:
        return self.stage_dir / WORK_DIR

    @property
    def input_dir(self) -> Path:
        """The upstream stage directory, for every stage but ingest."""
        return Path(self.inputs[0])

    def input_shard_names(self) -> list[str]:
        """The upstream stage's document shards by name (part-00000, ...), in order."""
        return [s.stem for s in list_shards(self.input_dir)]

    def partitions(self, rows_per_partition: int, rows_per_document: int = 1) -> int:
        """How many partitions hold the upstream stage's documents (times `rows_per_document`, e.g. one
        row per LSH band) at `rows_per_partition` rows each: the fan-out of a shuffle."""
        upstream = read_manifest(self.input_dir)
        rows = upstream.rows_out if upstream else 0
        return max(1, math.ceil(rows * rows_per_document / rows_per_partition))


class Stage:
    """Base class: subclasses set `name`, `Config` and `phases`, and implement plan/run_unit."""

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    phases: ClassVar[tuple[str, ...]] = ("process",)
    # what the stage writes in its directory; only these are cleared before a fresh attempt
    owned_outputs: ClassVar[tuple[str, ...]] = ("part-*.parquet", ".*.tmp", REJECTS_DIR, REMOVED_DIR, MANIFEST)

    def __init__(self, config: BaseModel | dict | None = None, **overrides):
        if config is None:
            config = self.Config(**overrides)
        elif isinstance(config, dict):
            config = self.Config(**{**config, **overrides})
        elif overrides:
            config = config.model_copy(update=overrides)
        self.config = config

    def config_dict(self) -> dict:
        return self.config.model_dump(mode="json")

    def input_fingerprint(self, inputs: list[str]) -> str:
        return manifest_fingerprint(Path(inputs[0]))

    def plan(self, ctx: StageContext, phase: str) -> list[str]:
        raise NotImplementedError

    def run_unit(self, ctx: StageContext, phase: str, key: str) -> UnitResult:
        raise NotImplementedError

    def finish(self, ctx: StageContext, results: dict[str, list[UnitResult]]) -> dict:
        """Extra stats for the manifest once every unit is done (reports, cards)."""
        return {}


@dataclass
class StageOutcome:
    manifest: StageManifest
    skipped: bool
    stage_dir: Path
    resumed_units: int = 0
    notes: list[str] = field(default_factory=list)


def _marker(ctx: StageContext, phase: str, key: str) -> Path:
    return ctx.work_dir / "done" / phase / f"{key}.json"


def unit_result(ctx: StageContext, phase: str, key: str) -> UnitResult:
    """The result a finished unit of an earlier phase recorded (its completion marker)."""
    return json.loads(_marker(ctx, phase, key).read_text())


_watched_parent: dict[int, int] = {}  # this process's pid -> its parent's, once watched (a fork copies the dict)


def exit_with_parent(poll_s: float = 1.0) -> None:
    """In a worker process of a pool: end this process when the process that started it dies (SIGKILL,
    SIGTERM, a crash), so a killed command leaves no worker running its units or holding memory. Once per
    process; a daemon thread watches the parent's pid (a dead parent's children get a new one)."""
    import multiprocessing
    import threading

    starter = multiprocessing.parent_process()
    if os.getpid() in _watched_parent or starter is None:  # the main process itself: nothing to watch
        return
    parent = _watched_parent[os.getpid()] = starter.pid  # known from the start: it may be dead already

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(143)  # the command is gone: so is its work (the unit stays resumable: no marker)
            time.sleep(poll_s)

    threading.Thread(target=watch, name="loom-exit-with-parent", daemon=True).start()


def execute_unit(stage: Stage, ctx: StageContext, phase: str, key: str) -> UnitResult:
    """Run one unit and record its completion marker (the unit of resumption)."""
    exit_with_parent()
    keep_freed_memory()
    upstream = Path(ctx.inputs[0]) if len(ctx.inputs) == 1 else None  # documents: the upstream stage's shards
    only_under = upstream if upstream is not None and (upstream / MANIFEST).exists() else None
    with metering(progress_file(ctx.work_dir, phase, key), only_under):
        result = stage.run_unit(ctx, phase, key)
    marker = _marker(ctx, phase, key)
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, result)
    return result


def _run_inline(fn, keys, on_done):
    for key in keys:
        on_done(key, fn(key))


def local_mapper(workers: int = 1) -> Mapper:
    """Run units in `workers` local processes (inline when one worker or one unit)."""

    def mapper(fn, keys, on_done, label=""):
        if workers <= 1 or len(keys) <= 1:
            return _run_inline(fn, keys, on_done)
        with ProcessPoolExecutor(max_workers=min(workers, len(keys)), initializer=exit_with_parent) as pool:
            _run_on(pool, fn, keys, on_done)

    return mapper


def pool_mapper(pool: Callable[[], ProcessPoolExecutor], workers: int) -> Mapper:
    """Run units on a process pool someone else owns and shuts down (`pool()` gives it, made on first use),
    inline when one worker. A phase of one unit (exact dedup's group, near dedup's pairs and cluster,
    publish) runs in a worker too: workers that ran the shard phases have their memory mapped and their
    caches warm, and the same unit took 30-50% longer in the command's own process."""

    def mapper(fn, keys, on_done, label=""):
        if workers <= 1 or not keys:
            return _run_inline(fn, keys, on_done)
        _run_on(pool(), fn, keys, on_done)

    return mapper


def _run_on(pool: ProcessPoolExecutor, fn, keys, on_done) -> None:
    futures = {pool.submit(fn, key): key for key in keys}
    try:
        for future in as_completed(futures):
            on_done(futures[future], future.result())
    except Exception:  # a failed unit: the others do not start (the pool outlives this phase)
        for future in futures:
            future.cancel()
        raise


def _prepare(stage: Stage, ctx: StageContext, attempt: dict, force: bool) -> int:
    """Clear outputs of a different (or forced) attempt; return how many units are already done."""
    previous = None
    attempt_path = ctx.work_dir / ATTEMPT
    if attempt_path.exists():
        previous = json.loads(attempt_path.read_text())
    if ctx.stage_dir.exists() and (force or previous != attempt):
        for pattern in (*stage.owned_outputs, WORK_DIR):
            for child in ctx.stage_dir.glob(pattern):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(attempt_path, attempt)
    return sum(1 for _ in (ctx.work_dir / "done").rglob("*.json")) if (ctx.work_dir / "done").exists() else 0


def _sum_into(total: dict, part: dict) -> None:
    for key, value in part.items():
        if isinstance(value, dict):  # nested counts (e.g. PII by entity type)
            _sum_into(total.setdefault(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
        else:  # a label (e.g. which tokenizer), not a count
            total[key] = value


def run_stage(
    stage: Stage,
    *,
    run_id: str,
    stage_dir: Path,
    inputs: Iterable[str],
    mapper: Mapper | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    lock_wait: float = 0.0,
    codec: str = INTERMEDIATE_CODEC,
) -> StageOutcome:
    """Run `stage` from `inputs` into `stage_dir`, skipping it if it is already complete. One writer at a
    time: another process writing the directory makes this fail fast (StageLocked), or wait up to
    `lock_wait` seconds."""
    stage_dir = Path(stage_dir)
    inputs = [str(i) for i in inputs]
    ctx = StageContext(stage=stage.name, run_id=run_id, stage_dir=stage_dir, inputs=inputs, codec=codec)
    fingerprint = stage.input_fingerprint(inputs)
    chash = config_hash(stage.config_dict())

    def complete() -> StageManifest | None:
        existing = read_manifest(stage_dir)
        current = existing is not None and existing.config_hash == chash and existing.input_fingerprint == fingerprint
        return existing if current and not force else None

    if (done := complete()) is not None:
        return StageOutcome(manifest=done, skipped=True, stage_dir=stage_dir)
    with StageLock(stage_dir, wait=lock_wait):
        if (done := complete()) is not None:  # the writer we waited for finished this very work
            return StageOutcome(manifest=done, skipped=True, stage_dir=stage_dir)
        return _run_locked(stage, ctx, fingerprint, chash, mapper, force, progress)


def _run_locked(stage: Stage, ctx: StageContext, fingerprint: str, chash: str, mapper: Mapper | None, force: bool,
                progress: ProgressCallback | None) -> StageOutcome:
    stage_dir, run_id, inputs = ctx.stage_dir, ctx.run_id, ctx.inputs
    if read_manifest(stage_dir) is not None:  # about to be replaced: make it unreadable as "complete" first
        (stage_dir / MANIFEST).unlink()
    attempt = {"config_hash": chash, "input_fingerprint": fingerprint}
    resumed = _prepare(stage, ctx, attempt, force)
    mapper = mapper or local_mapper(1)
    started_at, t0 = now_iso(), time.perf_counter()

    results: dict[str, list[UnitResult]] = {}
    for phase in stage.phases:
        keys = stage.plan(ctx, phase)
        done = {k: unit_result(ctx, phase, k) for k in keys if _marker(ctx, phase, k).exists()}
        pending = [k for k in keys if k not in done]
        if progress and keys:  # a phase with nothing to do (ingest's ids when no file was split) is not shown
            progress(stage.name, phase, len(done), len(keys))

        def on_done(key, result, _done=done, _phase=phase, _total=len(keys)):
            _done[key] = result
            if progress:
                progress(stage.name, _phase, len(_done), _total)

        if pending:
            mapper(partial(execute_unit, stage, ctx, phase), pending, on_done, f"{stage.name}:{phase}")
        results[phase] = [done[k] for k in keys]

    manifest = StageManifest(
        stage=stage.name,
        run_id=run_id,
        config=stage.config_dict(),
        config_hash=chash,
        input_fingerprint=fingerprint,
        inputs=inputs,
        started_at=started_at,
    )
    outputs: dict[str, dict] = {}
    for phase_results in results.values():
        for r in phase_results:
            manifest.rows_in += r.get("rows_in", 0)
            manifest.rows_out += r.get("rows_out", 0)
            _sum_into(manifest.removed, r.get("removed", {}))
            _sum_into(manifest.rejected, r.get("rejected", {}))
            _sum_into(manifest.stats, r.get("stats", {}))
            outputs.update((o["path"], o) for o in r.get("outputs", []))  # a later phase's rewrite of a file wins
    manifest.outputs = list(outputs.values())
    manifest.stats.update(stage.finish(ctx, results))
    manifest.outputs.sort(key=lambda o: (o["kind"], o["path"]))
    shutil.rmtree(ctx.work_dir, ignore_errors=True)
    manifest.finished_at = now_iso()
    manifest.seconds = round(time.perf_counter() - t0, 3)
    write_manifest(stage_dir, manifest)
    return StageOutcome(manifest=manifest, skipped=False, stage_dir=stage_dir, resumed_units=resumed)


# ---- status of a run's stages ----------------------------------------------------------------


@dataclass
class StageStatus:
    stage: str
    status: str  # complete | stale | partial | missing
    manifest: StageManifest | None
    reason: str = ""


def stage_status(stage_dir: Path, upstream_dir: Path | None, fingerprint_now: Callable[[], str] | None = None) -> StageStatus:
    """complete, stale (its input changed since it ran), partial (killed midway) or missing."""
    stage_dir = Path(stage_dir)
    manifest = read_manifest(stage_dir)
    name = stage_dir.name
    if manifest is not None and (stage_dir / GC_MARKER).exists():
        return StageStatus(name, "collected", manifest, "published; its pre-PII data deleted (loom gc)")
    if manifest is None:
        if (stage_dir / WORK_DIR).exists():
            return StageStatus(name, "partial", None, "interrupted; rerun resumes it")
        return StageStatus(name, "missing", None)
    try:
        if upstream_dir is not None:
            current = manifest_fingerprint(upstream_dir)
        elif fingerprint_now is not None:
            current = fingerprint_now()
        else:
            current = manifest.input_fingerprint
    except (FileNotFoundError, OSError):
        return StageStatus(name, "stale", manifest, "its input is gone")
    if current != manifest.input_fingerprint:
        return StageStatus(name, "stale", manifest, "its input changed since it ran")
    return StageStatus(name, "complete", manifest)


def run_statuses(
    run_dir: Path, stages: list[str] = STAGES, fingerprint_ingest: Callable[[list[str]], str] | None = None
) -> list[StageStatus]:
    """Status of every stage of a run, in pipeline order; a stage downstream of a stale one is stale."""
    found: dict[str, StageStatus] = {}
    for name in stages:
        stage_dir = Path(run_dir) / name
        manifest = read_manifest(stage_dir)
        if name == STAGES[0] or manifest is None:
            now = partial(fingerprint_ingest, manifest.inputs) if manifest and fingerprint_ingest else None
            status = stage_status(stage_dir, None, now)
        else:
            upstream = Path(run_dir) / Path(manifest.inputs[0]).name  # runs can be moved: use the name only
            status = stage_status(stage_dir, upstream)
            before = found.get(upstream.name)
            if status.status == "complete" and before is not None and before.status not in ("complete", "collected"):
                status = StageStatus(name, "stale", manifest, f"{upstream.name} is {before.status}")
        found[name] = status
    return list(found.values())
