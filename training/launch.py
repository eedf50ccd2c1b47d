"""Launch training with Ray Train: `TorchTrainer` runs `training.train.train_worker` on N
workers (a local Ray instance unless an address is given), each with a DeepSpeed engine.
Pretraining and fine-tuning go through the same launcher; they differ in the worker config.

    loom pretrain --run-id r1 [--num-workers 2] [--ray-address auto]
    loom finetune --from loom-work/runs/r1/train --data sft.jsonl --run-id r1
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from training.config import FINETUNE_MODE_FIELDS, FinetuneConfig, PretrainConfig

INFRA = Path(__file__).resolve().parents[1] / "infra" / "deepspeed"
__all__ = ["FinetuneConfig", "PretrainConfig", "finetune", "pretrain", "worker_config"]


def _deepspeed_json(cfg: PretrainConfig, use_gpu: bool) -> str:
    return cfg.deepspeed or str(INFRA / ("gpu-bf16-zero2.json" if use_gpu else "cpu.json"))


def worker_config(cfg: PretrainConfig, tokens_dir: Path, output_dir: Path, vocab_size: int,
                  use_gpu: bool, stop_after: int | None = None) -> dict:
    return {
        **cfg.model_dump(exclude={"model", "model_overrides", "deepspeed"}),
        "model": cfg.gpt_config(vocab_size).__dict__, "deepspeed": _deepspeed_json(cfg, use_gpu),
        "tokens_dir": str(tokens_dir), "output_dir": str(output_dir), "stop_after": stop_after,
        "tokenizer": str(Path(tokens_dir) / "tokenizer.json"),
    }


def finetune_worker_config(cfg: FinetuneConfig, checkpoint: Path, sft_dir: Path, output_dir: Path,
                           use_gpu: bool | None = None) -> dict:
    """Worker config of a fine-tune: the model and tokenizer come from `checkpoint` (a verified step-* dir)."""
    info = json.loads((Path(checkpoint) / "loom.json").read_text())
    use_gpu = _has_gpu() if use_gpu is None else use_gpu
    skip = {"model", "model_overrides", "deepspeed", "val_fraction", "system_prompt", *FINETUNE_MODE_FIELDS}
    return {
        **cfg.model_dump(exclude=skip), "model": info["model"], "deepspeed": _deepspeed_json(cfg, use_gpu),
        "finetune": cfg.mode_spec(), "init_from": str(checkpoint), "sft_dir": str(sft_dir),
        "output_dir": str(output_dir), "tokenizer": str(Path(checkpoint) / "tokenizer.json"), "stop_after": None,
    }


def pretrain(cfg: PretrainConfig, tokens_dir: Path, output_dir: Path, ray_address: str | None = None,
             stop_after: int | None = None, debug: dict | None = None):
    """Run Ray Train's TorchTrainer over `cfg.num_workers` workers; returns Ray's Result.
    `debug` adds fault-injection keys to the worker config (tests: debug_kill_at, debug_spike_at)."""
    index = json.loads((Path(tokens_dir) / "index.json").read_text())
    config = worker_config(cfg, Path(tokens_dir), Path(output_dir), index["vocab_size"], _has_gpu(), stop_after)
    config.update(debug or {})
    return fit(cfg, config, Path(output_dir), ray_address, "pretrain")


def finetune(cfg: FinetuneConfig, checkpoint: Path, sft_dir: Path, output_dir: Path,
             ray_address: str | None = None):
    """Fine-tune `checkpoint` on packed instruction rows with the same launcher; returns Ray's Result."""
    return fit(cfg, finetune_worker_config(cfg, checkpoint, sft_dir, output_dir), Path(output_dir), ray_address,
               "finetune")


def fit(cfg: PretrainConfig, config: dict, output_dir: Path, ray_address: str | None, name: str):
    """TorchTrainer over `cfg.num_workers` workers running `train_worker(config)`."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from training.train import train_worker

    use_gpu = _has_gpu()
    env = {"DS_ACCELERATOR": "cuda" if use_gpu else "cpu", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for var in ("PREFECT_API_URL", "OMP_NUM_THREADS"):
        if os.environ.get(var):
            env[var] = os.environ[var]
    quiet = os.environ.get("LOOM_RAY_LOGS") != "1"  # progress comes from the metrics file; Ray's own logs on request
    if not ray.is_initialized():
        if ray_address and ray_address != "local":
            ray.init(address=ray_address, runtime_env={"env_vars": env}, log_to_driver=not quiet)
        else:
            # address "local": a new instance, even when `ray start` runs a cluster on this machine
            ray.init(address="local", num_cpus=max(cfg.num_workers, os.cpu_count() or 1), include_dashboard=False,
                     runtime_env={"env_vars": env}, log_to_driver=not quiet)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        # on CPU each worker gets its share of the cores (Ray sets OMP_NUM_THREADS from it)
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=None if use_gpu
                                     else {"CPU": max(1, (os.cpu_count() or 1) // cfg.num_workers)}),
        run_config=RunConfig(
            name=name, storage_path=str(Path(output_dir).absolute() / "ray"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute="val_loss",
                                               checkpoint_score_order="min"),
        ),
    )
    return trainer.fit()


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False
