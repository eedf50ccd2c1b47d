"""Prefect flows: one per curate stage, `curate`, which chains them, `step`, `gc` and `tokenize`.

Each flow is the call of the same name in flows/stages.py, run as a Prefect flow: its units become
Prefect tasks on the flow's task runner (local processes by default), the stages `curate` chains become
subflows, and counts become table artifacts. The deployments in infra/prefect.yaml point here.

    loom curate ../shared/data/pretrain/tinyshakespeare.txt --run-id shakespeare --prefect
"""

from __future__ import annotations

from prefect import flow

from flows import stages
from flows.stage_flow import task_runner
from flows.stages import (  # noqa: F401  (what callers of the flows use beside them)
    PIPELINE,
    StageRun,
    active_stages,
    require_fresh,
    run_config,
    run_one_stage,
    stale_after,
)


def _stage_flow(name: str, fn):
    return flow(name=name, flow_run_name=name + "-{run.run_id}", task_runner=task_runner(None))(fn)


ingest_flow = _stage_flow("ingest", stages.ingest)
exact_dedup_flow = _stage_flow("exact-dedup", stages.exact_dedup)
quality_flow = _stage_flow("quality", stages.quality)
near_dedup_flow = _stage_flow("near-dedup", stages.near_dedup)
pii_flow = _stage_flow("pii", stages.pii)
bias_flow = _stage_flow("bias", stages.bias)
decontaminate_flow = _stage_flow("decontaminate", stages.decontaminate)
publish_flow = _stage_flow("publish", stages.publish)
tokenize_flow = _stage_flow("tokenize", stages.tokenize)
curate_flow = flow(name="curate", flow_run_name="curate-{run_id}")(stages.curate)
gc_flow = flow(name="gc", flow_run_name="gc-{run_id}")(stages.gc)
step_flow = flow(name="step", flow_run_name="step-{stage}-{run_id}")(stages.step)

# what PrefectControl.call runs by name, as subflows
FLOWS = {
    stages.Ingest.name: ingest_flow, stages.ExactDedup.name: exact_dedup_flow, stages.Quality.name: quality_flow,
    stages.NearDedup.name: near_dedup_flow, stages.Pii.name: pii_flow, stages.Bias.name: bias_flow,
    stages.Decontaminate.name: decontaminate_flow, stages.Publish.name: publish_flow, "gc": gc_flow,
}
