"""Scale-out on a real two-node Ray cluster on this machine (`ray start --head` plus a second
`ray start --address` node with its own resources): curate runs its shard work there, a
2-worker pretrain spreads across both nodes, and both give what a local run gives; `loom pipeline
--ray-address` runs every step there; `loom check`
sees both nodes and the work directory from each. Each
`loom` command runs in its own process, as people run them (and so no Ray connection of one
command outlives it into the next)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.shards import read_dir

RAY = str(Path(sys.executable).with_name("ray"))


def _loom(*args: str, api_url: str) -> str:
    env = {**os.environ, "PREFECT_API_URL": api_url, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=Path(__file__).resolve().parents[2],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr  # the CLI prints its tables to stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_node_cluster():
    import ray

    ray.shutdown()  # earlier tests may have left this process connected to a local instance
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the drivers this test starts must match the cluster
    port = _free_port()
    head = subprocess.run([RAY, "start", "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard",
                           "false", "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=120)
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        node = subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--resources",
                               '{"second_node": 1}', "--disable-usage-stats"], env=env, capture_output=True,
                              text=True, timeout=120)
        assert node.returncode == 0, node.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        os.environ.pop("RAY_AUTH_MODE", None)


@pytest.mark.slow
def test_curate_and_a_two_worker_pretrain_across_two_nodes_match_a_local_run(
        two_node_cluster, prefect_server, shared, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    questions = (shared / "sft/gsm8k/test.jsonl").read_text().splitlines()
    for part in range(2):  # two files: two units of shard work
        with open(corpus / f"part-{part}.jsonl", "w") as f:
            for i, line in enumerate(questions[part * 300:(part + 1) * 300]):
                q = json.loads(line)
                f.write(json.dumps({"id": f"q{part}-{i}", "text": q["question"] + "\n" + q["answer"]}) + "\n")
    shutil.copy(corpus / "part-0.jsonl", corpus / "part-2-copy.jsonl")  # duplicates for the dedup stages

    # `loom check` finds both nodes, the same versions on each, the work directory on each, and Prefect
    check = _loom("check", "--ray-address", two_node_cluster, "--workdir", str(tmp_path / "cluster"),
                  api_url=prefect_server)
    assert "2 nodes" in check and check.count("sees it") == 2 and "healthy" in check and "ready" in check

    for name, address in (("cluster", two_node_cluster), ("local", None)):
        args = ["curate", str(corpus), "--run-id", "r", "--workdir", str(tmp_path / name), "--workers", "2"]
        _loom(*args, *(["--ray-address", address] if address else []), api_url=prefect_server)
    published = {name: read_dir(tmp_path / name / "runs/r/08_publish").sort_by("id") for name in ("cluster", "local")}
    assert published["cluster"].num_rows > 0
    assert published["cluster"].column("text").to_pylist() == published["local"].column("text").to_pylist()

    losses, nodes = {}, {}
    for name, address in (("cluster", two_node_cluster), ("local", None)):
        workdir = tmp_path / name
        for command in (["tokenize", "--run-id", "r", "--vocab-size", "512"],
                        ["pretrain", "--run-id", "r", "--num-workers", "2", "--steps", "6"]):
            _loom(*command, "--workdir", str(workdir), *(["--ray-address", address] if address else []),
                  api_url=prefect_server)
        out = workdir / "runs/r/train"
        losses[name] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        nodes[name] = json.loads((out / "run_info.json").read_text())["nodes"]
    assert len(set(nodes["cluster"])) == 2  # one worker on each node
    assert losses["cluster"] == pytest.approx(losses["local"], rel=1e-5)

    # `loom pipeline --ray-address`: prefect-ray's task runner (curate, tokenize) and Ray Train (pretrain) in one
    # process, on the cluster. It once died with `ActorDiedError: TrainController ... cancelled before it started`.
    config = tmp_path / "pipeline.toml"
    config.write_text('stages_off = ["quality"]\n[tokenize]\nvocab_size = 512\n[pretrain]\nsteps = 4\neval_every = 4\n'
                      "ckpt_every = 4\nnum_workers = 2\n[evaluate]\nexamples = 0\n")
    done = _loom("pipeline", str(corpus), "--run-id", "p", "--workdir", str(tmp_path / "pipeline"), "--config",
                 str(config), "--ray-address", two_node_cluster, api_url=prefect_server)
    info = json.loads((tmp_path / "pipeline/runs/p/train/run_info.json").read_text())
    assert "validation loss" in done and len(set(info["nodes"])) == 2


@pytest.fixture
def ray_job_server():
    """A one-node Ray cluster with its dashboard, which serves Ray's job submission API."""
    import ray

    ray.shutdown()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port, dashboard = _free_port(), _free_port()
    head = subprocess.run([RAY, "start", "--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard",
                           "true", "--dashboard-port", str(dashboard), "--disable-usage-stats"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_pretraining_submitted_as_a_ray_job_streams_its_logs_and_records_its_id(
        ray_job_server, prefect_server, shared, tmp_path):
    """`loom pretrain --submit`: the command runs on the cluster as a Ray Job (the driver is not this
    process), its log comes back here, and the run records the job's id; an address with no job server
    is a one-line error."""
    corpus = tmp_path / "corpus.jsonl"
    lines = (shared / "sft/gsm8k/test.jsonl").read_text().splitlines()[:400]
    corpus.write_text("".join(json.dumps({"id": f"q{i}", "text": json.loads(q)["question"]}) + "\n"
                              for i, q in enumerate(lines)))
    workdir = str(tmp_path / "w")
    for command in (["curate", str(corpus), "--run-id", "r"], ["tokenize", "--run-id", "r", "--vocab-size", "400"]):
        _loom(*command, "--workdir", workdir, "--no-prefect", api_url=prefect_server)

    env = {**os.environ, "PREFECT_API_URL": prefect_server, "RAY_AUTH_MODE": "disabled",
           "LOOM_JOB_PYTHON": sys.executable}
    cli = [sys.executable, "-m", "flows.cli", "pretrain", "--run-id", "r", "--workdir", workdir]
    done = subprocess.run([*cli, "--steps", "4", "--submit", ray_job_server], env=env, capture_output=True,
                          text=True, timeout=900, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    job_id = re.search(r"submitted Ray job (loom-pretrain-r-\S+)", out).group(1)
    assert f"Ray job {job_id}: SUCCEEDED" in out
    assert "validation loss" in out  # the job's own summary table, streamed back
    recorded = [json.loads(line) for line in (tmp_path / "w/runs/r/train/ray_jobs.jsonl").read_text().splitlines()]
    assert [r["job_id"] for r in recorded] == [job_id]
    assert list((tmp_path / "w/runs/r/train/checkpoints").glob("step-*"))

    sft = tmp_path / "sft.jsonl"  # fine-tuning goes the same way, from the run's pretrained model
    sft.write_text("\n".join((shared / "sft/gsm8k/test.jsonl").read_text().splitlines()[:60]) + "\n")
    tuned = subprocess.run([sys.executable, "-m", "flows.cli", "finetune", "--run-id", "r", "--workdir", workdir,
                            "--data", "sft.jsonl", "--steps", "2", "--submit", ray_job_server], env=env,
                           capture_output=True, text=True, timeout=900, cwd=tmp_path)  # a relative path, sent absolute
    assert tuned.returncode == 0, (tuned.stdout + tuned.stderr)[-4000:]
    job_id = re.search(r"submitted Ray job (loom-finetune-r-\S+)", tuned.stdout + tuned.stderr).group(1)
    recorded = (tmp_path / "w/runs/r/finetune/ray_jobs.jsonl").read_text()
    assert job_id in recorded and list((tmp_path / "w/runs/r/finetune/checkpoints").glob("step-*"))

    unreachable = subprocess.run([*cli, "--submit", f"http://127.0.0.1:{_free_port()}"], env=env,
                                 capture_output=True, text=True, timeout=300)
    assert unreachable.returncode == 2 and "cannot reach the Ray job server" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
