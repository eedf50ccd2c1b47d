"""The training configs: what a person writes is checked on the driver (a misspelt key is an error there,
never a `cfg.get` default on a Ray worker), and the worker config is a typed value that round-trips."""

import json

import pytest
from pydantic import ValidationError

from flows.config import load_config
from training import config as worker
from training.config import FinetuneConfig, GPTConfig, LoopConfig, PretrainConfig
from training.launch import worker_config


def test_a_misspelt_key_fails_where_it_is_written(tmp_path):
    cfg = tmp_path / "loom.toml"
    cfg.write_text("[pretrain]\nstep = 10\n")
    with pytest.raises(ValidationError, match="step"):
        load_config(cfg)
    cfg.write_text("[finetune]\nmodel = 'gpt2'\n")  # fine-tuning takes its model from the checkpoint
    with pytest.raises(ValidationError, match="model"):
        load_config(cfg)
    with pytest.raises(ValidationError, match="debug_kil_at"):
        worker_config(PretrainConfig(), tmp_path, tmp_path / "out", 512, use_gpu=False, debug_kil_at=3)
    with pytest.raises(ValidationError, match="stop_aftr"):
        worker.PretrainWorkerConfig(loop=LoopConfig(), model=GPTConfig(), deepspeed={}, use_gpu=False, output_dir="o",
                             tokens_dir="t", stop_aftr=3)


def test_fine_tuning_config_has_only_the_fields_it_uses():
    assert "model" not in FinetuneConfig.model_fields and "model_overrides" not in FinetuneConfig.model_fields
    assert {"mode", "lora_rank", "trainable_blocks"} <= set(FinetuneConfig.model_fields)
    assert set(LoopConfig.model_fields) < set(PretrainConfig.model_fields)
    assert set(LoopConfig.model_fields) < set(FinetuneConfig.model_fields)
    assert FinetuneConfig(steps=7).loop() == LoopConfig(**{**FinetuneConfig(steps=7).loop().model_dump()})


def test_worker_configs_round_trip_through_json(tmp_path):
    built = worker_config(PretrainConfig(steps=5, model_overrides={"block_size": 64}), tmp_path / "tokens",
                          tmp_path / "out", 512, use_gpu=False, stop_after=3)
    again = worker.parse_worker_config(built.model_dump_json())
    assert again == built and again.kind == "pretrain" and again.model.block_size == 64
    assert again.loop.steps == 5 and again.deepspeed["zero_optimization"]["stage"] == 1  # ZeRO-1 on CPU
    finetune = worker.FinetuneWorkerConfig(loop=LoopConfig(), model=GPTConfig(), deepspeed={}, use_gpu=False,
                                    output_dir="o", sft_dir="s", init_from="c", finetune={"mode": "lora"})
    assert worker.parse_worker_config(json.loads(finetune.model_dump_json())) == finetune
    with pytest.raises(ValueError, match="kind"):
        worker.parse_worker_config({"kind": "distill"})
