"""Pretraining: it learns, it resumes exactly, it skips a corrupt checkpoint, it runs on Ray."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.ingest import Ingest
from tasks.stage import local_mapper, run_stage
from tasks.tokenize import Tokenize, read_tokens
from training.checkpoint import latest_good_checkpoint, write_manifest
from training.config import LoopConfig
from training.launch import PretrainConfig, pretrain, worker_config
from training.train import lr_at

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokens(shared, tmp_path_factory):
    """tinyshakespeare, one document per paragraph, tokenized with a 1,024-token BPE."""
    tmp = tmp_path_factory.mktemp("shakespeare")
    paragraphs = [p for p in (shared / "pretrain/tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    with open(tmp / "plays.jsonl", "w") as f:
        for i, p in enumerate(paragraphs):
            f.write(json.dumps({"id": f"p{i}", "text": p}) + "\n")
    run_stage(Ingest(), run_id="t", stage_dir=tmp / "01", inputs=[str(tmp / "plays.jsonl")], mapper=local_mapper(1))
    run_stage(Tokenize(vocab_size=1024), run_id="t", stage_dir=tmp / "tokens", inputs=[str(tmp / "01")],
              mapper=local_mapper(1))
    return tmp / "tokens"


def _run(tokens: Path, out: Path, stop_after=None, debug: dict | None = None, expect_ok: bool = True,
         **overrides) -> subprocess.CompletedProcess:
    cfg = PretrainConfig(**{"steps": 40, "eval_every": 20, "ckpt_every": 20, "log_every": 10, **overrides})
    vocab = json.loads((tokens / "index.json").read_text())["vocab_size"]
    path = out.parent / f"{out.name}-{stop_after}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    config = worker_config(cfg, tokens, out, vocab, use_gpu=False, stop_after=stop_after, **(debug or {}))
    path.write_text(config.model_dump_json())
    proc = subprocess.run([sys.executable, "-m", "training.train", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    if expect_ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(out: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_curate_tokenize_pretrain_learns_below_the_unigram_entropy(shared, prefect_server, tmp_path):
    """tinyshakespeare through `loom curate`, `loom tokenize` and `loom pretrain` (CLI, Prefect, Ray,
    DeepSpeed): a few minutes on CPU bring the validation loss well below the unigram entropy."""
    from typer.testing import CliRunner

    from flows.cli import app

    paragraphs = [p for p in (shared / "pretrain/tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    with open(tmp_path / "plays.jsonl", "w") as f:
        for i, p in enumerate(paragraphs):
            f.write(json.dumps({"id": f"p{i}", "text": p}) + "\n")
    wd = tmp_path / "wd"
    for args in (["curate", tmp_path / "plays.jsonl", "--run-id", "bard", "--workers", "2"],
                 ["tokenize", "--run-id", "bard", "--vocab-size", "1024"],
                 ["pretrain", "--run-id", "bard", "--steps", "200"]):
        result = CliRunner().invoke(app, [*map(str, args), "--workdir", str(wd)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    tokens = wd / "runs/bard/tokens"
    train = np.concatenate([np.asarray(t) for t in read_tokens(tokens, "train")])
    p = np.bincount(train) / len(train)
    unigram = -(p[p > 0] * np.log(p[p > 0])).sum()  # nats per token
    metrics = [json.loads(line) for line in (wd / "runs/bard/train/metrics.jsonl").read_text().splitlines()]
    val = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert val[-1] < unigram - 0.5, (val, unigram)
    assert (wd / "runs/bard/train/loss.png").exists()


@pytest.mark.slow
def test_an_interrupted_run_resumes_exactly(tokens, tmp_path):
    _run(tokens, tmp_path / "straight")
    _run(tokens, tmp_path / "interrupted", stop_after=25)  # dies after step 25; last checkpoint at 20
    _run(tokens, tmp_path / "interrupted")  # resumes from step 20
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "interrupted")
    assert sorted(straight) == sorted(resumed) == list(range(1, 41))
    assert all(math.isclose(straight[s], resumed[s], rel_tol=1e-6) for s in straight)


def test_a_corrupt_checkpoint_is_reported_and_skipped(tmp_path):
    for step in (10, 20, 30):
        tag = tmp_path / f"step-{step:07d}"
        tag.mkdir()
        (tag / "model.pt").write_bytes(bytes(range(256)) * 4)
        write_manifest(tag)
    import training.checkpoint

    training.checkpoint._verified.clear()  # read as a later command would, not as the process that saved them
    (tmp_path / "step-0000030/model.pt").write_bytes(b"cut")  # truncated
    (tmp_path / "step-0000020/model.pt").write_bytes(bytes(range(255, -1, -1)) * 4)  # same size, other bytes
    messages = []
    assert latest_good_checkpoint(tmp_path, log=messages.append).name == "step-0000010"
    assert "truncated" in messages[0] and "sha256" in messages[1]


def test_learning_rate_schedule():
    cfg = LoopConfig(lr=1.0, min_lr=0.1, warmup_steps=10, steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)


@pytest.mark.slow
def test_pretrain_on_ray_with_two_workers(tokens, tmp_path):
    import ray

    try:
        result = pretrain(PretrainConfig(steps=20, eval_every=10, ckpt_every=10, log_every=5, num_workers=2,
                                         micro_batch=8), tokens, tmp_path / "train")
    finally:
        ray.shutdown()
    assert result.error is None
    assert result.metrics["step"] == 20 and "val_loss" in result.metrics
    assert result.checkpoint is not None
    assert (tmp_path / "train/checkpoints/step-0000020/sha256.json").exists()
    steps = [json.loads(line)["step"] for line in (tmp_path / "train/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))  # rank 0 alone writes metrics


@pytest.mark.slow
def test_a_loss_spike_rolls_back_and_skips_the_data_and_repeated_spikes_stop(tokens, tmp_path):
    _run(tokens, tmp_path / "spike", steps=30, ckpt_every=10, eval_every=30, debug={"debug_spike_at": 15})
    lines = [json.loads(line) for line in (tmp_path / "spike/metrics.jsonl").read_text().splitlines()]
    events = [m for m in lines if m.get("event") == "rollback"]
    assert events == [{**events[0], "step": 15, "to_step": 10, "data_offset": 5}]
    assert max(m["step"] for m in lines) == 30 and "val_loss" in lines[-1]
    failed = _run(tokens, tmp_path / "spiky", steps=30, ckpt_every=5, max_spikes=0, expect_ok=False,
                  debug={"debug_spike_at": 12})
    assert failed.returncode != 0 and "loss spiked 1 time(s), more than max_spikes" in failed.stderr


@pytest.mark.slow
def test_a_killed_worker_is_restarted_by_ray_and_resumes(tokens, tmp_path):
    import ray

    try:
        result = pretrain(PretrainConfig(steps=30, eval_every=10, ckpt_every=10, log_every=5, num_workers=2,
                                         micro_batch=8, max_failures=1), tokens, tmp_path / "train",
                          debug_kill_at=15)
    finally:
        ray.shutdown()
    assert result.error is None and result.metrics["step"] == 30
    assert (tmp_path / "train/.debug_kill_at").exists()  # the worker really died at step 15
    lines = [json.loads(line) for line in (tmp_path / "train/metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in lines]
    assert steps[:14] == list(range(1, 15)) and steps[14:] == list(range(11, 31))  # died in step 15; resumed at 10
    assert [m["loss"] for m in lines[10:14]] == [m["loss"] for m in lines[14:18]]  # and exactly as before


@pytest.mark.gpu
def test_gpt2_124m_bf16_on_one_gpu_reports_throughput_and_mfu(tokens, tmp_path):
    """GPT-2 124M (block 1024) in bf16 with ZeRO-2 on one GPU, through the same worker: it trains,
    and the metrics carry tokens/s and MFU against the H100's dense bf16 peak."""
    cfg = PretrainConfig(model="gpt2", steps=30, micro_batch=8, log_every=10, eval_every=30, ckpt_every=30,
                         eval_batches=2, lr=6e-4, min_lr=6e-5, warmup_steps=10, peak_flops=989e12)
    vocab = json.loads((tokens / "index.json").read_text())["vocab_size"]
    config = worker_config(cfg, tokens, tmp_path / "gpu", vocab, use_gpu=True)
    path = tmp_path / "gpu.json"
    path.write_text(config.model_dump_json())
    proc = subprocess.run([sys.executable, "-m", "training.train", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "gpu/metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    assert last["step"] == 30 and last["loss"] < metrics[0]["loss"]
    assert last["tokens_per_s"] > 0 and 0 < last["mfu"] < 1
    print(f"GPT-2 124M bf16, 1 GPU: {last['tokens_per_s']:,.0f} tokens/s, MFU {last['mfu']:.1%}")


def test_a_build_lock_left_by_a_killed_build_does_not_hang_the_next_run(tmp_path, monkeypatch):
    """PyTorch's JIT builds wait forever on a stale `lock`; while an engine starts, old ones are removed."""
    import os
    import time

    from training.launch import stale_build_lock_guard

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale, fresh = tmp_path / "py311_cpu/deepspeed_shm_comm/lock", tmp_path / "py311_cpu/other_op/lock"
    for lock in (stale, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    said = []
    with stale_build_lock_guard(said.append):
        time.sleep(6)
    assert not stale.exists() and fresh.exists()  # a build in progress keeps its lock
    assert "killed build" in said[0]


def test_gpu_training_on_a_cluster_without_gpus_fails_before_it_starts():
    """`--gpu` asks the Ray cluster (not the driver) for GPUs, and says so when it has too few;
    by default a cluster without GPUs trains on CPUs."""
    import ray

    from training.launch import connect

    ray.shutdown()
    try:
        assert connect(PretrainConfig(), "local") is False
        with pytest.raises(ValueError, match="asks for 2 GPU workers but the Ray cluster has 0 GPUs"):
            connect(PretrainConfig(use_gpu=True, num_workers=2), "local")
    finally:
        ray.shutdown()


def test_ray_workers_keep_the_drivers_pythonpath(monkeypatch, tmp_path):
    """Workers get this project first, then every entry the driver had: packages installed with
    `pip --target` and put on PYTHONPATH (as on the GPU machine) must import in workers too."""
    import os

    from training.launch import ROOT as PROJECT
    from training.launch import worker_env

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), str(PROJECT)]))
    assert worker_env()["PYTHONPATH"].split(os.pathsep) == [str(PROJECT), str(tmp_path / "site")]
    monkeypatch.delenv("PYTHONPATH")
    assert worker_env()["PYTHONPATH"] == str(PROJECT)


def test_a_ray_worker_environment_that_cannot_start_fails_in_one_line():
    """Workers that die at start-up (here: a broken interpreter) are reported within the wait, in one line,
    instead of after Ray's start retries (about six minutes on the GPU machine where PYTHONPATH was lost)."""
    import ray

    from training.launch import check_workers

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        check_workers(timeout_s=60)  # a healthy cluster passes
        with pytest.raises(RuntimeError, match="could not start a worker process within 15 s"):
            check_workers(timeout_s=15, runtime_env={"env_vars": {"PYTHONHOME": "/nonexistent"}})
    finally:
        ray.shutdown()


def test_an_unreachable_ray_address_is_one_clear_error():
    from training.launch import connect

    with pytest.raises(ValueError, match=r"no Ray cluster answers at '127\.0\.0\.1:1'"):
        connect(PretrainConfig(), "127.0.0.1:1")


def _run_ranks(tokens: Path, out: Path, world: int, **overrides) -> None:
    """The worker on `world` local processes (a gloo group, no Ray): what Ray Train runs, minus its start-up."""
    import socket

    cfg = PretrainConfig(**{"eval_every": 100, "log_every": 1, "micro_batch": 2, "model_overrides": {"block_size": 64},
                            **overrides})
    vocab = json.loads((tokens / "index.json").read_text())["vocab_size"]
    path = out.parent / f"{out.name}-w{world}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(worker_config(cfg, tokens, out, vocab, use_gpu=False, debug_batch_log=True).model_dump_json())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-m", "training.train", str(path)], cwd=ROOT, stderr=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
             for r in range(world)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]


def _rank0(out: Path, world: int) -> dict[int, dict]:
    """Rank 0's batches and losses by step, from the run on `world` workers (the latest entry of a step)."""
    rows = [json.loads(line) for line in (out / "batches-rank0.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if r["world"] == world}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_resuming_on_another_number_of_workers_carries_the_state_over(tokens, tmp_path, stage):
    """A ZeRO run saved by 2 workers resumes on 1 (shrinking), and that one's checkpoint on 2 again (growing),
    through DeepSpeed's universal checkpoint: the first step after each resume computes the same loss on rank
    0's batch as the run that did not change size (the weights carried over exactly), every step's batches are
    the ones its data position names (none repeated or skipped), and the RNG caveat is said."""
    from training.data import TokenData
    from training.reshard import UNIVERSAL_DIR

    out, ds = tmp_path / "run", str(ROOT / f"infra/deepspeed/zero{stage}.json")
    _run_ranks(tokens, out, 2, steps=5, ckpt_every=4, deepspeed=ds)  # checkpoints at 4 and 5
    shutil.rmtree(out / "checkpoints/step-0000005")
    _run_ranks(tokens, out, 1, steps=9, ckpt_every=4, deepspeed=ds)  # shrinks: resumes at 4, checkpoints 8 and 9
    assert _rank0(out, 1)[5]["loss"] == pytest.approx(_rank0(out, 2)[5]["loss"], rel=1e-5)
    reference = _rank0(out, 1)[9]["loss"]
    shutil.rmtree(out / "checkpoints/step-0000009")
    _run_ranks(tokens, out, 2, steps=10, ckpt_every=4, deepspeed=ds)  # grows: resumes at 8
    assert _rank0(out, 2)[9]["loss"] == pytest.approx(reference, rel=1e-5)
    assert (out / UNIVERSAL_DIR / "step-0000008").is_dir()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 9, 10]  # each run goes on from its checkpoint's step
    data = TokenData(tokens, "train", 64)
    for rank in (0, 1):
        for r in map(json.loads, (out / f"batches-rank{rank}.jsonl").read_text().splitlines()):
            x, _ = data.batch(2, 1337, r["step"] - 1, r["micro"], rank)  # the data position is the step
            assert r["rows"] == x.tolist(), (rank, r["step"], r["world"])
