"""The stage runner, with and without Prefect: a unit that fails for a reason outside Loom (storage,
network, a lost Ray worker) is retried; a bug or bad data is not. Without a configured Prefect API a
command imports no Prefect and starts no server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.control import Control, prefect_api_configured, transient
from flows.stage_flow import stage_unit_task


def test_transient_failures_are_told_from_lasting_ones():
    assert transient(ConnectionResetError("reset by peer")) and transient(TimeoutError("read timed out"))
    assert transient(OSError(5, "Input/output error"))
    lost = type("ActorDiedError", (Exception,), {})("the actor died unexpectedly")
    assert transient(lost)
    wrapped = RuntimeError("reading s3://bucket/part-0")
    wrapped.__cause__ = ConnectionError("connection aborted")
    assert transient(wrapped)
    for lasting in (FileNotFoundError("no such file"), PermissionError("denied"), ValueError("bad record"),
                    KeyError("text")):
        assert not transient(lasting)


def test_a_unit_is_retried_after_a_transient_failure_and_not_after_a_bug(prefect_server, tmp_path):
    from prefect import flow

    marker, calls = tmp_path / "failed-once", []

    def flaky(key: str) -> dict:
        calls.append(key)
        if not marker.exists():
            marker.touch()
            raise ConnectionResetError("connection reset by the object store")
        return {"key": key}

    def bug(key: str) -> dict:
        calls.append(key)
        raise ValueError("a bad record")

    unit = stage_unit_task().with_options(retry_delay_seconds=0)

    @flow
    def run(fn) -> dict:
        return unit(fn, "part-00000", label="test:part-00000")

    assert run(flaky) == {"key": "part-00000"} and len(calls) == 2
    calls.clear()
    with pytest.raises(ValueError, match="a bad record"):
        run(bug)
    assert len(calls) == 1


def _flaky_unit(marker: str, key: str) -> dict:
    if not Path(marker).exists():
        Path(marker).touch()
        raise ConnectionResetError("connection reset by the object store")
    return {"key": key, "pid": os.getpid()}


def _buggy_unit(key: str) -> dict:
    raise ValueError("a bad record")


def test_without_prefect_units_run_in_local_processes_and_transient_failures_are_retried(tmp_path):
    from functools import partial

    mapper, done = Control(retry_delays=[0, 0]).mapper(workers=2), {}
    mapper(partial(_flaky_unit, str(tmp_path / "failed-once")), ["a", "b", "c"], done.__setitem__)
    assert sorted(done) == ["a", "b", "c"] and os.getpid() not in {r["pid"] for r in done.values()}
    with pytest.raises(ValueError, match="a bad record"):
        mapper(_buggy_unit, ["a", "b"], done.__setitem__)


def test_the_configured_prefect_api_is_found_without_importing_prefect(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"PREFECT_HOME": str(home)}
    assert prefect_api_configured(env, cwd=tmp_path) is None
    (home / "profiles.toml").write_text('active = "prod"\n[profiles.prod]\nPREFECT_API_URL = "http://prod:4200/api"\n')
    assert prefect_api_configured(env, cwd=tmp_path) == "http://prod:4200/api"
    assert prefect_api_configured({**env, "PREFECT_PROFILE": "other"}, cwd=tmp_path) is None
    (tmp_path / "prefect.toml").write_text('[api]\nurl = "http://here:4200/api"\n')
    assert prefect_api_configured({**env, "PREFECT_PROFILE": "other"}, cwd=tmp_path) == "http://here:4200/api"
    assert prefect_api_configured({**env, "PREFECT_API_URL": "http://env/api"}, cwd=tmp_path) == "http://env/api"


def test_a_step_with_no_prefect_api_configured_imports_no_prefect_and_starts_no_server(shared, tmp_path):
    """`loom step` with no API configured runs its stages as plain calls: the same output, no Prefect (and
    no pandas, which pyarrow would import on its first array). Run as a program (`python -m flows.cli`), it
    ends as soon as its output is flushed, with the command's exit status."""
    corpus = tmp_path / "in.jsonl"
    texts = (shared / "pretrain" / "tinyshakespeare.txt").read_text().split("\n\n")[:40]
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts + texts[:5])))
    probe = ("import sys, runpy; sys.argv = ['loom', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('flows.cli', run_name='__main__')\n"
             "finally:\n    print('PREFECT-IMPORTED' if 'prefect' in sys.modules else 'NO-PREFECT',\n"
             "          'PANDAS-IMPORTED' if 'pandas' in sys.modules else 'NO-PANDAS')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no profile naming a server
    out = subprocess.run([sys.executable, "-c", probe, "step", "exact_dedup", "--input", str(corpus), "--output",
                          str(tmp_path / "out"), "--workers", "2"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "NO-PREFECT NO-PANDAS" in out.stdout and "temporary server" not in out.stderr
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["rows_in"] == 45 and manifest["removed"] == {"exact_duplicate": 5}
    program = subprocess.run([sys.executable, "-m", "flows.cli", "step", "exact_dedup", "--input", str(corpus),
                              "--output", str(tmp_path / "again"), "--workers", "2"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert program.returncode == 0, program.stderr
    assert f"output: {tmp_path / 'again'}" in (program.stdout + program.stderr).replace("\n", "")  # all flushed
    assert json.loads((tmp_path / "again" / "_manifest.json").read_text())["rows_out"] == 40
    failed = subprocess.run([sys.executable, "-m", "flows.cli", "step", "exact_dedup", "--input",
                             str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "x")], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0 and "does not exist" in failed.stderr + failed.stdout


def test_pyarrow_builds_arrays_without_pandas_and_pandas_still_loads_where_needed(tmp_path):
    """After `pyarrow_without_pandas`, arrays, tables and Parquet files are made from lists and numpy
    without importing pandas; converting to and from pandas still works, importing it then."""
    probe = ("import sys\nimport numpy as np, pyarrow as pa, pyarrow.parquet as pq\n"
             "from tasks.shards import pyarrow_without_pandas\npyarrow_without_pandas()\n"
             "t = pa.table({'id': ['a', None], 'n': [1, 2], 'x': np.arange(2.0), 'b': [b'x', b'y']})\n"
             f"pq.write_table(t, {str(tmp_path / 't.parquet')!r})\n"
             f"assert pq.read_table({str(tmp_path / 't.parquet')!r}).equals(t)\n"
             "assert pa.array(['x', None]).null_count == 1 and pa.array([1.5, None]).null_count == 1\n"
             "print('before', 'pandas' in sys.modules)\n"
             "df = t.to_pandas()\nimport pandas as pd\n"
             "assert pa.Table.from_pandas(df).num_rows == 2 and pa.array(pd.Series([1.0, None])).null_count == 1\n"
             "print('after', type(df).__name__)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["before", "False", "after", "DataFrame"]
