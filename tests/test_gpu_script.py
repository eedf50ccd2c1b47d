"""benchmarks/gpu.py's CPU path: what CI can run of the GPU check (on a GPU machine it runs the whole)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_script_runs_its_cpu_path_and_says_what_it_skipped(tmp_path):
    result = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--json", str(result)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "no GPU: the GPU parts" in out and "gpu tests: skipped (no GPU)" in out
    rows = {r["contender"]: r for r in json.loads(result.read_text())["results"]}
    # the same stack a GPU run times, each contender trained and measured
    for name in ("bare PyTorch, AdamW", "Loom worker (DeepSpeed), ZeRO-1", "Ray Train + DeepSpeed, ZeRO-2"):
        assert rows[name]["tokens_per_s"] > 0, rows[name]
    assert "vs best bare" in out
