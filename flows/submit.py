"""Training as a Ray Job, for remote clusters where the driver should not live on a laptop: the same
`loom` command runs on the cluster's head node (`--ray-address auto` there), its logs stream back here,
and the job id is recorded in the run (runs/R/<train|finetune>/ray_jobs.jsonl, written by the job).

    loom pretrain --run-id r1 --submit http://head:8265     # or ray://head:10001
    ray job logs -f <id>                                    # after a detach (Ctrl-C): the job keeps running

The work directory must be storage every node and the head share (checked by `loom check`); paths on
the command line are made absolute before they are sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

JOB_ENV = "LOOM_RAY_JOB_ID"  # set in the job: the command records its job id in the run
JOBS_FILE = "ray_jobs.jsonl"
FORWARDED_ENV = ("PREFECT_API_URL", "LOOM_WORKDIR", "HF_HOME")  # what the job needs of this shell


def job_python() -> str:
    """The cluster's Python with Loom installed (LOOM_JOB_PYTHON, default `python`)."""
    return os.environ.get("LOOM_JOB_PYTHON", "python")


def submit(address: str, args: list[str], run_id: str, what: str, say=print) -> int:
    """Submit `loom *args` as a Ray Job at `address`, stream its logs, return its exit status (0 when it
    succeeded). Ctrl-C detaches and leaves the job running."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConnectionError(f"cannot reach the Ray job server at {address} ({e}); give the dashboard address "
                              "(http://head:8265) or the Ray Client address (ray://head:10001)") from None
    job_id = f"loom-{what}-{run_id}-{time.strftime('%Y%m%d-%H%M%S')}"
    env = [f"{k}={os.environ[k]}" for k in FORWARDED_ENV if os.environ.get(k)]
    # the variables ride on the command line, not in the job's runtime_env: Ray refuses to merge a job's
    # env_vars with those the training driver's own ray.init sets (PYTHONPATH, PREFECT_API_URL, ...)
    entrypoint = shlex.join(["env", *env, f"{JOB_ENV}={job_id}", job_python(), "-m", "flows.cli", *args,
                             "--ray-address", "auto"])
    client.submit_job(entrypoint=entrypoint, submission_id=job_id,
                      metadata={"loom_run_id": run_id, "loom_command": what})
    say(f"submitted Ray job {job_id} to {address}; its logs follow (Ctrl-C detaches; the job keeps running: "
        f"`ray job logs -f {job_id}`, `ray job stop {job_id}`)")

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        say(f"detached from Ray job {job_id}; it keeps running")
        return 0
    status = client.get_job_status(job_id)
    for _ in range(50):  # the log stream can end a moment before the status is final
        if status.is_terminal():
            break
        time.sleep(0.2)
        status = client.get_job_status(job_id)
    say(f"Ray job {job_id}: {status.value}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def record_job(out: Path) -> None:
    """In a command the job runs: its job id, node and start time, appended to out/ray_jobs.jsonl."""
    job_id = os.environ.get(JOB_ENV)
    if not job_id:
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / JOBS_FILE, "a") as f:
        f.write(json.dumps({"job_id": job_id, "node": socket.gethostname(),
                            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
