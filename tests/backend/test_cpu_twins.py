"""Every Numba twin in minunet/backend/cpu.py against its plain NumPy reference in minunet/ops."""

from __future__ import annotations

import numpy as np
import pytest

from minunet.backend import cpu
from minunet.ops.conv import col2im_reference, im2col_reference
from minunet.ops.pool import maxpool2x2_backward_reference, maxpool2x2_reference
from minunet.ops.softmax import softmax_xent_backward_reference, softmax_xent_reference

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, y0, y1", [(3, 0, 5), (3, 2, 4), (1, 0, 7), (1, 3, 6), (2, 5, 6)])
def test_im2col(rng, dtype, k, y0, y1):
    x = rng.standard_normal((3, 7 + k - 1, 6)).astype(dtype)  # (C, H, W): Ho = 7 output rows
    Wo = 6 - k + 1
    out = np.full((3 * k * k, (y1 - y0) * Wo), np.nan, dtype=dtype)  # every entry must be written
    got = cpu.im2col(x, k, y0, y1, out)
    np.testing.assert_array_equal(got, im2col_reference(x, k, y0, y1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, y0, y1", [(3, 0, 5), (3, 2, 4), (1, 3, 6), (2, 5, 6)])
def test_col2im_accumulates_like_reference(rng, dtype, k, y0, y1):
    C, H, W = 3, 7 + k - 1, 6
    Wo = W - k + 1
    cols = rng.standard_normal((C * k * k, (y1 - y0) * Wo)).astype(dtype)
    dx0 = rng.standard_normal((C, H, W)).astype(dtype)  # col2im adds into what is there
    got = cpu.col2im(cols, k, y0, y1, dx0.copy())
    want = col2im_reference(cols, k, y0, y1, dx0.copy())
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
    want_out, want_arg = maxpool2x2_reference(x)
    assert out.dtype == dtype and arg.dtype == np.uint8
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(arg, want_arg)
    dout = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_array_equal(cpu.maxpool2x2_backward(dout, arg),
                                  maxpool2x2_backward_reference(dout, want_arg))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 1e4])  # ordinary and huge logits
def test_softmax_xent_forward_backward(rng, dtype, scale):
    N, K, H, W = 2, 4, 3, 5
    logits = (scale * rng.standard_normal((N, K, H, W))).astype(dtype)
    labels = rng.integers(0, K, (N, H, W))
    weights = rng.uniform(0.0, 2.0, (N, H, W)).astype(dtype)
    weights[0, 0, :2] = 0.0
    loss, probs = cpu.softmax_xent_forward(logits, labels, weights)
    want_loss, want_probs = softmax_xent_reference(logits, labels, weights)
    assert loss.dtype == dtype and probs.dtype == dtype
    assert np.isfinite(loss) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(loss, want_loss, **TOL[dtype])
    np.testing.assert_allclose(probs, want_probs, **TOL[dtype])
    scale_ = 1.0 / (N * H * W)
    np.testing.assert_allclose(cpu.softmax_xent_backward(probs, labels, weights, scale_),
                               softmax_xent_backward_reference(probs, labels, weights, scale_),
                               **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_relu_forward(rng, dtype):
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    want = np.maximum(x + b[None, :, None, None], 0)  # the plain reference
    got = cpu.bias_relu_forward(x, b)
    assert got is x  # in place
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward(rng, dtype):
    out = np.maximum(rng.standard_normal((2, 3, 5, 4)), 0).astype(dtype)
    dout = rng.standard_normal((2, 3, 4, 5)).astype(dtype).transpose(0, 1, 3, 2)  # non-contiguous
    got = cpu.relu_backward(dout, out)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, np.where(out > 0, dout, 0))


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
