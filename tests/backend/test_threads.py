"""backend.threads: the CPU worker threads that run a layer's row chunks at once.

The last tests run the chunked ops of minunet/fast on 1, 2 or 3 workers.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from minunet import backend
from minunet.backend import chunks, threads
from minunet.fast import (
    conv2d_backward,
    conv2d_forward,
    maxpool2x2_backward,
    maxpool2x2_forward,
    upconv2x2_backward,
    upconv2x2_forward,
)

pytestmark = pytest.mark.skipif(threads._blas() is None, reason="threadpoolctl is not installed")


@pytest.fixture(params=[1, 2, 3])
def n_workers(request, monkeypatch):
    """Pretend the machine has 1, 2 or 3 cores (the pool may have fewer real threads)."""
    monkeypatch.setattr(threads, "n_threads", lambda: request.param)
    backend.release_workspaces()
    yield request.param
    backend.release_workspaces()


def test_every_item_once_on_its_worker(n_workers):
    seen, lock = [], threading.Lock()

    def fn(item, worker):
        with lock:
            seen.append((item, worker))

    threads.parallel_for(range(10), fn)
    T = min(n_workers, 10)
    assert sorted(seen) == [(i, i % T) for i in range(10)]  # worker w takes items[w::T]


@pytest.mark.parametrize("R, T", [(10, 3), (2, 4), (7, 1), (0, 2)])
def test_split_covers_every_row_once(R, T):
    blocks = threads.split(R, T)
    assert len(blocks) <= T
    assert [r for r0, r1 in blocks for r in range(r0, r1)] == list(range(R))


def test_worker_exception_reaches_the_caller(n_workers):
    def fn(item, worker):
        if item == 3:
            raise ValueError("item 3 failed")

    with pytest.raises(ValueError, match="item 3 failed"):
        threads.parallel_for(range(6), fn)


def test_nested_calls_run_in_order(n_workers):
    inner = []

    def fn(item, worker):
        threads.parallel_for(range(3), lambda i, w: inner.append((item, i, w)))

    threads.parallel_for(range(2), fn)
    assert sorted(inner) == [(a, i, 0) for a in range(2) for i in range(3)]


def test_blas_threads_restored(n_workers):
    before = [c.num_threads for c in threads._blas().lib_controllers]
    threads.parallel_for(range(4), lambda i, w: np.ones((8, 8)) @ np.ones((8, 8)))
    assert [c.num_threads for c in threads._blas().lib_controllers] == before


def test_callers_errstate_holds_on_the_workers(n_workers):
    """np.errstate is a context variable: the workers run in a copy of the caller's context."""
    big = np.full((4, 4), 1e30, dtype=np.float32)

    def fn(item, worker):
        big @ big  # overflows to inf: a RuntimeWarning (an error under pytest) unless ignored

    with np.errstate(over="ignore"):
        threads.parallel_for(range(4), fn)


def test_bad_thread_count_is_named(monkeypatch):
    threads.n_threads.cache_clear()
    monkeypatch.setenv("MINUNET_CPU_THREADS", "two")
    with pytest.raises(ValueError, match="MINUNET_CPU_THREADS must be a whole number"):
        threads.n_threads()
    monkeypatch.setenv("MINUNET_CPU_THREADS", "3")
    assert threads.n_threads() == 3
    threads.n_threads.cache_clear()


@pytest.mark.parametrize("k", [1, 3])
def test_conv_same_on_any_number_of_workers(n_workers, monkeypatch, k):
    """Chunks run on 1, 2 or 3 workers (small chunks: many of them, both backward
    phases busy) give the one-chunk serial result; float64, so sums in another
    order agree to 1e-12."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 13, 11))
    w, b = rng.standard_normal((4, 3, k, k)), rng.standard_normal(4)
    dout = rng.standard_normal((2, 4, 14 - k, 12 - k))
    monkeypatch.setattr(threads, "n_threads", lambda: 1)
    ref_out, cache = conv2d_forward(x, w, b, relu=True)
    ref = conv2d_backward(dout, cache)
    monkeypatch.setattr(threads, "n_threads", lambda: n_workers)
    monkeypatch.setattr(chunks, "CPU_CHUNK_BYTES", 1)  # k-1 rows per chunk: 6 chunks an image
    out, cache = conv2d_forward(x, w, b, relu=True)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-12)
    for g, g0 in zip(conv2d_backward(dout, cache), ref, strict=True):
        np.testing.assert_allclose(g, g0, rtol=1e-12, atol=1e-12)


def test_upconv_same_on_any_number_of_workers(n_workers, monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 4, 3))
    w, b = rng.standard_normal((5, 3, 2, 2)), rng.standard_normal(3)
    dout = rng.standard_normal((2, 3, 8, 6))
    monkeypatch.setattr(threads, "n_threads", lambda: 1)
    ref_out, cache = upconv2x2_forward(x, w, b)
    ref = upconv2x2_backward(dout, cache)
    monkeypatch.setattr(threads, "n_threads", lambda: n_workers)
    out, cache = upconv2x2_forward(x, w, b)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-12)
    for g, g0 in zip(upconv2x2_backward(dout, cache), ref, strict=True):
        np.testing.assert_allclose(g, g0, rtol=1e-12, atol=1e-12)


def test_pool_same_on_any_number_of_workers(n_workers):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 6, 4))
    dout = rng.standard_normal((2, 5, 3, 2))
    out, cache = maxpool2x2_forward(x)
    dx = maxpool2x2_backward(dout, cache)
    want = x.reshape(2, 5, 3, 2, 2, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(dx != 0, x == np.repeat(np.repeat(want, 2, 2), 2, 3))
