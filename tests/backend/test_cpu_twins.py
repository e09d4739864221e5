"""Every CPU twin in minunet/backend/cpu.py against a brute-force loop written out here.

The references are deliberately naive: Python loops over every index, one
formula per entry, straight from the dispatcher's docstring in
minunet/backend/twins.py. They share no code with the twins or with the ops.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from minunet.backend import cpu

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}


# --- brute-force references ---------------------------------------------------------------


def im2col_loops(x, k, y0, y1):
    """out[(c*k + i)*k + j, (y-y0)*Wo + xx] = x[c, y+i, xx+j] for output rows y0..y1-1."""
    C, H, W = x.shape
    Wo = W - k + 1
    out = np.zeros((C * k * k, (y1 - y0) * Wo), dtype=x.dtype)
    for c in range(C):
        for i in range(k):
            for j in range(k):
                for y in range(y0, y1):
                    for xx in range(Wo):
                        out[(c * k + i) * k + j, (y - y0) * Wo + xx] = x[c, y + i, xx + j]
    return out


def col2im_loops(cols, k, y0, y1, dx):
    """The adjoint of im2col_loops: every column entry added to the pixel it was copied from."""
    C, H, W = dx.shape
    Wo = W - k + 1
    for c in range(C):
        for i in range(k):
            for j in range(k):
                for y in range(y0, y1):
                    for xx in range(Wo):
                        dx[c, y + i, xx + j] += cols[(c * k + i) * k + j, (y - y0) * Wo + xx]
    return dx


def maxpool_loops(x):
    """Each 2x2 window read in order (0,0), (0,1), (1,0), (1,1); the FIRST maximum wins."""
    N, C, H, W = x.shape
    out = np.zeros((N, C, H // 2, W // 2), dtype=x.dtype)
    arg = np.zeros((N, C, H // 2, W // 2), dtype=np.uint8)
    for n, c, y, xx in np.ndindex(*out.shape):
        best, best_a = None, None
        for i in range(2):
            for j in range(2):
                v = x[n, c, 2 * y + i, 2 * xx + j]
                if best is None or v > best:  # strictly greater: a tie keeps the first
                    best, best_a = v, 2 * i + j
        out[n, c, y, xx], arg[n, c, y, xx] = best, best_a
    return out, arg


def maxpool_backward_loops(dout, arg):
    """The whole gradient of a window goes to its arg-max pixel; the other three get 0."""
    N, C, Ho, Wo = dout.shape
    dx = np.zeros((N, C, 2 * Ho, 2 * Wo), dtype=dout.dtype)
    for n, c, y, xx in np.ndindex(*dout.shape):
        i, j = divmod(int(arg[n, c, y, xx]), 2)
        dx[n, c, 2 * y + i, 2 * xx + j] = dout[n, c, y, xx]
    return dx


def softmax_xent_loops(logits, labels, weights):
    """(loss_sum, probs): per pixel, p_k = exp(z_k - m) / sum exp(z - m) in float64 scalars."""
    N, K, H, W = logits.shape
    probs = np.zeros(logits.shape, dtype=np.float64)
    loss = 0.0
    for n, y, xx in np.ndindex(N, H, W):
        z = [float(logits[n, k, y, xx]) for k in range(K)]
        m = max(z)
        s = sum(math.exp(zk - m) for zk in z)
        for k in range(K):
            probs[n, k, y, xx] = math.exp(z[k] - m) / s
        log_p_label = (z[labels[n, y, xx]] - m) - math.log(s)
        loss += float(weights[n, y, xx]) * -log_p_label
    return loss, probs


def softmax_xent_backward_loops(probs, labels, weights, scale):
    """dlogits[n, k, y, x] = scale * w(x) * (p_k(x) - [k == l(x)])."""
    d = np.zeros(probs.shape, dtype=np.float64)
    for n, k, y, xx in np.ndindex(*probs.shape):
        onehot = 1.0 if k == labels[n, y, xx] else 0.0
        d[n, k, y, xx] = scale * float(weights[n, y, xx]) * (float(probs[n, k, y, xx]) - onehot)
    return d


# --- the twins ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, y0, y1", [(3, 0, 5), (3, 2, 4), (1, 0, 7), (1, 3, 6), (2, 5, 6)])
def test_im2col(rng, dtype, k, y0, y1):
    x = rng.standard_normal((3, 7 + k - 1, 6)).astype(dtype)  # (C, H, W): Ho = 7 output rows
    Wo = 6 - k + 1
    out = np.full((3 * k * k, (y1 - y0) * Wo), np.nan, dtype=dtype)  # every entry must be written
    got = cpu.im2col(x, k, y0, y1, out)
    assert got is out
    np.testing.assert_array_equal(got, im2col_loops(x, k, y0, y1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, y0, y1", [(3, 0, 5), (3, 2, 4), (1, 3, 6), (2, 5, 6)])
def test_col2im_accumulates(rng, dtype, k, y0, y1):
    C, H, W = 3, 7 + k - 1, 6
    Wo = W - k + 1
    cols = rng.standard_normal((C * k * k, (y1 - y0) * Wo)).astype(dtype)
    dx0 = rng.standard_normal((C, H, W)).astype(dtype)  # col2im adds into what is there
    got = cpu.col2im(cols, k, y0, y1, dx0.copy())
    want = col2im_loops(cols, k, y0, y1, dx0.copy())
    np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_forward_backward(rng, dtype, ties):
    shape = (2, 3, 6, 8)
    if ties:
        x = rng.integers(0, 3, shape).astype(dtype)  # many equal values in a window
    else:
        x = rng.standard_normal(shape).astype(dtype)
    out, arg = cpu.maxpool2x2_forward(x)
    want_out, want_arg = maxpool_loops(x)
    assert out.dtype == dtype and arg.dtype == np.uint8
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(arg, want_arg)
    dout = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_array_equal(cpu.maxpool2x2_backward(dout, arg),
                                  maxpool_backward_loops(dout, want_arg))


def test_maxpool_tie_rule_first_maximum_in_window_order():
    # windows: all equal -> 0; (0,1) and (1,1) tie at the max -> 1; only (1,0) -> 2; (1,1) -> 3
    x = np.array([[[[5, 5, 1, 7, 0, 0, 0, 0],
                    [5, 5, 0, 7, 9, 0, 0, 1]]]], dtype=np.float64)
    out, arg = cpu.maxpool2x2_forward(x)
    np.testing.assert_array_equal(arg.ravel(), [0, 1, 2, 3])
    np.testing.assert_array_equal(out.ravel(), [5, 7, 9, 1])
    dx = cpu.maxpool2x2_backward(np.array([[[[1.0, 2.0, 3.0, 4.0]]]]), arg)
    np.testing.assert_array_equal(dx, [[[[1, 0, 0, 2, 0, 0, 0, 0],
                                         [0, 0, 0, 0, 3, 0, 0, 4]]]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 1e4])  # ordinary and huge logits
def test_softmax_xent_forward_backward(rng, dtype, scale):
    N, K, H, W = 2, 4, 3, 5
    logits = (scale * rng.standard_normal((N, K, H, W))).astype(dtype)
    labels = rng.integers(0, K, (N, H, W))
    weights = rng.uniform(0.0, 2.0, (N, H, W)).astype(dtype)
    weights[0, 0, :2] = 0.0
    loss, probs = cpu.softmax_xent_forward(logits, labels, weights)
    want_loss, want_probs = softmax_xent_loops(logits, labels, weights)
    assert loss.dtype == dtype and probs.dtype == dtype
    assert np.isfinite(loss) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(loss, want_loss, **TOL[dtype])
    np.testing.assert_allclose(probs, want_probs, **TOL[dtype])
    scale_ = 1.0 / (N * H * W)
    np.testing.assert_allclose(cpu.softmax_xent_backward(probs, labels, weights, scale_),
                               softmax_xent_backward_loops(probs, labels, weights, scale_),
                               **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_relu_forward(rng, dtype):
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    want = np.zeros_like(x)
    for n, c, y, xx in np.ndindex(*x.shape):
        v = x[n, c, y, xx] + b[c]
        want[n, c, y, xx] = v if v > 0 else 0
    got = cpu.bias_relu_forward(x, b)
    assert got is x  # in place
    np.testing.assert_array_equal(got, want)


def test_bias_relu_forward_passes_nan():
    """A NaN stays NaN, as in numpy.maximum (the plain op) and relu.cu: a diverging run is
    seen, not hidden behind zeros (found by the kernel emulation, tests/emulation/)."""
    x = np.array([[[np.nan, -1.0, 2.0]]])
    got = cpu.bias_relu_forward(x, np.array([0.5]))
    np.testing.assert_array_equal(got, [[[np.nan, 0.0, 2.5]]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward(rng, dtype):
    out = np.maximum(rng.standard_normal((2, 3, 5, 4)), 0).astype(dtype)
    dout = rng.standard_normal((2, 3, 4, 5)).astype(dtype).transpose(0, 1, 3, 2)  # non-contiguous
    got = cpu.relu_backward(dout, out)
    assert got.dtype == dtype
    want = np.zeros_like(out)
    for idx in np.ndindex(*out.shape):
        want[idx] = dout[idx] if out[idx] > 0 else 0
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward_conv_chunk_into_workspace(rng, dtype):
    """A conv's row chunk (C, L) of (C, H*W) planes is read in place; dx= is written."""
    plane_d = rng.standard_normal((3, 40)).astype(dtype)
    plane_o = np.maximum(rng.standard_normal((3, 40)), 0).astype(dtype)
    d, o = plane_d[:, 10:22], plane_o[:, 10:22]  # strided: row stride 40, 12 long
    dx = np.full((3, 12), np.nan, dtype=dtype)
    assert cpu.relu_backward(d, o, dx) is dx
    np.testing.assert_array_equal(dx, np.where(o > 0, d, 0))
    with pytest.raises(ValueError, match="contiguous"):
        cpu.relu_backward(d, o, np.empty((12, 3), dtype=dtype).T)
    assert cpu.relu_backward(np.ones((0, 4), dtype), np.ones((0, 4), dtype)).shape == (0, 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update(rng, dtype):
    w, v, g = (rng.standard_normal((3, 4, 5)).astype(dtype) for _ in range(3))
    lr, m, wd = 0.01, 0.99, 5e-4
    v_want = m * v - lr * (g + wd * w)  # Caffe: v <- m v - lr (g + wd w); w <- w + v
    w_want = w + v_want
    w2, v2 = w.copy(), v.copy()
    cpu.sgd_update(w2, v2, g, lr, m, wd)
    np.testing.assert_allclose(v2, v_want, **TOL[dtype])
    np.testing.assert_allclose(w2, w_want, **TOL[dtype])
    ws, vs = [w.copy(), w[0].copy()], [v.copy(), v[0].copy()]
    cpu.sgd_update_many(ws, vs, [g, g[0]], lr, m, wd)
    np.testing.assert_allclose(ws[0], w_want, **TOL[dtype])
    np.testing.assert_allclose(vs[1], v_want[0], **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_upconv_scatter_gather(rng, dtype):
    N, C, H, W = 2, 3, 2, 4
    cols = rng.standard_normal((N, C, 2, 2, H, W)).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    out = cpu.upconv_scatter(cols, b)
    want = np.zeros((N, C, 2 * H, 2 * W), dtype=dtype)
    for n, c, i, j, y, x in np.ndindex(*cols.shape):
        want[n, c, 2 * y + i, 2 * x + j] = cols[n, c, i, j, y, x] + b[c]
    np.testing.assert_array_equal(out, want)
    dout = rng.standard_normal((N, C, 2 * H, 2 * W)).astype(dtype)
    dcols = np.zeros_like(cols)
    for n, c, i, j, y, x in np.ndindex(*cols.shape):
        dcols[n, c, i, j, y, x] = dout[n, c, 2 * y + i, 2 * x + j]
    np.testing.assert_array_equal(cpu.upconv_gather(dout), dcols)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [True, False])
def test_bias_relu_rows_on_a_row_chunk(rng, dtype, relu):
    """The epilogue on a chunk of rows where the GEMM wrote it: the (C, L) slice of (C, H*W)
    planes; the rest of the planes untouched; a NaN passes the ReLU."""
    planes = rng.standard_normal((3, 40)).astype(dtype)
    planes[1, 12] = np.nan
    b = rng.standard_normal(3).astype(dtype)
    want = planes.copy()
    for c in range(3):  # brute force
        for s in range(10, 25):
            v = want[c, s] + b[c]
            want[c, s] = (0 if v <= 0 else v) if relu else v
    got = cpu.bias_relu_rows(planes[:, 10:25], b, relu)
    assert got.base is not None  # in place, in the view
    np.testing.assert_array_equal(planes, want)
    with pytest.raises(ValueError, match="bias_relu_rows"):
        cpu.bias_relu_rows(planes[:, ::2], b, relu)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [True, False])
def test_direct_conv_rows_and_dw_against_loops(rng, dtype, relu):
    """The direct conv loops (few input channels) against brute-force loops, rows 2..5 of 7."""
    Cin, Cout, k, H, W = 1, 3, 3, 9, 8
    x = rng.standard_normal((Cin, H, W)).astype(dtype)
    w = rng.standard_normal((Cout, Cin, k, k)).astype(dtype)
    b = rng.standard_normal(Cout).astype(dtype)
    Ho, Wo = H - k + 1, W - k + 1
    out = np.full((Cout, Ho, Wo), 7.0, dtype)
    cpu.direct_conv_rows(x, w, b, 2, 5, relu, out)
    d = rng.standard_normal((Cout, Ho, Wo)).astype(dtype)
    mask = rng.standard_normal((Cout, Ho, Wo)).astype(dtype)  # the ReLU's output: > 0 passes
    dw, db = np.zeros((Cout, Cin, k, k)), np.zeros(Cout)
    cpu.direct_dw_rows(x, d, mask, relu, 2, 5, k, dw, db)
    d = np.where(mask > 0, d, 0) if relu else d
    want_dw, want_db = np.zeros_like(dw), np.zeros_like(db)
    for o in range(Cout):
        for y in range(Ho):
            for xx in range(Wo):
                v = float(b[o]) + sum(float(w[o, c, i, j]) * float(x[c, y + i, xx + j])
                                      for c in range(Cin) for i in range(k) for j in range(k))
                want = (max(v, 0.0) if relu else v) if 2 <= y < 5 else 7.0
                assert out[o, y, xx] == pytest.approx(want, rel=1e-5, abs=1e-5)
                if 2 <= y < 5:
                    want_db[o] += d[o, y, xx]
                    for i in range(k):
                        for j in range(k):
                            want_dw[o, 0, i, j] += float(d[o, y, xx]) * float(x[0, y + i, xx + j])
    np.testing.assert_allclose(dw, want_dw, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, want_db, rtol=1e-10, atol=1e-10)
