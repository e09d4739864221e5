"""dropout: the mask, forward/backward vs loops, gradient check with a fixed mask, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops import dropout_backward, dropout_forward, dropout_mask

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.5, 0.2])
def test_mask_values_and_rate(dtype, p):
    mask = dropout_mask((2, 8, 32, 32), p, np.random.default_rng(0), dtype)
    assert mask.dtype == dtype and mask.shape == (2, 8, 32, 32)
    assert set(np.unique(mask)) <= {0.0, dtype(1.0 / (1.0 - p))}
    kept = np.mean(mask != 0)  # 16384 draws: standard deviation <= 0.004
    assert abs(kept - (1 - p)) < 0.02
    # inverted dropout keeps the mean: E[mask] = 1
    assert abs(mask.mean() - 1.0) < 0.05


def test_mask_is_reproducible():
    a = dropout_mask((3, 4, 5), 0.5, np.random.default_rng(7), np.float64)
    b = dropout_mask((3, 4, 5), 0.5, np.random.default_rng(7), np.float64)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_forward_backward_match_brute_force(xp, rng, dtype, layout):
    x = xp.asarray(rng.standard_normal((2, 3, 5, 4)).astype(dtype))
    if layout == "transposed":
        x = x.transpose(0, 1, 3, 2)
    mask = dropout_mask(x.shape, 0.5, rng, dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    out, cache = dropout_forward(x, xp.asarray(mask))
    dx = dropout_backward(xp.asarray(dout), cache)
    xh = backend.to_host(x)
    want_out, want_dx = np.zeros_like(xh), np.zeros_like(xh)
    for i in np.ndindex(*xh.shape):
        want_out[i] = xh[i] * mask[i]
        want_dx[i] = dout[i] * mask[i]
    assert out.dtype == dtype and dx.dtype == dtype
    np.testing.assert_array_equal(backend.to_host(out), want_out)
    np.testing.assert_array_equal(backend.to_host(dx), want_dx)


def test_backward_gradcheck(xp, rng):
    shape = (2, 3, 4, 5)
    inputs = {"x": xp.asarray(rng.standard_normal(shape)),
              "scale_mask": xp.asarray(dropout_mask(shape, 0.5, rng, np.float64))}
    results = gradcheck.check_spec("dropout", dropout_forward, dropout_backward, inputs, rng)
    assert results[0].passed, results[0]


def test_bad_input():
    with pytest.raises(ValueError, match=r"mask shape \(2, 3\) does not match x \(3, 2\)"):
        dropout_forward(np.zeros((3, 2)), np.ones((2, 3)))
    for p in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\)"):
            dropout_mask((2, 2), p, np.random.default_rng(0), np.float64)
