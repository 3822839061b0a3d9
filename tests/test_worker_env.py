"""The settings a shard makes in whatever process runs it (a Dask worker the build did not start
included)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Page faults while 200 arrays of 4 MiB are made and dropped, in a process started the way a
# Dask nanny starts its workers (MALLOC_TRIM_THRESHOLD_=65536), with or without the fix.
FAULTS = """
import resource, sys
import numpy as np
from matteforge.steps.worker_env import restore_heap_reuse
if sys.argv[1] == "fixed":
    assert restore_heap_reuse()
np.ones(2**20, np.float32).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    np.ones(2**20, np.float32).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_worker_started_by_a_nanny_reuses_heap_memory_for_activations():
    """Dask's MALLOC_TRIM_THRESHOLD_ froze glibc's mmap threshold at 128 KiB: every 4 MiB
    array was mapped and faulted in anew (the models ran 2.2x slower in workers)."""
    faults = {}
    for mode in ("plain", "fixed"):
        done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True,
                              text=True, timeout=120, env={"MALLOC_TRIM_THRESHOLD_": "65536",
                                                           "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
        faults[mode] = int(done.stdout.strip())
    assert faults["plain"] > 200 * 256  # each array faulted in anew (1024 pages of 4 KiB)
    assert faults["fixed"] < faults["plain"] / 20, faults
