"""The run directory layout, and its one owner: where every stage, token shard and checkpoint of a run lives.

    <workdir>/runs/<run_id>/run.json                 the run's inputs and config
                           /01_ingest ... 08_publish  one directory per curate stage
                           /tokens                    token shards for training
                           /train/checkpoints/step-*  pretraining
                           /finetune/checkpoints/...  fine-tuning

    paths = RunPaths.of(workdir=None, run_id="r1")   # $LOOM_WORKDIR or ./loom-work
    paths.stage("pii"), paths.tokens, paths.checkpoints("pretrain")
    RunPaths.of_path("loom-work/runs/r1/train/checkpoints/step-0000300")   # the reverse: which run

Run ids are checked here, so no run is ever written outside its work directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKDIR = "loom-work"
WORKDIR_ENV = "LOOM_WORKDIR"
RUNS = "runs"
RUN_FILE = "run.json"
TOKENS = "tokens"
CHECKPOINTS_DIR = "checkpoints"
TRAINING_DIRS = {"pretrain": "train", "finetune": "finetune"}  # kind -> directory of its output

# Every curate stage in pipeline order. A stage turned off keeps the numbers of the others.
STAGES = ("01_ingest", "02_exact_dedup", "03_quality", "04_near_dedup", "05_pii", "06_bias", "07_decontaminate",
          "08_publish")
SHORT_NAMES = {name.split("_", 1)[1]: name for name in STAGES}
PUBLISH = "08_publish"

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class LayoutError(ValueError):
    """A run id or work directory that cannot be used, with why."""


def validate_run_id(run_id: str) -> str:
    """A run id is one directory name: letters, digits, '.', '_', '-', starting with a letter or digit,
    at most 128 characters. No separators, no '..', never absolute."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise LayoutError(f"bad run id {run_id!r}: use letters, digits, '.', '_' and '-' (starting with a letter "
                          "or digit, at most 128 characters; no '/' and no '..')")
    return run_id


def stage_dir_name(stage: str) -> str:
    """'exact_dedup', '02', '02_exact_dedup' -> '02_exact_dedup'."""
    if stage in STAGES:
        return stage
    if stage in SHORT_NAMES:
        return SHORT_NAMES[stage]
    for name in STAGES:
        if name.startswith(stage + "_"):
            return name
    raise ValueError(f"unknown stage {stage!r}; stages are: {', '.join(SHORT_NAMES)}")


def resolve_workdir(workdir: str | Path | None = None) -> Path:
    """The work directory: the argument, else $LOOM_WORKDIR, else ./loom-work; absolute. An existing
    file is an error, not a directory to write into."""
    path = Path(workdir or os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR).absolute()
    if path.exists() and not path.is_dir():
        raise LayoutError(f"work directory {path} is a file, not a directory")
    return path


@dataclass(frozen=True)
class RunPaths:
    """Where one run's parts live. Built once per command; the run id is validated on construction."""

    workdir: Path
    run_id: str

    def __post_init__(self) -> None:
        validate_run_id(self.run_id)
        object.__setattr__(self, "workdir", Path(self.workdir).absolute())

    @classmethod
    def of(cls, workdir: str | Path | None, run_id: str) -> RunPaths:
        return cls(resolve_workdir(workdir), run_id)

    @classmethod
    def of_path(cls, path: str | Path) -> RunPaths | None:
        """The run a path inside a work directory belongs to (a checkpoint, a stage directory), or None."""
        parts = Path(path).resolve().parts
        for i in range(len(parts) - 2, 0, -1):
            if parts[i] == RUNS and _RUN_ID.fullmatch(parts[i + 1]) and ".." not in parts[i + 1]:
                return cls(Path(*parts[:i]), parts[i + 1])
        return None

    @staticmethod
    def runs_dir(workdir: str | Path) -> Path:
        return Path(workdir) / RUNS

    @classmethod
    def run_ids(cls, workdir: str | Path) -> list[str]:
        """Every run under a work directory, by name."""
        return sorted(p.name for p in cls.runs_dir(workdir).glob("*") if p.is_dir() and _RUN_ID.fullmatch(p.name))

    @property
    def root(self) -> Path:
        return self.workdir / RUNS / self.run_id

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    def stage(self, name: str) -> Path:
        """A stage's directory: a curate stage by any of its names ('pii', '05', '05_pii'), or `tokens`."""
        return self.tokens if name == TOKENS else self.root / stage_dir_name(name)

    @property
    def published(self) -> Path:
        return self.root / PUBLISH

    @property
    def tokens(self) -> Path:
        return self.root / TOKENS

    def training(self, kind: str) -> Path:
        """The output directory of `pretrain` (train/) or `finetune` (finetune/)."""
        if kind not in TRAINING_DIRS:
            raise ValueError(f"training kind must be one of {', '.join(TRAINING_DIRS)}, not {kind!r}")
        return self.root / TRAINING_DIRS[kind]

    @property
    def train(self) -> Path:
        return self.training("pretrain")

    @property
    def finetune(self) -> Path:
        return self.training("finetune")

    def checkpoints(self, kind: str) -> Path:
        return self.training(kind) / CHECKPOINTS_DIR
