"""The generic stage runner every stage flow uses: which run a stage works on (`StageRun`), the
Prefect control plane (`PrefectControl`: the mapper that turns a stage's units into Prefect tasks,
artifacts, subflows), and the task-runner choice (local processes, or prefect-ray's `RayTaskRunner` when a
Ray address is given). Prefect is imported on first use only: without it (flows/control.py's `Control`)
a command runs its stages with no Prefect import and no server.

    summary = run_stage_flow(ExactDedup(config), StageRun(run_id="r1"))   # in a flow, or under using(Control())
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path

from pydantic import BaseModel, Field

from flows.config import default_workers
from flows.control import UNIT_RETRIES, UNIT_RETRY_DELAYS, Control, current, transient
from flows.progress import StageProgress
from flows.reporting import artifact_key, stage_summary, summary_rows
from tasks.layout import RunPaths
from tasks.manifest import read_manifest
from tasks.shards import INTERMEDIATE_CODEC
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
    codec: str = Field(INTERMEDIATE_CODEC, description="Compression of the document shards it writes for the "
                       "next stage (lz4, snappy, zstd or none).")
    wait_for_lock: float = Field(0.0, ge=0, description="Seconds to wait while another process writes the same "
                                 "stage directory (0: fail at once, naming that process).")

    def paths(self) -> RunPaths:
        return RunPaths.of(self.workdir, self.run_id)


def _retry_if_transient(task, task_run, state) -> bool:
    try:
        state.result(raise_on_failure=True)
    except BaseException as e:  # what failed decides
        return transient(e)
    return False


@cache
def stage_unit_task():
    """The Prefect task that runs one unit of a stage (a shard, a partition) and records it as done. Units
    are idempotent (their outputs are written whole, then marked done), so a transient failure is retried.
    Built on first use: a command that does not record its runs in Prefect never imports it."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    @task(cache_policy=NO_CACHE, task_run_name="{label}", retries=UNIT_RETRIES,
          retry_delay_seconds=UNIT_RETRY_DELAYS, retry_condition_fn=_retry_if_transient)
    def stage_unit(fn, key: str, label: str) -> dict:
        return fn(key)

    return stage_unit


def prefect_mapper(fn, keys, on_done, label):
    """Map units over the flow's task runner; a lone unit runs in the flow's own process."""
    from prefect.futures import as_completed

    stage_unit = stage_unit_task()
    if len(keys) == 1:
        on_done(keys[0], stage_unit(fn, keys[0], label=f"{label}:{keys[0]}"))
        return
    futures = {stage_unit.submit(fn, key, label=f"{label}:{key}"): key for key in keys}
    for future in as_completed(list(futures)):
        on_done(futures[future], future.result())


def run_stage_flow(stage: Stage, run: StageRun, inputs: list[str] | None = None,
                   upstream: str | None = None) -> dict:
    """Run `stage` under the current control plane: in a Prefect flow, its units as Prefect tasks, a
    progress artifact and a summary table artifact; else its units in local processes and a bar on the
    terminal. It reads `inputs` (ingest), else `run.input_dir`, else the run's `upstream` stage directory."""
    control = current()
    logger = control.logger()
    stage_dir = Path(run.output_dir) if run.output_dir else run.paths().stage(stage.name)
    if inputs is None:
        if run.input_dir:
            inputs = [run.input_dir]
        elif upstream is not None:
            inputs = [str(run.paths().stage(upstream))]
        else:
            raise ValueError(f"{stage.name} needs an input: an upstream stage or an input directory")
    upstream = read_manifest(Path(inputs[0])) if len(inputs) == 1 and Path(inputs[0]).is_dir() else None
    progress = StageProgress(stage.name, run.run_id, logger, control=control, work_dir=stage_dir / WORK_DIR,
                             total_rows=upstream.rows_out if upstream is not None else None)
    t0 = time.perf_counter()
    try:
        outcome = run_stage(stage, run_id=run.run_id, stage_dir=stage_dir, inputs=inputs,
                            mapper=control.mapper(run.workers, run.ray_address), force=run.force, progress=progress,
                            lock_wait=run.wait_for_lock, codec=run.codec)
    finally:
        progress.close()
    summary = stage_summary(outcome, time.perf_counter() - t0)
    if outcome.skipped:
        logger.info("%s is complete for this input and config: skipped (use --force to rerun)", stage.name)
    else:
        logger.info("%s: %s rows in, %s out, %s removed, %s rejected -> %s", stage.name, summary["rows_in"],
                    summary["rows_out"], summary["removed"], summary["rejected"], stage_dir)
    control.table(summary_rows([summary]), key=artifact_key(run.run_id, stage.name),
                  description=f"{stage.name} of run {run.run_id}")
    return summary


class PrefectControl(Control):
    """The control plane inside a Prefect flow run: the run's logger, units as Prefect tasks on the flow's
    task runner, stages as subflows, artifacts in Prefect."""

    def logger(self):
        from prefect import get_run_logger

        return get_run_logger()

    def mapper(self, workers: int, ray_address: str | None = None):
        return prefect_mapper  # the flow's task runner (chosen by `task_runner`) decides where units run

    def call(self, name: str, **kwargs):
        from flows.curate import FLOWS

        flow = FLOWS[name]
        run = kwargs.get("run")
        if run is not None:
            flow = flow.with_options(task_runner=task_runner(run.workers, run.ray_address))
        return flow(**kwargs)

    def table(self, table: list[dict], key: str, description: str) -> None:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(table=table, key=key, description=description)

    def markdown(self, markdown: str, key: str, description: str) -> None:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key=key, description=description)

    records_progress = True  # a Prefect progress artifact

    def progress(self, percent: float, key: str, description: str, artifact_id=None):
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        if artifact_id is None:
            return create_progress_artifact(progress=percent, key=key, description=description)
        update_progress_artifact(artifact_id, progress=percent)
        return artifact_id

    def logs_above(self, console) -> list:
        from flows.progress import prefect_logs_above

        return prefect_logs_above(console)


@cache
def _local_processes():
    from prefect.task_runners import ProcessPoolTaskRunner

    class LocalProcesses(ProcessPoolTaskRunner):
        """Prefect's process pool whose workers end when the command that started them dies (SIGKILL,
        SIGTERM, a crash): no orphan keeps running units or holding memory."""

        def __init__(self, max_workers: int | None = None):
            super().__init__(max_workers=max_workers)
            self._initializer, self._initargs = exit_with_parent, ()  # Prefect's hook for a worker initializer

    return LocalProcesses


def task_runner(workers: int | None, ray_address: str | None = None):
    """Local processes by default; prefect-ray's RayTaskRunner when a Ray address is given
    ('local' starts a Ray instance with `workers` CPUs for the flow run)."""
    if not ray_address:
        return _local_processes()(max_workers=workers)
    from prefect_ray import RayTaskRunner

    if ray_address == "local":
        # address "local": a new instance even when `ray start` runs a cluster on this machine
        return RayTaskRunner(init_kwargs={"address": "local", "num_cpus": workers, "include_dashboard": False})
    return RayTaskRunner(address=ray_address)
