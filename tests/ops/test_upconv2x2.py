"""upconv2x2: forward vs brute-force loops, gradient check, adjoint property, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops import upconv2x2_backward, upconv2x2_forward

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def upconv_brute(x, w, b):
    """Each input pixel paints a 2x2 block, by loops:

    out[n, o, 2y+i, 2xx+j] += x[n, c, y, xx] * w[c, o, i, j]
    """
    N, C, H, W = x.shape
    O = w.shape[1]
    out = np.zeros((N, O, 2 * H, 2 * W))
    for n in range(N):
        for o in range(O):
            out[n, o] += float(b[o])
            for c in range(C):
                for y in range(H):
                    for xx in range(W):
                        for i in range(2):
                            for j in range(2):
                                out[n, o, 2 * y + i, 2 * xx + j] += (
                                    float(x[n, c, y, xx]) * float(w[c, o, i, j]))
    return out


def make(rng, n, cin, cout, h, w, dtype=np.float64):
    return (rng.standard_normal((n, cin, h, w)).astype(dtype),
            rng.standard_normal((cin, cout, 2, 2)).astype(dtype),
            rng.standard_normal(cout).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_brute_force(xp, rng, dtype):
    x, w, b = make(rng, 2, 3, 4, 3, 5, dtype)
    out, _ = upconv2x2_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b))
    assert out.dtype == dtype and out.shape == (2, 4, 6, 10)
    np.testing.assert_allclose(backend.to_host(out), upconv_brute(x, w, b), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_non_contiguous_inputs(xp, rng, dtype):
    x = xp.asarray(rng.standard_normal((2, 3, 5, 4)).astype(dtype)).transpose(0, 1, 3, 2)
    w = xp.asarray(rng.standard_normal((3, 10, 2, 2)).astype(dtype))[:, 1::2]  # (3, 5, 2, 2)
    b = xp.asarray(rng.standard_normal(5).astype(dtype))
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    out, _ = upconv2x2_forward(x, w, b)
    want = upconv_brute(*(backend.to_host(a) for a in (x, w, b)))
    np.testing.assert_allclose(backend.to_host(out), want, **TOL[dtype])


@pytest.mark.parametrize("cin, cout", [(3, 4), (4, 1), (1, 3)])
def test_backward_gradcheck(xp, rng, cin, cout):
    x, w, b = make(rng, 2, cin, cout, 3, 4)
    inputs = {"x": xp.asarray(x), "w": xp.asarray(w), "b": xp.asarray(b)}
    results = gradcheck.check_spec("upconv2x2", upconv2x2_forward, upconv2x2_backward, inputs,
                                   rng)
    for r in results:
        assert r.passed, r


def test_backward_non_contiguous_dout(xp, rng):
    x, w, b = (xp.asarray(a) for a in make(rng, 2, 3, 2, 3, 4))
    _, cache = upconv2x2_forward(x, w, b)
    dout = xp.asarray(rng.standard_normal((2, 2, 8, 6))).transpose(0, 1, 3, 2)  # (2, 2, 6, 8)
    got = upconv2x2_backward(dout, cache)
    want = upconv2x2_backward(xp.ascontiguousarray(dout), cache)
    for g, e in zip(got, want, strict=True):
        np.testing.assert_allclose(backend.to_host(g), backend.to_host(e), rtol=1e-12)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 2), cin=st.integers(1, 4), cout=st.integers(1, 4), h=st.integers(1, 4),
       w=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_property_forward_and_adjoint(n, cin, cout, h, w, seed):
    rng = np.random.default_rng(seed)
    x, wt, b = make(rng, n, cin, cout, h, w)
    out, cache = upconv2x2_forward(x, wt, b)
    np.testing.assert_allclose(out, upconv_brute(x, wt, b), rtol=1e-10, atol=1e-10)
    y = rng.standard_normal(out.shape)
    dx, dw, db = upconv2x2_backward(y, cache)
    lin = np.sum((out - b[None, :, None, None]) * y)  # <A x, y>, linear in x and in w
    np.testing.assert_allclose(np.sum(x * dx), lin, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.sum(wt * dw), lin, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, y.sum(axis=(0, 2, 3)), rtol=1e-10, atol=1e-10)


def test_bad_input(rng):
    x, w, b = make(rng, 1, 3, 2, 2, 2)
    with pytest.raises(ValueError, match=r"upconv2x2 input x must be a 4-D .*\(3, 2, 2\)"):
        upconv2x2_forward(x[0], w, b)
    with pytest.raises(ValueError, match=r"channel mismatch: input x \(1, 3, 2, 2\) has 3 "
                                         r"channels but weight \(2, 2, 2, 2\) expects 2"):
        upconv2x2_forward(x, w[:2], b)
    with pytest.raises(ValueError, match=r"weight must be \(Cin, Cout, 2, 2\), got \(3, 2, 1, 2\)"):
        upconv2x2_forward(x, w[:, :, :1], b)
    with pytest.raises(ValueError, match=r"bias shape \(1,\) does not match weight \(3, 2, 2, 2\)"):
        upconv2x2_forward(x, w, b[:1])
    _, cache = upconv2x2_forward(x, w, b)
    with pytest.raises(ValueError, match=r"dout shape \(1, 2, 2, 2\) does not match the forward "
                                         r"output \(1, 2, 4, 4\)"):
        upconv2x2_backward(np.zeros((1, 2, 2, 2)), cache)
