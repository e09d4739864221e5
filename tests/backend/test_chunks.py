"""backend.chunks: chunk sizes, reusable workspaces, and parallel_for on either device."""

from __future__ import annotations

import numpy as np
import pytest

from minunet.backend import chunks, threads


@pytest.fixture(autouse=True)
def _fresh_workspaces():
    chunks.release_workspaces()
    yield
    chunks.release_workspaces()


class FakeCupy:
    """Stands in for the cupy module: anything that is not numpy takes the GPU path."""

    __name__ = "cupy"
    empty = staticmethod(np.empty)


def test_chunk_bytes_cache_sized_on_the_cpu_bounded_on_the_gpu(monkeypatch):
    assert chunks.chunk_bytes(np) == min(chunks.CPU_CHUNK_BYTES, chunks.WORKSPACE_BYTES)
    assert chunks.chunk_bytes(FakeCupy) == chunks.WORKSPACE_BYTES
    monkeypatch.setattr(chunks, "CPU_CHUNK_BYTES", 100)  # tests force small chunks this way
    monkeypatch.setattr(chunks, "WORKSPACE_BYTES", 60)
    assert chunks.chunk_bytes(np) == 60
    assert chunks.chunk_bytes(FakeCupy) == 60


def test_workspace_is_reused_and_only_grows():
    a = chunks.workspace(np, np.float32, 10)
    assert a.shape == (10,) and a.dtype == np.float32
    b = chunks.workspace(np, np.float32, 6)
    assert np.shares_memory(a, b) and b.shape == (6,)  # the same buffer, a shorter view
    c = chunks.workspace(np, np.float32, 20)  # bigger: a new buffer, kept from now on
    assert c.shape == (20,)
    assert np.shares_memory(c, chunks.workspace(np, np.float32, 10))


def test_workspace_slots_and_dtypes_are_separate():
    a = chunks.workspace(np, np.float64, 8, slot=chunks.Slot("cols", 0))
    b = chunks.workspace(np, np.float64, 8, slot=chunks.Slot("cols", 1))
    c = chunks.workspace(np, np.float32, 8, slot=chunks.Slot("cols", 0))
    assert not np.shares_memory(a, b) and not np.shares_memory(a, c)
    assert c.dtype == np.float32


def test_release_workspaces_frees_them():
    a = chunks.workspace(np, np.float64, 8)
    chunks.release_workspaces()
    assert not chunks._workspaces
    assert not np.shares_memory(a, chunks.workspace(np, np.float64, 8))


@pytest.mark.parametrize("T", [1, 2, 3])
def test_cpu_workers_split_and_parallel_for_follow_the_threads(monkeypatch, T):
    monkeypatch.setattr(threads, "n_threads", lambda: T)
    assert chunks.workers(np) == threads.workers()
    assert chunks.split(np, 10) == threads.split(10, chunks.workers(np))
    seen = []
    chunks.parallel_for(np, range(7), lambda item, worker: seen.append((item, worker)))
    W = min(chunks.workers(np), 7)
    assert sorted(seen) == [(i, i % W) for i in range(7)]  # worker w takes items[w::W]


def test_gpu_path_runs_in_order_on_worker_0():
    assert chunks.workers(FakeCupy) == 1
    assert chunks.split(FakeCupy, 5) == [(0, 5)]
    seen = []
    chunks.parallel_for(FakeCupy, range(5), lambda item, worker: seen.append((item, worker)))
    assert seen == [(i, 0) for i in range(5)]
