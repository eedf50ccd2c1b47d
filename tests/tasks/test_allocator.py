"""Stage work keeps freed buffers of megabytes for reuse instead of faulting in new pages for each."""

import json
import os
import subprocess
import sys

import pytest

from tasks.allocator import keep_freed_memory

# A batch's worth of work, over and over: five 6 MB buffers live at once (text, folded bytes, masks), then
# all freed. glibc's default trims the freed top of its heap (beyond twice its 6 MB mmap threshold), so
# the next batch faults every page in again. Prints the page faults.
_CHURN = """
import json, resource, sys
import numpy as np
from tasks.allocator import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tune" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    batch = [np.ones(6 << 20, np.uint8) for _ in range(5)]
    del batch
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _churn(mode: str, **env) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    return json.loads(proc.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_buffers_are_reused_not_faulted_in_again():
    default, tuned = _churn("default"), _churn("tune")
    assert tuned["tuned"] and not default["tuned"]
    assert default["faults"] > 20 * 1000  # each batch: over 1,000 of its 5 x 1,536 pages fresh again
    assert tuned["faults"] < default["faults"] / 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_users_own_malloc_settings_are_kept():
    assert not _churn("tune", GLIBC_TUNABLES="glibc.malloc.arena_max=2")["tuned"]
    assert not _churn("tune", MALLOC_ARENA_MAX="2")["tuned"]
    assert keep_freed_memory() == keep_freed_memory()  # once per process, the same answer
