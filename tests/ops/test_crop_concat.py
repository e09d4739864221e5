"""center_crop and concat (the skip connection): loops, adjoints, gradient check, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops import (
    center_crop_backward,
    center_crop_forward,
    concat_backward,
    concat_forward,
)

DTYPES = [np.float32, np.float64]


def crop_brute(x, h, w):
    """Keep rows top..top+h-1, columns left..left+w-1; top = (H-h)//2 (the extra row goes below)."""
    N, C, H, W = x.shape
    top, left = (H - h) // 2, (W - w) // 2
    out = np.zeros((N, C, h, w), dtype=x.dtype)
    for n, c, y, xx in np.ndindex(N, C, h, w):
        out[n, c, y, xx] = x[n, c, top + y, left + xx]
    return out


def concat_brute(a, b):
    N, Ca, H, W = a.shape
    out = np.zeros((N, Ca + b.shape[1], H, W), dtype=a.dtype)
    for n, c, y, xx in np.ndindex(*out.shape):
        out[n, c, y, xx] = a[n, c, y, xx] if c < Ca else b[n, c - Ca, y, xx]
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [(4, 4), (5, 3), (9, 8), (1, 1)])  # even, odd, no and full crop
def test_crop_forward_backward_match_brute_force(xp, rng, dtype, size):
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    out, cache = center_crop_forward(xp.asarray(x), size)
    np.testing.assert_array_equal(backend.to_host(out), crop_brute(x, *size))
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = backend.to_host(center_crop_backward(xp.asarray(dout), cache))
    assert dx.shape == x.shape and dx.dtype == dtype
    # the adjoint: dout where the crop was, zero elsewhere
    np.testing.assert_array_equal(crop_brute(dx, *size), dout)
    assert np.sum(dx != 0) == np.sum(dout != 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_crop_non_contiguous_input(xp, rng, dtype):
    x = xp.asarray(rng.standard_normal((2, 3, 8, 9)).astype(dtype)).transpose(0, 1, 3, 2)
    out, _ = center_crop_forward(x, (4, 6))
    np.testing.assert_array_equal(backend.to_host(out), crop_brute(backend.to_host(x), 4, 6))


@pytest.mark.parametrize("dtype", DTYPES)
def test_concat_forward_backward_match_brute_force(xp, rng, dtype):
    a = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    b = rng.standard_normal((2, 2, 4, 5)).astype(dtype)
    out, cache = concat_forward(xp.asarray(a), xp.asarray(b))
    np.testing.assert_array_equal(backend.to_host(out), concat_brute(a, b))
    dout = rng.standard_normal(out.shape).astype(dtype)
    da, db = concat_backward(xp.asarray(dout), cache)
    np.testing.assert_array_equal(backend.to_host(da), dout[:, :3])
    np.testing.assert_array_equal(backend.to_host(db), dout[:, 3:])


def test_concat_non_contiguous_inputs(xp, rng):
    a = xp.asarray(rng.standard_normal((2, 3, 5, 4))).transpose(0, 1, 3, 2)  # (2, 3, 4, 5)
    b = xp.asarray(rng.standard_normal((2, 4, 4, 5)))[:, ::2]  # (2, 2, 4, 5)
    out, _ = concat_forward(a, b)
    np.testing.assert_array_equal(backend.to_host(out),
                                  concat_brute(backend.to_host(a), backend.to_host(b)))


def test_crop_gradcheck(xp, rng):
    x = xp.asarray(rng.standard_normal((2, 3, 9, 8)))
    results = gradcheck.check_spec("center_crop", center_crop_forward, center_crop_backward,
                                   {"x": x, "size": (5, 3)}, rng)
    assert results[0].passed, results[0]


def test_concat_gradcheck(xp, rng):
    inputs = {"a": xp.asarray(rng.standard_normal((2, 3, 4, 5))),
              "b": xp.asarray(rng.standard_normal((2, 2, 4, 5)))}
    results = gradcheck.check_spec("concat", concat_forward, concat_backward, inputs, rng)
    for r in results:
        assert r.passed, r


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), cb=st.integers(1, 3), h=st.integers(1, 7),
       w=st.integers(1, 7), mh=st.integers(0, 5), mw=st.integers(0, 5),
       seed=st.integers(0, 2**32 - 1))
def test_property_crop_concat_adjoints(n, c, cb, h, w, mh, mw, seed):
    rng = np.random.default_rng(seed)
    skip = rng.standard_normal((n, c, h + mh, w + mw))
    up = rng.standard_normal((n, cb, h, w))
    cropped, ccache = center_crop_forward(skip, (h, w))
    np.testing.assert_array_equal(cropped, crop_brute(skip, h, w))
    out, kcache = concat_forward(cropped, up)
    np.testing.assert_array_equal(out, concat_brute(cropped, up))
    y = rng.standard_normal(out.shape)
    dcrop, dup = concat_backward(y, kcache)
    dskip = center_crop_backward(dcrop, ccache)
    # the backward is the adjoint of the (linear) forward: <A (skip, up), y> = <(skip, up), A^T y>
    np.testing.assert_allclose(np.sum(out * y), np.sum(skip * dskip) + np.sum(up * dup),
                               rtol=1e-10, atol=1e-10)


def test_bad_input():
    x = np.zeros((1, 2, 6, 6))
    with pytest.raises(ValueError, match=r"cannot crop x of shape \(1, 2, 6, 6\) to 7x4"):
        center_crop_forward(x, (7, 4))
    with pytest.raises(ValueError, match=r"cannot crop x of shape \(1, 2, 6, 6\) to 0x4"):
        center_crop_forward(x, (0, 4))
    with pytest.raises(ValueError, match=r"center_crop input x must be a 4-D .*\(2, 6, 6\)"):
        center_crop_forward(x[0], (4, 4))
    with pytest.raises(ValueError, match=r"concat: shapes \(1, 2, 6, 6\) and \(1, 3, 4, 4\) "
                                         r"differ outside the channel axis"):
        concat_forward(x, np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"concat: shapes \(1, 2, 6, 6\) and \(2, 3, 6, 6\)"):
        concat_forward(x, np.zeros((2, 3, 6, 6)))
    with pytest.raises(ValueError, match=r"concat input b must be a 4-D .*\(3, 6, 6\)"):
        concat_forward(x, np.zeros((3, 6, 6)))
    with pytest.raises(ValueError, match=r"dtypes differ \(a float64, b float32\)"):
        concat_forward(x, np.zeros((1, 3, 6, 6), dtype=np.float32))
