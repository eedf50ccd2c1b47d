"""One writer per stage directory, with real processes: a second writer fails fast naming the holder, or
waits; a dead holder's lock is taken over; the heartbeat of a holder on another host is respected."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.ingest import Ingest
from tasks.lock import LOCK_FILE, StageLock, StageLocked
from tasks.shards import read_dir
from tasks.stage import run_stage

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from tasks.lock import StageLock
with StageLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(stage_dir: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(stage_dir), str(seconds)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _corpus(shared, tmp_path) -> list[str]:
    path = tmp_path / "q.jsonl"
    with open(path, "w") as f:
        for line in (shared / "sft/gsm8k/test.jsonl").read_text().splitlines()[:50]:
            f.write(json.dumps({"text": json.loads(line)["question"]}) + "\n")
    return [str(path)]


def test_a_second_writer_fails_fast_naming_the_holder_or_waits(shared, tmp_path):
    inputs, stage_dir = _corpus(shared, tmp_path), tmp_path / "01_ingest"
    holder = _holder(stage_dir, 3)
    try:
        with pytest.raises(StageLocked, match=rf"host {socket.gethostname()}, pid {holder.pid}, started at"):
            run_stage(Ingest(), run_id="t", stage_dir=stage_dir, inputs=inputs)
        assert not (stage_dir / "_manifest.json").exists() and not list(stage_dir.glob("part-*"))
        t0 = time.monotonic()
        outcome = run_stage(Ingest(), run_id="t", stage_dir=stage_dir, inputs=inputs, lock_wait=30)
        assert time.monotonic() - t0 > 1 and outcome.manifest.rows_out == 50  # it queued, then ran
    finally:
        holder.kill()
        holder.wait()
    assert read_dir(stage_dir).num_rows == 50 and not (stage_dir / LOCK_FILE).exists()


def test_a_dead_holders_lock_is_taken_over(shared, tmp_path):
    inputs, stage_dir = _corpus(shared, tmp_path), tmp_path / "01_ingest"
    holder = _holder(stage_dir, 600)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (stage_dir / LOCK_FILE).exists()  # left behind by the killed process
    assert run_stage(Ingest(), run_id="t", stage_dir=stage_dir, inputs=inputs).manifest.rows_out == 50


def test_a_holder_on_another_host_counts_while_its_heartbeat_is_fresh(tmp_path):
    stage_dir = tmp_path / "05_pii"
    stage_dir.mkdir()
    (stage_dir / LOCK_FILE).write_text(json.dumps({"host": "node-7", "pid": 1, "started_at": "earlier"}))
    with pytest.raises(StageLocked, match="host node-7, pid 1"):
        StageLock(stage_dir, stale_after=60).acquire()
    old = time.time() - 120
    os.utime(stage_dir / LOCK_FILE, (old, old))  # no heartbeat for two minutes: node-7 is gone
    lock = StageLock(stage_dir, stale_after=60).acquire()
    try:
        assert lock.took_over["host"] == "node-7"
        assert json.loads((stage_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert not (stage_dir / LOCK_FILE).exists()


def test_the_holder_keeps_its_heartbeat(tmp_path):
    with StageLock(tmp_path, heartbeat=0.2) as lock:
        first = lock.path.stat().st_mtime
        time.sleep(0.6)
        assert lock.path.stat().st_mtime > first
