"""Prefect deployments of every Loom flow, for the UI: run, rerun one step, schedule.

    loom serve                          # all deployments, served from this process (no work pool)
    loom deploy --work-pool loom        # register them with the server for a process work pool

The same deployments are declared in `infra/prefect.yaml` for `prefect deploy --all`.
Declared schedules are created inactive, and only when a deployment is first created: on
every later `loom serve` / `loom deploy` the schedules are left out of the update, so a
schedule a person created, edited or paused in the UI is never overwritten.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from flows.curate import (
    bias_flow,
    curate_flow,
    decontaminate_flow,
    exact_dedup_flow,
    ingest_flow,
    near_dedup_flow,
    pii_flow,
    publish_flow,
    quality_flow,
    tokenize_flow,
)
from flows.pipeline import pipeline_flow
from flows.train import evaluate_flow, finetune_flow, pretrain_flow

TAGS = ["loom"]
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LoomDeployment:
    flow: object
    name: str
    description: str
    schedules: list = field(default_factory=list)  # created inactive, on first deployment only


def _nightly(slug: str, run_id: str):
    """Created switched off (people switch it on in the UI). It reruns one run by id: the run's recorded
    inputs, instruction data and config are reused, and only what changed is redone. (Prefect 3.8's server
    empties these parameters when the schedule is switched on; the pipeline then reruns "nightly" anyway.)"""
    from prefect.schedules import Cron

    return Cron("0 2 * * *", active=False, slug=slug, parameters={"run_id": run_id})


DEPLOYMENTS = [
    LoomDeployment(pipeline_flow, "loom-pipeline", "Curate -> tokenize -> pretrain -> finetune -> evaluate; "
                   "start_at resumes from a step.", [_nightly("nightly", "nightly")]),
    LoomDeployment(curate_flow, "loom-curate", "Every curate stage, each skipped when complete."),
    LoomDeployment(ingest_flow, "loom-ingest", "01_ingest of a run (its inputs from run.json unless given)."),
    LoomDeployment(exact_dedup_flow, "loom-exact-dedup", "02_exact_dedup of a run; force reruns it."),
    LoomDeployment(quality_flow, "loom-quality", "03_quality of a run (language ID, quality filters); force reruns "
                   "it."),
    LoomDeployment(near_dedup_flow, "loom-near-dedup", "04_near_dedup of a run; force reruns it."),
    LoomDeployment(pii_flow, "loom-pii", "05_pii of a run; force reruns it."),
    LoomDeployment(bias_flow, "loom-bias", "06_bias of a run; force reruns it."),
    LoomDeployment(decontaminate_flow, "loom-decontaminate", "07_decontaminate of a run (with [decontaminate] "
                   "eval_sets); force reruns it."),
    LoomDeployment(publish_flow, "loom-publish", "08_publish of a run; force reruns it."),
    LoomDeployment(tokenize_flow, "loom-tokenize", "BPE tokenizer and token shards of a run's published data."),
    LoomDeployment(pretrain_flow, "loom-pretrain", "Pretrain on Ray Train + DeepSpeed; resumes from the last good "
                   "checkpoint."),
    LoomDeployment(finetune_flow, "loom-finetune", "Fine-tune a checkpoint on instruction data."),
    LoomDeployment(evaluate_flow, "loom-evaluate", "Evaluate a checkpoint."),
]


def entrypoint(flow) -> str:
    """'flows/curate.py:ingest_flow': the module and name that hold the Flow object (a stage flow wraps a
    plain call of flows/stages.py, so the function's own file and name would load a plain function)."""
    import sys

    for module in ("flows.curate", "flows.pipeline", "flows.train"):
        names = [name for name, value in vars(sys.modules[module]).items() if value is flow]
        if names:
            source = Path(sys.modules[module].__file__).resolve().relative_to(REPO_ROOT)
            return f"{source.as_posix()}:{names[0]}"
    raise ValueError(f"flow {flow.name} is not defined in flows/curate.py, flows/pipeline.py or flows/train.py")


def existing_deployments() -> set[str]:
    """'flow/deployment' names of ours the server already has."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found = set()
    with get_client(sync_client=True) as client:
        for d in DEPLOYMENTS:
            name = f"{d.flow.name}/{d.name}"
            try:
                client.read_deployment_by_name(name)
                found.add(name)
            except ObjectNotFound:
                pass
    return found


def runner_deployments(existing: set[str] | None = None, job_variables: dict | None = None) -> list:
    """RunnerDeployments of every flow; schedules only on those the server does not have yet."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    existing = existing_deployments() if existing is None else existing
    out = []
    for d in DEPLOYMENTS:
        first_time = f"{d.flow.name}/{d.name}" not in existing
        # one run of a deployment at a time: a schedule that overlaps a manual run queues behind it (Prefect's
        # ENQUEUE collision strategy) instead of racing it for the same stage directories
        deployment = d.flow.to_deployment(name=d.name, description=d.description, tags=TAGS,
                                          schedules=d.schedules if first_time else None,
                                          job_variables=job_variables,
                                          concurrency_limit=ConcurrencyLimitConfig(
                                              limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE))
        # relative to the project whatever the current directory (Prefect makes it relative to the current
        # one: `../work/loom/flows/...` from elsewhere); serve and the process worker run from the project
        deployment.entrypoint = entrypoint(d.flow)
        if not first_time:
            # Prefect sends `schedules: []` for a deployment built without schedules, and the server
            # then deletes the ones people made in the UI: leave the field out of the update instead.
            deployment.schedules = None
            deployment.__pydantic_fields_set__.discard("schedules")
        out.append(deployment)
    return out


def serve_all(limit: int | None = None) -> None:
    """Serve every deployment from this process (Ctrl-C stops); the UI's state is left alone on exit."""
    from prefect import serve

    os.chdir(REPO_ROOT)  # flow runs load their entrypoints (relative to the project) from here
    serve(*runner_deployments(), pause_on_shutdown=False, limit=limit)


def deploy_all(work_pool: str) -> list[str]:
    """Register every deployment for a process work pool on the configured server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(work_pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=work_pool, type="process"))
    ids = []
    # the worker runs flows from this checkout, whatever directory it was started in
    for deployment in runner_deployments(job_variables={"working_dir": str(REPO_ROOT)}):
        ids.append(str(deployment.apply(work_pool_name=work_pool)))
    return ids
