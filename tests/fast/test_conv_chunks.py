"""The fast conv2d's row chunks: any chunk size gives the plain op's numbers, and the
workspaces stay within their budget."""

from __future__ import annotations

import numpy as np
import pytest

from minunet import backend, fast, ops
from minunet.backend import chunks

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 3])
def test_any_chunk_size_gives_the_plain_numbers(xp, rng, monkeypatch, dtype, k):
    x, w, b = (xp.asarray(rng.standard_normal(s).astype(dtype))
               for s in ((2, 3, 9, 8), (4, 3, k, k), (4,)))
    out0, cache0 = ops.conv2d_forward(x, w, b)
    dout = xp.asarray(rng.standard_normal(out0.shape).astype(dtype))
    grads0 = ops.conv2d_backward(dout, cache0)

    Wo = 8 - k + 1
    per_row = 3 * k * k * Wo * np.dtype(dtype).itemsize  # bytes of one output row's columns
    for budget in (1, 3 * per_row):  # the smallest chunks (k-1 rows, at least 1); 3-row chunks
        monkeypatch.setattr(chunks, "WORKSPACE_BYTES", budget)
        monkeypatch.setattr(chunks, "CPU_CHUNK_BYTES", budget)
        backend.release_workspaces()
        out, cache = fast.conv2d_forward(x, w, b)
        grads = fast.conv2d_backward(dout, cache)
        np.testing.assert_allclose(backend.to_host(out), backend.to_host(out0), **TOL[dtype])
        for g, g0 in zip(grads, grads0, strict=True):
            np.testing.assert_allclose(backend.to_host(g), backend.to_host(g0), **TOL[dtype])
        for buf in chunks._workspaces.values():  # the workspace stayed within its budget
            assert buf.nbytes <= max(budget, max(1, k - 1) * per_row)
    backend.release_workspaces()
