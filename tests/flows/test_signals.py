"""Killing a command kills its work: after SIGKILL or SIGTERM of `loom curate`, no pool worker of it keeps
running units or holding memory, and the run resumes afterwards."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _corpus(shared, path: Path) -> Path:
    paragraphs = [p for p in (shared / "pretrain/tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    with open(path, "w") as f:
        for i, p in enumerate(paragraphs * 2):
            f.write(json.dumps({"id": f"p{i}", "text": p}) + "\n")
    return path


def _start(corpus: Path, wd: Path, cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).with_name("loom")), "curate", str(corpus), "--run-id", "k",
                             "--workdir", str(wd), "--workers", "2", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PREFECT_API_URL": ""})


def _pool_workers(proc: subprocess.Popen, timeout: float = 240) -> list[psutil.Process]:
    """The command's process-pool workers, once units are running on them: started by spawning (Prefect's
    pool) or forked from the command (the pool of a command that runs without Prefect)."""
    command = psutil.Process(proc.pid)
    deadline = time.time() + timeout
    while time.time() < deadline:
        kids = [p for p in command.children(recursive=True)
                if "spawn_main" in " ".join(p.cmdline()) or p.cmdline() == command.cmdline()]
        if len(kids) >= 2:
            return kids
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.5)
    raise AssertionError("no pool workers started")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_curate_ends_its_workers_and_the_run_resumes(shared, tmp_path, sig):
    corpus, wd = _corpus(shared, tmp_path / "plays.jsonl"), tmp_path / "wd"
    cfg = tmp_path / "small-units.toml"
    cfg.write_text('stages_off = ["quality"]\n[ingest]\nunit_bytes = 200000\nshard_bytes = 200000\n')  # short paragraphs
    proc = _start(corpus, wd, cfg)
    workers = _pool_workers(proc)
    everything = [p for p in psutil.Process(proc.pid).children(recursive=True)
                  if "loom.reaper" not in " ".join(p.cmdline()) and "psutil.Process(int(sys.argv[1]))" not in
                  " ".join(p.cmdline())]  # the pool, the Prefect API server: all the command started
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    _gone, alive = psutil.wait_procs(workers, timeout=15)
    assert alive == [], [p.cmdline() for p in alive]
    _gone, alive = psutil.wait_procs(everything, timeout=20)
    assert alive == [], [p.cmdline()[:4] for p in alive]
    if sig == signal.SIGTERM:
        assert "Traceback" not in proc.stderr.read()
    again = subprocess.run([str(Path(sys.executable).with_name("loom")), "curate", str(corpus), "--run-id", "k",
                            "--workdir", str(wd), "--workers", "2", "--config", str(cfg)], cwd=ROOT,
                           capture_output=True, text=True, env={**os.environ, "PREFECT_API_URL": ""}, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    published = json.loads((wd / "runs/k/08_publish/_manifest.json").read_text())
    assert published["rows_out"] > 1000
