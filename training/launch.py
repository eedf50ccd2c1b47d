"""Launch training with Ray Train: `TorchTrainer` runs `training.train.train_worker` on N
workers (a local Ray instance unless an address is given), each with a DeepSpeed engine.
Pretraining and fine-tuning go through the same launcher; they differ in the worker config. Each
worker starts its engine under `stale_build_lock_guard` (a killed JIT build of a DeepSpeed op leaves a lock).

    loom pretrain --run-id r1 [--num-workers 2] [--ray-address auto]
    loom finetune --from loom-work/runs/r1/train --data sft.jsonl --run-id r1
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

from tasks.tokenize import INDEX_FILE, TOKENIZER_FILE
from training.checkpoint import read_info, tokenizer_path
from training.config import (
    FinetuneConfig,
    FinetuneWorkerConfig,
    GPTConfig,
    LoopConfig,
    PretrainConfig,
    PretrainWorkerConfig,
    WorkerConfig,
)

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra" / "deepspeed"
__all__ = ["FinetuneConfig", "PretrainConfig", "finetune", "pretrain", "worker_config"]


def deepspeed_json(name: str, use_gpu: bool) -> dict:
    """The DeepSpeed config a run trains with: a file, or the name of one in infra/deepspeed/ (zero0..zero3,
    zero3-offload); by default ZeRO-2 on GPUs and ZeRO-1 on CPU. Read here, on the driver, so workers on other
    nodes get its content rather than a path they may not have."""
    name = name or ("zero2" if use_gpu else "zero1")
    path = INFRA / f"{name}.json" if (INFRA / f"{name}.json").exists() else Path(name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in INFRA.glob("*.json")))
        raise ValueError(f"DeepSpeed config {name!r}: no such file, and not one of {known}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"DeepSpeed config {path}: not JSON ({e})") from None


def worker_config(cfg: PretrainConfig, tokens_dir: Path, output_dir: Path, vocab_size: int,
                  use_gpu: bool, **debug) -> PretrainWorkerConfig:
    """Worker config of a pretraining run; `debug`: stop_after, debug_kill_at, debug_spike_at (tests)."""
    return PretrainWorkerConfig(
        loop=cfg.loop(), model=cfg.gpt_config(vocab_size), deepspeed=deepspeed_json(cfg.deepspeed, use_gpu),
        use_gpu=use_gpu, tokens_dir=str(tokens_dir), output_dir=str(output_dir),
        tokenizer=str(Path(tokens_dir) / TOKENIZER_FILE), **debug)


def finetune_worker_config(cfg: FinetuneConfig, checkpoint: Path, sft_dir: Path, output_dir: Path,
                           use_gpu: bool, **debug) -> FinetuneWorkerConfig:
    """Worker config of a fine-tune: the model and tokenizer come from `checkpoint` (a verified step-* dir)."""
    return FinetuneWorkerConfig(
        loop=cfg.loop(), model=GPTConfig(**read_info(checkpoint)["model"]),
        deepspeed=deepspeed_json(cfg.deepspeed, use_gpu), use_gpu=use_gpu, finetune=cfg.mode_spec(),
        init_from=str(checkpoint), sft_dir=str(sft_dir), output_dir=str(output_dir),
        tokenizer=str(tokenizer_path(checkpoint)), **debug)


def pretrain(cfg: PretrainConfig, tokens_dir: Path, output_dir: Path, ray_address: str | None = None,
             **debug):
    """Run Ray Train's TorchTrainer over `cfg.num_workers` workers; returns Ray's Result.
    `debug`: fault-injection fields of the worker config (tests: stop_after, debug_kill_at, debug_spike_at)."""
    index = json.loads((Path(tokens_dir) / INDEX_FILE).read_text())
    deepspeed_json(cfg.deepspeed, False)  # a bad config fails before Ray starts
    use_gpu = connect(cfg, ray_address)
    config = worker_config(cfg, Path(tokens_dir), Path(output_dir), index["vocab_size"], use_gpu, **debug)
    return fit(cfg, config, Path(output_dir), "pretrain")


def finetune(cfg: FinetuneConfig, checkpoint: Path, sft_dir: Path, output_dir: Path,
             ray_address: str | None = None):
    """Fine-tune `checkpoint` on packed instruction rows with the same launcher; returns Ray's Result."""
    deepspeed_json(cfg.deepspeed, False)
    use_gpu = connect(cfg, ray_address)
    return fit(cfg, finetune_worker_config(cfg, checkpoint, sft_dir, output_dir, use_gpu), Path(output_dir),
               "finetune")


def worker_env() -> dict[str, str]:
    """Environment variables Ray workers get: this project first on PYTHONPATH, then the driver's own entries
    (packages installed with `pip --target` or a site on PYTHONPATH must import in workers too: replacing
    PYTHONPATH left every worker failing to start with "No module named 'ray'"), and the Prefect API and
    thread settings."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    for var in ("PREFECT_API_URL", "OMP_NUM_THREADS"):
        if os.environ.get(var):
            env[var] = os.environ[var]
    return env


def connect(cfg: LoopConfig, ray_address: str | None) -> bool:
    """Join the Ray cluster at `ray_address` (or start a local instance) and decide whether workers train on
    GPUs: `cfg.use_gpu` when set, else whether the cluster has any. The cluster decides, not the driver: a
    RayJob's entrypoint or a Prefect worker usually runs where there is no GPU."""
    import ray

    env = worker_env()
    quiet = os.environ.get("LOOM_RAY_LOGS") != "1"  # progress comes from the metrics file; Ray's own logs on request
    if not ray.is_initialized():
        if ray_address and ray_address != "local":
            _require_reachable(ray_address)
            try:
                ray.init(address=ray_address, runtime_env={"env_vars": env}, log_to_driver=not quiet)
            except ConnectionError as e:
                raise ValueError(f"no Ray cluster answers at {ray_address!r} ({str(e).splitlines()[0]}): start one "
                                 "(`ray start --head`), or pass the head's address (HOST:6379, ray://HOST:10001, or "
                                 "auto on a node of the cluster)") from None
        else:
            # address "local": a new instance, even when `ray start` runs a cluster on this machine
            ray.init(address="local", num_cpus=max(cfg.num_workers, os.cpu_count() or 1), include_dashboard=False,
                     runtime_env={"env_vars": env}, log_to_driver=not quiet)
    check_workers()
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.use_gpu is None:
        return gpus >= 1
    if cfg.use_gpu and gpus < cfg.num_workers:
        raise ValueError(f"use_gpu asks for {cfg.num_workers} GPU workers but the Ray cluster has {gpus:g} GPUs")
    return cfg.use_gpu


WORKER_START_S = float(os.environ.get("LOOM_WORKER_START_S", 120))


def check_workers(timeout_s: float = WORKER_START_S, runtime_env: dict | None = None) -> None:
    """One trivial task on the cluster before training: a worker environment that cannot start (a package
    missing on the nodes, a PYTHONPATH lost, a broken interpreter) fails here in one line within
    `timeout_s`, not after Ray's five start retries (about six minutes) in a long traceback."""
    import ray

    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    ref = probe.options(runtime_env=runtime_env).remote() if runtime_env else probe.remote()
    try:
        ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise RuntimeError(
            f"Ray could not start a worker process within {timeout_s:.0f} s, so training cannot start: the "
            "workers' Python environment is broken or the cluster is saturated. See raylet.err in the session's "
            "logs (/tmp/ray/session_latest/logs on the node); commonly a package missing on the worker nodes or "
            "a PYTHONPATH they lack. LOOM_WORKER_START_S sets this wait.") from None


def _probe() -> bool:
    return True


def _sees(path: str, token: str) -> bool:
    p = Path(path)
    return p.exists() and p.read_text() == token


def _require_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) address must accept a TCP connection: Ray itself retries an
    unreachable one for about ten minutes before saying so."""
    import socket

    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ValueError(f"no Ray cluster answers at {address!r} ({e}): start one (`ray start --head`), or pass the "
                         "head's address (HOST:6379, ray://HOST:10001, or auto on a node of the cluster)") from None


def check_shared_storage(directory: Path) -> None:
    """On a cluster of several nodes, every node must see `directory` (checkpoints, metrics and token
    shards live there): one task pinned to each node reads a probe file the driver writes. A node that
    does not see it fails here, before training, naming the node."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) < 2:
        return
    directory.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    probe = directory / f".loom-probe-{token}"
    probe.write_text(token)
    try:
        sees = ray.remote(num_cpus=0, max_retries=0)(_sees)
        refs = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(probe), token) for n in alive]
        blind = [n.get("NodeManagerAddress", n["NodeID"]) for n, ok in zip(alive, ray.get(refs, timeout=300)) if not ok]
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise ValueError(f"Ray node(s) {', '.join(blind)} do not see {directory}: training writes checkpoints there "
                         "from every node; mount the same shared storage at the same path on every node (`loom check` "
                         "tests a cluster)")


def fit(cfg: LoopConfig, config: WorkerConfig, output_dir: Path, name: str):
    """TorchTrainer over `cfg.num_workers` workers running `train_worker(config)` (after `connect`)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from training.train import train_worker

    use_gpu = config.use_gpu
    check_shared_storage(Path(output_dir).absolute())
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"worker": config},  # Ray wants a dict; the typed config travels inside it
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        # on CPU each worker gets its share of the cores (Ray sets OMP_NUM_THREADS from it)
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=None if use_gpu
                                     else {"CPU": _cpus_per_worker(cfg.num_workers)}),
        run_config=RunConfig(
            name=name, storage_path=str(Path(output_dir).absolute() / "ray"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute="val_loss",
                                               checkpoint_score_order="min"),
        ),
    )
    return trainer.fit()


def _cpus_per_worker(num_workers: int) -> int:
    """The cluster's cores shared among the workers, but no more than the largest node has."""
    import ray

    total = ray.cluster_resources().get("CPU", 1)
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    return max(1, int(min(total // num_workers, largest)))


STALE_BUILD_LOCK_S = 600


@contextlib.contextmanager
def stale_build_lock_guard(log, max_age_s: float = STALE_BUILD_LOCK_S):
    """PyTorch's JIT extension builds (DeepSpeed's ops) wait forever on a `lock` file that a killed
    build left behind. While the engine starts, a lock older than `max_age_s` (a build takes
    minutes) is removed, so the waiting process goes on."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    done = threading.Event()

    def watch() -> None:
        while not done.wait(5.0):
            for lock in root.glob("**/lock"):
                with contextlib.suppress(OSError):
                    if time.time() - lock.stat().st_mtime > max_age_s:
                        lock.unlink()
                        log(f"removed {lock}: a build lock {max_age_s:.0f}+ s old, left by a killed build")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
