"""maxpool2x2: forward vs brute-force loops, the tie rule, gradient check, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops import maxpool2x2_backward, maxpool2x2_forward

DTYPES = [np.float32, np.float64]
WINDOW_ORDER = [(0, 0), (0, 1), (1, 0), (1, 1)]  # the tie rule's order (ops/pool.py)


def maxpool_brute(x, dout=None):
    """out and (with dout) dx by loops; ties go to the first maximum in WINDOW_ORDER."""
    N, C, H, W = x.shape
    out = np.zeros((N, C, H // 2, W // 2), dtype=x.dtype)
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for y in range(H // 2):
                for xx in range(W // 2):
                    best, where = None, None
                    for i, j in WINDOW_ORDER:
                        v = x[n, c, 2 * y + i, 2 * xx + j]
                        if best is None or v > best:  # strict: an equal later value loses
                            best, where = v, (2 * y + i, 2 * xx + j)
                    out[n, c, y, xx] = best
                    if dout is not None:
                        dx[n, c, where[0], where[1]] = dout[n, c, y, xx]
    return out, dx


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward_match_brute_force(xp, rng, dtype):
    x = rng.standard_normal((2, 3, 6, 8)).astype(dtype)
    dout = rng.standard_normal((2, 3, 3, 4)).astype(dtype)
    out, cache = maxpool2x2_forward(xp.asarray(x))
    dx = maxpool2x2_backward(xp.asarray(dout), cache)
    want_out, want_dx = maxpool_brute(x, dout)
    assert out.dtype == dtype and dx.dtype == dtype
    np.testing.assert_array_equal(backend.to_host(out), want_out)
    np.testing.assert_array_equal(backend.to_host(dx), want_dx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(xp, rng, dtype):
    x = xp.asarray(rng.standard_normal((2, 3, 8, 6)).astype(dtype)).transpose(0, 1, 3, 2)
    out, cache = maxpool2x2_forward(x)  # x (2, 3, 6, 8), transposed view
    dout = xp.asarray(rng.standard_normal((2, 3, 4, 3)).astype(dtype)).transpose(0, 1, 3, 2)
    dx = maxpool2x2_backward(dout, cache)
    want_out, want_dx = maxpool_brute(backend.to_host(x), backend.to_host(dout))
    np.testing.assert_array_equal(backend.to_host(out), want_out)
    np.testing.assert_array_equal(backend.to_host(dx), want_dx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tie_rule_first_maximum_wins(xp, dtype):
    # four windows side by side in one (1, 1, 2, 8) image:
    # all four equal -> (0,0); (0,1) = (1,1) -> (0,1);
    # (1,0) = (1,1) -> (1,0); (0,0) = (1,1) -> (0,0)
    x = np.array([[5, 5, 1, 7, 0, 1, 9, 2],
                  [5, 5, 2, 7, 4, 4, 3, 9]], dtype=dtype)[None, None]
    out, cache = maxpool2x2_forward(xp.asarray(x))
    np.testing.assert_array_equal(backend.to_host(out), [[[[5, 7, 4, 9]]]])
    np.testing.assert_array_equal(backend.to_host(cache.arg), [[[[0, 1, 2, 0]]]])
    dx = backend.to_host(maxpool2x2_backward(xp.asarray(np.full((1, 1, 1, 4), 1, dtype)), cache))
    want = np.array([[1, 0, 0, 1, 0, 0, 1, 0],
                     [0, 0, 0, 0, 1, 0, 0, 0]], dtype=dtype)[None, None]
    np.testing.assert_array_equal(dx, want)


def test_backward_gradcheck(xp, rng):
    shape = (2, 3, 4, 6)
    n = int(np.prod(shape))
    x = ((rng.permutation(n) - n / 2) * 0.1).reshape(shape)  # distinct values: no kinks
    results = gradcheck.check_spec("maxpool2x2", maxpool2x2_forward, maxpool2x2_backward,
                                   {"x": xp.asarray(x)}, rng)
    assert results[0].passed, results[0]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1))
def test_property_against_brute_force_with_ties(n, c, h, w, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, (n, c, 2 * h, 2 * w)).astype(np.float64)  # small integers: many ties
    dout = rng.standard_normal((n, c, h, w))
    out, cache = maxpool2x2_forward(x)
    dx = maxpool2x2_backward(dout, cache)
    want_out, want_dx = maxpool_brute(x, dout)
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(dx, want_dx)
    # the backward routes dout to pixels holding the maximum: <dx, x> = <dout, out>
    np.testing.assert_allclose(np.sum(dx * x), np.sum(dout * out), rtol=1e-12)


def test_bad_input(rng):
    with pytest.raises(ValueError, match=r"even height and width, got x shape \(1, 2, 5, 4\)"):
        maxpool2x2_forward(np.zeros((1, 2, 5, 4)))
    with pytest.raises(ValueError, match=r"even height and width, got x shape \(1, 2, 4, 3\)"):
        maxpool2x2_forward(np.zeros((1, 2, 4, 3)))
    with pytest.raises(ValueError, match=r"maxpool2x2 input x must be a 4-D .*\(2, 4, 4\)"):
        maxpool2x2_forward(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"float32 or float64, got int64"):
        maxpool2x2_forward(np.zeros((1, 1, 2, 2), dtype=np.int64))
    _, cache = maxpool2x2_forward(np.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match=r"dout shape \(1, 2, 4, 4\) does not match the forward "
                                         r"output \(1, 2, 2, 2\)"):
        maxpool2x2_backward(np.zeros((1, 2, 4, 4)), cache)
