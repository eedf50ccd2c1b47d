"""The generic stage runner every stage flow uses: which run a stage works on (`StageRun`), the
Prefect mapper that turns a stage's units into Prefect tasks, and the task-runner choice (local
processes, or prefect-ray's `RayTaskRunner` when a Ray address is given).

    summary = run_stage_flow(ExactDedup(config), StageRun(run_id="r1"))   # inside a flow
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner
from pydantic import BaseModel, Field

from flows.config import default_workers
from flows.progress import StageProgress
from flows.reporting import artifact_key, stage_summary, summary_rows
from tasks.layout import RunPaths
from tasks.manifest import read_manifest
from tasks.stage import WORK_DIR, Stage, exit_with_parent, run_stage


class StageRun(BaseModel):
    """Which run a stage works on, and how."""

    run_id: str = Field(description="The run to work on; it lives under WORKDIR/runs/RUN_ID.")
    workdir: str | None = Field(None, description="Work directory (default: $LOOM_WORKDIR or ./loom-work).")
    force: bool = Field(False, description="Rerun even if complete; the stages after it become stale.")
    workers: int = Field(default_factory=default_workers, ge=1, description="Local processes for shard work.")
    ray_address: str | None = Field(
        None, description="Run shard work on Ray: a cluster address ('auto', 'ray://host:10001') or 'local'."
    )
    input_dir: str | None = Field(None, description="Read this stage directory instead of the run's previous stage.")
    output_dir: str | None = Field(None, description="Write here instead of the run's stage directory.")
    report_stale: bool = Field(True, description="After a rerun, say which later stages of the run are stale "
                               "(off inside `curate`, which reruns them anyway).")
    wait_for_lock: float = Field(0.0, ge=0, description="Seconds to wait while another process writes the same "
                                 "stage directory (0: fail at once, naming that process).")

    def paths(self) -> RunPaths:
        return RunPaths.of(self.workdir, self.run_id)


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


def _retry_if_transient(task, task_run, state) -> bool:
    try:
        state.result(raise_on_failure=True)
    except BaseException as e:  # what failed decides
        return transient(e)
    return False


@task(cache_policy=NO_CACHE, task_run_name="{label}", retries=UNIT_RETRIES, retry_delay_seconds=UNIT_RETRY_DELAYS,
      retry_condition_fn=_retry_if_transient)
def stage_unit(fn, key: str, label: str) -> dict:
    """Run one unit of a stage (a shard, a partition) and record it as done. Units are idempotent (their
    outputs are written whole, then marked done), so a transient failure is retried."""
    return fn(key)


def prefect_mapper(fn, keys, on_done, label):
    """Map units over the flow's task runner; a lone unit runs in the flow's own process."""
    if len(keys) == 1:
        on_done(keys[0], stage_unit(fn, keys[0], label=f"{label}:{keys[0]}"))
        return
    futures = {stage_unit.submit(fn, key, label=f"{label}:{key}"): key for key in keys}
    for future in as_completed(list(futures)):
        on_done(futures[future], future.result())


def run_stage_flow(stage: Stage, run: StageRun, inputs: list[str] | None = None,
                   upstream: str | None = None) -> dict:
    """Run `stage` in the current flow: its units as Prefect tasks, a progress artifact, a summary table
    artifact. It reads `inputs` (ingest), else `run.input_dir`, else the run's `upstream` stage directory."""
    logger = get_run_logger()
    stage_dir = Path(run.output_dir) if run.output_dir else run.paths().stage(stage.name)
    if inputs is None:
        if run.input_dir:
            inputs = [run.input_dir]
        elif upstream is not None:
            inputs = [str(run.paths().stage(upstream))]
        else:
            raise ValueError(f"{stage.name} needs an input: an upstream stage or an input directory")
    upstream = read_manifest(Path(inputs[0])) if len(inputs) == 1 and Path(inputs[0]).is_dir() else None
    progress = StageProgress(stage.name, run.run_id, logger, work_dir=stage_dir / WORK_DIR,
                             total_rows=upstream.rows_out if upstream is not None else None)
    t0 = time.perf_counter()
    try:
        outcome = run_stage(stage, run_id=run.run_id, stage_dir=stage_dir, inputs=inputs,
                            mapper=prefect_mapper, force=run.force, progress=progress, lock_wait=run.wait_for_lock)
    finally:
        progress.close()
    summary = stage_summary(outcome, time.perf_counter() - t0)
    if outcome.skipped:
        logger.info("%s is complete for this input and config: skipped (use --force to rerun)", stage.name)
    else:
        logger.info("%s: %s rows in, %s out, %s removed, %s rejected -> %s", stage.name, summary["rows_in"],
                    summary["rows_out"], summary["removed"], summary["rejected"], stage_dir)
    create_table_artifact(table=summary_rows([summary]), key=artifact_key(run.run_id, stage.name),
                          description=f"{stage.name} of run {run.run_id}")
    return summary


class LocalProcesses(ProcessPoolTaskRunner):
    """Prefect's process pool whose workers end when the command that started them dies (SIGKILL,
    SIGTERM, a crash): no orphan keeps running units or holding memory."""

    def __init__(self, max_workers: int | None = None):
        super().__init__(max_workers=max_workers)
        self._initializer, self._initargs = exit_with_parent, ()  # Prefect's hook for a worker initializer


def task_runner(workers: int, ray_address: str | None = None):
    """Local processes by default; prefect-ray's RayTaskRunner when a Ray address is given
    ('local' starts a Ray instance with `workers` CPUs for the flow run)."""
    if not ray_address:
        return LocalProcesses(max_workers=workers)
    from prefect_ray import RayTaskRunner

    if ray_address == "local":
        # address "local": a new instance even when `ray start` runs a cluster on this machine
        return RayTaskRunner(init_kwargs={"address": "local", "num_cpus": workers, "include_dashboard": False})
    return RayTaskRunner(address=ray_address)
