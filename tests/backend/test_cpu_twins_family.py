"""The family's CPU twins (minunet/backend/cpu.py, issue 25) against brute-force loops written here.

As tests/backend/test_cpu_twins.py: the references are naive Python loops over every index,
one formula per entry, from the dispatchers' docstrings in minunet/backend/twins.py; they
share no code with the twins or the ops.
"""

from __future__ import annotations

import math

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


# --- bilinear up-sampling -------------------------------------------------------------------


def source(o, S, f, align):
    """(i0, i1, l) of output index o along an axis of input size S: PyTorch's formulas."""
    So = S * f
    if align:
        t = o * (S - 1) / (So - 1) if So > 1 else 0.0
    else:
        t = max((o + 0.5) / f - 0.5, 0.0)
    i0 = min(int(math.floor(t)), S - 1)
    return i0, min(i0 + 1, S - 1), t - i0


def bilinear_loops(x, f, align):
    N, C, H, W = x.shape
    out = np.zeros((N, C, H * f, W * f))
    for n, c, Y, X in np.ndindex(*out.shape):
        y0, y1, ly = source(Y, H, f, align)
        x0, x1, lx = source(X, W, f, align)
        v = x[n, c].astype(np.float64)
        out[n, c, Y, X] = ((1 - ly) * ((1 - lx) * v[y0, x0] + lx * v[y0, x1])
                           + ly * ((1 - lx) * v[y1, x0] + lx * v[y1, x1]))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("f, align", [(2, False), (4, True), (8, False), (3, True), (16, True)])
def test_bilinear_forward(rng, dtype, f, align):
    x = rng.standard_normal((2, 2, 3, 5)).astype(dtype)
    np.testing.assert_allclose(cpu.bilinear_forward(x, f, align), bilinear_loops(x, f, align),
                               **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S, f, Q", [(5, 2, 1), (3, 4, 3), (1, 8, 2), (2, 16, 1), (7, 3, 4)])
def test_bilinear_adjoint(rng, dtype, S, f, Q):
    """dst[p, i, q] = sum over EVERY o of a[o, i] * src[p, o, q] (the band is an optimisation:
    a random dense a would expose one that is too narrow, so a is random on the true band)."""
    So = S * f
    for align in (False, True):
        a = np.zeros((So, S))
        for o in range(So):  # the pattern of an interpolation matrix, random weights
            i0, i1, _ = source(o, S, f, align)
            a[o, i0], a[o, i1] = rng.random(), rng.random()
        a = a.astype(dtype)
        src = rng.standard_normal((2, So, Q)).astype(dtype)
        want = np.zeros((2, S, Q))
        for p, i, q in np.ndindex(*want.shape):
            want[p, i, q] = sum(float(a[o, i]) * float(src[p, o, q]) for o in range(So))
        np.testing.assert_allclose(cpu.bilinear_adjoint(src, a), want, **TOL[dtype])


# --- depthwise convolution and the padded, strided im2col --------------------------------------


def padded(x, c, y, xx):
    """x[c, y, xx], or 0 outside the image (the zero padding)."""
    C, H, W = x.shape
    return float(x[c, y, xx]) if 0 <= y < H and 0 <= xx < W else 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C, m, H, W, k, s, p", [(2, 1, 6, 7, 3, 1, 1), (1, 2, 7, 5, 5, 2, 2),
                                                 (2, 1, 5, 6, 3, 2, 0)])
def test_depthwise(rng, dtype, C, m, H, W, k, s, p):
    """out, dx and dw/db against loops over every index (dx and dw by the chain rule of out)."""
    N, Co = 2, C * m
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((Co, 1, k, k)).astype(dtype)
    b = rng.standard_normal(Co).astype(dtype)
    d = rng.standard_normal((N, Co, Ho, Wo)).astype(dtype)
    out = np.zeros((N, Co, Ho, Wo))
    dx = np.zeros((N, C, H, W))
    dw = np.zeros((N, Co, k * k + 1))
    for n, o, y, xx in np.ndindex(N, Co, Ho, Wo):
        c = o // m
        out[n, o, y, xx] = float(b[o])
        dw[n, o, k * k] += float(d[n, o, y, xx])
        for i, j in np.ndindex(k, k):
            Y, X = s * y + i - p, s * xx + j - p
            out[n, o, y, xx] += float(w[o, 0, i, j]) * padded(x[n], c, Y, X)
            dw[n, o, i * k + j] += float(d[n, o, y, xx]) * padded(x[n], c, Y, X)
            if 0 <= Y < H and 0 <= X < W:
                dx[n, c, Y, X] += float(w[o, 0, i, j]) * float(d[n, o, y, xx])
    np.testing.assert_allclose(cpu.depthwise_forward(x, w, b, s, p), out, **TOL[dtype])
    np.testing.assert_allclose(cpu.depthwise_backward_dx(d, w, x.shape, s, p), dx, **TOL[dtype])
    np.testing.assert_allclose(cpu.depthwise_dw_partials(d, x, k, s, p), dw, rtol=1e-12,
                               atol=1e-12)


PADDED = [(2, 6, 7, 3, 1, 1, 0, 6), (1, 7, 5, 5, 2, 2, 1, 3), (2, 5, 6, 3, 2, 0, 0, 2),
          (1, 5, 5, 1, 2, 0, 1, 3), (2, 8, 7, 4, 3, 1, 0, 3)]  # (C, H, W, k, s, p, y0, y1)


def im2col_padded_loops(x, k, s, p, y0, y1):
    C, H, W = x.shape
    Wo = (W + 2 * p - k) // s + 1
    out = np.zeros((C * k * k, (y1 - y0) * Wo))
    for c, i, j, y, xx in np.ndindex(C, k, k, y1 - y0, Wo):
        out[(c * k + i) * k + j, y * Wo + xx] = padded(x, c, s * (y0 + y) + i - p, s * xx + j - p)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", PADDED)
def test_im2col_padded(rng, dtype, case):
    C, H, W, k, s, p, y0, y1 = case
    x = rng.standard_normal((C, H, W)).astype(dtype)
    want = im2col_padded_loops(x, k, s, p, y0, y1)
    out = np.full(want.shape, np.nan, dtype=dtype)  # every entry must be written
    assert cpu.im2col_padded(x, k, s, p, y0, y1, out) is out
    np.testing.assert_array_equal(out, want.astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", PADDED)
def test_col2im_padded(rng, dtype, case):
    """Every column entry added to the pixel it was copied from; entries of the padding dropped."""
    C, H, W, k, s, p, y0, y1 = case
    Wo = (W + 2 * p - k) // s + 1
    cols = rng.standard_normal((C * k * k, (y1 - y0) * Wo)).astype(dtype)
    dx0 = rng.standard_normal((C, H, W)).astype(dtype)
    want = dx0.astype(np.float64)
    for c, i, j, y, xx in np.ndindex(C, k, k, y1 - y0, Wo):
        Y, X = s * (y0 + y) + i - p, s * xx + j - p
        if 0 <= Y < H and 0 <= X < W:
            want[c, Y, X] += float(cols[(c * k + i) * k + j, y * Wo + xx])
    np.testing.assert_allclose(cpu.col2im_padded(cols, k, s, p, y0, y1, dx0.copy()), want,
                               **TOL[dtype])
