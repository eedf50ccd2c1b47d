"""Prefect's server on PostgreSQL, for real: a PostgreSQL cluster on loopback (initdb + pg_ctl, as the
`postgres` user where the tests run as root), `prefect server start` pointed at it, and a Loom flow
run through it; its flow run, task runs and artifacts are then read back from PostgreSQL itself."""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _as_postgres_user() -> list[str] | None:
    """PostgreSQL refuses to run as root: as root, run its programs as the `postgres` user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL on 127.0.0.1 with a `prefect` database; yields its asyncpg URL."""
    bindir, prefix = _postgres_bin(), _as_postgres_user()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb; Debian: apt-get install postgresql)")
    if prefix is None:
        pytest.skip("running as root without a `postgres` user (and runuser) to start PostgreSQL as")
    base = Path(tempfile.mkdtemp(prefix="loom-pg-"))
    base.chmod(0o755)
    data, sockets = base / "data", base / "sockets"
    for d in (data, sockets):
        d.mkdir()
        if prefix:
            shutil.chown(d, "postgres", "postgres")
    log = base / "postgres.log"
    if prefix:
        log.touch()
        shutil.chown(log, "postgres", "postgres")
    port = _free_port()

    def run(*args: str) -> None:
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{args[0]}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}" + (
            log.read_text()[-2000:] if log.exists() else "")

    run(str(bindir / "initdb"), "-D", str(data), "-U", "prefect", "--auth=trust", "-E", "UTF8", "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        async def create_database():
            import asyncpg

            conn = await asyncpg.connect(host="127.0.0.1", port=port, user="prefect", database="postgres")
            await conn.execute("CREATE DATABASE prefect")
            await conn.close()

        asyncio.run(create_database())
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def _query(url: str, sql: str) -> list[dict]:
    async def run():
        import asyncpg

        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return [dict(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.mark.slow
def test_prefect_server_on_postgres_runs_a_loom_flow(postgres, start_prefect_server, shared, tmp_path):
    import json

    home = tmp_path / "prefect-home"
    home.mkdir()
    paragraphs = [p for p in (shared / "pretrain/tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    corpus = tmp_path / "plays.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"p{i}", "text": p}) + "\n" for i, p in enumerate(paragraphs[:200])))
    with start_prefect_server(home, {"PREFECT_API_DATABASE_CONNECTION_URL": postgres}) as api_url:
        env = {**os.environ, "PREFECT_API_URL": api_url}
        proc = subprocess.run([sys.executable, "-m", "flows.cli", "curate", str(corpus), "--workdir",
                               str(tmp_path / "work"), "--run-id", "pg", "--workers", "1"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the server is gone: what the run left is in PostgreSQL
    runs = _query(postgres, "SELECT name, state_type FROM flow_run")
    assert runs and all(r["state_type"] == "COMPLETED" for r in runs), runs
    assert any("pg" in r["name"] for r in runs)
    assert _query(postgres, "SELECT count(*) AS n FROM task_run")[0]["n"] >= 1
    keys = {r["key"] for r in _query(postgres, "SELECT key FROM artifact WHERE key IS NOT NULL")}
    assert "pg-01-ingest" in keys, keys
    assert not (home / "prefect.db").exists(), "no SQLite database beside it"
