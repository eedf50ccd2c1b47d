"""The `loom` command line.

    loom curate corpus/ more.jsonl.gz --run-id r1     # ingest -> exact/near dedup -> pii -> bias -> publish
    loom step exact_dedup --run-id r1 --force         # rerun one stage; later stages become stale
    loom step ingest --input x.jsonl --output out/    # one stage on any input
    loom runs [r1]                                    # runs, or one run's stages
    loom tokenize --run-id r1                         # BPE tokenizer + token shards of the published data
    loom pretrain --run-id r1 --num-workers 2         # GPT on Ray Train + DeepSpeed, resumable
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
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps (overrides [pretrain])."),
    model: str | None = typer.Option(None, "--model", help="Named model size: tiny, small, gpt2, gpt2-medium."),
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
    if num_workers:
        cfg.pretrain.num_workers = num_workers
    if steps:
        cfg.pretrain.steps = steps
    if model:
        cfg.pretrain.model = model
    with prefect_api():
        try:
            summary = pretrain_flow(run_id=run_id, workdir=str(wd), config=cfg.pretrain, ray_address=cfg.ray_address)
        except FileNotFoundError as e:
            _fail(str(e))
    _print_pretrain(summary)


def _print_pretrain(summary: dict) -> None:
    table = Table(title=f"pretrain run {summary['run_id']}: {summary['step']} steps in {summary['seconds']:.0f} s",
                  title_justify="left")
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


@app.command()
def demo(
    workdir: str | None = WorkdirOption,
    workers: int | None = WorkersOption,
    ray_address: str | None = RayOption,
    pretrain_steps: int = typer.Option(100, "--pretrain-steps", min=0, help="Steps of the short pretrain (0: none)."),
) -> None:
    """Build a sample corpus from Python's own docs (with planted duplicates, PII, toxic posts and bad records),
    curate it, tokenize the result and pretrain a tiny GPT on it for a few steps."""
    from flows.curate import curate_flow
    from flows.demo import make_demo_corpus
    from flows.prefect_api import prefect_api

    wd = resolve_workdir(workdir)
    corpus = wd / "demo-corpus"
    planted = make_demo_corpus(corpus)
    console.print(f"demo corpus: {corpus} ({planted['good_records']:,} good records, "
                  f"{planted['exact_duplicates']} planted exact and {planted['near_duplicates']} near duplicates, "
                  f"{sum(planted['rejects'].values())} planted bad records)")
    cfg = _config(None, workers, ray_address=ray_address)
    cfg.ingest.max_doc_bytes = 1 << 20  # so the planted 2 MiB line shows the oversize check
    with prefect_api():
        summaries = curate_flow(inputs=[str(corpus)], run_id="demo", workdir=str(wd), config=cfg)
        from flows.curate import StageRun, task_runner, tokenize_flow

        cfg.tokenize.vocab_size = 2048  # a small corpus: a small vocabulary
        tokens = tokenize_flow.with_options(task_runner=task_runner(cfg.workers, cfg.ray_address))(
            run=StageRun(run_id="demo", workdir=str(wd), workers=cfg.workers, ray_address=cfg.ray_address),
            config=cfg.tokenize)
        _print_outcome(summaries, "demo: curate")
        _print_tokens(tokens)
        if pretrain_steps:
            from flows.train import pretrain_flow

            cfg.pretrain.steps, cfg.pretrain.eval_every, cfg.pretrain.ckpt_every = pretrain_steps, 50, 50
            cfg.pretrain.warmup_steps = min(cfg.pretrain.warmup_steps, pretrain_steps)
            trained = pretrain_flow(run_id="demo", workdir=str(wd), config=cfg.pretrain, ray_address=cfg.ray_address)
            _print_pretrain(trained)
    card = Path(summaries[-1]["output"]) / "dataset_card.md"
    console.print(f"dataset card: {card}")
    console.print(f"inspect it:   loom runs demo --workdir {wd}")


if __name__ == "__main__":
    app()
