"""Chunks: how the fast ops cut a layer into pieces, where a piece's scratch lives, who runs it.

The fast ops (minunet/fast) never build a whole layer's im2col matrix: for the
second 3x3 conv of a 572 x 572 tile (64 channels in, 568 x 568 out) it would be
64*9 x 568*568 float32s, 743 MB.
They work through the output in row chunks instead, and this module holds the
three things every chunked op needs, the same on the CPU and on the GPU:

    chunk_bytes(xp)                   how big one chunk's column matrix may be
    workspace(xp, dtype, n, slot)     a scratch buffer reused by every chunk of every call
    parallel_for(xp, items, fn)       run fn(item, worker) on every chunk, one worker per core
      workers(xp), split(xp, R)       how many workers; rows cut into one block per worker

What each buys:
- chunk_bytes bounds memory (64 MB of columns on the GPU instead of 743 MB) and,
  on the CPU, keeps a chunk in cache (4 MB) from the im2col copy to the GEMM.
- workspace saves an allocation (and, on the CPU, the page faults of fresh
  memory) for every chunk of every call: the buffer is allocated once, then reused.
- parallel_for runs the CPU's chunks on all cores at once (backend/threads.py
  says why this beats letting BLAS thread each product); on the GPU it runs them
  in order on the calling thread, where they queue on the stream.

The plain ops (minunet/ops) use none of this: they work on the whole array.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import threads

__all__ = [
    "WORKSPACE_BYTES", "CPU_CHUNK_BYTES", "chunk_bytes", "Slot", "workspace", "release_workspaces",
    "workers", "split", "parallel_for",
]

# Tests shrink these to force many small chunks: patch them here, in
# minunet.backend.chunks (chunk_bytes reads them from this module at each call).
WORKSPACE_BYTES = 64 * 2**20  # upper bound for one column matrix (per workspace slot)
CPU_CHUNK_BYTES = 4 * 2**20  # on the CPU, chunks this big stay in cache from im2col to GEMM


def chunk_bytes(xp) -> int:
    """Target size of one im2col chunk: cache-sized on the CPU, WORKSPACE_BYTES on the GPU."""
    return min(CPU_CHUNK_BYTES, WORKSPACE_BYTES) if xp is np else WORKSPACE_BYTES


# ---------------------------------------------------------------------------
# Workspaces: one reusable scratch buffer per (array module, dtype, slot)
# ---------------------------------------------------------------------------

_workspaces: dict = {}  # (xp name, dtype str, slot) -> 1-D buffer; only grows


class Slot(NamedTuple):
    """Which workspace: what it holds and which worker thread owns it."""

    use: str  # e.g. "cols" (a column matrix), "dcols" (its gradient), "relu_mask"
    worker: int = 0


DEFAULT_SLOT = Slot("default")


def workspace(xp, dtype, n: int, slot: Slot = DEFAULT_SLOT):
    """A 1-D scratch array of `n` elements of `dtype`, reused between calls.

    Contents are garbage. Slots let an op hold several workspaces at once: the column
    matrix and its gradient, one pair per worker thread (Slot("cols", worker),
    Slot("dcols", worker)). The buffer only grows.
    """
    dtype = np.dtype(dtype)
    key = (xp.__name__, dtype.str, slot)
    buf = _workspaces.get(key)
    if buf is None or buf.size < n:
        buf = xp.empty(n, dtype=dtype)
        _workspaces[key] = buf
    return buf[:n]


def release_workspaces() -> None:
    """Free the cached workspaces (e.g. before measuring peak memory)."""
    _workspaces.clear()


# ---------------------------------------------------------------------------
# Workers: the chunks of one layer at once (threads on the CPU, in order on the GPU)
# ---------------------------------------------------------------------------


def workers(xp) -> int:
    """How many chunks `parallel_for` works on at once: the CPU's worker threads, 1 on the GPU."""
    return threads.workers() if xp is np else 1


def split(xp, R: int) -> list[tuple[int, int]]:
    """Rows 0..R-1 (channels, planes) cut into one block (r0, r1) per worker of `parallel_for`."""
    return threads.split(R, workers(xp))


def parallel_for(xp, items, fn) -> None:
    """Call fn(item, worker) for every item, worker in 0..workers(xp)-1.

    On the CPU the items run on one thread per core (backend/threads.py: worker w
    takes items[w::T], in order, so every sum is the same from run to run); on
    the GPU they run in order on the calling thread (worker 0) and queue on the
    current stream. Each worker should use its own workspace slots, e.g.
    workspace(xp, dtype, n, slot=Slot("cols", worker)).
    """
    if xp is np:
        threads.parallel_for(items, fn)
    else:
        for item in items:
            fn(item, 0)
