"""Pretraining: the per-worker loop (a DeepSpeed engine), checkpoints that resume exactly, metrics.

Each Ray Train worker runs `train_worker(config)`, with the typed `WorkerConfig` the launcher
built on the driver (training/config.py):

- builds the GPT of `config.model` and a DeepSpeed engine from `config.deepspeed` (the JSON the
  launcher read from infra/deepspeed/), with micro-batch, accumulation and learning rate from
  `config.loop`;
- sets the learning rate every step (linear warmup, cosine decay to min_lr);
- reads batches from token shards as a pure function of (seed, step, micro-step, rank);
- every `ckpt_every` steps and at the end, **every rank** calls `save_checkpoint`, with
  step, tokens seen and the Python/NumPy/torch RNG states in `client_state`; rank 0 then
  writes a sha256 manifest of the checkpoint's files. On start, the newest checkpoint whose
  manifest verifies is loaded (a corrupt or truncated one is reported and skipped);
- rank 0 appends metrics (loss, lr, grad norm, tokens/s, MFU when the peak FLOPs are
  known; validation loss and perplexity every `eval_every` steps) to metrics.jsonl and
  TensorBoard, and reports validations and checkpoints to Ray Train.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import (
    CHECKPOINTS_DIR,
    METRICS_FILE,
    RUN_INFO,
    latest_good_checkpoint,
    prune,
    tag_name,
    tokenizer_path,
    write_info,
    write_manifest,
)
from training.config import FinetuneWorkerConfig, LoopConfig, WorkerConfig, parse_worker_config
from training.launch import stale_build_lock_guard
from training.reshard import load_resharded, saved_world_size


def lr_at(step: int, loop: LoopConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `steps`."""
    if step < loop.warmup_steps:
        return loop.lr * (step + 1) / loop.warmup_steps
    progress = min(1.0, (step - loop.warmup_steps) / max(1, loop.steps - loop.warmup_steps))
    return loop.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (loop.lr - loop.min_lr)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ---- the worker loop ------------------------------------------------------------------------------

def deepspeed_config(deepspeed: dict, loop: LoopConfig) -> dict:
    """The engine's config: the run's DeepSpeed JSON with this loop's batch sizes and learning rate."""
    ds = copy.deepcopy(deepspeed)
    ds["train_micro_batch_size_per_gpu"] = loop.micro_batch
    ds["gradient_accumulation_steps"] = loop.grad_accum
    ds.pop("train_batch_size", None)
    ds.setdefault("optimizer", {}).setdefault("params", {})["lr"] = loop.lr
    if not torch.cuda.is_available():
        ds["bf16"] = {"enabled": loop.precision == "bf16"}
        ds.pop("fp16", None)
    elif ds["optimizer"]["params"].get("torch_adam") and "foreach" not in ds["optimizer"]["params"]:
        ds["optimizer"]["params"].setdefault("fused", True)  # one kernel per parameter group on GPUs
    return ds


def train_worker(cfg: WorkerConfig | dict) -> None:
    """One Ray Train worker (also runs alone, without Ray, for tests and debugging). `cfg` is the typed
    worker config, or Ray's train_loop_config dict holding it under "worker"."""
    if isinstance(cfg, dict):
        cfg = cfg["worker"] if "worker" in cfg else parse_worker_config(cfg)
    loop = cfg.loop
    os.environ["DS_ACCELERATOR"] = "cuda" if cfg.use_gpu else "cpu"  # DeepSpeed picks it when first imported
    import deepspeed

    from training.data import Batches, SftData, TokenData
    from training.finetune import prepare
    from training.model import GPT

    try:
        import ray.train as ray_train

        context = ray_train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
    except Exception:  # not under Ray Train
        ray_train, rank, world = None, int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    out = Path(cfg.output_dir)
    ckpt_dir = out / CHECKPOINTS_DIR
    torch.manual_seed(loop.seed)
    random.seed(loop.seed)
    np.random.seed(loop.seed)
    model_cfg = cfg.model
    model = GPT(model_cfg)
    finetune = cfg.finetune if isinstance(cfg, FinetuneWorkerConfig) else None
    if finetune is not None:  # fine-tuning starts from a pretrained checkpoint's weights
        from training.load import load_model  # verified once, on the driver

        model.load_state_dict(load_model(cfg.init_from)[0].state_dict())  # LoRA of a fine-tune merged
    trainable = prepare(model, finetune)  # fine-tuning modes freeze or adapt parts of it
    with stale_build_lock_guard(lambda m: _log(rank, m)):  # DeepSpeed may JIT-build an op here
        engine, _, _, _ = deepspeed.initialize(model=model, config=deepspeed_config(cfg.deepspeed, loop),
                                               dist_init_required=True,
                                               model_parameters=[p for p in model.parameters() if p.requires_grad])
    if loop.compile:
        engine.compile()
    device = engine.device
    if finetune is not None:
        train = SftData(cfg.sft_dir, "train", model_cfg.block_size)
        val = SftData(cfg.sft_dir, "val", model_cfg.block_size)
    else:
        train = TokenData(cfg.tokens_dir, "train", model_cfg.block_size)
        val = TokenData(cfg.tokens_dir, "val", model_cfg.block_size)
    nodes = _gather(_node_id(ray_train), world)  # where each rank ran (Ray node ids; hostnames without Ray)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_INFO).write_text(json.dumps({**trainable, "world_size": world, "train_tokens": train.tokens,
                                                "nodes": nodes, "model": asdict(cfg.model)}, indent=1))

    def restore(tag: Path) -> tuple[int, int, int]:
        saved = saved_world_size(tag)
        if saved is not None and saved != world:  # a cluster of another size: DeepSpeed's universal checkpoint
            client = load_resharded(engine, tag, out, rank, world, saved, lambda m: _log(rank, m))
        else:
            _, client = engine.load_checkpoint(str(ckpt_dir), tag=tag.name)
        states = client["rng"]
        if len(states) != world:
            _log(rank, f"RNG states were saved by {len(states)} worker(s), not {world}: ranks without one take rank "
                       f"0's (dropout draws differ from an uninterrupted run; batches do not: they follow the step)")
        _set_rng_state(states[rank] if rank < len(states) else states[0])
        return client["step"], client["tokens_seen"], client.get("data_offset", 0)

    step, tokens_seen, data_offset, spikes = 0, 0, 0, 0
    resume = latest_good_checkpoint(ckpt_dir, log=lambda m: _log(rank, m)) if ckpt_dir.exists() else None
    if resume is not None:
        step, tokens_seen, data_offset = restore(resume)
        _log(rank, f"resumed from {resume.name} (step {step})")
    recent: list[float] = []

    writer = _tensorboard(out) if rank == 0 else None
    tokens_per_step = loop.micro_batch * loop.grad_accum * world * model_cfg.block_size
    flops_per_token = model_cfg.flops_per_token()
    t_last = time.perf_counter()
    batches = Batches(train, loop.micro_batch, loop.seed, rank, device)
    while step < loop.steps:
        lr = lr_at(step, loop)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        losses = []
        for micro in range(loop.grad_accum):
            x, y = batches.take(step + data_offset, micro)
            _, loss = engine(x, y)
            if cfg.debug_batch_log:  # tests: which tokens each rank trained on, by step, and its loss
                _log_batch(out, rank, world, step + 1, micro, x, float(loss))
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach().float())
            # the next batch is read (and copied to the device) while the device still works on this one
            batches.ahead(*((step + data_offset, micro + 1) if micro + 1 < loop.grad_accum
                            else (step + 1 + data_offset, 0)))
        step += 1
        tokens_seen += tokens_per_step
        loss = _mean_across_ranks(torch.stack(losses).mean(), world)
        metrics = {"step": step, "loss": loss, "lr": lr}
        if step % loop.log_every == 0 or step == loop.steps:
            now = time.perf_counter()
            rate = tokens_per_step * loop.log_every / max(now - t_last, 1e-9)
            t_last = now
            grad_norm = engine.get_global_grad_norm()
            metrics.update(grad_norm=float(grad_norm) if grad_norm is not None else None, tokens_per_s=rate,
                           tokens_seen=tokens_seen,
                           mfu=flops_per_token * rate / (loop.peak_flops * world) if loop.peak_flops else None)
        if _is_spike(loss, recent, loop) or _debug_hook(cfg.debug_spike_at, "debug_spike_at", step, out):
            # roll back to the last good checkpoint and skip the data since it (all ranks see the same loss)
            spikes += 1
            if spikes > loop.max_spikes:
                raise RuntimeError(f"loss spiked {spikes} time(s), more than max_spikes (last at step {step}: {loss:.4g}); "
                                   "stopping. Lower the learning rate or inspect the data around these steps.")
            good = latest_good_checkpoint(ckpt_dir, log=lambda m: _log(rank, m)) if ckpt_dir.exists() else None
            if good is None:
                raise RuntimeError(f"loss spiked at step {step} ({loss:.4g}) before any checkpoint to roll back to")
            bad_step = step
            step, tokens_seen, old_offset = restore(good)
            data_offset = old_offset + (bad_step - step)  # the next batch is the one after the spike's
            recent.clear()
            if rank == 0:
                _write_metrics(out, None, {"step": bad_step, "event": "rollback", "loss": loss, "to_step": step,
                                           "data_offset": data_offset})
            _log(rank, f"loss spike at step {bad_step} ({loss:.4g}): rolled back to {good.name}, "
                       f"skipping {bad_step - step} steps of data")
            continue
        recent.append(loss)
        _debug_hook(cfg.debug_kill_at, "debug_kill_at", step, out, rank=rank, kill=True)
        if step % loop.eval_every == 0 or step == loop.steps:
            val_loss = _evaluate(engine, val, loop, rank, world, device)
            metrics.update(val_loss=val_loss, val_perplexity=math.exp(min(val_loss, 50)))
        if rank == 0:
            _write_metrics(out, writer, metrics)
        checkpoint = None
        if step % loop.ckpt_every == 0 or step == loop.steps:
            checkpoint = _save(engine, ckpt_dir, step, tokens_seen, rank, world, cfg, data_offset)
        # Ray Train hears of validations and checkpoints only: each report waits for its controller to take
        # the previous one (a queue of one), which halved a GPU's throughput when every log step reported.
        # Every step's metrics are in metrics.jsonl and TensorBoard.
        if ray_train is not None and ("val_loss" in metrics or checkpoint is not None):
            report = {k: v for k, v in metrics.items() if v is not None}
            if checkpoint is not None and rank == 0:
                ray_train.report(report, checkpoint=ray_train.Checkpoint.from_directory(str(checkpoint)))
            else:
                ray_train.report(report)
        if cfg.stop_after and step >= cfg.stop_after:  # tests: an interruption
            raise SystemExit(f"stopped after step {step} (stop_after)")
    if writer is not None:
        writer.close()


def _log_batch(out: Path, rank: int, world: int, step: int, micro: int, x: torch.Tensor, loss: float) -> None:
    with open(out / f"batches-rank{rank}.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "micro": micro, "world": world, "loss": loss, "rows": x.cpu().tolist()}) + "\n")


def _node_id(ray_train) -> str:
    if ray_train is not None:
        try:
            import ray

            return ray.get_runtime_context().get_node_id()
        except Exception:
            pass
    import socket

    return socket.gethostname()


def _gather(value, world: int) -> list:
    import torch.distributed as dist

    if world > 1 and dist.is_initialized():
        out = [None] * world
        dist.all_gather_object(out, value)
        return out
    return [value]


def _is_spike(loss: float, recent: list[float], loop: LoopConfig) -> bool:
    """NaN or infinity, or more than `spike_factor` times the mean of the last `spike_window` losses."""
    if not math.isfinite(loss):
        return True
    window = recent[-loop.spike_window:]
    return len(window) == loop.spike_window and loss > loop.spike_factor * (sum(window) / len(window))


def _debug_hook(at: int | None, name: str, step: int, out: Path, rank: int = 0, kill: bool = False) -> bool:
    """Fault injection for tests: fires once per output directory at the configured step."""
    if at != step or rank != 0:
        return False
    marker = out / f".{name}"
    if marker.exists():
        return False
    marker.touch()
    if kill:  # a worker process dies mid-run, as on a lost node
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    return True


def _save(engine, ckpt_dir: Path, step: int, tokens_seen: int, rank: int, world: int, cfg: WorkerConfig,
          data_offset: int = 0) -> Path:
    import torch.distributed as dist

    tag = tag_name(step)
    model = asdict(cfg.model)
    states = _gather(_rng_state(), world)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={
        "step": step, "tokens_seen": tokens_seen, "data_offset": data_offset, "rng": states, "model": model})
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        # self-describing: generate, evaluate and export need only this directory
        if cfg.tokenizer:
            shutil.copyfile(cfg.tokenizer, tokenizer_path(ckpt_dir / tag))
        finetune = cfg.finetune if isinstance(cfg, FinetuneWorkerConfig) else None
        write_info(ckpt_dir / tag, {
            "step": step, "tokens_seen": tokens_seen, "model": model, "finetune": finetune, "kind": cfg.kind,
            "tokens_dir": getattr(cfg, "tokens_dir", None), "sft_dir": getattr(cfg, "sft_dir", None),
            "init_from": getattr(cfg, "init_from", None), "seed": cfg.loop.seed})
        write_manifest(ckpt_dir / tag)
        prune(ckpt_dir, cfg.loop.keep_checkpoints)
    if dist.is_initialized():
        dist.barrier()
    return ckpt_dir / tag


@torch.no_grad()
def _evaluate(engine, val, loop: LoopConfig, rank: int, world: int, device) -> float:
    engine.eval()
    losses = []
    for i in range(loop.eval_batches):
        x, y = val.batch(loop.micro_batch, loop.seed + 1, 0, i, rank)  # the same batches every time
        losses.append(engine(x.to(device), y.to(device))[1].float())
    engine.train()
    return _mean_across_ranks(torch.stack(losses).mean(), world)


def _mean_across_ranks(value: torch.Tensor, world: int) -> float:
    import torch.distributed as dist

    if world > 1 and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return float(value)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _write_metrics(out: Path, writer, metrics: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / METRICS_FILE, "a") as f:
        f.write(json.dumps({**metrics, "time": time.time()}) + "\n")
    if writer is not None:
        for key, value in metrics.items():
            if key != "step" and value is not None:
                writer.add_scalar(key, value, metrics["step"])


def _log(rank: int, message: str) -> None:
    if rank == 0:
        print(f"[loom train] {message}", flush=True)


def main() -> None:
    """`python -m training.train CONFIG.json`: one worker without Ray (debugging, tests)."""
    import socket
    import sys

    cfg = parse_worker_config(Path(sys.argv[1]).read_text())
    with socket.socket() as s:  # a free port for the single-process gloo group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "DS_ACCELERATOR": "cuda" if torch.cuda.is_available() else "cpu"}.items():
        os.environ.setdefault(key, value)
    try:
        train_worker(cfg)
    except SystemExit as e:  # stop_after: an interruption on purpose
        print(f"[loom train] {e}", flush=True)


if __name__ == "__main__":
    main()
