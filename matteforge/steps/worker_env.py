"""The process settings a shard's stages need, set where the shard runs (any Dask worker): one
thread per worker thread for torch, BLAS and numba, and heap reuse while the models run.

The shard sets them itself, not a worker preload, so they hold on a cluster the build did not
start (``--dask-address``) as on its own LocalCluster.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

# glibc's mallopt parameters, and what they are while the models run: allocations below 32 MiB
# come from the heap and are reused (trim = 2 x mmap, glibc's own rule). Measured on the default
# models, 384 px portraits in a Dask worker: 5.0 s at Dask's settings, 3.0 s with 4 MiB, 1.9 s
# with 32 MiB (the heap is trimmed after each portrait, so a low threshold pays the faults again).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
GLIBC_MMAP_THRESHOLD = 128 * 2**10  # glibc's default, fixed once a threshold is set by env
# Portraits above this many pixels keep the worker's settings: at 12 MP heap reuse took the
# models from 11.0 to 6.4-7.8 s per portrait but the worker's peak from 1.95 to 2.00-2.09 GiB
# (the 2 GiB budget); below it the peak is far from the budget.
HEAP_REUSE_MAX_PIXELS = 8_000_000


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


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None where there is none to tune (musl, macOS); looked up once per process
    (``find_library`` costs ~2 ms, and the models run once per portrait)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


@contextmanager
def heap_reuse(pixels: int = 0, enabled: bool = True) -> Iterator[bool]:
    """Let glibc reuse heap memory for the models' activations while the block runs on
    portraits of at most ``pixels`` pixels each, unless not ``enabled`` (``run.heap_reuse``);
    yields whether it did.

    A Dask nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (to hand memory back
    to the system). Setting it by environment also freezes glibc's mmap threshold at 128 KiB,
    so every tensor above that (most of a model's activations) is mmap'd, page-faulted in and
    unmapped again, op after op: the default models took 4.3 s per 384 px portrait instead of
    1.9 s, in a Dask worker and in a plain process given that variable alike. Inside the block
    allocations below 32 MiB come from the heap (1.9 s) for portraits up to
    ``HEAP_REUSE_MAX_PIXELS``. After it the worker's own settings come back and the freed heap
    is handed back (``malloc_trim``): kept for the whole shard, the heap the later stages freed
    stayed resident and a 12 MP worker peaked at 2.00-2.28 GiB against 1.95. Even so, a worker
    whose models ran this way on small portraits peaked at 2.06-2.17 GiB on 12 MP ones later
    (three runs): the price of the speed, which ``run.heap_reuse: false`` declines. Without
    those variables glibc adapts by itself and nothing is changed.
    """
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    wanted = enabled and trim is not None and pixels <= HEAP_REUSE_MAX_PIXELS
    libc = _libc() if wanted else None
    if libc is None or trim is None or not trim.isdigit():
        yield False
        return
    mmap = os.environ.get("MALLOC_MMAP_THRESHOLD_", "")
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, int(mmap) if mmap.isdigit() else GLIBC_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, int(trim))
        libc.malloc_trim(0)
