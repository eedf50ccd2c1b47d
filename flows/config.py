"""Typed configuration for curate runs, and where runs live on disk.

A config file (TOML, YAML or JSON) has one section per stage plus `workers` and
`ray_address`:

    workers = 2
    [ingest]
    text_field = "output"
    [exact_dedup]
    strip_punctuation = false
    [near_dedup]
    threshold = 0.7
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.bias import BiasConfig
from tasks.decontaminate import DecontaminateConfig
from tasks.exact_dedup import ExactDedupConfig
from tasks.ingest import IngestConfig
from tasks.layout import PUBLISH, STAGES, RunPaths, stage_dir_name
from tasks.manifest import write_json_atomic
from tasks.near_dedup import NearDedupConfig
from tasks.pii import PiiConfig
from tasks.publish import PublishConfig
from tasks.quality import QualityConfig
from tasks.retention import RetentionConfig
from tasks.shards import CODECS, INTERMEDIATE_CODEC
from tasks.tokenize import TokenizeConfig
from training.config import EvaluateConfig, FinetuneConfig, PretrainConfig


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


class CurateConfig(BaseModel):
    """Every curate stage's settings; stages left out use their defaults."""

    model_config = ConfigDict(extra="forbid")  # a typo in a config file is an error, not a silent default

    ingest: IngestConfig = Field(default_factory=IngestConfig, description="01_ingest: reading raw files.")
    exact_dedup: ExactDedupConfig = Field(
        default_factory=ExactDedupConfig, description="02_exact_dedup: what counts as the same text."
    )
    quality: QualityConfig = Field(default_factory=QualityConfig,
                                   description="03_quality: language ID; Gopher, C4 and FineWeb filters.")
    near_dedup: NearDedupConfig = Field(
        default_factory=NearDedupConfig, description="04_near_dedup: MinHash LSH near-duplicate removal."
    )
    pii: PiiConfig = Field(default_factory=PiiConfig, description="05_pii: personal data and secrets replaced.")
    bias: BiasConfig = Field(default_factory=BiasConfig, description="06_bias: toxic documents removed, audited.")
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig, description="07_decontaminate: "
                                               "evaluation data kept out of training (runs when eval_sets is set).")
    publish: PublishConfig = Field(default_factory=PublishConfig, description="08_publish: final shards.")
    retention: RetentionConfig = Field(default_factory=RetentionConfig,
                                       description="What a published run keeps of its pre-PII data (`loom gc`).")
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig,
                                     description="tokens: BPE tokenizer and token shards (`loom tokenize`).")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig,
                                     description="train: GPT pretraining on Ray + DeepSpeed (`loom pretrain`).")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig,
                                     description="finetune: supervised fine-tuning (`loom finetune`).")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig,
                                     description="evaluation of a checkpoint (`loom evaluate`).")
    stages_off: list[str] = Field(default_factory=list, description="Stages turned off (any but ingest and "
                                  "publish; the others keep their directory numbers), e.g. [\"quality\"].")
    workers: int = Field(default_factory=default_workers, ge=1, description="Local processes for shard work.")
    shard_codec: Literal[CODECS] = Field(
        INTERMEDIATE_CODEC, description="Compression of the document shards stages pass to each other (written "
        "once, read once; publish's final shards, removed documents and rejects are zstd). none costs about 30% "
        "less CPU in ingest + exact dedup than any codec, at about 2.5x zstd's size on disk; lz4 and snappy save "
        "no CPU over zstd here. zstd where disk is scarcer than CPU.")
    ray_address: str | None = Field(
        default_factory=lambda: os.environ.get("LOOM_RAY_ADDRESS") or None,
        description="Run shard work on Ray instead of local processes: a cluster address ('auto', "
                    "'ray://host:10001'), or 'local' to start a Ray instance for the run. Default: $LOOM_RAY_ADDRESS.",
    )

    @field_validator("stages_off")
    @classmethod
    def _stages_that_can_be_off(cls, value: list[str]) -> list[str]:
        names = [stage_dir_name(s) for s in value]  # an unknown name is an error naming the stages
        fixed = {STAGES[0], PUBLISH} & set(names)
        if fixed:
            raise ValueError(f"{', '.join(sorted(fixed))} cannot be turned off")
        return value

    def for_stage(self, stage: str) -> BaseModel:
        """The config section of a stage directory name ('05_pii' -> pii)."""
        name = stage.split("_", 1)[-1]
        if name == "publish":  # the card says what the run keeps
            return self.publish.model_copy(update={"retention": self.retention})
        return getattr(self, {"tokens": "tokenize"}.get(name, name))


def load_config(path: str | Path | None) -> CurateConfig:
    """Read a TOML, YAML or JSON config file; unknown keys are an error, not a silent typo."""
    if path is None:
        return CurateConfig()
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".toml", ".tml"):
        import tomllib

        data = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    return CurateConfig.model_validate(data)


def default_run_id(inputs: list[str]) -> str:
    """Same inputs, same run: rerunning `loom curate` on them resumes or skips instead of starting over."""
    key = "\0".join(sorted(str(Path(i).absolute()) for i in inputs))
    return "run-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def save_run(paths: RunPaths, inputs: list[str], config: CurateConfig) -> None:
    """Record the run's inputs and config (run.json): a later `loom step` or a Prefect rerun uses them."""
    paths.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths.run_file, {"run_id": paths.run_id, "inputs": inputs,
                                       "config": config.model_dump(mode="json")})


def record_stage_config(paths: RunPaths, section: str, config: BaseModel) -> None:
    """A stage's config given explicitly becomes the run's: later reruns of the stage use it."""
    if not paths.run_file.exists():
        return
    data = json.loads(paths.run_file.read_text())
    if data["config"].get(section) != config.model_dump(mode="json"):
        data["config"][section] = config.model_dump(mode="json")
        write_json_atomic(paths.run_file, data)


def record_sft_data(paths: RunPaths, sft_data: list[str]) -> None:
    """The pipeline's instruction data joins run.json, so a scheduled rerun of the run finds it."""
    data = json.loads(paths.run_file.read_text())
    if data.get("sft_data") != sft_data:
        write_json_atomic(paths.run_file, {**data, "sft_data": sft_data})


def load_pipeline_run(paths: RunPaths) -> tuple[list[str], list[str], CurateConfig]:
    """(inputs, instruction data, config) a pipeline run recorded."""
    inputs, config = load_run(paths)
    return inputs, json.loads(paths.run_file.read_text()).get("sft_data", []), config


def load_run(paths: RunPaths) -> tuple[list[str], CurateConfig]:
    """The inputs and config a run recorded; a clear error naming the runs there when it does not exist."""
    if not paths.run_file.exists():
        known = RunPaths.run_ids(paths.workdir)
        raise FileNotFoundError(f"no run {paths.run_id!r} under {RunPaths.runs_dir(paths.workdir)}"
                                + (f"; runs there: {', '.join(known)}" if known else ""))
    data = json.loads(paths.run_file.read_text())
    return data["inputs"], CurateConfig.model_validate(data["config"])
