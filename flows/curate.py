"""Prefect flows: one per curate stage, and `curate`, which chains them.

Each stage flow is thin: it resolves the stage's directories, maps the stage's units over the
task runner (local processes by default) as Prefect tasks, and publishes a table artifact
with its counts. The stage logic lives in tasks/.

    loom curate ../shared/data/pretrain/tinyshakespeare.txt --run-id shakespeare
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner
from pydantic import BaseModel, Field

from flows.config import (
    CurateConfig,
    default_run_id,
    default_workers,
    load_run,
    resolve_workdir,
    run_dir,
    save_run,
)
from flows.reporting import StageProgress, artifact_key, stage_summary, summary_rows
from tasks.bias import REPORT_JSON as BIAS_REPORT_JSON
from tasks.bias import REPORT_MD as BIAS_REPORT_MD
from tasks.bias import Bias, BiasConfig
from tasks.exact_dedup import ExactDedup, ExactDedupConfig
from tasks.ingest import Ingest, IngestConfig
from tasks.near_dedup import REPORT_MD, NearDedup, NearDedupConfig
from tasks.pii import Pii, PiiConfig
from tasks.publish import CARD_MD, Publish, PublishConfig
from tasks.stage import Stage, run_stage
from tasks.tokenize import INDEX_FILE, Tokenize, TokenizeConfig

# The stages that exist, in pipeline order; each reads the one before it.
PIPELINE: dict[str, type[Stage]] = {
    "01_ingest": Ingest, "02_exact_dedup": ExactDedup, "03_near_dedup": NearDedup, "04_pii": Pii,
    "05_bias": Bias, "06_publish": Publish,
}


def upstream_of(stage: str) -> str | None:
    names = list(PIPELINE)
    i = names.index(stage)
    return names[i - 1] if i else None


def downstream_of(stage: str) -> list[str]:
    names = list(PIPELINE)
    return names[names.index(stage) + 1:]


class StageRun(BaseModel):
    """Which run a stage works on, and how."""

    run_id: str = Field(description="The run to work on; it lives under <workdir>/runs/<run_id>.")
    workdir: str | None = Field(None, description="Work directory (default: $LOOM_WORKDIR or ./loom-work).")
    force: bool = Field(False, description="Rerun even if complete; the stages after it become stale.")
    workers: int = Field(default_factory=default_workers, ge=1, description="Local processes for shard work.")
    ray_address: str | None = Field(
        None, description="Run shard work on Ray: a cluster address ('auto', 'ray://host:10001') or 'local'."
    )
    input_dir: str | None = Field(None, description="Read this stage directory instead of the run's previous stage.")
    output_dir: str | None = Field(None, description="Write here instead of the run's stage directory.")


@task(cache_policy=NO_CACHE, task_run_name="{label}")
def stage_unit(fn, key: str, label: str) -> dict:
    """Run one unit of a stage (a shard, a partition) and record it as done."""
    return fn(key)


def prefect_mapper(fn, keys, on_done, label):
    """Map units over the flow's task runner; a lone unit runs in the flow's own process."""
    if len(keys) == 1:
        on_done(keys[0], stage_unit(fn, keys[0], label=f"{label}:{keys[0]}"))
        return
    futures = {stage_unit.submit(fn, key, label=f"{label}:{key}"): key for key in keys}
    for future in as_completed(list(futures)):
        on_done(futures[future], future.result())


def _run_stage_flow(stage: Stage, run: StageRun, inputs: list[str] | None = None) -> dict:
    logger = get_run_logger()
    workdir = resolve_workdir(run.workdir)
    stage_dir = Path(run.output_dir) if run.output_dir else run_dir(workdir, run.run_id) / stage.name
    if inputs is None:
        if run.input_dir:
            inputs = [run.input_dir]
        else:
            inputs = [str(run_dir(workdir, run.run_id) / upstream_of(stage.name))]
    progress = StageProgress(stage.name, run.run_id, logger)
    t0 = time.perf_counter()
    try:
        outcome = run_stage(stage, run_id=run.run_id, stage_dir=stage_dir, inputs=inputs,
                            mapper=prefect_mapper, force=run.force, progress=progress)
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


def task_runner(workers: int, ray_address: str | None = None):
    """Local processes by default; prefect-ray's RayTaskRunner when a Ray address is given
    ('local' starts a Ray instance with `workers` CPUs for the flow run)."""
    if not ray_address:
        return ProcessPoolTaskRunner(max_workers=workers)
    from prefect_ray import RayTaskRunner

    if ray_address == "local":
        # address "local": a new instance even when `ray start` runs a cluster on this machine
        return RayTaskRunner(init_kwargs={"address": "local", "num_cpus": workers, "include_dashboard": False})
    return RayTaskRunner(address=ray_address)


@flow(name="ingest", flow_run_name="ingest-{run.run_id}", task_runner=ProcessPoolTaskRunner())
def ingest_flow(run: StageRun, inputs: list[str] | None = None, config: IngestConfig = IngestConfig()) -> dict:
    """01_ingest: read JSONL, Parquet and text files into document shards; bad records go to _rejects/."""
    if inputs is None:
        inputs = load_run(resolve_workdir(run.workdir), run.run_id)[0]
    return _run_stage_flow(Ingest(config), run, inputs)


@flow(name="exact-dedup", flow_run_name="exact-dedup-{run.run_id}", task_runner=ProcessPoolTaskRunner())
def exact_dedup_flow(run: StageRun, config: ExactDedupConfig = ExactDedupConfig()) -> dict:
    """02_exact_dedup: keep the first copy of each normalized text; the rest go to _removed/."""
    return _run_stage_flow(ExactDedup(config), run)


@flow(name="near-dedup", flow_run_name="near-dedup-{run.run_id}", task_runner=ProcessPoolTaskRunner())
def near_dedup_flow(run: StageRun, config: NearDedupConfig = NearDedupConfig()) -> dict:
    """03_near_dedup: MinHash LSH clusters of near duplicates; one document per cluster is kept."""
    return _run_with_report(NearDedup(config), run, REPORT_MD, "near-dedup-report", "Near-duplicate report")


@flow(name="pii", flow_run_name="pii-{run.run_id}", task_runner=ProcessPoolTaskRunner())
def pii_flow(run: StageRun, config: PiiConfig = PiiConfig()) -> dict:
    """04_pii: replace personal data and secrets (Presidio, offline); only counts are reported."""
    return _run_stage_flow(Pii(config), run)


@flow(name="bias", flow_run_name="bias-{run.run_id}", task_runner=ProcessPoolTaskRunner())
def bias_flow(run: StageRun, config: BiasConfig = BiasConfig()) -> dict:
    """05_bias: remove toxic documents, keep those that only mention identities, audit removal by identity."""
    summary = _run_with_report(Bias(config), run, BIAS_REPORT_MD, "bias-report", "Bias audit")
    report = Path(summary["output"]) / BIAS_REPORT_JSON
    if report.exists():
        axes = json.loads(report.read_text())["axes"]
        create_table_artifact(
            table=[{"axis": axis, "documents": a["documents"], "disparity without guard": a["disparity_without_guard"],
                    "disparity": a["disparity"]} for axis, a in axes.items()],
            key=artifact_key(run.run_id, "bias-disparity"), description=f"Removal disparity by identity axis, run {run.run_id}")
    return summary


def _run_with_report(stage: Stage, run: StageRun, report: str, key: str, what: str) -> dict:
    """Run a stage flow, then publish the markdown report it wrote as a Prefect artifact."""
    summary = _run_stage_flow(stage, run)
    path = Path(summary["output"]) / report
    if path.exists():
        create_markdown_artifact(markdown=path.read_text(), key=artifact_key(run.run_id, key),
                                 description=f"{what} of run {run.run_id}")
    return summary


@flow(name="publish", flow_run_name="publish-{run.run_id}", task_runner=ProcessPoolTaskRunner())
def publish_flow(run: StageRun, config: PublishConfig = PublishConfig()) -> dict:
    """06_publish: evenly sized final shards and the dataset card."""
    return _run_with_report(Publish(config), run, CARD_MD, "dataset-card", "Dataset card")


@flow(name="tokenize", flow_run_name="tokenize-{run.run_id}", task_runner=ProcessPoolTaskRunner())
def tokenize_flow(run: StageRun, config: TokenizeConfig = TokenizeConfig()) -> dict:
    """tokens: train (or reuse) a byte-level BPE tokenizer on the published shards and encode them into
    train/validation token shards for pretraining."""
    if not run.input_dir:
        run = run.model_copy(update={"input_dir": str(run_dir(resolve_workdir(run.workdir), run.run_id) / "06_publish")})
    summary = _run_stage_flow(Tokenize(config), run)
    index = Path(summary["output"]) / INDEX_FILE
    if index.exists():
        data = json.loads(index.read_text())
        create_table_artifact(
            table=[{"split": split, **totals} for split, totals in data["totals"].items()],
            key=artifact_key(run.run_id, "tokens"),
            description=f"Token shards of run {run.run_id} (vocab {data['vocab_size']:,}, {data['dtype']})")
    return summary


STAGE_FLOWS = {
    "01_ingest": ingest_flow, "02_exact_dedup": exact_dedup_flow, "03_near_dedup": near_dedup_flow,
    "04_pii": pii_flow, "05_bias": bias_flow, "06_publish": publish_flow,
}


def run_one_stage(stage: str, run: StageRun, config: BaseModel, inputs: list[str] | None = None) -> dict:
    """Call one stage's flow with the run's worker count (a subflow when called inside a flow)."""
    kwargs = {"run": run, "config": config}
    if stage == "01_ingest":
        kwargs["inputs"] = inputs
    return STAGE_FLOWS[stage].with_options(task_runner=task_runner(run.workers, run.ray_address))(**kwargs)


@flow(name="curate", flow_run_name="curate-{run_id}")
def curate_flow(
    inputs: list[str],
    run_id: str | None = None,
    workdir: str | None = None,
    config: CurateConfig = CurateConfig(),
    force: bool = False,
) -> list[dict]:
    """Ingest, deduplicate and publish a corpus; each stage is skipped when already complete."""
    run_id = run_id or default_run_id(inputs)
    save_run(resolve_workdir(workdir), run_id, inputs, config)
    summaries = []
    for stage in PIPELINE:
        run = StageRun(run_id=run_id, workdir=workdir, force=force, workers=config.workers,
                       ray_address=config.ray_address)
        summaries.append(run_one_stage(stage, run, config.for_stage(stage), inputs))
    create_table_artifact(table=summary_rows(summaries), key=artifact_key(run_id, "curate"),
                          description=f"Curate summary of run {run_id}")
    return summaries
