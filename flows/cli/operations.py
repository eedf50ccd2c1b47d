"""Operations: `loom runs`, `pipeline`, `demo`, `serve`, `deploy`, `check`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.cli.prologue import (
    Options,
    app,
    check_inputs,
    checkpoint_of,
    command_config,
    fail,
    run_flow,
    run_paths,
    workdir_of,
)
from flows.reporting import console, print_pipeline, run_table, runs_table, training_rows, training_table


def _ingest_fingerprint(inputs: list[str]) -> str:
    from tasks.ingest import Ingest

    return Ingest().input_fingerprint(inputs)


@app.command()
def runs(
    run_id: str | None = typer.Argument(None, help="Show this run's stages."),
    workdir: str | None = Options.workdir,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List runs, or show each stage of one run: complete, stale, partial or missing, with counts."""
    from flows.curate import active_stages, run_config
    from tasks.layout import RunPaths
    from tasks.manifest import read_manifest
    from tasks.stage import run_statuses

    wd = workdir_of(workdir)
    if run_id is None:
        rows = []
        for rid in RunPaths.run_ids(wd):
            paths = RunPaths(wd, rid)
            statuses = run_statuses(paths.root, active_stages(run_config(paths)), _ingest_fingerprint)
            published = read_manifest(paths.published)
            rows.append({"run_id": rid, "complete": sum(s.status in ("complete", "collected") for s in statuses),
                         "stages": len(statuses), "documents": published.rows_out if published else None,
                         "updated": max((s.manifest.finished_at for s in statuses if s.manifest), default="")})
        if as_json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            console.print(f"no runs under {RunPaths.runs_dir(wd)}")
        else:
            console.print(runs_table(rows, str(RunPaths.runs_dir(wd))))
        return

    paths = run_paths(workdir, run_id)
    if not paths.root.exists():
        fail(f"no run {run_id!r} under {RunPaths.runs_dir(paths.workdir)}")
    statuses = run_statuses(paths.root, active_stages(run_config(paths)), _ingest_fingerprint)
    training = training_rows(paths)
    pictures = [str(p) for p in sorted(paths.root.glob("*/*.png")) + sorted(paths.root.glob("*/*/*.png"))
                if "/." not in str(p)]  # the charts of the reports: funnel, lengths, similarity, bias, loss
    if as_json:
        print(json.dumps({"run_id": run_id, "pictures": pictures, "stages": [{
            "stage": s.stage, "status": s.status, "reason": s.reason,
            "rows_in": s.manifest.rows_in if s.manifest else None,
            "rows_out": s.manifest.rows_out if s.manifest else None,
            "removed": s.manifest.removed if s.manifest else None,
            "rejected": s.manifest.rejected if s.manifest else None,
            "finished_at": s.manifest.finished_at if s.manifest else None,
        } for s in statuses], "training": training}, indent=2))
        return
    console.print(run_table(statuses, f"run {run_id} ({paths.root})"))
    for row in training:
        for message in row.get("damaged", []):
            console.print(f"[yellow]{row['step']}: {message}[/yellow]", highlight=False)
    if training:
        console.print(training_table(training))
    if pictures:
        console.print("pictures:\n" + "\n".join(f"  {p}" for p in pictures), highlight=False, soft_wrap=True)


@app.command()
def pipeline(
    inputs: list[str] = typer.Argument(..., help="Corpus files, directories or globs."),
    sft_data: list[str] | None = typer.Option(None, "--sft-data", help="Instruction data for fine-tuning "
                                              "(repeat; none: the pretrained model is evaluated)."),
    run_id: str | None = typer.Option(None, "--run-id", "-r", help="Run id (default: derived from the inputs)."),
    workdir: str | None = Options.workdir,
    config: Path | None = Options.config,
    workers: int | None = Options.workers,
    ray_address: str | None = Options.ray_address,
    start_at: str = typer.Option("curate", "--start-at", help="First step: curate, tokenize, pretrain, finetune "
                                 "or evaluate (the steps before it must be done)."),
) -> None:
    """Curate -> tokenize -> pretrain -> finetune -> evaluate, each a subflow; a rerun resumes where it stopped."""
    from flows.config import default_run_id
    from flows.pipeline import STEPS, pipeline_flow

    if start_at not in STEPS:
        fail(f"--start-at must be one of {', '.join(STEPS)}, not {start_at!r}")
    cfg = command_config(config, workers, ray_address=ray_address)
    check_inputs(inputs, sft_data)
    inputs = [str(Path(i).absolute()) for i in inputs]
    paths = run_paths(workdir, run_id or default_run_id(inputs))
    out = run_flow(lambda: pipeline_flow(inputs=inputs, sft_data=[str(Path(d).absolute()) for d in sft_data or []],
                                         run_id=paths.run_id, workdir=str(paths.workdir), config=cfg,
                                         start_at=start_at))
    print_pipeline(out)


@app.command()
def serve(
    workdir: str | None = Options.workdir,
    limit: int | None = typer.Option(None, "--limit", min=1, help="Flow runs at the same time (default: no limit)."),
) -> None:
    """Serve a deployment of every Loom flow from this process, for the Prefect UI (no work pool needed).
    Uses the server in PREFECT_API_URL, or starts a local one for as long as this runs."""
    import os

    from flows.deployments import DEPLOYMENTS, serve_all
    from flows.prefect_api import prefect_api

    os.environ["LOOM_WORKDIR"] = str(workdir_of(workdir))  # the flow runs this starts inherit it
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
        fail("set PREFECT_API_URL to the server to deploy to (or use `loom serve`, which needs none)")
    ids = deploy_all(work_pool)
    console.print(f"{len(ids)} deployments registered for work pool [bold]{work_pool}[/bold]")


@app.command()
def check(
    workdir: str | None = Options.workdir,
    ray_address: str | None = typer.Option(None, "--ray-address", envvar="LOOM_RAY_ADDRESS",
                                           help="The Ray cluster (default: 'auto', the one this machine is part of)."),
) -> None:
    """Check a cluster for Loom: every Ray node's versions and GPUs, whether every node sees the work
    directory (shared storage), and the Prefect API in PREFECT_API_URL. Exits 1 on any problem."""
    from rich.table import Table

    from flows.check import check_cluster

    try:
        report = check_cluster(workdir_of(workdir), ray_address)
    except ValueError as e:
        fail(str(e))
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
    workdir: str | None = Options.workdir,
    workers: int | None = Options.workers,
    ray_address: str | None = Options.ray_address,
    pretrain_steps: int = typer.Option(150, "--pretrain-steps", min=1, help="Steps of the short pretrain."),
    finetune_steps: int = typer.Option(150, "--finetune-steps", min=1, help="Steps of the short fine-tune."),
) -> None:
    """Build a sample corpus from Python's own docs (with planted duplicates, PII, toxic posts and bad records)
    and instruction data, then run the whole pipeline: curate, tokenize, pretrain a tiny GPT, fine-tune it,
    evaluate it, and answer a question with it."""
    from flows.demo import DEMO_QUESTION, demo_config, make_demo_corpus, make_demo_instructions
    from flows.pipeline import pipeline_flow
    from training.generate import GenerationConfig, decode, generate, prompt_ids, stop_ids
    from training.load import load_model

    paths = run_paths(workdir, "demo")
    corpus = paths.workdir / "demo-corpus"
    planted = make_demo_corpus(corpus)
    sft = make_demo_instructions(paths.workdir / "demo-instructions")
    console.print(f"demo corpus: {corpus} ({planted['good_records']:,} good records, "
                  f"{planted['exact_duplicates']} planted exact and {planted['near_duplicates']} near duplicates, "
                  f"{sum(planted['rejects'].values())} planted bad records)")
    console.print(f"demo instructions: {sft['path']} ({sft['examples']:,} examples, {sft['bad']} malformed)")
    cfg = demo_config(command_config(None, workers, ray_address=ray_address), pretrain_steps, finetune_steps)
    out = run_flow(lambda: pipeline_flow(inputs=[str(corpus)], sft_data=[str(sft["path"])], run_id=paths.run_id,
                                         workdir=str(paths.workdir), config=cfg))
    print_pipeline(out)
    model, _info, tokenizer = load_model(checkpoint_of(out["checkpoint"]))
    stop = stop_ids(tokenizer, chat=True)
    answer = decode(tokenizer, generate(model, prompt_ids(tokenizer, DEMO_QUESTION, chat=True),
                                        GenerationConfig(max_new_tokens=40, num_beams=3), stop), stop)
    console.print(f"[bold]user:[/bold] {DEMO_QUESTION}\n[bold]fine-tuned model:[/bold] {answer.strip()}",
                  highlight=False)
    console.print(f"dataset card: {Path(out['curate'][-1]['output']) / 'README.md'}")
    console.print(f"inspect it:   loom runs demo --workdir {paths.workdir}")
    console.print(f"talk to it:   loom generate --checkpoint {out['checkpoint']} --chat --prompt \"...\"")


@app.command()
def gc(
    run_id: str = typer.Argument(..., help="The published run whose pre-PII data is deleted."),
    workdir: str | None = Options.workdir,
    rejects: str = typer.Option("redact", "--rejects", help="What bad records keep of their raw values: redact "
                                "(personal data replaced) or drop."),
) -> None:
    """Delete a published run's pre-PII data: the shards of the stages before PII, the documents they removed,
    the raw values of bad records, the near-dedup report's excerpts and the map of original ids. Manifests
    and counts stay, so `loom runs` still tells the story."""
    from flows.curate import gc_flow

    if rejects not in ("redact", "drop"):
        fail(f"--rejects must be redact or drop, not {rejects!r}")
    paths = run_paths(workdir, run_id)
    if not paths.root.exists():
        fail(f"no run {run_id!r} under {paths.workdir / 'runs'}")
    report = run_flow(lambda: gc_flow(run_id=run_id, workdir=str(paths.workdir), rejects=rejects))
    for stage, done in report["stages"].items():
        console.print(f"{stage}: {done['shards']} shard(s), {done['removed_dirs']} _removed/, "
                      f"{done['rejects_rewritten']} rejects file(s) rewritten, {done['reports']} report(s)")
    console.print(f"freed {report['bytes_freed'] / 1e6:,.1f} MB; manifests kept (loom runs {run_id})")
