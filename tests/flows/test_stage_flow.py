"""The stage runner's Prefect tasks: a unit that fails for a reason outside Loom (storage, network, a lost
Ray worker) is retried; a bug or bad data is not."""

from __future__ import annotations

import pytest

from flows.stage_flow import stage_unit, transient


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

    unit = stage_unit.with_options(retry_delay_seconds=0)

    @flow
    def run(fn) -> dict:
        return unit(fn, "part-00000", label="test:part-00000")

    assert run(flaky) == {"key": "part-00000"} and len(calls) == 2
    calls.clear()
    with pytest.raises(ValueError, match="a bad record"):
        run(bug)
    assert len(calls) == 1
