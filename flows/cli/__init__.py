"""The `loom` command line, split by what a person does: curation (curate, step, bias), training
(tokenize, pretrain, finetune, generate, evaluate, export) and operations (runs, pipeline, demo,
serve, deploy, check). The commands hold no flow logic: they check what was typed, call a flow,
and print what `flows.reporting` makes of the result.

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

import contextlib
import gc
import os
import sys

# Curation runs one process per core, so numpy's BLAS (the PII stage's NER network) gets one thread in each,
# set before numpy loads (pool workers inherit it): its own threads on the other cores cost CPU and gave
# nothing. Only for the curation commands: a torch built on OpenBLAS (Linux on ARM) would read it too.
CURATION = bool(set(sys.argv[1:2]) & {"curate", "step"})  # this process runs a curation command
if CURATION:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # Pydantic looks for plugins (a scan of every installed package's entry points: 9-13 ms here)
    # when it builds its first model, one of Loom's config models, which need none: off for the curation
    # commands (their forked workers and any process they start inherit it) unless PYDANTIC_DISABLE_PLUGINS
    # is set already (set it empty to keep the plugins).
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

# The modules a command loads live as long as it does: no collections while they load (117 of them took
# 5-10% of a short command, to find a few hundred objects of garbage, frozen now with the rest), and later
# ones never walk them again (gc.freeze, which also spares forked pool workers from touching, and so
# copying, their pages).
gc.disable()
try:
    import typer

    from flows.cli import curation, operations, training  # noqa: F401 (each registers its commands on `app`)
    from flows.cli.prologue import app
    from flows.reporting import console
    from tasks import __version__

    if CURATION:  # stages hand pyarrow no pandas objects: no 0.2 s import of pandas before the first stage
        from tasks.shards import pyarrow_without_pandas

        pyarrow_without_pandas()
finally:
    gc.freeze()
    gc.enable()

SIGTERM_GRACE_S = 10.0


def _stop_on_sigterm() -> None:
    """SIGTERM (a scheduler, `kill`, a container stopping) stops a command as Ctrl-C does: the stage being
    written releases its lock and stays resumable, and pool workers end with the command. If the command
    is still running SIGTERM_GRACE_S later, it exits there: the KeyboardInterrupt can be lost (Cython code
    that ignores exceptions, such as pyarrow's first import of pandas, may be running when it is raised)."""
    import signal
    import threading

    def interrupt(signum, frame):
        watchdog = threading.Timer(SIGTERM_GRACE_S, _exit_now, args=(signum,))
        watchdog.daemon = True  # a command that stops in time exits without waiting for it
        watchdog.start()
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _exit_now(signum: int) -> None:
    console.print(f"stopped by signal {signum} (still running {SIGTERM_GRACE_S:.0f} s after it); the run resumes "
                  "where it stopped", highlight=False)
    os._exit(128 + signum)


@app.callback(invoke_without_command=True)
def main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    _stop_on_sigterm()
    if version:
        console.print(f"loom {__version__}")
        raise typer.Exit()


def run(fast_exit: bool = True) -> None:
    """The `loom` program. A curation command that has finished, with no Prefect or Ray in the process,
    ends the process at once once its output is flushed: the interpreter's own exit (pyarrow's thread
    pools and memory among what it takes down) took another 0.1-0.2 s after every curate and step. Its
    files are all written and closed by then, and its process pool is shut down; other commands, and a
    command that Prefect or Ray ran in, exit as Python does."""
    try:
        app()
        code = 0
    except SystemExit as stop:
        code = stop.code
    if fast_exit and CURATION and not {"prefect", "ray"} & set(sys.modules):
        import logging

        if code is None:
            code = 0
        elif not isinstance(code, int):  # sys.exit("message"), as Python would end it
            print(code, file=sys.stderr)
            code = 1
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more reaches it anyway
                stream.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    app()
