"""conv2d (the plain op): forward vs brute-force loops, gradient check, bad input.

The fast op's row chunks are tested in tests/fast."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops import conv2d_backward, conv2d_forward, relu_backward, relu_forward

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def conv2d_brute(x, w, b):
    """out[n, o, y, xx] = b[o] + sum_{c,i,j} w[o, c, i, j] * x[n, c, y+i, xx+j], by loops."""
    N, C, H, W = x.shape
    O, _, k, _ = w.shape
    out = np.zeros((N, O, H - k + 1, W - k + 1))
    for n in range(N):
        for o in range(O):
            for y in range(H - k + 1):
                for xx in range(W - k + 1):
                    s = float(b[o])
                    for c in range(C):
                        for i in range(k):
                            for j in range(k):
                                s += float(w[o, c, i, j]) * float(x[n, c, y + i, xx + j])
                    out[n, o, y, xx] = s
    return out


def make(rng, n, cin, cout, k, h, w, dtype=np.float64):
    return (rng.standard_normal((n, cin, h, w)).astype(dtype),
            rng.standard_normal((cout, cin, k, k)).astype(dtype),
            rng.standard_normal(cout).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_forward_matches_brute_force(xp, rng, dtype, k):
    x, w, b = make(rng, 2, 3, 4, k, 7, 6, dtype)
    out, _ = conv2d_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b))
    assert out.dtype == dtype and out.shape == (2, 4, 8 - k, 7 - k)
    np.testing.assert_allclose(backend.to_host(out), conv2d_brute(x, w, b), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_non_contiguous_inputs(xp, rng, dtype):
    xb = rng.standard_normal((2, 3, 6, 7)).astype(dtype)
    x = xp.asarray(xb).transpose(0, 1, 3, 2)  # (2, 3, 7, 6) transposed view
    wb = rng.standard_normal((5, 6, 3, 3)).astype(dtype)
    w = xp.asarray(wb)[:, ::2]  # (5, 3, 3, 3) strided view
    b = xp.asarray(rng.standard_normal(10).astype(dtype))[::2]  # (5,) strided view
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    out, _ = conv2d_forward(x, w, b)
    want = conv2d_brute(backend.to_host(x), backend.to_host(w), backend.to_host(b))
    np.testing.assert_allclose(backend.to_host(out), want, **TOL[dtype])


@pytest.mark.parametrize("k, cin, cout", [(3, 3, 4), (1, 5, 2), (2, 2, 3)])
def test_backward_gradcheck(xp, rng, k, cin, cout):
    x, w, b = make(rng, 2, cin, cout, k, 6, 5)
    inputs = {"x": xp.asarray(x), "w": xp.asarray(w), "b": xp.asarray(b)}
    results = gradcheck.check_spec("conv2d", conv2d_forward, conv2d_backward, inputs, rng)
    for r in results:
        assert r.passed, r


def test_backward_non_contiguous_dout(xp, rng):
    x, w, b = make(rng, 2, 3, 4, 3, 6, 7)
    out, cache = conv2d_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b))
    dout = xp.asarray(rng.standard_normal((2, 4, 5, 4))).transpose(0, 1, 3, 2)  # (2, 4, 4, 5)
    got = conv2d_backward(dout, cache)
    want = conv2d_backward(xp.ascontiguousarray(dout), cache)
    for g, e in zip(got, want, strict=True):
        np.testing.assert_allclose(backend.to_host(g), backend.to_host(e), rtol=1e-12)


def test_need_dx_false(xp, rng):
    x, w, b = (xp.asarray(a) for a in make(rng, 2, 3, 4, 3, 6, 6))
    out, cache = conv2d_forward(x, w, b)
    dout = xp.asarray(rng.standard_normal(out.shape))
    dx, dw, db = conv2d_backward(dout, cache, need_dx=True)
    dx2, dw2, db2 = conv2d_backward(dout, cache, need_dx=False)
    assert dx2 is None
    np.testing.assert_allclose(backend.to_host(dw2), backend.to_host(dw), rtol=1e-12)
    np.testing.assert_allclose(backend.to_host(db2), backend.to_host(db), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_relu_equals_conv_then_relu(xp, rng, dtype):
    x, w, b = (xp.asarray(a) for a in make(rng, 2, 3, 4, 3, 7, 6, dtype))
    out, cache = conv2d_forward(x, w, b, relu=True)
    z, zcache = conv2d_forward(x, w, b)
    r, rcache = relu_forward(z)
    want = np.maximum(conv2d_brute(*(backend.to_host(a) for a in (x, w, b))), 0)
    np.testing.assert_allclose(backend.to_host(out), want, **TOL[dtype])
    np.testing.assert_array_equal(backend.to_host(out), backend.to_host(r))
    dout = xp.asarray(rng.standard_normal(out.shape).astype(dtype))
    for g, e in zip(conv2d_backward(dout, cache),
                    conv2d_backward(relu_backward(dout, rcache), zcache), strict=True):
        np.testing.assert_array_equal(backend.to_host(g), backend.to_host(e))


def test_fused_relu_gradcheck(xp, rng):
    for _ in range(1000):  # pre-activations >= 0.01 away from the kink (h = 1e-4 moves them < 1e-3)
        x, w, b = make(rng, 2, 2, 3, 3, 5, 6)
        if np.abs(conv2d_forward(x, w, b)[0]).min() > 0.01:
            break
    inputs = {"x": xp.asarray(x), "w": xp.asarray(w), "b": xp.asarray(b), "relu": True}
    results = gradcheck.check_spec("conv2d", conv2d_forward, conv2d_backward, inputs, rng,
                                   "conv2d relu")
    for r in results:
        assert r.passed, r


def test_one_by_one_is_a_channel_matmul(rng):
    x, w, b = make(rng, 2, 5, 3, 1, 4, 3)
    out, _ = conv2d_forward(x, w, b)
    want = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]
    np.testing.assert_allclose(out, want, rtol=1e-12)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 2), cin=st.integers(1, 4), cout=st.integers(1, 4), k=st.integers(1, 3),
       dh=st.integers(0, 4), dw=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_property_forward_and_adjoint(n, cin, cout, k, dh, dw, seed):
    rng = np.random.default_rng(seed)
    x, w, b = make(rng, n, cin, cout, k, k + dh, k + dw)
    out, cache = conv2d_forward(x, w, b)
    np.testing.assert_allclose(out, conv2d_brute(x, w, b), rtol=1e-10, atol=1e-10)
    # conv is linear in x and in w: <A x, y> = <x, A^T y> with A^T y the backward's dx (same for w)
    y = rng.standard_normal(out.shape)
    dx, dwt, db = conv2d_backward(y, cache)
    lin = np.sum((out - b[None, :, None, None]) * y)
    np.testing.assert_allclose(np.sum(x * dx), lin, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.sum(w * dwt), lin, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, y.sum(axis=(0, 2, 3)), rtol=1e-10, atol=1e-10)


def test_bad_input(rng):
    x, w, b = make(rng, 1, 2, 3, 3, 5, 5)
    with pytest.raises(ValueError, match=r"conv2d input x must be a 4-D .*got shape \(2, 5, 5\)"):
        conv2d_forward(x[0], w, b)
    with pytest.raises(ValueError, match=r"conv2d weight w must be a 4-D .*\(3, 2, 3\)"):
        conv2d_forward(x, w[..., 0], b)
    with pytest.raises(ValueError, match=r"kernel 3x3 is larger than the input image 2x5 "
                                         r"\(x shape \(1, 2, 2, 5\)\)"):
        conv2d_forward(x[:, :, :2], w, b)
    with pytest.raises(ValueError, match=r"channel mismatch: input x \(1, 2, 5, 5\) has 2 channels "
                                         r"but weight \(3, 1, 3, 3\) expects 1"):
        conv2d_forward(x, w[:, :1], b)
    with pytest.raises(ValueError, match=r"bias shape \(2,\) does not match weight \(3, 2, 3, 3\)"):
        conv2d_forward(x, w, b[:2])
    with pytest.raises(ValueError, match=r"square kernels only, got weight shape \(3, 2, 3, 2\)"):
        conv2d_forward(x, w[..., :2], b)
    with pytest.raises(ValueError, match=r"dtypes differ \(x float32, w float64, b float64\)"):
        conv2d_forward(x.astype(np.float32), w, b)
    _, cache = conv2d_forward(x, w, b)
    with pytest.raises(ValueError, match=r"dout shape \(1, 3, 2, 2\) does not match the forward "
                                         r"output \(1, 3, 3, 3\)"):
        conv2d_backward(np.zeros((1, 3, 2, 2)), cache)


def test_im2col_layout_and_col2im_is_its_adjoint(xp, rng):
    from minunet.ops import col2im, im2col

    N, C, H, W, k = 2, 3, 6, 5, 3
    x = rng.standard_normal((N, C, H, W))
    cols = backend.to_host(im2col(xp.asarray(x), k))
    Ho, Wo = H - k + 1, W - k + 1
    assert cols.shape == (C * k * k, N * Ho * Wo)
    for n in range(N):  # the layout of the module docstring, entry by entry
        for c in range(C):
            for i in range(k):
                for j in range(k):
                    for y in range(Ho):
                        for xx in range(Wo):
                            assert cols[(c * k + i) * k + j, (n * Ho + y) * Wo + xx] == \
                                x[n, c, y + i, xx + j]
    d = rng.standard_normal(cols.shape)  # <im2col(x), d> == <x, col2im(d)>
    back = backend.to_host(col2im(xp.asarray(d), x.shape, k))
    assert abs((cols * d).sum() - (x * back).sum()) <= 1e-12 * abs((cols * d).sum())
