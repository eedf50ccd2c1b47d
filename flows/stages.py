"""The curate stages as calls: one per stage, `curate`, which chains them, `step` and `gc`. flows/curate.py
makes each a Prefect flow; run under `using(Control())` (flows/control.py) they run without Prefect.

Each call is thin: it resolves the stage's directories, maps the stage's units over local processes
(Prefect tasks on the flow's task runner in a flow run) and reports its counts (a table artifact in
Prefect). The stage logic lives in tasks/.

    loom curate ../shared/data/pretrain/tinyshakespeare.txt --run-id shakespeare
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from flows.config import CurateConfig, default_run_id, load_run, record_stage_config, save_run
from flows.control import current
from flows.reporting import artifact_key, embed_images, summary_rows
from flows.stage_flow import StageRun, run_stage_flow
from tasks.bias import REPORT_JSON as BIAS_REPORT_JSON
from tasks.bias import REPORT_MD as BIAS_REPORT_MD
from tasks.bias import Bias, BiasConfig
from tasks.decontaminate import REPORT_MD as DECONTAMINATION_REPORT_MD
from tasks.decontaminate import Decontaminate, DecontaminateConfig
from tasks.exact_dedup import ExactDedup, ExactDedupConfig
from tasks.ingest import Ingest, IngestConfig
from tasks.layout import RunPaths, stage_dir_name
from tasks.manifest import read_manifest
from tasks.near_dedup import REPORT_JSON as NEAR_DEDUP_REPORT_JSON
from tasks.near_dedup import NearDedup, NearDedupConfig
from tasks.near_dedup_report import render_report as render_near_dedup_report
from tasks.pii import Pii, PiiConfig
from tasks.publish import CARD_MD, Publish, PublishConfig
from tasks.quality import Quality, QualityConfig
from tasks.retention import collect
from tasks.stage import Stage, run_statuses
from tasks.tokenize import INDEX_FILE, Tokenize, TokenizeConfig

# The stages that exist, in pipeline order; each reads the one before it that is on.
PIPELINE: dict[str, type[Stage]] = {
    stage.name: stage for stage in (Ingest, ExactDedup, Quality, NearDedup, Pii, Bias, Decontaminate, Publish)
}


def active_stages(config: CurateConfig) -> list[str]:
    """The run's stages in order, without those its config turns off (directory numbers stay);
    decontamination runs when there is evaluation data to keep out."""
    off = {stage_dir_name(s) for s in config.stages_off}
    if not config.decontaminate.eval_sets:
        off.add(Decontaminate.name)
    return [s for s in PIPELINE if s not in off]


def run_config(paths: RunPaths) -> CurateConfig:
    """The config a run recorded; the defaults for a run without one."""
    try:
        return load_run(paths)[1]
    except FileNotFoundError:
        return CurateConfig()


def upstream_of(stage: str, active: list[str] | None = None) -> str | None:
    names = active or active_stages(CurateConfig())
    before = [s for s in names if s < stage]
    return before[-1] if before else None


def downstream_of(stage: str, active: list[str] | None = None) -> list[str]:
    return [s for s in active or active_stages(CurateConfig()) if s > stage]


def _run_stage_flow(stage: Stage, run: StageRun, inputs: list[str] | None = None) -> dict:
    active = active_stages(run_config(run.paths())) if not run.output_dir else None
    upstream = upstream_of(stage.name, active) if stage.name in PIPELINE else None
    summary = run_stage_flow(stage, run, inputs, upstream=upstream)
    if stage.name in PIPELINE and not run.output_dir and run.report_stale and summary["status"] != "skipped":
        _say_stale(run, stage.name)
    return summary


def _config_of(run: StageRun, section: str, given: BaseModel | None) -> BaseModel:
    """The config a stage flow runs with. In a run: the one given, which is then recorded in the run's
    run.json, or else the one the run recorded (a rerun from the Prefect UI with only a run id behaves as
    `loom step --run-id` does). Outside a run: the one given, or the defaults."""
    default = CurateConfig.model_fields[section].default_factory()
    if run.output_dir:
        return given or default
    paths = run.paths()
    if given is None:
        try:
            return getattr(load_run(paths)[1], section)
        except FileNotFoundError:
            return default
    record_stage_config(paths, section, given)
    return given


def require_fresh(paths: RunPaths, tokens: bool) -> None:
    """Refuse to train on stale data: the published shards (and with `tokens`, the token shards made from
    them) must be complete and made from the current output of every stage before them."""
    from tasks.stage import stage_status

    last = run_statuses(paths.root, active_stages(run_config(paths)))[-1]
    problem = None if last.status == "complete" else f"its published shards are {last.status}" + (
        f" ({last.reason})" if last.reason else "")
    if problem is None and tokens:
        status = stage_status(paths.tokens, paths.published)
        if status.status != "complete":
            problem = f"its token shards are {status.status}" + (f" ({status.reason})" if status.reason else "")
    if problem:
        fix = "loom tokenize --force" if tokens and last.status == "complete" else "loom curate (or loom step)"
        raise ValueError(f"run {paths.run_id}: {problem}. Rerun `{fix} --run-id {paths.run_id}` first, or pass "
                         "--allow-stale to use them as they are.")


def stale_after(paths: RunPaths, stage: str) -> list[str]:
    """The stages after `stage` of a run that are stale now."""
    active = active_stages(run_config(paths))
    statuses = {s.stage: s for s in run_statuses(paths.root, active)}
    return [s for s in downstream_of(stage, active) if statuses[s].status == "stale"]


def _say_stale(run: StageRun, stage: str) -> None:
    """After a rerun of one stage: which later stages are stale, in the log and as an artifact."""
    stale = stale_after(run.paths(), stage)
    if not stale:
        return
    current().logger().warning("%s reran: %s now stale (rerun them with `loom step <stage> --run-id %s` or "
                               "`loom curate`)", stage, ", ".join(stale), run.run_id)
    current().markdown(
        f"# Stale stages in run {run.run_id}\n\n{stage} reran, so these stages were made from its old output:\n\n"
        + "".join(f"- {s}\n" for s in stale)
        + f"\nRerun them (`loom step <stage> --run-id {run.run_id}`, or `loom curate`).\n",
        key=artifact_key(run.run_id, "stale"), description=f"Stale stages of run {run.run_id}")


def ingest(run: StageRun, inputs: list[str] | None = None, config: IngestConfig | None = None) -> dict:
    """01_ingest: read JSONL, Parquet and text files into document shards; bad records go to _rejects/."""
    if inputs is None:
        inputs = load_run(run.paths())[0]
    return _run_stage_flow(Ingest(_config_of(run, "ingest", config)), run, inputs)


def exact_dedup(run: StageRun, config: ExactDedupConfig | None = None) -> dict:
    """02_exact_dedup: keep the first copy of each normalized text; the rest go to _removed/."""
    return _run_stage_flow(ExactDedup(_config_of(run, "exact_dedup", config)), run)


def quality(run: StageRun, config: QualityConfig | None = None) -> dict:
    """03_quality: language ID and the Gopher, C4 and FineWeb filters; every removal's reason in _removed/."""
    summary = _run_stage_flow(Quality(_config_of(run, "quality", config)), run)
    languages = read_manifest(Path(summary["output"])).stats.get("languages", {})
    if languages:
        current().table([{"language": k, "documents": v} for k, v in languages.items()],
                        key=artifact_key(run.run_id, "languages"), description=f"Languages of run {run.run_id}")
    return summary


def near_dedup(run: StageRun, config: NearDedupConfig | None = None) -> dict:
    """04_near_dedup: MinHash LSH clusters of near duplicates; one document per cluster is kept."""
    return _run_with_report(NearDedup(_config_of(run, "near_dedup", config)), run, _near_dedup_artifact, "near-dedup-report", "Near-duplicate report")


def _near_dedup_artifact(stage_dir: Path) -> str | None:
    """The near-dedup report for the control plane: where the documents are and their similarities, no
    text (the stage directory's own report, in the data plane, shows their opening words)."""
    path = stage_dir / NEAR_DEDUP_REPORT_JSON
    if not path.exists():
        return None
    return embed_images(render_near_dedup_report(json.loads(path.read_text()), with_text=False), stage_dir)


def pii(run: StageRun, config: PiiConfig | None = None) -> dict:
    """05_pii: replace personal data and secrets (Presidio, offline); only counts are reported."""
    return _run_stage_flow(Pii(_config_of(run, "pii", config)), run)


def bias(run: StageRun, config: BiasConfig | None = None) -> dict:
    """06_bias: remove toxic documents, keep those that only mention identities, audit removal by identity."""
    summary = _run_with_report(Bias(_config_of(run, "bias", config)), run, _markdown_file(BIAS_REPORT_MD), "bias-report", "Bias audit")
    report = Path(summary["output"]) / BIAS_REPORT_JSON
    if report.exists():
        axes = json.loads(report.read_text())["axes"]
        current().table(
            [{"axis": axis, "documents": a["documents"], "disparity without guard": a["disparity_without_guard"],
              "disparity": a["disparity"]} for axis, a in axes.items()],
            key=artifact_key(run.run_id, "bias-disparity"),
            description=f"Removal disparity by identity axis, run {run.run_id}")
    return summary


def _markdown_file(name: str):
    """A report the stage wrote in markdown, as it is (for reports that hold counts and names of terms only),
    its images beside it embedded: the Prefect UI cannot reach a file in the work directory."""
    return lambda stage_dir: embed_images((stage_dir / name).read_text(), stage_dir) if (stage_dir / name).exists() \
        else None


def _run_with_report(stage: Stage, run: StageRun, render, key: str, what: str) -> dict:
    """Run a stage flow, then publish its report as a Prefect artifact: `render(stage_dir)` gives the
    markdown, which must carry no document text (Prefect is the control plane)."""
    summary = _run_stage_flow(stage, run)
    markdown = render(Path(summary["output"]))
    if markdown is not None:
        current().markdown(markdown, key=artifact_key(run.run_id, key),
                           description=f"{what} of run {run.run_id}")
    return summary


def decontaminate(run: StageRun, config: DecontaminateConfig | None = None) -> dict:
    """07_decontaminate: remove documents sharing 13-word runs with evaluation data; report the items that leaked."""
    return _run_with_report(Decontaminate(_config_of(run, "decontaminate", config)), run,
                            _markdown_file(DECONTAMINATION_REPORT_MD), "decontamination", "Decontamination report")


def publish(run: StageRun, config: PublishConfig | None = None) -> dict:
    """08_publish: evenly sized final shards and the dataset card."""
    return _run_with_report(Publish(_config_of(run, "publish", config)), run, _markdown_file(CARD_MD), "dataset-card", "Dataset card")


def tokenize(run: StageRun, config: TokenizeConfig | None = None, allow_stale: bool = False) -> dict:
    """tokens: train (or reuse) a byte-level BPE tokenizer on the published shards and encode them into
    train/validation token shards for pretraining.

    Args:
        run: The run: its id, workdir, workers and Ray address.
        config: Tokenizer settings ([tokenize]). Default: the run's recorded config.
        allow_stale: Tokenize even when an upstream stage changed since publish.
    """
    if not run.input_dir:
        if not allow_stale:
            require_fresh(run.paths(), tokens=False)
        run = run.model_copy(update={"input_dir": str(run.paths().published)})
    published = read_manifest(Path(run.input_dir))
    if published is not None and published.rows_out == 0:  # a tokenizer trained on nothing helps nobody
        raise ValueError(f"{published.stage} of run {run.run_id} holds no documents, so there is nothing to tokenize "
                         f"(`loom runs {run.run_id}` shows what each stage removed and rejected)")
    summary = _run_stage_flow(Tokenize(_config_of(run, "tokenize", config)), run)
    index = Path(summary["output"]) / INDEX_FILE
    if index.exists():
        data = json.loads(index.read_text())
        current().table(
            [{"split": split, **totals} for split, totals in data["totals"].items()], key=artifact_key(run.run_id, "tokens"),
            description=f"Token shards of run {run.run_id} (vocab {data['vocab_size']:,}, {data['dtype']})")
    return summary


STAGES = {
    Ingest.name: ingest, ExactDedup.name: exact_dedup, Quality.name: quality, NearDedup.name: near_dedup,
    Pii.name: pii, Bias.name: bias, Decontaminate.name: decontaminate, Publish.name: publish,
}


def _stage_run(config: CurateConfig, run_id: str, **fields) -> StageRun:
    """A stage's run settings from the run's config: workers, Ray address, shard codec."""
    return StageRun(run_id=run_id, workers=config.workers, ray_address=config.ray_address, codec=config.shard_codec,
                    **fields)


def run_one_stage(stage: str, run: StageRun, config: BaseModel, inputs: list[str] | None = None) -> dict:
    """Call one stage with the run's worker count (in a flow run: its subflow)."""
    kwargs = {"run": run, "config": config}
    if stage == Ingest.name:
        kwargs["inputs"] = inputs
    return current().call(stage, **kwargs)


def curate(
    inputs: list[str],
    run_id: str | None = None,
    workdir: str | None = None,
    config: CurateConfig = CurateConfig(),
    force: bool = False,
    wait_for_lock: float = 0.0,
) -> list[dict]:
    """Ingest, deduplicate and publish a corpus; each stage is skipped when already complete.

    Args:
        inputs: Corpus files, directories or globs (JSONL, Parquet, text; .gz/.zst; local paths or s3://...).
        run_id: Name of the run; its data lives in WORKDIR/runs/RUN_ID. Default: derived from the inputs.
        workdir: Where runs live (the data plane). Default: $LOOM_WORKDIR, else ./loom-work.
        config: Every stage's settings (the [sections] of loom.toml).
        force: Redo every stage, even complete ones.
        wait_for_lock: Seconds to wait for another run holding a stage's lock (0: fail at once).
    """
    run_id = run_id or default_run_id(inputs)
    save_run(RunPaths.of(workdir, run_id), inputs, config)
    summaries = []
    for stage in active_stages(config):
        run = _stage_run(config, run_id, workdir=workdir, force=force, wait_for_lock=wait_for_lock,
                         report_stale=False)
        summaries.append(run_one_stage(stage, run, config.for_stage(stage), inputs))
    current().table(summary_rows(summaries), key=artifact_key(run_id, "curate"),
                    description=f"Curate summary of run {run_id}")
    if config.retention.after_publish == "delete":
        current().call("gc", run_id=run_id, workdir=workdir, rejects=config.retention.rejects)
    return summaries


def gc(run_id: str, workdir: str | None = None, rejects: str = "redact") -> dict:
    """Delete a published run's pre-PII data (shards, removed documents, raw rejects, report excerpts, the
    map of original ids); manifests and counts stay.

    Args:
        run_id: The run to collect (WORKDIR/runs/RUN_ID).
        workdir: Where runs live. Default: $LOOM_WORKDIR, else ./loom-work.
        rejects: What happens to rejected raw records: redact (keep reasons, drop text), keep or delete.
    """
    report = collect(RunPaths.of(workdir, run_id).root, rejects=rejects)
    current().logger().info("gc of run %s: %s stage(s) collected, %.1f MB freed", run_id, len(report["stages"]),
                          report["bytes_freed"] / 1e6)
    current().table([{"stage": s, **done} for s, done in report["stages"].items()] or [{"stage": "none"}],
                    key=artifact_key(run_id, "gc"), description=f"Retention: what run {run_id} deleted")
    return report


def step(stage: str, inputs: list[str], output_dir: str, run_id: str, config: CurateConfig = CurateConfig(),
              force: bool = False, wait_for_lock: float = 0.0) -> list[dict]:
    """One stage on any input, outside a run: the inputs go through ingest first (into
    `<output_dir>/_ingest`) unless the stage is ingest itself; the stage writes `output_dir`.

    Args:
        stage: The stage to run (exact_dedup, quality, near_dedup, pii, bias, decontaminate, publish, ingest).
        inputs: Files, directories or globs to run it on.
        output_dir: Where the stage writes its shards and manifest.
        run_id: Name recorded in the manifest.
        config: Every stage's settings (the [sections] of loom.toml).
        force: Redo the stage even when complete.
        wait_for_lock: Seconds to wait for another run holding the stage's lock.
    """
    summaries, stage_input = [], None
    if stage != Ingest.name:  # any input goes through the ingest reader first
        ingest_dir = str(Path(output_dir) / "_ingest")
        run = _stage_run(config, run_id, output_dir=ingest_dir, force=force, wait_for_lock=wait_for_lock)
        summaries.append(run_one_stage(Ingest.name, run, config.ingest, inputs))
        stage_input = ingest_dir
    run = _stage_run(config, run_id, output_dir=output_dir, input_dir=stage_input, force=force,
                     wait_for_lock=wait_for_lock)
    summaries.append(run_one_stage(stage, run, config.for_stage(stage), inputs if stage == Ingest.name else None))
    return summaries


CALLS = {**STAGES, "gc": gc}  # what Control.call runs by name (a subflow each in a flow run)
