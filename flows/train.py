"""Training flows: pretrain, finetune and evaluate. Pretraining and fine-tuning hand off to
Ray Train + DeepSpeed (`training.launch`) and stream progress back.

    loom pretrain --run-id r1 [--num-workers 2] [--ray-address auto]
    loom finetune --from loom-work/runs/r1/train --data sft.jsonl --mode lora
    loom evaluate --checkpoint loom-work/runs/r1/finetune --crows-pairs crows_pairs.csv

While Ray trains, a watcher follows the metrics file: a live line on the terminal and a
Prefect progress artifact. At the end: a table artifact of checkpoints and the last metrics,
and a loss-curve PNG in the run's train/ directory (also a markdown artifact).
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows.reporting import artifact_key, console
from flows.stage_flow import StageRun, run_stage_flow
from tasks.ingest import Ingest, IngestConfig
from tasks.layout import CHECKPOINTS_DIR, RunPaths
from tasks.pii import Pii, PiiConfig
from tasks.sft import SftConfig, SftTokenize, instruction_record
from tasks.tokenize import INDEX_FILE
from training.checkpoint import (
    CHECKPOINT_MANIFEST,
    METRICS_FILE,
    RUN_INFO,
    checkpoint_tags,
    has_info,
    last_metrics,
    last_val_loss,
    latest_good_checkpoint,
    read_info,
    resolve_checkpoint,
    tokenizer_path,
    training_output_of,
)
from training.config import EvaluateConfig, FinetuneConfig, PretrainConfig

LOSS_PNG = "loss.png"


class _Watcher(threading.Thread):
    """Follows metrics.jsonl: a progress artifact and a terminal line, every few seconds."""

    def __init__(self, metrics: Path, steps: int, run_id: str, kind: str = "pretrain"):
        super().__init__(daemon=True)
        self.metrics, self.steps, self.run_id, self.kind = metrics, steps, run_id, kind
        self.done = threading.Event()
        self.artifact = None
        self.shown = 0

    def run(self) -> None:
        while not self.done.wait(3.0):
            self.poll()

    def poll(self) -> None:
        last = last_metrics(self.metrics.parent)
        if not last or last["step"] == self.shown:
            return
        self.shown = last["step"]
        if self.artifact is not None:
            with contextlib.suppress(Exception):  # progress is a courtesy; never fail training over it
                update_progress_artifact(self.artifact, progress=100.0 * last["step"] / self.steps)
        rate = f"{last['tokens_per_s']:,.0f} tok/s" if last.get("tokens_per_s") else ""
        console.print(f"{self.kind} step {last['step']}/{self.steps}  loss {last['loss']:.3f}  {rate}", highlight=False)


def loss_curve(metrics_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {}
    for line in metrics_path.read_text().splitlines():
        m = json.loads(line)
        rows[m["step"]] = m  # a resumed run rewrites steps; the last word counts
    steps = sorted(rows)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, [rows[s]["loss"] for s in steps], label="train loss", linewidth=1)
    val = [(s, rows[s]["val_loss"]) for s in steps if "val_loss" in rows[s]]
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _final_checkpoint(out: Path, steps: int, logger) -> Path | None:
    """The run's last checkpoint when training already reached `steps` (a rerun skips the work). Damaged
    checkpoints passed over (training resumes from the one before) are said on the console and in the log."""
    def say(message: str) -> None:
        logger.warning("%s: %s; resuming from the newest good one", out.name, message)
        console.print(f"[yellow]{out.name}: {message}; resuming from the newest good one[/yellow]", highlight=False)

    ckpts = out / CHECKPOINTS_DIR
    tag = latest_good_checkpoint(ckpts, log=say) if ckpts.exists() else None
    if tag is not None and has_info(tag) and read_info(tag)["step"] >= steps:
        return tag
    return None


def _train(kind: str, run_id: str, out: Path, steps: int, launch) -> dict:
    """Launch training with a progress watcher; then the loss curve, the checkpoint table and the summary."""
    logger = get_run_logger()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = _final_checkpoint(out, steps, logger)
    if done is not None:
        logger.info("%s of run %s already reached step %s (%s): skipped", kind, run_id, steps, done.name)
    else:
        watcher = _Watcher(out / METRICS_FILE, steps, run_id, kind)
        watcher.artifact = create_progress_artifact(progress=0.0, key=artifact_key(run_id, kind, "progress"),
                                                    description=f"{kind.capitalize()} of run {run_id}")
        watcher.start()
        try:
            result = launch()
        finally:
            watcher.done.set()
            watcher.join()
            watcher.poll()
        if result.error is not None:
            raise RuntimeError(f"{kind} failed: {result.error}")
    loss_curve(out / METRICS_FILE, out / LOSS_PNG)
    last = last_metrics(out) or {}
    checkpoints = [{"checkpoint": tag.name, "verified": (tag / CHECKPOINT_MANIFEST).exists(),
                    "path": str(tag)} for tag in checkpoint_tags(out / CHECKPOINTS_DIR)]
    summary = {"run_id": run_id, "kind": kind, "output": str(out), "seconds": round(time.perf_counter() - t0, 1),
               "step": last.get("step"), "loss": last.get("loss"), "val_loss": last_val_loss(out),
               "checkpoints": checkpoints, "skipped": done is not None}
    run_info = out / RUN_INFO
    if run_info.exists():
        info = json.loads(run_info.read_text())
        summary |= {"mode": info["mode"], "trainable_params": info["trainable_params"],
                    "total_params": info["total_params"]}
    create_table_artifact(table=checkpoints or [{"checkpoint": "none"}], key=artifact_key(run_id, kind, "checkpoints"),
                          description=f"Checkpoints of the {kind} of run {run_id}")
    png = base64.b64encode((out / LOSS_PNG).read_bytes()).decode()  # inline: the UI shows it, no file server needed
    create_markdown_artifact(
        markdown=f"# {kind.capitalize()}, run {run_id}\n\nstep {summary['step']}, train loss {summary['loss']:.4f}, "
                 f"validation loss {summary['val_loss']:.4f}\n\n![loss curve](data:image/png;base64,{png})\n\n"
                 f"`{out / LOSS_PNG}`\n",
        key=artifact_key(run_id, kind), description=f"{kind.capitalize()} of run {run_id}")
    logger.info("%s: %s steps in %.0f s: loss %.3f, validation loss %.3f -> %s", kind, summary["step"],
                summary["seconds"], summary["loss"], summary["val_loss"], out)
    return summary


@flow(name="pretrain", flow_run_name="pretrain-{run_id}")
def pretrain_flow(run_id: str, workdir: str | None = None, config: PretrainConfig = PretrainConfig(),
                  ray_address: str | None = None, allow_stale: bool = False) -> dict:
    """Pretrain a GPT on the run's token shards with Ray Train + DeepSpeed; resumes from the last good checkpoint.

    Args:
        run_id: The run whose token shards train the model (WORKDIR/runs/RUN_ID/tokens).
        workdir: Where runs live. Default: $LOOM_WORKDIR, else ./loom-work.
        config: Model, loop, DeepSpeed and worker settings ([pretrain]).
        ray_address: Ray cluster to train on (ray://host:10001 or auto). Default: a local Ray instance.
        allow_stale: Train even when the curated data changed after tokenizing.
    """
    from training.launch import pretrain

    paths = RunPaths.of(workdir, run_id)
    tokens, out = paths.tokens, paths.train
    if (tokens / INDEX_FILE).exists() and not allow_stale:
        from flows.curate import require_fresh

        require_fresh(paths, tokens=True)
    if not (tokens / INDEX_FILE).exists():
        raise FileNotFoundError(f"run {run_id} has no token shards: run `loom tokenize --run-id {run_id}` first")
    from training.data import require_windows

    require_windows(tokens, config.gpt_config(1).block_size)
    return _train("pretrain", run_id, out, config.steps, lambda: pretrain(config, tokens, out, ray_address=ray_address))


@flow(name="finetune", flow_run_name="finetune-{run_id}")
def finetune_flow(checkpoint: str, data: list[str], run_id: str, output_dir: str,
                  config: FinetuneConfig = FinetuneConfig(), ray_address: str | None = None,
                  ingest: IngestConfig | None = None, pii: PiiConfig | None = None) -> dict:
    """Fine-tune a checkpoint on instruction data (chat, Alpaca or question/answer records): read
    through the ingest reader with its rejects, scrubbed of personal data by the PII stage (message
    by message; `config.scrub_pii`), rendered with the chat template, loss-masked to the responses
    and packed; then the same Ray + DeepSpeed launcher as pretraining.

    Args:
        checkpoint: A pretrained checkpoint: a training output directory or one step-N directory in it.
        data: Instruction data files, directories or globs.
        run_id: Name of the run the fine-tune belongs to.
        output_dir: Where the fine-tune writes its checkpoints and metrics.
        config: Fine-tuning mode (full, frozen, LoRA) and loop settings ([finetune]).
        ray_address: Ray cluster to train on. Default: a local Ray instance.
        ingest: Reader settings for the instruction data. Default: [ingest].
        pii: Personal-data settings for the instruction data. Default: [pii].
    """
    from training.launch import finetune

    tag = resolve_checkpoint(checkpoint)  # verified once per process: the CLI's check is remembered
    out = Path(output_dir)
    info = read_info(tag)
    ingest_cfg = ingest or IngestConfig()
    _check_same_finetune(out, config, tag)
    data_dir = out / "data"
    summaries = [sft_ingest_flow(ingest_cfg, StageRun(run_id=run_id, output_dir=str(data_dir / "01_ingest"), workers=1),
                                 [str(Path(d).absolute()) for d in data])]
    examples = data_dir / "01_ingest"
    if config.scrub_pii:
        summaries.append(sft_pii_flow(pii or PiiConfig(), StageRun(run_id=run_id, input_dir=str(examples),
                                                                    output_dir=str(data_dir / "05_pii"), workers=1)))
        examples = data_dir / "05_pii"
    sft = SftConfig(tokenizer=str(tokenizer_path(tag)), block_size=info["model"]["block_size"],
                    val_fraction=config.val_fraction, seed=config.seed, system_prompt=config.system_prompt)
    summaries.append(sft_flow(sft, StageRun(run_id=run_id, input_dir=str(examples),
                                            output_dir=str(data_dir / "sft_tokens"), workers=1)))
    summary = _train("finetune", run_id, out, config.steps,
                     lambda: finetune(config, tag, data_dir / "sft_tokens", out, ray_address=ray_address))
    return summary | {"data": summaries, "from": str(tag)}


def _check_same_finetune(out: Path, config: FinetuneConfig, start: Path) -> None:
    """Checkpoints already in `out` are resumed; refuse when they are of another mode or start point."""
    for tag in checkpoint_tags(out / CHECKPOINTS_DIR):
        if has_info(tag):
            info = read_info(tag)
            if info.get("finetune") != config.mode_spec() or Path(info.get("init_from") or "") != Path(start):
                raise ValueError(
                    f"{out} holds a fine-tune from {info.get('init_from')} in mode {(info.get('finetune') or {}).get('mode')} "
                    f"({tag.name}); this one starts from {start} in mode {config.mode}. Use another --output, or "
                    "remove that directory to start over.")
            return


@flow(name="sft-ingest", flow_run_name="sft-ingest-{run.run_id}")
def sft_ingest_flow(config: IngestConfig, run: StageRun, inputs: list[str]) -> dict:
    """01_ingest of instruction data: chat, Alpaca and question/answer records become conversations;
    other shapes are rejects with their reasons."""
    return run_stage_flow(Ingest(config, adapter=instruction_record), run, inputs)


@flow(name="sft-pii", flow_run_name="sft-pii-{run.run_id}")
def sft_pii_flow(config: PiiConfig, run: StageRun) -> dict:
    """05_pii of instruction data: every message of every conversation scrubbed; counts only reported."""
    return run_stage_flow(Pii(config, messages=True), run)


@flow(name="sft-data", flow_run_name="sft-data-{run.run_id}")
def sft_flow(config: SftConfig, run: StageRun) -> dict:
    """sft_tokens: render, loss-mask and pack instruction examples."""
    return run_stage_flow(SftTokenize(config), run)


@flow(name="evaluate", flow_run_name="evaluate-{run_id}")
def evaluate_flow(checkpoint: str, run_id: str, config: EvaluateConfig = EvaluateConfig(),
                  output_dir: str | None = None) -> dict:
    """Perplexity, held-out loss, BLEU/ROUGE, exact match and the CrowS-Pairs score of a checkpoint;
    a JSON file next to the training run and a Prefect table artifact.

    Args:
        checkpoint: A training output directory or one step-N directory in it.
        run_id: Name of the run, for the artifact's key.
        config: Which evaluations and how many items ([evaluate]).
        output_dir: Where the results JSON goes. Default: beside the training run.
    """
    from training.evaluate import evaluate_checkpoint, write_results

    logger = get_run_logger()
    tag = resolve_checkpoint(checkpoint)
    results = evaluate_checkpoint(tag, config)
    directory = Path(output_dir) if output_dir else training_output_of(tag)
    results["output"] = str(write_results(results, directory))
    create_table_artifact(table=results["rows"], key=artifact_key(run_id, "evaluation"),
                          description=f"Evaluation of {tag}")
    for row in results["rows"]:
        logger.info("%s: %s (n=%s)", row["metric"].strip(), row["value"], row["n"])
    return results
