"""The process settings a shard's stages need, set where the shard runs (any Dask worker).

Both are set by the shard itself, not by a worker preload, so they hold on a cluster the build
did not start (``--dask-address``) as on its own LocalCluster.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters and the values its own dynamic thresholds reach at most on 64-bit
# Linux: allocations below 32 MiB come from the heap and are reused, larger ones are mmap'd and
# returned to the system when freed; free memory at the heap's top is returned above 64 MiB.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def configure_threads(n: int) -> None:
    """One torch/BLAS/numba thread per Dask worker thread: oversubscribing 2 cores costs 2-3x.

    numba (pymatting's foreground) otherwise starts one thread per core in every worker: on
    2 cores with 2 workers, a 1 MP foreground took 0.25-0.56 s against 0.20 s on one thread.
    Its thread count is per calling thread, so it is set here, in the thread that runs the shard.
    """
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    try:
        import numba
    except ImportError:  # pymatting without numba's parallel layer: nothing to limit
        return
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def restore_heap_reuse() -> bool:
    """Let glibc reuse heap memory for the models' activations (True where it was set).

    A Dask nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (to hand memory back
    to the system). Setting it by environment also freezes glibc's mmap threshold at 128 KiB,
    so every tensor above that (most of a model's activations) is mmap'd, page-faulted in and
    unmapped again, op after op: the default models took 4.3 s per 384 px portrait instead of
    1.9 s, in a Dask worker and in a plain process given that variable alike. With glibc's
    own limits (32 MiB, trim at 64 MiB) activations come from the heap again (1.7-2.0 s) while
    full-size images (36 MB at 12 MP) are still mmap'd and returned when freed.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to restore
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
