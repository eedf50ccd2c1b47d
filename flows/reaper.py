"""Killing a command kills its work, whatever started it: a small watcher process follows the command's
descendants (process pools, the temporary Prefect API server, a local Ray instance and its agents) and,
once the command has exited or been killed (SIGKILL included, which no handler sees), ends those still
running: SIGTERM, then SIGKILL after a grace period.

    watch_descendants()   # once, early in a command that starts processes
"""

from __future__ import annotations

import os
import subprocess
import sys

_WATCHER = """
import os, sys, time
import psutil

command, me, grace = psutil.Process(int(sys.argv[1])), os.getpid(), float(sys.argv[2])
seen = {}
while True:
    try:
        if command.status() == psutil.STATUS_ZOMBIE:
            break
        for child in command.children(recursive=True):
            if child.pid != me:
                seen.setdefault(child.pid, child)
    except psutil.NoSuchProcess:
        break
    time.sleep(0.5)
left = [p for p in seen.values() if p.is_running()]  # is_running: the same process, not a reused pid
for p in left:
    try:
        p.terminate()
    except psutil.Error:
        pass
_, alive = psutil.wait_procs(left, timeout=grace)
for p in alive:
    try:
        p.kill()
    except psutil.Error:
        pass
"""

_started: list[int] = []


def watch_descendants(grace_s: float = 5.0) -> None:
    """Start the watcher for this process, once (it ends by itself after the command)."""
    if _started or os.environ.get("LOOM_NO_REAPER") == "1":
        return
    try:
        import psutil  # noqa: F401  (Ray's dependency; without it there is nothing to watch with)
    except ImportError:
        return
    watcher = subprocess.Popen([sys.executable, "-c", _WATCHER, str(os.getpid()), str(grace_s)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # outside the command's process group: Ctrl-C spares it
    _started.append(watcher.pid)
