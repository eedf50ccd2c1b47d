"""The `loom` command line.

    loom curate corpus/ more.jsonl.gz --run-id r1     # ingest -> exact/near dedup -> pii -> bias -> publish
    loom step exact_dedup --run-id r1 --force         # rerun one stage; later stages become stale
    loom step ingest --input x.jsonl --output out/    # one stage on any input
    loom runs [r1]                                    # runs, or one run's stages
    loom tokenize --run-id r1                         # BPE tokenizer + token shards of the published data
    loom pretrain --run-id r1 --num-workers 2         # GPT on Ray Train + DeepSpeed, resumable
    loom finetune --run-id r1 --data sft.jsonl        # supervised fine-tuning: full, frozen or LoRA
    loom generate --checkpoint CKPT --prompt "Hi" --chat   # sampling or beam search, KV cache
    loom evaluate --checkpoint CKPT                   # perplexity, BLEU/ROUGE, exact match, CrowS-Pairs
    loom export --checkpoint CKPT --format hf -o out/ # Hugging Face GPT-2, or one fp32 state dict
    loom pipeline corpus/ --sft-data sft.jsonl        # curate -> tokenize -> pretrain -> finetune -> evaluate
    loom demo                                         # everything, on a corpus built on the spot
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from flows.config import (
    CurateConfig,
    default_run_id,
    load_config,
    load_run,
    resolve_workdir,
    run_dir,
    runs_dir,
)
from flows.reporting import console, reasons_table, summary_table
from tasks import __version__
from tasks.manifest import read_manifest, stage_dir_name
from tasks.stage import run_statuses

app = typer.Typer(
    help="Loom: raw text corpora to trained language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

WorkdirOption = typer.Option(None, "--workdir", "-w", envvar="LOOM_WORKDIR",
                             help="Work directory holding runs/ (default ./loom-work).")
ConfigOption = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                            help="TOML, YAML or JSON file with one section per stage.")
WorkersOption = typer.Option(None, "--workers", "-j", min=1, help="Local processes for shard work (default: all cores).")
DeepSpeedOption = typer.Option(None, "--deepspeed", help="DeepSpeed config: zero0, zero1, zero2, zero3, "
                               "zero3-offload (infra/deepspeed/) or a JSON file; default zero2 on GPUs, zero1 on CPU.")
GpuOption = typer.Option(None, "--gpu/--no-gpu", help="Train on GPUs, one per worker (default: when the Ray "
                         "cluster has GPUs).")
RayOption = typer.Option(None, "--ray-address", envvar="LOOM_RAY_ADDRESS",
                         help="Run shard work on Ray: 'auto', 'ray://host:10001', or 'local' (start one).")


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _config(path: Path | None, workers: int | None, base: CurateConfig | None = None,
            ray_address: str | None = None) -> CurateConfig:
    try:
        config = load_config(path) if path else (base or CurateConfig())
    except Exception as e:  # pydantic and parser errors name the bad key; show them plainly
        _fail(f"bad config {path}: {e}")
    if workers:
        config.workers = workers
    if ray_address:
        config.ray_address = ray_address
    return config


def _override(section, **options) -> None:
    """Command-line options win over the config file's section; options not given leave it alone."""
    for key, value in options.items():
        if value is not None:
            setattr(section, key, value)


def _print_outcome(summaries: list[dict], title: str) -> None:
    console.print(summary_table(summaries, title))
    reasons = reasons_table(summaries)
    if reasons is not None:
        console.print(reasons)
    for s in summaries:
        if s.get("note"):
            console.print(f"{s['stage']}: {s['note']}")
    last = summaries[-1]
    console.print(f"output: [bold]{last['output']}[/bold]")
    rejected = sum(s["rejected"] for s in summaries)
    if rejected:
        console.print(f"[yellow]{rejected:,} bad input record(s) kept with their reasons in _rejects/[/yellow]")


@app.callback(invoke_without_command=True)
def main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        console.print(f"loom {__version__}")
        raise typer.Exit()


@app.command()
def curate(
    inputs: list[str] = typer.Argument(..., help="Files, directories or globs of JSONL (.gz/.zst), Parquet, text."),
    workdir: str | None = WorkdirOption,
    run_id: str | None = typer.Option(None, "--run-id", "-r", help="Run id (default: derived from the inputs)."),
    config: Path | None = ConfigOption,
    workers: int | None = WorkersOption,
    ray_address: str | None = RayOption,
    force: bool = typer.Option(False, "--force", help="Rerun every stage even if complete."),
) -> None:
    """Run the curate flow: ingest -> exact/near dedup -> pii -> bias -> publish, skipping complete stages."""
    from flows.curate import curate_flow
    from flows.prefect_api import prefect_api

    cfg = _config(config, workers, ray_address=ray_address)
    inputs = [str(Path(i).absolute()) for i in inputs]
    run_id = run_id or default_run_id(inputs)
    wd = resolve_workdir(workdir)
    try:
        with prefect_api():
            summaries = curate_flow(inputs=inputs, run_id=run_id, workdir=str(wd), config=cfg, force=force)
    except FileNotFoundError as e:
        _fail(str(e))
    _print_outcome(summaries, f"curate run {run_id}")


@app.command()
def step(
    stage: str = typer.Argument(..., help="Stage: ingest, exact_dedup, near_dedup, pii, bias or publish (or 01_ingest, ...)."),
    run_id: str | None = typer.Option(None, "--run-id", "-r", help="Rerun this stage of an existing run."),
    inputs: list[str] | None = typer.Option(None, "--input", "-i", help="Run on these inputs instead of a run."),
    output: Path | None = typer.Option(None, "--output", "-o", help="With --input: where the stage writes."),
    force: bool = typer.Option(False, "--force", help="Rerun even if complete; later stages become stale."),
    workdir: str | None = WorkdirOption,
    config: Path | None = ConfigOption,
    workers: int | None = WorkersOption,
    ray_address: str | None = RayOption,
) -> None:
    """Rerun one stage of a run (--run-id), or run one stage on any input (--input ... --output DIR)."""
    from flows.curate import PIPELINE, StageRun, downstream_of, run_one_stage
    from flows.prefect_api import prefect_api

    try:
        name = stage_dir_name(stage)
    except ValueError as e:
        _fail(str(e))
    if name not in PIPELINE:
        _fail(f"stage {name} is not implemented yet; implemented: {', '.join(PIPELINE)}")
    wd = resolve_workdir(workdir)

    if inputs:
        if output is None:
            _fail("--input needs --output DIR")
        cfg = _config(config, workers, ray_address=ray_address)
        out = output.absolute()
        run_id = run_id or f"step-{out.name}"
        summaries = []
        with prefect_api():
            stage_input = None
            if name != "01_ingest":  # any input goes through the ingest reader first
                ingest_dir = out / "_ingest"
                run = StageRun(run_id=run_id, workers=cfg.workers, ray_address=cfg.ray_address,
                               output_dir=str(ingest_dir), force=force)
                summaries.append(run_one_stage("01_ingest", run, cfg.ingest, [str(Path(i).absolute()) for i in inputs]))
                stage_input = str(ingest_dir)
            run = StageRun(run_id=run_id, workers=cfg.workers, ray_address=cfg.ray_address, output_dir=str(out),
                           input_dir=stage_input, force=force)
            summaries.append(run_one_stage(name, run, cfg.for_stage(name),
                                           [str(Path(i).absolute()) for i in inputs] if name == "01_ingest" else None))
        _print_outcome(summaries, f"step {name}")
        return

    if not run_id:
        _fail("give --run-id R to rerun a stage of a run, or --input PATH... --output DIR")
    try:
        run_inputs, run_cfg = load_run(wd, run_id)
    except FileNotFoundError as e:
        _fail(str(e))
    cfg = _config(config, workers, base=run_cfg, ray_address=ray_address)
    with prefect_api():
        run = StageRun(run_id=run_id, workdir=str(wd), force=force, workers=cfg.workers,
                       ray_address=cfg.ray_address)
        try:
            summary = run_one_stage(name, run, cfg.for_stage(name), run_inputs)
        except FileNotFoundError as e:
            _fail(f"{e} (run the stages before {name} first, e.g. loom curate)")
    _print_outcome([summary], f"step {name} of run {run_id}")
    statuses = {s.stage: s for s in run_statuses(run_dir(wd, run_id), list(PIPELINE))}
    stale = [s for s in downstream_of(name) if statuses[s].status == "stale"]
    if stale:
        console.print(f"[yellow]now stale:[/yellow] {', '.join(stale)} "
                      f"(rerun with `loom step <stage> --run-id {run_id}` or `loom curate`)")


def _ingest_fingerprint(inputs: list[str]) -> str:
    from tasks.ingest import Ingest

    return Ingest().input_fingerprint(inputs)


@app.command()
def runs(
    run_id: str | None = typer.Argument(None, help="Show this run's stages."),
    workdir: str | None = WorkdirOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List runs, or show each stage of one run: complete, stale, partial or missing, with counts."""
    from flows.curate import PIPELINE

    wd = resolve_workdir(workdir)
    if run_id is None:
        rows = []
        for d in sorted(p for p in runs_dir(wd).glob("*") if p.is_dir()):
            statuses = run_statuses(d, list(PIPELINE), _ingest_fingerprint)
            published = read_manifest(d / "06_publish")
            rows.append({
                "run_id": d.name,
                "complete": sum(s.status == "complete" for s in statuses),
                "stages": len(statuses),
                "documents": published.rows_out if published else None,
                "updated": max((s.manifest.finished_at for s in statuses if s.manifest), default=""),
            })
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        if not rows:
            console.print(f"no runs under {runs_dir(wd)}")
            return
        table = Table(title=f"runs in {runs_dir(wd)}", title_justify="left")
        for col in ("run id", "stages complete", "documents published", "updated"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["run_id"], f"{r['complete']}/{r['stages']}",
                          f"{r['documents']:,}" if r["documents"] is not None else "-", r["updated"])
        console.print(table)
        return

    d = run_dir(wd, run_id)
    if not d.exists():
        _fail(f"no run {run_id!r} under {runs_dir(wd)}")
    statuses = run_statuses(d, list(PIPELINE), _ingest_fingerprint)
    if as_json:
        print(json.dumps([{
            "stage": s.stage, "status": s.status, "reason": s.reason,
            "rows_in": s.manifest.rows_in if s.manifest else None,
            "rows_out": s.manifest.rows_out if s.manifest else None,
            "removed": s.manifest.removed if s.manifest else None,
            "rejected": s.manifest.rejected if s.manifest else None,
            "finished_at": s.manifest.finished_at if s.manifest else None,
        } for s in statuses], indent=2))
        return
    colors = {"complete": "green", "stale": "yellow", "partial": "cyan", "missing": "red"}
    table = Table(title=f"run {run_id} ({d})", title_justify="left")
    for col, justify in [("stage", "left"), ("status", "left"), ("rows in", "right"), ("rows out", "right"),
                         ("removed", "right"), ("rejected", "right"), ("finished", "left")]:
        table.add_column(col, justify=justify)
    for s in statuses:
        m = s.manifest
        status = f"[{colors[s.status]}]{s.status}[/]" + (f" [dim]({s.reason})[/dim]" if s.reason else "")
        table.add_row(s.stage, status, f"{m.rows_in:,}" if m else "-", f"{m.rows_out:,}" if m else "-",
                      f"{m.removed_total:,}" if m else "-", f"{m.rejected_total:,}" if m else "-",
                      m.finished_at if m else "-")
    console.print(table)
    training = _training_table(d)
    if training is not None:
        console.print(training)


def _training_table(d: Path) -> Table | None:
    """Tokens, pretraining, fine-tuning and evaluation of a run, where they exist."""
    from flows.train import last_val_loss
    from training.train import METRICS_FILE, latest_good_checkpoint

    rows = []
    tokens = read_manifest(d / "tokens")
    if tokens is not None:
        rows.append(("tokens", "complete", f"{tokens.stats.get('train_tokens', 0):,} train / "
                                           f"{tokens.stats.get('val_tokens', 0):,} val tokens", str(d / "tokens")))
    for kind, name in (("pretrain", "train"), ("finetune", "finetune")):
        out = d / name
        if not (out / "checkpoints").exists():
            continue
        tag = latest_good_checkpoint(out / "checkpoints", log=lambda m: None)
        val = last_val_loss(out / METRICS_FILE) if (out / METRICS_FILE).exists() else None
        what = f"{tag.name}" if tag else "no verified checkpoint"
        rows.append((kind, "checkpoint" if tag else "[red]none[/red]",
                     what + (f", validation loss {val:.3f}" if val is not None else ""), str(out)))
        if (out / "evaluation.json").exists():
            results = json.loads((out / "evaluation.json").read_text())
            rows.append((f"evaluate {kind}", "complete", f"{len(results['rows'])} metrics", str(out / "evaluation.json")))
    if not rows:
        return None
    table = Table(title="training", title_justify="left")
    for col in ("step", "status", "result", "where"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    return table


@app.command()
def tokenize(
    run_id: str = typer.Option(..., "--run-id", "-r", help="The curated run whose published shards are encoded."),
    workdir: str | None = WorkdirOption,
    config: Path | None = ConfigOption,
    workers: int | None = WorkersOption,
    ray_address: str | None = RayOption,
    tokenizer: Path | None = typer.Option(None, "--tokenizer", exists=True, dir_okay=False,
                                          help="Reuse this tokenizer.json instead of training one."),
    vocab_size: int | None = typer.Option(None, "--vocab-size", min=300, help="BPE vocabulary size."),
    force: bool = typer.Option(False, "--force", help="Rerun even if complete."),
) -> None:
    """Train a byte-level BPE tokenizer on a run's published shards and write train/val token shards."""
    from flows.curate import StageRun, task_runner, tokenize_flow
    from flows.prefect_api import prefect_api

    wd = resolve_workdir(workdir)
    try:
        _inputs, run_cfg = load_run(wd, run_id)
    except FileNotFoundError as e:
        _fail(str(e))
    if read_manifest(run_dir(wd, run_id) / "06_publish") is None:
        _fail(f"run {run_id} has no published shards yet: run `loom curate ... --run-id {run_id}` first")
    cfg = _config(config, workers, base=run_cfg, ray_address=ray_address)
    if tokenizer:
        cfg.tokenize.tokenizer = str(tokenizer.absolute())
    if vocab_size:
        cfg.tokenize.vocab_size = vocab_size
    run = StageRun(run_id=run_id, workdir=str(wd), force=force, workers=cfg.workers, ray_address=cfg.ray_address)
    with prefect_api():
        summary = tokenize_flow.with_options(task_runner=task_runner(cfg.workers, cfg.ray_address))(
            run=run, config=cfg.tokenize)
    _print_tokens(summary)


def _print_tokens(summary: dict) -> None:
    index = json.loads((Path(summary["output"]) / "index.json").read_text())
    table = Table(title=f"tokens ({summary['status']}): vocab {index['vocab_size']:,}, {index['dtype']}",
                  title_justify="left")
    for name in ("split", "documents", "tokens"):
        table.add_column(name, justify="left" if name == "split" else "right")
    for split, totals in index["totals"].items():
        table.add_row(split, f"{totals['documents']:,}", f"{totals['tokens']:,}")
    console.print(table)
    console.print(f"output: [bold]{summary['output']}[/bold]")


@app.command()
def pretrain(
    run_id: str = typer.Option(..., "--run-id", "-r", help="The run whose token shards train the model."),
    workdir: str | None = WorkdirOption,
    config: Path | None = ConfigOption,
    num_workers: int | None = typer.Option(None, "--num-workers", "-n", min=1, help="Ray Train workers."),
    ray_address: str | None = RayOption,
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps (overrides \\[pretrain])."),
    model: str | None = typer.Option(None, "--model", help="Named model size: tiny, small, gpt2, gpt2-medium."),
    deepspeed: str | None = DeepSpeedOption,
    gpu: bool | None = GpuOption,
) -> None:
    """Pretrain a GPT on a run's token shards: Ray Train workers, each a DeepSpeed engine; resumes
    from the last good checkpoint."""
    from flows.prefect_api import prefect_api
    from flows.train import pretrain_flow

    wd = resolve_workdir(workdir)
    try:
        _inputs, run_cfg = load_run(wd, run_id)
    except FileNotFoundError as e:
        _fail(str(e))
    cfg = _config(config, None, base=run_cfg, ray_address=ray_address)
    _override(cfg.pretrain, num_workers=num_workers, steps=steps, model=model, deepspeed=deepspeed, use_gpu=gpu)
    with prefect_api():
        try:
            summary = pretrain_flow(run_id=run_id, workdir=str(wd), config=cfg.pretrain, ray_address=cfg.ray_address)
        except (FileNotFoundError, ValueError) as e:
            _fail(str(e))
    _print_pretrain(summary)


def _print_pretrain(summary: dict) -> None:
    kind = summary.get("kind", "pretrain")
    done = "already done" if summary.get("skipped") else f"{summary['seconds']:.0f} s"
    trains = (f", {summary['mode']} mode: {summary['trainable_params']:,} of {summary['total_params']:,} "
              "parameters trained") if kind == "finetune" and "mode" in summary else ""
    console.print(f"[bold]{kind}[/bold] of run {summary['run_id']}: {summary['step']} steps ({done}){trains}")
    table = Table()
    for name in ("checkpoint", "verified"):
        table.add_column(name)
    for c in summary["checkpoints"]:
        table.add_row(c["checkpoint"], "sha256 manifest" if c["verified"] else "[red]incomplete[/red]")
    console.print(table)
    console.print(f"train loss {summary['loss']:.3f}, validation loss {summary['val_loss']:.3f}; "
                  f"metrics, TensorBoard and loss.png in [bold]{summary['output']}[/bold]")


bias_app = typer.Typer(help="The bias and toxicity filter (05_bias): train its classifier.", no_args_is_help=True)
app.add_typer(bias_app, name="bias")


@bias_app.command("train")
def bias_train(
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, help="CSV with a text and a label column."),
    text_column: str = typer.Option("text", "--text-column", help="Column holding the text."),
    label_column: str = typer.Option("label", "--label-column", help="Column holding the label."),
    positive: list[str] = typer.Option(..., "--positive", help="Label value(s) that mean toxic (repeat the option)."),
    output: Path = typer.Option(Path("bias-classifier.npz"), "--output", "-o", help="Where the model is saved."),
    lexicon: list[str] | None = typer.Option(None, "--lexicon", help="Word lists the stage will also use "
                                             "(the threshold is calibrated with them)."),
    max_false_removal: float = typer.Option(0.10, "--max-false-removal", min=0.0, max=1.0,
                                            help="Calibrate the threshold to remove at most this share of non-toxic rows."),
) -> None:
    """Train the hashed n-gram logistic regression the bias stage loads ([bias] classifier = PATH)."""
    import csv

    from tasks.bias import train_and_save

    with open(data, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        missing = {text_column, label_column} - set(reader.fieldnames or [])
        if missing:
            _fail(f"{data} has no column(s) {', '.join(sorted(missing))}; columns: {', '.join(reader.fieldnames or [])}")
        rows = [(r[text_column] or "", (r[label_column] or "").strip()) for r in reader]
    labels = [int(label in set(positive)) for _, label in rows]
    if not 0 < sum(labels) < len(labels):
        _fail(f"--positive {positive} marks {sum(labels)} of {len(labels)} rows: need both classes")
    console.print(f"training on {len(rows):,} rows ({sum(labels):,} toxic) ...")
    meta = train_and_save([t for t, _ in rows], labels, output, max_false_removal=max_false_removal,
                          lexicons=tuple(lexicon or ()))
    console.print(f"saved {output} ({output.stat().st_size / 1e6:.1f} MB); calibrated threshold "
                  f"{meta['threshold']:.3f}. Use it with:\n  [bias]\n  classifier = \"{output}\"")


CheckpointOption = typer.Option(..., "--checkpoint", "--from", help="A checkpoint (step-* directory), or a training "
                                "output (runs/R/train, runs/R/finetune): its newest good checkpoint.")


def _checkpoint(path: str):
    from training.checkpoint import CheckpointError, resolve_checkpoint

    try:
        return resolve_checkpoint(path)
    except CheckpointError as e:
        _fail(str(e))


def _run_of(tag: Path) -> tuple[Path, str] | None:
    """(workdir, run id) of a checkpoint under <workdir>/runs/<run>/<train|finetune>/checkpoints/."""
    parts = tag.resolve().parts
    if len(parts) >= 6 and parts[-2] == "checkpoints" and parts[-5] == "runs":
        return Path(*parts[:-5]), parts[-4]
    return None


@app.command()
def finetune(
    data: list[str] = typer.Option(..., "--data", "-d", help="Instruction data: chat `messages`, Alpaca "
                                   "instruction/input/output or question/answer records (JSONL, JSON, Parquet)."),
    checkpoint: str | None = typer.Option(None, "--from", "--checkpoint", help="Checkpoint to start from (default: "
                                          "the run's pretrained model, runs/R/train)."),
    run_id: str | None = typer.Option(None, "--run-id", "-r", help="Run whose pretrained model is fine-tuned; "
                                      "output goes to runs/R/finetune."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output directory (default runs/R/finetune)."),
    workdir: str | None = WorkdirOption,
    config: Path | None = ConfigOption,
    mode: str | None = typer.Option(None, "--mode", help="full, frozen or lora."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps (overrides \\[finetune])."),
    num_workers: int | None = typer.Option(None, "--num-workers", "-n", min=1, help="Ray Train workers."),
    ray_address: str | None = RayOption,
    deepspeed: str | None = DeepSpeedOption,
    gpu: bool | None = GpuOption,
) -> None:
    """Fine-tune a checkpoint on instruction data (loss on responses only, packed sequences) with the
    same Ray + DeepSpeed launcher, checkpoints and monitoring as pretraining."""
    from flows.prefect_api import prefect_api
    from flows.train import finetune_flow

    wd = resolve_workdir(workdir)
    if checkpoint is None:
        if not run_id:
            _fail("give --from CHECKPOINT or --run-id R (whose runs/R/train is fine-tuned)")
        checkpoint = str(run_dir(wd, run_id) / "train")
    tag = _checkpoint(checkpoint)
    located = _run_of(tag)
    if run_id is None:
        run_id = located[1] if located else tag.parents[1].name
    if output is None:
        output = (run_dir(located[0], located[1]) if located else tag.parents[2]) / "finetune"
    cfg = _config(config, None, ray_address=ray_address)
    if mode not in (None, "full", "frozen", "lora"):
        _fail(f"--mode must be full, frozen or lora, not {mode!r}")
    _override(cfg.finetune, mode=mode, steps=steps, num_workers=num_workers, deepspeed=deepspeed, use_gpu=gpu)
    with prefect_api():
        try:
            summary = finetune_flow(checkpoint=str(tag), data=[str(Path(d).absolute()) for d in data], run_id=run_id,
                                    output_dir=str(output.absolute()), config=cfg.finetune,
                                    ray_address=cfg.ray_address, ingest=cfg.ingest)
        except (FileNotFoundError, ValueError) as e:
            _fail(str(e))
    _print_outcome(summary["data"], "finetune data")
    _print_pretrain(summary)


@app.command()
def generate(
    checkpoint: str = CheckpointOption,
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
    """Generate text from a checkpoint: greedy, sampling (streamed), or beam search."""
    from training.checkpoint import load_model
    from training.generate import GenerationConfig, beam_search, decode, prompt_ids, stop_ids, stream

    model, info, tokenizer = load_model(_checkpoint(checkpoint))
    if tokenizer is None:
        _fail(f"{info['checkpoint']} has no tokenizer.json")
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                           no_repeat_ngram_size=no_repeat_ngram_size, seed=seed)
    ids = prompt_ids(tokenizer, prompt, chat, system)
    room = model.config.block_size - 1
    ids = ids[-room:]
    stop = stop_ids(tokenizer, chat)
    if not chat:
        console.print(prompt, end="", highlight=False, markup=False)
    if num_beams > 1:
        tokens, score = beam_search(model, ids, cfg, stop)
        console.print(decode(tokenizer, tokens, stop), highlight=False, markup=False)
        console.print(f"[dim](beam score {score:.3f})[/dim]")
        return
    shown, tokens = "", []
    for token in stream(model, ids, cfg, stop):  # streamed: print each piece as it decodes
        tokens.append(token)
        text = decode(tokenizer, tokens, stop)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            console.print(text[len(shown):], end="", highlight=False, markup=False, soft_wrap=True)
            shown = text
    console.print()


@app.command()
def evaluate(
    checkpoint: str = CheckpointOption,
    config: Path | None = ConfigOption,
    gsm8k: Path | None = typer.Option(None, "--gsm8k", exists=True, help="GSM8K JSONL for final-answer exact match."),
    crows_pairs: Path | None = typer.Option(None, "--crows-pairs", exists=True,
                                            help="CrowS-Pairs CSV (or directory) for the stereotype score."),
    examples: int | None = typer.Option(None, "--examples", min=0, help="Held-out examples answered (BLEU/ROUGE)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Directory of evaluation.json "
                                       "(default: the training output the checkpoint is in)."),
) -> None:
    """Evaluate a checkpoint: perplexity; for fine-tuned ones held-out loss, BLEU/ROUGE and exact match;
    the CrowS-Pairs stereotype score. A table, a JSON file and a Prefect artifact."""
    from flows.prefect_api import prefect_api
    from flows.train import evaluate_flow

    tag = _checkpoint(checkpoint)
    cfg = _config(config, None).evaluate
    if gsm8k:
        cfg.gsm8k = str(gsm8k.absolute())
    if crows_pairs:
        cfg.crows_pairs = str(crows_pairs.absolute())
    if examples is not None:
        cfg.examples = examples
    located = _run_of(tag)
    with prefect_api():
        results = evaluate_flow(checkpoint=str(tag), run_id=located[1] if located else tag.name, config=cfg,
                                output_dir=str(output.absolute()) if output else None)
    _print_evaluation(results)


def _print_evaluation(results: dict) -> None:
    console.print(f"[bold]evaluation[/bold] of the {results['kind']} checkpoint {results['checkpoint']}")
    table = Table()
    for name in ("metric", "value", "n", "data"):
        table.add_column(name, justify="right" if name in ("value", "n") else "left")
    for row in results["rows"]:
        table.add_row(row["metric"], f"{row['value']:,.3f}", f"{row['n']:,}", row["data"])
    console.print(table)
    console.print(f"results: [bold]{results['output']}[/bold]")


@app.command()
def export(
    checkpoint: str = CheckpointOption,
    format: str = typer.Option("hf", "--format", "-f", help="hf: Hugging Face GPT-2 directory; pt: one fp32 "
                               "state dict file (consolidated from DeepSpeed's ZeRO shards)."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory (hf) or file (pt)."),
) -> None:
    """Export a checkpoint to Hugging Face format (LoRA merged) or to a single fp32 state dict."""
    from training.export import export_hf, export_pt

    tag = _checkpoint(checkpoint)
    if format == "hf":
        path = export_hf(tag, output)
        console.print(f"exported {tag} to [bold]{path}[/bold]; load it with\n"
                      f"  GPT2LMHeadModel.from_pretrained({str(path)!r})\n"
                      f"  PreTrainedTokenizerFast.from_pretrained({str(path)!r})")
    elif format == "pt":
        path = export_pt(tag, output)
        console.print(f"wrote the fp32 state dict of {tag} to [bold]{path}[/bold]")
    else:
        _fail(f"--format must be hf or pt, not {format!r}")


@app.command()
def pipeline(
    inputs: list[str] = typer.Argument(..., help="Corpus files, directories or globs."),
    sft_data: list[str] | None = typer.Option(None, "--sft-data", help="Instruction data for fine-tuning "
                                              "(repeat; none: the pretrained model is evaluated)."),
    run_id: str | None = typer.Option(None, "--run-id", "-r", help="Run id (default: derived from the inputs)."),
    workdir: str | None = WorkdirOption,
    config: Path | None = ConfigOption,
    workers: int | None = WorkersOption,
    ray_address: str | None = RayOption,
    start_at: str = typer.Option("curate", "--start-at", help="First step: curate, tokenize, pretrain, finetune "
                                 "or evaluate (the steps before it must be done)."),
) -> None:
    """Curate -> tokenize -> pretrain -> finetune -> evaluate, each a subflow; a rerun resumes where it stopped."""
    from flows.pipeline import STEPS, pipeline_flow
    from flows.prefect_api import prefect_api

    if start_at not in STEPS:
        _fail(f"--start-at must be one of {', '.join(STEPS)}, not {start_at!r}")
    cfg = _config(config, workers, ray_address=ray_address)
    try:
        from tasks.ingest import expand_inputs

        expand_inputs(inputs)
        expand_inputs(sft_data or [])
    except FileNotFoundError as e:
        _fail(str(e))
    with prefect_api():
        out = pipeline_flow(inputs=[str(Path(i).absolute()) for i in inputs],
                            sft_data=[str(Path(d).absolute()) for d in sft_data or []], run_id=run_id,
                            workdir=str(resolve_workdir(workdir)), config=cfg, start_at=start_at)
    _print_pipeline(out)


def _print_pipeline(out: dict) -> None:
    if "curate" in out:
        _print_outcome(out["curate"], f"pipeline {out['run_id']}: curate")
    if "tokenize" in out:
        _print_tokens(out["tokenize"])
    if "pretrain" in out:
        _print_pretrain(out["pretrain"])
    if "finetune" in out:
        _print_outcome(out["finetune"]["data"], "finetune data")
        _print_pretrain(out["finetune"])
    _print_evaluation(out["evaluate"])


@app.command()
def serve(
    workdir: str | None = WorkdirOption,
    limit: int | None = typer.Option(None, "--limit", min=1, help="Flow runs at the same time (default: no limit)."),
) -> None:
    """Serve a deployment of every Loom flow from this process, for the Prefect UI (no work pool needed).
    Uses the server in PREFECT_API_URL, or starts a local one for as long as this runs."""
    import os

    from flows.deployments import DEPLOYMENTS, serve_all
    from flows.prefect_api import prefect_api

    os.environ["LOOM_WORKDIR"] = str(resolve_workdir(workdir))  # the flow runs this starts inherit it
    with prefect_api() as url:
        console.print(f"serving {len(DEPLOYMENTS)} deployments on {url} (workdir {os.environ['LOOM_WORKDIR']}); "
                      "Ctrl-C stops")
        serve_all(limit=limit)


@app.command()
def deploy(
    work_pool: str = typer.Option("loom", "--work-pool", help="Process work pool (created if missing); start a "
                                  "worker with `prefect worker start --pool NAME`."),
) -> None:
    """Register a deployment of every Loom flow with the Prefect server in PREFECT_API_URL. Schedules are
    declared inactive and only on first deployment: redeploying never touches schedules set in the UI."""
    from prefect.settings import PREFECT_API_URL

    from flows.deployments import deploy_all

    if not PREFECT_API_URL.value():
        _fail("set PREFECT_API_URL to the server to deploy to (or use `loom serve`, which needs none)")
    ids = deploy_all(work_pool)
    console.print(f"{len(ids)} deployments registered for work pool [bold]{work_pool}[/bold]")


@app.command()
def check(
    workdir: str | None = WorkdirOption,
    ray_address: str | None = typer.Option(None, "--ray-address", envvar="LOOM_RAY_ADDRESS",
                                           help="The Ray cluster (default: 'auto', the one this machine is part of)."),
) -> None:
    """Check a cluster for Loom: every Ray node's versions and GPUs, whether every node sees the work
    directory (shared storage), and the Prefect API in PREFECT_API_URL. Exits 1 on any problem."""
    from flows.check import check_cluster

    wd = resolve_workdir(workdir)
    try:
        report = check_cluster(wd, ray_address)
    except ValueError as e:
        _fail(str(e))
    table = Table(title=f"Ray cluster at {report['address']}: {len(report['nodes'])} nodes")
    for name in ("node", "host", "CPUs", "GPUs", "python", "ray", "loom", "torch", "work dir"):
        table.add_column(name)
    for n in report["nodes"]:
        table.add_row(n["node_ip"], n["host"], f"{n['cpus']:g}", f"{n['gpus']:g}", n["python"], n["ray"], n["loom"],
                      n["torch"], "[green]sees it[/green]" if n["sees_workdir"] else "[red]missing[/red]")
    console.print(table)
    prefect = report["prefect"]
    if prefect["api_url"]:
        console.print(f"Prefect API {prefect['api_url']}: " + ("[green]healthy[/green]" if prefect["healthy"]
                                                               else "[red]unreachable[/red]"))
    else:
        console.print("Prefect API: PREFECT_API_URL is not set (each loom command starts a local one)")
    for problem in report["problems"]:
        console.print(f"[red]problem:[/red] {problem}")
    if report["problems"]:
        raise typer.Exit(1)
    console.print(f"[green]ready[/green]: work directory {report['workdir']} is shared by every node")


@app.command()
def demo(
    workdir: str | None = WorkdirOption,
    workers: int | None = WorkersOption,
    ray_address: str | None = RayOption,
    pretrain_steps: int = typer.Option(150, "--pretrain-steps", min=1, help="Steps of the short pretrain."),
    finetune_steps: int = typer.Option(150, "--finetune-steps", min=1, help="Steps of the short fine-tune."),
) -> None:
    """Build a sample corpus from Python's own docs (with planted duplicates, PII, toxic posts and bad records)
    and instruction data, then run the whole pipeline: curate, tokenize, pretrain a tiny GPT, fine-tune it,
    evaluate it, and answer a question with it."""
    from flows.demo import DEMO_QUESTION, make_demo_corpus, make_demo_instructions
    from flows.pipeline import pipeline_flow
    from flows.prefect_api import prefect_api

    wd = resolve_workdir(workdir)
    corpus = wd / "demo-corpus"
    planted = make_demo_corpus(corpus)
    sft = make_demo_instructions(wd / "demo-instructions")
    console.print(f"demo corpus: {corpus} ({planted['good_records']:,} good records, "
                  f"{planted['exact_duplicates']} planted exact and {planted['near_duplicates']} near duplicates, "
                  f"{sum(planted['rejects'].values())} planted bad records)")
    console.print(f"demo instructions: {sft['path']} ({sft['examples']:,} examples, {sft['bad']} malformed)")
    cfg = _config(None, workers, ray_address=ray_address)
    cfg.ingest.max_doc_bytes = 1 << 20  # so the planted 2 MiB line shows the oversize check
    cfg.tokenize.vocab_size = 2048  # a small corpus: a small vocabulary
    cfg.pretrain.steps, cfg.pretrain.eval_every, cfg.pretrain.ckpt_every = pretrain_steps, 50, 50
    cfg.pretrain.warmup_steps = min(cfg.pretrain.warmup_steps, pretrain_steps)
    cfg.finetune.steps, cfg.finetune.eval_every, cfg.finetune.ckpt_every = finetune_steps, 50, 50
    cfg.finetune.warmup_steps = min(cfg.finetune.warmup_steps, finetune_steps)
    cfg.evaluate.examples, cfg.evaluate.max_new_tokens = 20, 32
    with prefect_api():
        out = pipeline_flow(inputs=[str(corpus)], sft_data=[str(sft["path"])], run_id="demo", workdir=str(wd),
                            config=cfg)
    _print_pipeline(out)
    from training.checkpoint import load_model
    from training.generate import GenerationConfig, decode, generate, prompt_ids, stop_ids

    model, _info, tokenizer = load_model(out["checkpoint"])
    stop = stop_ids(tokenizer, chat=True)
    answer = decode(tokenizer, generate(model, prompt_ids(tokenizer, DEMO_QUESTION, chat=True),
                                        GenerationConfig(max_new_tokens=40, num_beams=3), stop), stop)
    console.print(f"[bold]user:[/bold] {DEMO_QUESTION}\n[bold]fine-tuned model:[/bold] {answer.strip()}",
                  highlight=False)
    card = Path(out["curate"][-1]["output"]) / "dataset_card.md"
    console.print(f"dataset card: {card}")
    console.print(f"inspect it:   loom runs demo --workdir {wd}")
    console.print(f"talk to it:   loom generate --checkpoint {out['checkpoint']} --chat --prompt \"...\"")


if __name__ == "__main__":
    app()
