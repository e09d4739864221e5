"""The family's CPU twins (minunet/backend/cpu.py, issue 25) against brute-force loops written here.

As tests/backend/test_cpu_twins.py: the references are naive Python loops over every index,
one formula per entry, from the dispatchers' docstrings in minunet/backend/twins.py; they
share no code with the twins or the ops.
"""

from __future__ import annotations

import numpy as np
import pytest

from minunet.backend import cpu

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}


# --- BatchNorm ------------------------------------------------------------------------------


def bn_partials_loops(a, b, stats):
    """(sum v, sum v*w) per (n, c, work item of 2048 values); v = a - a[0, c, 0, 0] and w = v
    (stats), or v = a and w = b (grad)."""
    N, C, H, W = a.shape
    HW = H * W
    nq = -(-HW // 2048)
    part = np.zeros((N, C, nq, 2))
    for n in range(N):
        for c in range(C):
            flat_a, flat_b = a[n, c].reshape(-1), b[n, c].reshape(-1)
            shift = float(a[0, c, 0, 0]) if stats else 0.0
            for e in range(HW):
                v = float(flat_a[e]) - shift
                part[n, c, e // 2048, 0] += v
                part[n, c, e // 2048, 1] += v * (v if stats else float(flat_b[e]))
    return part


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2, 3, 4), (2, 3, 45, 50)])
def test_bn_partials(rng, dtype, shape):
    x = (rng.standard_normal(shape) * 2 + 30).astype(dtype)  # a large mean: the shift matters
    h = rng.standard_normal(shape).astype(dtype)
    np.testing.assert_allclose(cpu.bn_stats_partials(x), bn_partials_loops(x, x, True),
                               rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(cpu.bn_grad_partials(x, h), bn_partials_loops(x, h, False),
                               rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bn_normalize_and_dx(rng, dtype):
    shape = (2, 3, 4, 5)
    x, d, h = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    mean, s, g, b, k, m1, m2 = (rng.standard_normal(3).astype(dtype) for _ in range(7))
    xhat, out = cpu.bn_normalize(x, mean, s, g, b)
    dx = cpu.bn_backward_dx(d, h, k, m1, m2)
    for n, c, y, xx in np.ndindex(*shape):
        want_h = (float(x[n, c, y, xx]) - float(mean[c])) * float(s[c])
        np.testing.assert_allclose(xhat[n, c, y, xx], want_h, **TOL[dtype])
        np.testing.assert_allclose(out[n, c, y, xx], float(g[c]) * want_h + float(b[c]),
                                   **TOL[dtype])
        want_dx = float(k[c]) * (float(d[n, c, y, xx]) - float(m1[c])
                                 - float(h[n, c, y, xx]) * float(m2[c]))
        np.testing.assert_allclose(dx[n, c, y, xx], want_dx, **TOL[dtype])
