"""Resuming on another number of workers: a ZeRO checkpoint is partitioned by data-parallel rank, so a run
saved by N workers cannot be loaded as it is by M. It is converted once to DeepSpeed's universal checkpoint
(`deepspeed.checkpoint.ds_to_universal`: each parameter's fp32 weights and Adam moments whole, in
`<output>/universal/<tag>/`) and loaded with `load_universal_checkpoint`, which partitions it for M.
Model, optimizer state, step and data position carry over; per-rank RNG states cannot map N onto M, and the
run says so in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
from pathlib import Path

UNIVERSAL_DIR = "universal"  # beside checkpoints/: converted copies, never taken for a checkpoint
_OPTIM_FILE = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


def saved_world_size(tag: Path) -> int | None:
    """How many data-parallel ranks saved a checkpoint: its ZeRO (or bf16) optimizer partitions; None when
    its optimizer state is not partitioned (fp32 without ZeRO: any number of workers loads it)."""
    ranks = {int(m.group(1)) for p in Path(tag).iterdir() if (m := _OPTIM_FILE.match(p.name))}
    return len(ranks) or None


def universal_copy(tag: Path, out: Path) -> Path:
    """The universal conversion of checkpoint `tag` (made once; an interrupted one is redone): returns the
    directory to pass to `load_checkpoint(dir, tag=tag.name)`."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    root = Path(out) / UNIVERSAL_DIR
    target = root / tag.name
    done = target / ".complete"
    if not done.exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        args = argparse.Namespace(input_folder=str(tag), output_folder=str(target), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
        with contextlib.redirect_stdout(io.StringIO()):  # its per-parameter progress is noise in the run's log
            ds_to_universal(args)
        done.touch()
    for stale in root.iterdir():  # only the newest conversion is worth its disk
        if stale.is_dir() and stale.name != tag.name:
            shutil.rmtree(stale, ignore_errors=True)
    return root


def load_resharded(engine, tag: Path, out: Path, rank: int, world: int, saved: int, log) -> dict:
    """Load checkpoint `tag`, saved by `saved` ranks, into `engine` running on `world`: rank 0 converts it to
    a universal checkpoint while the others wait, then every rank loads its new partition. Returns the
    client state."""
    import torch.distributed as dist

    if rank == 0:
        log(f"{tag.name} was saved by {saved} worker(s) and this run has {world}: converting it to a universal "
            f"checkpoint (model, optimizer state, step and data position carry over)")
        try:
            universal_copy(tag, out)
        finally:
            if dist.is_initialized():
                dist.barrier()
    elif dist.is_initialized():
        dist.barrier()
    root = Path(out) / UNIVERSAL_DIR
    if not (root / tag.name / ".complete").exists():
        raise RuntimeError(f"converting {tag} to a universal checkpoint failed on rank 0 (see its log)")
    engine._config.load_universal_checkpoint = True
    try:
        _, client = engine.load_checkpoint(str(root), tag=tag.name)
    finally:
        engine._config.load_universal_checkpoint = False  # later saves and loads are ordinary ones
    if client is None:
        raise RuntimeError(f"DeepSpeed could not load the universal copy of {tag}")
    return client
