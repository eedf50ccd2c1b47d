"""The checkpoint format, and its one owner. Imports no torch: flows and the CLI read checkpoints with it.

A checkpoint directory (`<run>/train/checkpoints/step-0000300`) holds DeepSpeed's files,
`loom.json` (model config, fine-tuning mode, step, where its data came from), the tokenizer and
`sha256.json`, a manifest of every other file's size and sha256, written last: a checkpoint
without it never finished saving. Wherever a checkpoint is asked for, a training output
directory (`<run>/train`, `<run>/finetune`) or its `checkpoints/` folder also works: the newest
good checkpoint in it.

    loom generate --checkpoint loom-work/runs/r1/train --prompt "ROMEO:"   # resolved and verified once

Loading weights and models out of a checkpoint is `training.load`'s work.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tasks.layout import CHECKPOINTS_DIR  # the run layout's name for it, inside a training output directory

CHECKPOINT_MANIFEST = "sha256.json"
CHECKPOINT_INFO = "loom.json"  # what the checkpoint is: model config, fine-tuning mode, step
TOKENIZER_FILE = "tokenizer.json"
TAG_PREFIX = "step-"
METRICS_FILE = "metrics.jsonl"  # beside checkpoints/: one JSON line per logged step
RUN_INFO = "run_info.json"  # beside checkpoints/: world size, nodes, trainable parameters


class CheckpointError(ValueError):
    """A path that is not a usable checkpoint, with what is wrong."""


def tag_name(step: int) -> str:
    return f"{TAG_PREFIX}{step:07d}"  # zero-padded so names sort by step


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_info(tag_dir: Path, info: dict) -> None:
    """`loom.json`: what generate, evaluate and export need to rebuild the model from this directory alone."""
    (Path(tag_dir) / CHECKPOINT_INFO).write_text(json.dumps(info, indent=1))


def write_manifest(tag_dir: Path) -> None:
    """The sha256 manifest of every file in the checkpoint, written atomically and last."""
    tag_dir = Path(tag_dir)
    files = {p.relative_to(tag_dir).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(tag_dir.rglob("*")) if p.is_file() and p.name != CHECKPOINT_MANIFEST}
    tmp = tag_dir / f".{CHECKPOINT_MANIFEST}.tmp"
    tmp.write_text(json.dumps({"files": files}, indent=1))
    tmp.replace(tag_dir / CHECKPOINT_MANIFEST)
    identity = _manifest_identity(tag_dir.resolve())
    if identity is not None:  # just hashed by this process: verified
        _verified[tag_dir.resolve()] = identity


def verify_checkpoint(tag_dir: Path) -> str | None:
    """None when every file matches the manifest, else what is wrong (a damaged manifest or `loom.json`
    included: the checkpoint is then damaged, not a traceback)."""
    tag_dir = Path(tag_dir)
    manifest = tag_dir / CHECKPOINT_MANIFEST
    if not manifest.exists():
        return "no manifest (the save did not finish)"
    try:
        files = json.loads(manifest.read_text())["files"]
        entries = [(name, int(meta["bytes"]), str(meta["sha256"])) for name, meta in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{CHECKPOINT_MANIFEST} is damaged ({type(e).__name__})"
    for name, size, sha in entries:
        path = tag_dir / name
        if not path.exists():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is truncated ({path.stat().st_size} of {size} bytes)"
        if _sha256(path) != sha:
            return f"{name} does not match its sha256"
    if (tag_dir / CHECKPOINT_INFO).exists():
        try:
            json.loads((tag_dir / CHECKPOINT_INFO).read_text())["step"]
        except (ValueError, KeyError, TypeError) as e:
            return f"{CHECKPOINT_INFO} is damaged ({type(e).__name__})"
    return None


def checkpoint_tags(ckpt_dir: Path) -> list[Path]:
    """Checkpoint directories, newest step first."""
    return sorted((p for p in Path(ckpt_dir).glob(f"{TAG_PREFIX}*") if p.is_dir()), reverse=True)


# Verified checkpoints of this process, keyed by path and the manifest's identity: a command verifies once.
_verified: dict[Path, tuple[int, int]] = {}


def _manifest_identity(tag: Path) -> tuple[int, int] | None:
    try:
        st = (tag / CHECKPOINT_MANIFEST).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def is_good(tag: Path) -> str | None:
    """`verify_checkpoint`, remembered for this process while the manifest is unchanged."""
    tag = Path(tag).resolve()
    identity = _manifest_identity(tag)
    if identity is not None and _verified.get(tag) == identity:
        return None
    problem = verify_checkpoint(tag)
    if problem is None and identity is not None:
        _verified[tag] = identity
    return problem


def latest_good_checkpoint(ckpt_dir: Path, log=print) -> Path | None:
    """The newest checkpoint that verifies; each one skipped is said through `log`."""
    for tag in checkpoint_tags(ckpt_dir):
        problem = is_good(tag)
        if problem is None:
            return tag
        log(f"checkpoint {tag.name} skipped: {problem}")
    return None


def read_info(tag: Path) -> dict:
    path = Path(tag) / CHECKPOINT_INFO
    if not path.exists():
        raise CheckpointError(f"{tag} has no {CHECKPOINT_INFO}: it was not written by loom")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path} is damaged: {e}") from None


def has_info(tag: Path) -> bool:
    return (Path(tag) / CHECKPOINT_INFO).exists()


def tokenizer_path(tag: Path) -> Path:
    return Path(tag) / TOKENIZER_FILE


def resolve_checkpoint(path: str | Path, log=None) -> Path:
    """The checkpoint directory `path` names (itself, or the newest good one under it), verified.
    `log` hears about each damaged checkpoint passed over on the way (a fallback is said, not hidden)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if (path / CHECKPOINT_MANIFEST).exists() or (path / CHECKPOINT_INFO).exists():
        problem = is_good(path)
        if problem:
            raise CheckpointError(f"checkpoint {path} is damaged: {problem}")
        return path
    for folder in (path / CHECKPOINTS_DIR, path):
        if folder.is_dir() and checkpoint_tags(folder):
            found = latest_good_checkpoint(folder, log=log or (lambda m: None))
            if found is not None:
                return found
    raise CheckpointError(f"no verified checkpoint in {path} (expected {TAG_PREFIX}* directories with "
                          f"{CHECKPOINT_MANIFEST})")


def prune(ckpt_dir: Path, keep: int) -> None:
    """Remove all but the `keep` newest checkpoints."""
    import shutil

    for old in checkpoint_tags(ckpt_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
        _verified.pop(old.resolve(), None)


def training_output_of(tag: Path) -> Path:
    """The training output directory a checkpoint is in (`.../train` for `.../train/checkpoints/step-*`)."""
    tag = Path(tag)
    return tag.parents[1] if tag.parent.name == CHECKPOINTS_DIR else tag


def last_metrics(output_dir: Path) -> dict | None:
    path = Path(output_dir) / METRICS_FILE
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    return json.loads(lines[-1]) if lines else None


def last_val_loss(output_dir: Path) -> float | None:
    """The newest validation loss in a training output's metrics file."""
    path = Path(output_dir) / METRICS_FILE
    if not path.exists():
        return None
    vals = [json.loads(line).get("val_loss") for line in path.read_text().splitlines() if line.strip()]
    vals = [v for v in vals if v is not None]
    return vals[-1] if vals else None

