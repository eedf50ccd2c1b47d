"""The prologue every `loom` command shares: the Typer app, the options several commands take, and the
steps (work directory, run, config, checkpoint) that turn what a person typed into validated objects,
or into a one-line error (exit 2)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.markup import escape

from flows.reporting import console
from tasks.layout import LayoutError, RunPaths, resolve_workdir

app = typer.Typer(
    help="Loom: raw text corpora to trained language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

class Options:
    """The options several commands share (Typer reads them as the commands' parameter defaults)."""

    workdir = typer.Option(None, "--workdir", "-w", envvar="LOOM_WORKDIR",
                           help="Work directory holding runs/ (default ./loom-work).")
    config = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                          help="TOML, YAML or JSON file with one section per stage.")
    workers = typer.Option(None, "--workers", "-j", min=1, help="Local processes for shard work (default: all cores).")
    deepspeed = typer.Option(None, "--deepspeed", help="DeepSpeed config: zero0, zero1, zero2, zero3, zero3-offload "
                             "(infra/deepspeed/) or a JSON file; default zero2 on GPUs, zero1 on CPU.")
    gpu = typer.Option(None, "--gpu/--no-gpu", help="Train on GPUs, one per worker (default: when the Ray cluster "
                       "has GPUs).")
    ray_address = typer.Option(None, "--ray-address", envvar="LOOM_RAY_ADDRESS",
                               help="Run shard work on Ray: 'auto', 'ray://host:10001', or 'local' (start one).")
    num_workers = typer.Option(None, "--num-workers", "-n", min=1, help="Ray Train workers.")
    allow_stale = typer.Option(False, "--allow-stale", help="Use the run's data even where a stage before it "
                               "reran since it was made (stale).")
    wait = typer.Option(False, "--wait", help="Queue behind another process writing the same stage directory "
                        "instead of failing at once.")
    prefect = typer.Option(None, "--prefect/--no-prefect", envvar="LOOM_PREFECT",
                           help="Record the run in Prefect (flow runs, artifacts). Default: when a Prefect API is "
                           "configured (PREFECT_API_URL or the active profile) or --ray-address is given; with "
                           "--prefect and none configured, a temporary local server starts (~10 s).")
    submit = typer.Option(None, "--submit", help="Run this command as a Ray Job on a remote cluster: its job "
                          "server (http://head:8265, or ray://head:10001). Logs stream here; the job id is "
                          "recorded in the run. Paths must be on storage the cluster shares.")
    checkpoint = typer.Option(..., "--checkpoint", "--from", help="A checkpoint (step-* directory), or a training "
                              "output (runs/R/train, runs/R/finetune): its newest good checkpoint.")


def fail(message: str):
    """One line on stderr, exit status 2: what a person typed cannot be done."""
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)  # "[pretrain]" is a section, not markup
    raise typer.Exit(2)


def workdir_of(workdir: str | None) -> Path:
    try:
        return resolve_workdir(workdir)
    except LayoutError as e:
        fail(str(e))


def run_paths(workdir: str | None, run_id: str) -> RunPaths:
    """The run's layout; a bad run id or work directory is a one-line error."""
    try:
        return RunPaths.of(workdir, run_id)
    except LayoutError as e:
        fail(str(e))


def command_config(path: Path | None, workers: int | None = None, base=None, ray_address: str | None = None):
    """The config file (or `base`, or the defaults) with the command line's workers and Ray address on top."""
    from flows.config import CurateConfig, load_config

    try:
        config = load_config(path) if path else (base or CurateConfig())
    except Exception as e:  # pydantic and parser errors name the bad key; show them plainly
        fail(f"bad config {path}: {e}")
    if workers:
        config.workers = workers
    if ray_address:
        config.ray_address = ray_address
    return config


def open_run(workdir: str | None, run_id: str, config: Path | None = None, workers: int | None = None,
             ray_address: str | None = None):
    """(RunPaths, the run's inputs, its config with the command line's on top) of an existing run."""
    from flows.config import load_run

    paths = run_paths(workdir, run_id)
    try:
        inputs, run_cfg = load_run(paths)
    except FileNotFoundError as e:
        fail(str(e))
    return paths, inputs, command_config(config, workers, base=run_cfg, ray_address=ray_address)


def check_inputs(*groups: list[str] | None) -> None:
    """Inputs that name nothing readable are a one-line error before any server or flow starts."""
    from tasks.inputs import expand_inputs

    for inputs in groups:
        try:
            expand_inputs(list(inputs or []))
        except FileNotFoundError as e:
            fail(str(e))


def override(section, **options) -> None:
    """Command-line options win over the config file's section; options not given leave it alone."""
    for key, value in options.items():
        if value is not None:
            setattr(section, key, value)


T = TypeVar("T")


WAIT_FOR_LOCK_S = 7 * 24 * 3600.0  # --wait: as long as the other writer takes


def run_flow(call: Callable[[], T], errors: tuple[type[Exception], ...] = (FileNotFoundError, ValueError),
             hint: str = "", prefect: bool = True) -> T:
    """Call a flow against one Prefect API for the command, or with `prefect` off the same stage calls with
    no Prefect at all (flows/control.py); the errors a person can fix become one line."""
    from tasks.lock import StageLocked

    if prefect:
        from flows.prefect_api import prefect_api

        plane = prefect_api()
    else:
        from flows.control import Control, using
        from flows.reaper import watch_descendants

        watch_descendants()  # whatever this command starts (process pools) ends with it, even after SIGKILL
        plane = using(Control())
    with plane:
        try:
            return call()
        except StageLocked as e:  # another run is writing there: never a traceback
            fail(str(e))
        except errors as e:
            fail(f"{e}{hint}")


def checkpoint_of(path: str) -> Path:
    """Resolve and verify a checkpoint once for the command; damaged ones passed over are said."""
    from training.checkpoint import CheckpointError, resolve_checkpoint

    try:
        return resolve_checkpoint(path, log=lambda m: console.print(f"[yellow]{m}[/yellow]", highlight=False))
    except CheckpointError as e:
        fail(str(e))
