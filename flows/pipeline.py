"""The whole pipeline as one flow: curate -> tokenize -> pretrain -> finetune -> evaluate.

Each step is its own subflow and skips what is already done (stage manifests, a final
checkpoint), so rerunning a failed pipeline resumes from the step that failed; a killed
training step resumes from its last good checkpoint.

    loom pipeline corpus/ --sft-data instructions.jsonl --run-id r1 [--config loom.toml]
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.config import CurateConfig, default_run_id, load_pipeline_run, record_sft_data
from flows.curate import curate_flow, tokenize_flow
from flows.reporting import artifact_key
from flows.stage_flow import StageRun, task_runner
from flows.train import evaluate_flow, finetune_flow, pretrain_flow, sft_ingest_flow
from tasks.layout import RunPaths
from tasks.sft import HELDOUT_EVAL_SET, write_heldout_eval_set

SCHEDULED_RUN = "nightly"  # what a pipeline run given neither inputs nor run_id reruns (the nightly schedule)
STEPS = ("curate", "tokenize", "pretrain", "finetune", "evaluate")


def keep_evaluation_out(config: CurateConfig, heldout: str | None = None) -> CurateConfig:
    """The evaluation sets `loom evaluate` will use (GSM8K, CrowS-Pairs, and `heldout`: the fine-tuning
    examples held out for its held-out scores) become decontamination's, so a pipeline never evaluates a
    model on what it trained on."""
    sets = [s for s in (config.evaluate.gsm8k, config.evaluate.crows_pairs, heldout) if s]
    missing = [s for s in sets if s not in config.decontaminate.eval_sets]
    if not missing:
        return config
    decontaminate = config.decontaminate.model_copy(update={"eval_sets": [*config.decontaminate.eval_sets, *missing]})
    return config.model_copy(update={"decontaminate": decontaminate})


def heldout_eval_set(sft_data: list[str], config: CurateConfig, paths: RunPaths, run_id: str) -> str:
    """The instruction examples fine-tuning will hold out, as an evaluation file in the run: read now by the
    same ingest the fine-tune runs (which then finds it done), split by the same seeded hash of their ids."""
    examples = paths.finetune / "data" / "01_ingest"
    sft_ingest_flow(config.ingest, StageRun(run_id=run_id, output_dir=str(examples), workers=1),
                    [str(Path(d).absolute()) for d in sft_data])
    out = paths.root / "eval" / HELDOUT_EVAL_SET
    count = write_heldout_eval_set(examples, config.finetune.val_fraction, config.finetune.seed, out)
    get_run_logger().info("%d held-out instruction example(s) kept out of the pretraining data", count)
    return str(out)


@flow(name="pipeline", flow_run_name="pipeline-{run_id}")
def pipeline_flow(inputs: list[str] | None = None, sft_data: list[str] | None = None, run_id: str | None = None,
                  workdir: str | None = None, config: CurateConfig | None = None,
                  start_at: Literal["curate", "tokenize", "pretrain", "finetune", "evaluate"] = "curate") -> dict:
    """Curate a corpus, tokenize it, pretrain a GPT, fine-tune it on instruction data and evaluate it.
    Finished steps are skipped anyway; `start_at` does not even look at the steps before it.

    Args:
        inputs: Corpus files, directories or globs (JSONL, Parquet, text; .gz/.zst; local paths or s3://...).
            Empty: the inputs the run was started with (its run.json), so a scheduled run re-curates the same
            sources and redoes only the stages whose inputs changed.
        sft_data: Instruction data for fine-tuning (chat, Alpaca or question/answer records). Empty: the run's
            recorded ones; none at all skips fine-tuning.
        run_id: Name of the run; its data lives in WORKDIR/runs/RUN_ID. Default: derived from the inputs;
            with no inputs either, "nightly" (the run the shipped schedule reruns).
        workdir: Where runs live (the data plane). Default: $LOOM_WORKDIR, else ./loom-work.
        config: Every stage's settings (the [sections] of loom.toml). Empty with no inputs: the run's recorded
            config.
        start_at: First step to run; the steps before it are not looked at.
    """
    logger = get_run_logger()
    if not inputs:  # a scheduled rerun: what the run was started with
        # the shipped schedule's run; not only from its parameters: Prefect 3.8's server empties a schedule's
        # parameters whenever it is switched on or off (its PATCH defaults them to {})
        run_id = run_id or SCHEDULED_RUN
        paths = RunPaths.of(workdir, run_id)
        if not paths.run_file.exists():
            raise ValueError(f"no inputs given and run {run_id!r} was never started: give the corpus (inputs), or "
                             "start that run once with its inputs; later runs reuse its inputs and config")
        inputs, recorded_sft, recorded_config = load_pipeline_run(paths)
        sft_data = recorded_sft if sft_data is None else sft_data
        config = config or recorded_config
        logger.info("run %s: reusing its %d recorded input(s)", run_id, len(inputs))
    sft_data, config = sft_data or [], config or CurateConfig()
    run_id = run_id or default_run_id(inputs)
    paths = RunPaths.of(workdir, run_id)
    wd = paths.workdir
    first = STEPS.index(start_at)
    out: dict = {"run_id": run_id, "start_at": start_at}
    if first <= 0:
        config = keep_evaluation_out(config, heldout_eval_set(sft_data, config, paths, run_id) if sft_data else None)
        out["curate"] = curate_flow(inputs=inputs, run_id=run_id, workdir=str(wd), config=config)
        record_sft_data(paths, sft_data)
    if first <= 1:
        out["tokenize"] = tokenize_flow.with_options(task_runner=task_runner(config.workers, config.ray_address))(
            run=StageRun(run_id=run_id, workdir=str(wd), workers=config.workers, ray_address=config.ray_address),
            config=config.tokenize)
    if first <= 2:
        out["pretrain"] = pretrain_flow(run_id=run_id, workdir=str(wd), config=config.pretrain,
                                        ray_address=config.ray_address)
    checkpoint = str(paths.train)
    if sft_data and first <= 3:
        out["finetune"] = finetune_flow(checkpoint=checkpoint, data=sft_data, run_id=run_id,
                                        output_dir=str(paths.finetune), config=config.finetune,
                                        ray_address=config.ray_address, ingest=config.ingest, pii=config.pii)
    if sft_data:
        checkpoint = str(paths.finetune)
    else:
        logger.info("no instruction data given: fine-tuning skipped, the pretrained model is evaluated")
    out["evaluate"] = evaluate_flow(checkpoint=checkpoint, run_id=run_id, config=config.evaluate)
    out["checkpoint"] = checkpoint
    done = {
        "curate": lambda r: (f"{r[-1]['rows_out']:,} documents", r[-1]["output"]),
        "tokenize": lambda r: (r["status"], r["output"]),
        "pretrain": lambda r: (f"val loss {r['val_loss']:.3f}", r["output"]),
        "finetune": lambda r: (f"val loss {r['val_loss']:.3f}", r["output"]),
        "evaluate": lambda r: (f"{len(r['rows'])} metrics", r["output"]),
    }
    create_table_artifact(table=[{"step": step, "result": done[step](out[step])[0], "output": done[step](out[step])[1]}
                                 for step in STEPS if step in out],
                          key=artifact_key(run_id, "pipeline"), description=f"Pipeline run {run_id}")
    logger.info("pipeline %s done: %s", run_id, Path(checkpoint))
    return out
