"""Curation commands: `loom curate`, `loom step`, `loom bias train`."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli.prologue import (
    WAIT_FOR_LOCK_S,
    Options,
    app,
    check_inputs,
    command_config,
    fail,
    open_run,
    run_flow,
    run_paths,
)
from flows.control import use_prefect
from flows.reporting import console, print_outcome


def _say_unrecorded(prefect: bool) -> None:
    if not prefect:
        console.print("[dim]not recorded in Prefect (no Prefect API configured; --prefect records it)[/dim]")


def _calls(prefect: bool) -> dict:
    """`curate` and `step`: as Prefect flows (flows/curate.py), or plain calls (flows/stages.py) that import
    no Prefect and start no server."""
    if prefect:
        from flows.curate import curate_flow, step_flow

        return {"curate": curate_flow, "step": step_flow}
    from flows.stages import curate, step

    return {"curate": curate, "step": step}


@app.command()
def curate(
    inputs: list[str] = typer.Argument(..., help="Files, directories or globs of JSONL (.gz/.zst), Parquet, text."),
    workdir: str | None = Options.workdir,
    run_id: str | None = typer.Option(None, "--run-id", "-r", help="Run id (default: derived from the inputs)."),
    config: Path | None = Options.config,
    workers: int | None = Options.workers,
    ray_address: str | None = Options.ray_address,
    force: bool = typer.Option(False, "--force", help="Rerun every stage even if complete."),
    wait: bool = Options.wait,
    prefect: bool | None = Options.prefect,
) -> None:
    """Run the curate flow: ingest -> exact/near dedup -> pii -> bias -> publish, skipping complete stages."""
    from flows.config import default_run_id

    cfg = command_config(config, workers, ray_address=ray_address)
    inputs = [str(Path(i).absolute()) for i in inputs]
    paths = run_paths(workdir, run_id or default_run_id(inputs))
    check_inputs(inputs)
    prefect = use_prefect(prefect, cfg.ray_address)
    curate = _calls(prefect)["curate"]
    summaries = run_flow(lambda: curate(inputs=inputs, run_id=paths.run_id, workdir=str(paths.workdir),
                                        config=cfg, force=force, wait_for_lock=WAIT_FOR_LOCK_S if wait else 0.0),
                         errors=(FileNotFoundError,), prefect=prefect)
    print_outcome(summaries, f"curate run {paths.run_id}")
    _say_unrecorded(prefect)


@app.command()
def step(
    stage: str = typer.Argument(..., help="Stage: ingest, exact_dedup, quality, near_dedup, pii, bias or publish "
                                "(or 01_ingest, ...)."),
    run_id: str | None = typer.Option(None, "--run-id", "-r", help="Rerun this stage of an existing run."),
    inputs: list[str] | None = typer.Option(None, "--input", "-i", help="Run on these inputs instead of a run."),
    output: Path | None = typer.Option(None, "--output", "-o", help="With --input: where the stage writes."),
    force: bool = typer.Option(False, "--force", help="Rerun even if complete; later stages become stale."),
    wait: bool = Options.wait,
    workdir: str | None = Options.workdir,
    config: Path | None = Options.config,
    workers: int | None = Options.workers,
    ray_address: str | None = Options.ray_address,
    prefect: bool | None = Options.prefect,
) -> None:
    """Rerun one stage of a run (--run-id), or run one stage on any input (--input ... --output DIR)."""
    from flows.stages import PIPELINE, StageRun, active_stages, run_one_stage, stale_after
    from tasks.layout import stage_dir_name

    try:
        name = stage_dir_name(stage)
    except ValueError as e:
        fail(str(e))
    if name not in PIPELINE:
        fail(f"stage {name} is not implemented yet; implemented: {', '.join(PIPELINE)}")

    if inputs:
        if output is None:
            fail("--input needs --output DIR")
        cfg = command_config(config, workers, ray_address=ray_address)
        check_inputs(inputs)
        out = output.absolute()
        step_run = run_id or f"step-{out.name}"
        run_paths(workdir, step_run)  # the id is checked like any run's
        prefect = use_prefect(prefect, cfg.ray_address)
        step_call = _calls(prefect)["step"]
        summaries = run_flow(lambda: step_call(stage=name, inputs=[str(Path(i).absolute()) for i in inputs],
                                               output_dir=str(out), run_id=step_run, config=cfg, force=force,
                                               wait_for_lock=WAIT_FOR_LOCK_S if wait else 0.0),
                             errors=(FileNotFoundError,), prefect=prefect)
        print_outcome(summaries, f"step {name}")
        _say_unrecorded(prefect)
        return

    if not run_id:
        fail("give --run-id R to rerun a stage of a run, or --input PATH... --output DIR")
    paths, run_inputs, cfg = open_run(workdir, run_id, config, workers, ray_address)
    if name not in active_stages(cfg):
        fail(f"{name} is off in run {run_id}'s config (stages_off); turn it on with a config whose stages_off "
             "leaves it out, then rerun `loom curate`")
    run = StageRun(run_id=run_id, workdir=str(paths.workdir), force=force, workers=cfg.workers,
                   ray_address=cfg.ray_address, codec=cfg.shard_codec, wait_for_lock=WAIT_FOR_LOCK_S if wait else 0.0)
    prefect = use_prefect(prefect, cfg.ray_address)
    summary = run_flow(lambda: run_one_stage(name, run, cfg.for_stage(name), run_inputs), errors=(FileNotFoundError,),
                       hint=f" (run the stages before {name} first, e.g. loom curate)", prefect=prefect)
    print_outcome([summary], f"step {name} of run {run_id}")
    _say_unrecorded(prefect)
    stale = stale_after(paths, name)
    if stale:
        console.print(f"[yellow]now stale:[/yellow] {', '.join(stale)} "
                      f"(rerun with `loom step <stage> --run-id {run_id}` or `loom curate`)")


bias_app = typer.Typer(help="The bias and toxicity filter (06_bias): train its classifier.", no_args_is_help=True)
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

    from tasks.toxicity import train_and_save

    with open(data, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        missing = {text_column, label_column} - set(reader.fieldnames or [])
        if missing:
            fail(f"{data} has no column(s) {', '.join(sorted(missing))}; columns: {', '.join(reader.fieldnames or [])}")
        rows = [(r[text_column] or "", (r[label_column] or "").strip()) for r in reader]
    labels = [int(label in set(positive)) for _, label in rows]
    if not 0 < sum(labels) < len(labels):
        fail(f"--positive {positive} marks {sum(labels)} of {len(labels)} rows: need both classes")
    console.print(f"training on {len(rows):,} rows ({sum(labels):,} toxic) ...")
    meta = train_and_save([t for t, _ in rows], labels, output, max_false_removal=max_false_removal,
                          lexicons=tuple(lexicon or ()))
    console.print(f"saved {output} ({output.stat().st_size / 1e6:.1f} MB); calibrated threshold "
                  f"{meta['threshold']:.3f}. Use it with:\n  [bias]\n  classifier = \"{output}\"")
