"""Training commands: `loom tokenize`, `pretrain`, `finetune`, `generate`, `evaluate`, `export`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from flows.cli.prologue import (
    Options,
    app,
    checkpoint_of,
    command_config,
    fail,
    open_run,
    override,
    run_flow,
    run_paths,
)
from flows.reporting import console, print_evaluation, print_outcome, print_tokens, print_training


@app.command()
def tokenize(
    run_id: str = typer.Option(..., "--run-id", "-r", help="The curated run whose published shards are encoded."),
    workdir: str | None = Options.workdir,
    config: Path | None = Options.config,
    workers: int | None = Options.workers,
    ray_address: str | None = Options.ray_address,
    tokenizer: Path | None = typer.Option(None, "--tokenizer", exists=True, dir_okay=False,
                                          help="Reuse this tokenizer.json instead of training one."),
    vocab_size: int | None = typer.Option(None, "--vocab-size", min=300, help="BPE vocabulary size."),
    force: bool = typer.Option(False, "--force", help="Rerun even if complete."),
    allow_stale: bool = Options.allow_stale,
    prefect: bool | None = Options.prefect,
) -> None:
    """Train a byte-level BPE tokenizer on a run's published shards and write train/val token shards."""
    from flows.control import use_prefect
    from flows.stage_flow import StageRun
    from tasks.manifest import read_manifest

    paths, _inputs, cfg = open_run(workdir, run_id, config, workers, ray_address)
    if read_manifest(paths.published) is None:
        fail(f"run {run_id} has no published shards yet: run `loom curate ... --run-id {run_id}` first")
    if tokenizer:
        cfg.tokenize.tokenizer = str(tokenizer.absolute())
    override(cfg.tokenize, vocab_size=vocab_size)
    run = StageRun(run_id=run_id, workdir=str(paths.workdir), force=force, workers=cfg.workers,
                   ray_address=cfg.ray_address)
    prefect = use_prefect(prefect, cfg.ray_address)
    if prefect:
        from flows.curate import tokenize_flow
        from flows.stage_flow import task_runner

        call = tokenize_flow.with_options(task_runner=task_runner(cfg.workers, cfg.ray_address))
    else:
        from flows.stages import tokenize as call
    summary = run_flow(lambda: call(run=run, config=cfg.tokenize, allow_stale=allow_stale), prefect=prefect)
    print_tokens(summary)


@app.command()
def pretrain(
    run_id: str = typer.Option(..., "--run-id", "-r", help="The run whose token shards train the model."),
    workdir: str | None = Options.workdir,
    config: Path | None = Options.config,
    num_workers: int | None = Options.num_workers,
    ray_address: str | None = Options.ray_address,
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps (overrides \\[pretrain])."),
    model: str | None = typer.Option(None, "--model", help="Named model size: tiny, small, gpt2, gpt2-medium."),
    deepspeed: str | None = Options.deepspeed,
    gpu: bool | None = Options.gpu,
    allow_stale: bool = Options.allow_stale,
    submit_to: str | None = Options.submit,
) -> None:
    """Pretrain a GPT on a run's token shards: Ray Train workers, each a DeepSpeed engine; resumes
    from the last good checkpoint."""
    if submit_to:
        _submit(submit_to, "pretrain", run_id, {
            "--run-id": run_id, "--workdir": run_paths(workdir, run_id).workdir, "--config": config,
            "--num-workers": num_workers, "--steps": steps, "--model": model, "--deepspeed": _deepspeed_arg(deepspeed),
            "--gpu": gpu is True, "--no-gpu": gpu is False, "--allow-stale": allow_stale})
    from flows.submit import record_job
    from flows.train import pretrain_flow

    paths, _inputs, cfg = open_run(workdir, run_id, config, None, ray_address)
    record_job(paths.train)
    override(cfg.pretrain, num_workers=num_workers, steps=steps, model=model, deepspeed=deepspeed, use_gpu=gpu)
    from tasks.tokenize import INDEX_FILE
    from training.data import require_windows

    if (paths.tokens / INDEX_FILE).exists():  # data too short to train on: said before Prefect and Ray start
        try:
            require_windows(paths.tokens, cfg.pretrain.gpt_config(1).block_size)
        except ValueError as e:
            fail(str(e))
    summary = run_flow(lambda: pretrain_flow(run_id=run_id, workdir=str(paths.workdir), config=cfg.pretrain,
                                             ray_address=cfg.ray_address, allow_stale=allow_stale))
    print_training(summary)


def _deepspeed_arg(value: str | None):
    """--deepspeed for a job: a shipped config's name as it is, a file of one's own as a path (sent absolute)."""
    from training.launch import INFRA

    return value if value is None or (INFRA / f"{value}.json").exists() else Path(value)


def _submit(address: str, what: str, run_id: str, options: dict):
    """Run `loom WHAT` with `options` as a Ray Job at `address`; exit with its status. Paths go absolute
    (they must be on storage the cluster shares); options left at None or False are left out."""
    from flows.submit import submit

    args = [what]
    for flag, value in options.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, bool):
                args += [flag] if v else []
            elif v is not None:
                args += [flag, str(v.absolute()) if isinstance(v, Path) else str(v)]
    try:
        code = submit(address, args, run_id, what, say=lambda m: console.print(m, highlight=False))
    except ConnectionError as e:
        fail(str(e))
    raise typer.Exit(code)


@app.command()
def finetune(
    data: list[str] = typer.Option(..., "--data", "-d", help="Instruction data: chat `messages`, Alpaca "
                                   "instruction/input/output or question/answer records (JSONL, JSON, Parquet)."),
    checkpoint: str | None = typer.Option(None, "--from", "--checkpoint", help="Checkpoint to start from (default: "
                                          "the run's pretrained model, runs/R/train)."),
    run_id: str | None = typer.Option(None, "--run-id", "-r", help="Run whose pretrained model is fine-tuned; "
                                      "output goes to runs/R/finetune."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output directory (default runs/R/finetune)."),
    workdir: str | None = Options.workdir,
    config: Path | None = Options.config,
    mode: str | None = typer.Option(None, "--mode", help="full, frozen or lora."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps (overrides \\[finetune])."),
    num_workers: int | None = Options.num_workers,
    ray_address: str | None = Options.ray_address,
    deepspeed: str | None = Options.deepspeed,
    gpu: bool | None = Options.gpu,
    submit_to: str | None = Options.submit,
) -> None:
    """Fine-tune a checkpoint on instruction data (loss on responses only, packed sequences) with the
    same Ray + DeepSpeed launcher, checkpoints and monitoring as pretraining."""
    if submit_to:
        if not run_id:
            fail("--submit needs --run-id R (the job id is recorded in that run)")
        _submit(submit_to, "finetune", run_id, {
            "--data": [Path(d) for d in data], "--from": Path(checkpoint) if checkpoint else None,
            "--run-id": run_id, "--output": output, "--workdir": run_paths(workdir, run_id).workdir,
            "--config": config, "--mode": mode, "--steps": steps, "--num-workers": num_workers,
            "--deepspeed": _deepspeed_arg(deepspeed), "--gpu": gpu is True, "--no-gpu": gpu is False})
    from flows.submit import record_job
    from flows.train import finetune_flow
    from tasks.layout import RunPaths

    if checkpoint is None:
        if not run_id:
            fail("give --from CHECKPOINT or --run-id R (whose runs/R/train is fine-tuned)")
        checkpoint = str(run_paths(workdir, run_id).train)
    tag = checkpoint_of(checkpoint)
    located = RunPaths.of_path(tag)
    if run_id is None:
        run_id = located.run_id if located else tag.parents[1].name
    if output is None:
        output = located.finetune if located else tag.parents[2] / "finetune"
    cfg = command_config(config, None, ray_address=ray_address)
    if mode not in (None, "full", "frozen", "lora"):
        fail(f"--mode must be full, frozen or lora, not {mode!r}")
    override(cfg.finetune, mode=mode, steps=steps, num_workers=num_workers, deepspeed=deepspeed, use_gpu=gpu)
    record_job(output)
    summary = run_flow(lambda: finetune_flow(checkpoint=str(tag), data=[str(Path(d).absolute()) for d in data],
                                             run_id=run_id, output_dir=str(output.absolute()), config=cfg.finetune,
                                             ray_address=cfg.ray_address, ingest=cfg.ingest, pii=cfg.pii))
    print_outcome(summary["data"], "finetune data")
    print_training(summary)


@app.command()
def generate(
    checkpoint: str = Options.checkpoint,
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text to continue (with --chat: the user's message)."),
    chat: bool = typer.Option(False, "--chat", help="Chat template: the prompt is a user turn; stop at <|end|>."),
    system: str | None = typer.Option(None, "--system", help="With --chat: a system message."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy."),
    top_k: int | None = typer.Option(None, "--top-k", min=1),
    top_p: float | None = typer.Option(None, "--top-p", min=0.0, max=1.0),
    num_beams: int = typer.Option(1, "--num-beams", min=1, help="Beam search width (1: greedy or sampling)."),
    length_penalty: float = typer.Option(1.0, "--length-penalty", help="Beam scores: log p / length ** this."),
    early_stopping: bool = typer.Option(False, "--early-stopping", help="Stop when num_beams hypotheses finish."),
    no_repeat_ngram_size: int = typer.Option(0, "--no-repeat-ngram-size", min=0, help="Never repeat an n-gram."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for sampling."),
) -> None:
    """Generate text from a checkpoint: greedy, sampling (streamed), or beam search. The text goes to
    stdout, everything else to stderr."""
    from training.generate import GenerationConfig, beam_search, decode, prompt_ids, stop_ids, stream_text
    from training.load import load_model

    model, info, tokenizer = load_model(checkpoint_of(checkpoint))
    if tokenizer is None:
        fail(f"{info['checkpoint']} has no tokenizer.json")
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                           no_repeat_ngram_size=no_repeat_ngram_size, seed=seed)
    ids = prompt_ids(tokenizer, prompt, chat, system)[-(model.config.block_size - 1):]
    stop = stop_ids(tokenizer, chat)
    out = sys.stdout
    if not chat:
        out.write(prompt)
    if num_beams > 1:
        tokens, score = beam_search(model, ids, cfg, stop)
        out.write(decode(tokenizer, tokens, stop) + "\n")
        console.print(f"[dim](beam score {score:.3f})[/dim]")
        return
    for piece in stream_text(model, tokenizer, ids, cfg, stop):  # streamed: each piece as it decodes
        out.write(piece)
        out.flush()
    out.write("\n")


@app.command()
def evaluate(
    checkpoint: str = Options.checkpoint,
    config: Path | None = Options.config,
    gsm8k: Path | None = typer.Option(None, "--gsm8k", exists=True, help="GSM8K JSONL for final-answer exact match."),
    crows_pairs: Path | None = typer.Option(None, "--crows-pairs", exists=True,
                                            help="CrowS-Pairs CSV (or directory) for the stereotype score."),
    examples: int | None = typer.Option(None, "--examples", min=0, help="Held-out examples answered (BLEU/ROUGE)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Directory of evaluation.json "
                                       "(default: the training output the checkpoint is in)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout (for scripts)."),
) -> None:
    """Evaluate a checkpoint: perplexity; for fine-tuned ones held-out loss, BLEU/ROUGE and exact match;
    the CrowS-Pairs stereotype score. A table, a JSON file and a Prefect artifact."""
    from flows.train import evaluate_flow
    from tasks.layout import RunPaths

    tag = checkpoint_of(checkpoint)
    cfg = command_config(config).evaluate
    if gsm8k:
        cfg.gsm8k = str(gsm8k.absolute())
    if crows_pairs:
        cfg.crows_pairs = str(crows_pairs.absolute())
    override(cfg, examples=examples)
    located = RunPaths.of_path(tag)
    results = run_flow(lambda: evaluate_flow(checkpoint=str(tag), run_id=located.run_id if located else tag.name,
                                             config=cfg, output_dir=str(output.absolute()) if output else None))
    if as_json:
        sys.stdout.write(json.dumps(results, indent=2, default=str) + "\n")
    else:
        print_evaluation(results)


@app.command()
def export(
    checkpoint: str = Options.checkpoint,
    format: str = typer.Option("hf", "--format", "-f", help="hf: Hugging Face GPT-2 directory; pt: one fp32 "
                               "state dict file (consolidated from DeepSpeed's ZeRO shards)."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory (hf) or file (pt)."),
) -> None:
    """Export a checkpoint to Hugging Face format (LoRA merged) or to a single fp32 state dict."""
    from training.export import export_hf, export_pt

    if format not in ("hf", "pt"):
        fail(f"--format must be hf or pt, not {format!r}")
    tag = checkpoint_of(checkpoint)
    if format == "hf":
        path = export_hf(tag, output)
        console.print(f"exported {tag} to [bold]{path}[/bold]; load it with\n"
                      f"  GPT2LMHeadModel.from_pretrained({str(path)!r})\n"
                      f"  PreTrainedTokenizerFast.from_pretrained({str(path)!r})")
    else:
        path = export_pt(tag, output)
        console.print(f"wrote the fp32 state dict of {tag} to [bold]{path}[/bold]")

