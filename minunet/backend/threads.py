"""The CPU's worker threads: the row chunks of a layer run on all cores at once.

A U-Net step on the CPU is mostly matrix products (OpenBLAS) with memory
copies between them (im2col, col2im, the epilogues). Left to itself, OpenBLAS
splits each product over the cores and the copies run on one core, while the
other cores' BLAS threads spin, waiting for the next product. Instead, every
layer here cuts its work into independent row chunks and hands them to one
worker per core (the calling thread and a pool thread for each other core);
each worker does a whole chunk (copy, product, copy) with a single-threaded
BLAS. The copies then run on every core too, and each chunk stays in its
core's cache from the im2col to the GEMM.

    parallel_for(items, fn)    fn(item, worker) for each item, worker in 0..T-1

The fast ops call it through backend/chunks.py (parallel_for(xp, items, fn)),
which runs the same items in order on the GPU.

Items go to workers round-robin and in order (worker w takes items[w::T]), so
which worker sums which chunk, and therefore every floating-point result, is
the same from run to run for a given thread count. The caller keeps writes of
different items apart (or gives each worker its own accumulator).

The thread count is MINUNET_CPU_THREADS if set, else the cores this process may
use. BLAS is held at one thread only while the workers run (threadpoolctl), so
NumPy code outside minunet keeps its usual threading. Without threadpoolctl, or
with one core, everything runs in order on the calling thread.
"""

from __future__ import annotations

import contextvars
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

from .heap import keep_freed_memory

_local = threading.local()  # .inside is True on a worker thread


@functools.lru_cache(maxsize=1)
def n_threads() -> int:
    """Worker threads for CPU layers: MINUNET_CPU_THREADS, else the usable cores."""
    env = os.environ.get("MINUNET_CPU_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"MINUNET_CPU_THREADS must be a whole number, got {env!r}") from None
        if n < 1:
            raise ValueError(f"MINUNET_CPU_THREADS must be at least 1, got {n}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def _blas():
    """threadpoolctl's handle on the loaded BLAS libraries, or None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    # the calling thread is worker 0, the pool's threads are workers 1..T-1
    return ThreadPoolExecutor(max_workers=max(1, n_threads() - 1),
                              thread_name_prefix="minunet-cpu")


def workers() -> int:
    """How many workers parallel_for uses right now (1 when it runs in order)."""
    return n_threads() if n_threads() > 1 and _blas() is not None else 1


def split(R: int, T: int) -> list[tuple[int, int]]:
    """Cut rows 0..R-1 into at most T blocks (r0, r1) of ceil(R/T) rows: one per worker."""
    step = max(1, -(-R // max(1, T)))  # ceil(R / T)
    return [(r0, min(R, r0 + step)) for r0 in range(0, R, step)]


def parallel_for(items, fn) -> None:
    """Call fn(item, worker) for every item; worker w in 0..workers()-1 takes items[w::T].

    Returns when all calls are done; the first exception of a worker is raised here.
    """
    keep_freed_memory()  # once: the steps' arrays reuse the heap, not fresh pages (heap.py)
    items = list(items)
    T = min(workers(), len(items))
    if T <= 1 or getattr(_local, "inside", False):  # nested calls run in order
        for item in items:
            fn(item, 0)
        return

    def run(w):
        _local.inside = True
        try:
            for item in items[w::T]:
                fn(item, w)
        finally:
            _local.inside = False

    with _blas().limit(limits=1):  # one BLAS thread per worker while the workers run
        # workers 1..T-1 on the pool, each in a copy of the caller's context (so that
        # np.errstate and other context variables set by the caller hold there too);
        # worker 0 is the calling thread itself, which saves a hand-off per call
        futures = [_pool().submit(contextvars.copy_context().run, run, w) for w in range(1, T)]
        try:
            run(0)
        finally:
            wait(futures)  # all of them, even when one fails, before BLAS gets its threads back
    for f in futures:
        f.result()  # raises the first worker's exception, if any
