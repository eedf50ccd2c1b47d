"""One writer per stage directory: a lock file taken before a stage writes and released after its manifest.

The lock is made the way that is atomic on local disks and on NFS/EFS alike (a uniquely named file, then
a hard link to the lock's name: `link` either creates the name or fails, on every server), not with
`flock`, which NFS does not share between hosts. It holds who took it (host, pid, the process's start
time, when) and a heartbeat: its holder touches it every few seconds. A second writer fails fast with a
message naming the holder, or waits if asked. A lock whose holder is dead (a pid that no longer runs on
this host, or no heartbeat from another host for `stale_after` seconds) is taken over.

    with StageLock(stage_dir, wait=0):   # raises StageLocked when another process writes there
        ...
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

LOCK_FILE = "_lock.json"
HEARTBEAT_S = 5.0  # how often the holder touches its lock
STALE_AFTER_S = 60.0  # no heartbeat for this long from another host: its holder is gone


class StageLocked(RuntimeError):
    """Another process is writing this stage directory."""


def _process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot), so a reused pid is not taken for the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether a lock's holder on this host still runs (the same pid, started at the same time)."""
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True  # someone else's process, or a lock we cannot read: assume it runs
    started = holder.get("process_start")
    return started is None or _process_start(int(holder["pid"])) in (None, started)


class StageLock:
    """A lock on one stage directory for as long as the `with` block runs."""

    def __init__(self, stage_dir: Path, wait: float = 0.0, stale_after: float = STALE_AFTER_S,
                 heartbeat: float = HEARTBEAT_S):
        self.path = Path(stage_dir) / LOCK_FILE
        self.wait, self.stale_after, self.heartbeat = wait, stale_after, heartbeat
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
                   "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.took_over: dict | None = None  # the dead holder whose lock was taken, if any

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # being written, or damaged: judged by its age alone
            return {}

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{LOCK_FILE}.{self.me['token']}")
        tmp.write_text(json.dumps(self.me))
        try:
            os.link(tmp, self.path)  # atomic on local file systems and NFS: the name exists or it does not
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def _is_dead(self, holder: dict) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if holder.get("host") == self.me["host"] and "pid" in holder:
            return not _alive(holder)
        return age > self.stale_after

    def _take_over(self, holder: dict) -> None:
        """Move a dead holder's lock aside (one process wins the rename), so the next create can succeed."""
        aside = self.path.with_name(f".{LOCK_FILE}.dead.{self.me['token']}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, aside)
            aside.unlink()
            self.took_over = holder

    def acquire(self) -> StageLock:
        deadline = time.monotonic() + self.wait
        while True:
            if self._try_create():
                break
            holder = self.holder()
            if holder is None:
                continue  # released between our attempt and our look
            if self._is_dead(holder):
                self._take_over(holder)
                continue
            if time.monotonic() >= deadline:
                raise StageLocked(describe(self.path.parent, holder))
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        self._beat = threading.Thread(target=self._heartbeat, name="loom-stage-lock", daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        holder = self.holder()
        if holder is not None and holder.get("token") == self.me["token"]:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> StageLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def describe(stage_dir: Path, holder: dict) -> str:
    who = f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started at {holder.get('started_at', '?')}"
    return (f"{Path(stage_dir).name} ({stage_dir}) is being written by another process ({who}). Wait for it to "
            "finish, or run again with --wait to queue behind it. A lock left by a process that died is taken "
            "over automatically.")
