"""The settings a shard makes in whatever process runs it (a Dask worker the build did not start
included)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Page faults while 200 arrays of 1 MiB (a model activation's size) are made and dropped, in a
# process started the way a Dask nanny starts its workers (MALLOC_TRIM_THRESHOLD_=65536): before,
# inside and after the block the models run in.
FAULTS = """
import resource, sys
import numpy as np
from matteforge.steps.worker_env import heap_reuse

def faults():
    np.ones(2**18, np.float32).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(200):
        np.ones(2**18, np.float32).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = faults()
with heap_reuse(enabled=sys.argv[1] == "on") as on:
    inside = faults()
print(on, plain, inside, faults())
"""


def _faults(env: dict[str, str], enabled: bool = True) -> list[str]:
    done = subprocess.run([sys.executable, "-c", FAULTS, "on" if enabled else "off"],
                          capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_models_reuse_heap_memory_in_a_worker_a_nanny_started():
    """Dask's MALLOC_TRIM_THRESHOLD_ froze glibc's mmap threshold at 128 KiB: every activation
    was mapped and faulted in anew (the models ran 2.2x slower in workers). Inside the block
    the heap is reused; after it the worker's own settings are back (a 12 MP worker's peak
    memory depends on them)."""
    on, plain, inside, after = _faults({"MALLOC_TRIM_THRESHOLD_": "65536"})
    assert on == "True"
    assert int(plain) > 200 * 64  # each array faulted in anew (256 pages of 4 KiB)
    assert int(inside) < int(plain) / 20
    assert int(after) > 200 * 64


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_without_the_nannys_setting_glibc_is_left_to_adapt():
    on, _, _, after = _faults({})
    assert on == "False"
    assert int(after) < 200 * 64  # glibc's dynamic threshold already reuses the heap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_big_portraits_keep_the_workers_settings():
    """At 12 MP the heap the models leave behind would take a worker past its memory budget."""
    from matteforge.steps.worker_env import HEAP_REUSE_MAX_PIXELS, heap_reuse

    with heap_reuse(HEAP_REUSE_MAX_PIXELS + 1) as on:
        assert not on


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_run_heap_reuse_false_keeps_the_workers_memory_settings():
    """For clusters where memory is tighter than time (run.heap_reuse: false)."""
    on, _, inside, _ = _faults({"MALLOC_TRIM_THRESHOLD_": "65536"}, enabled=False)
    assert on == "False"
    assert int(inside) > 200 * 64
