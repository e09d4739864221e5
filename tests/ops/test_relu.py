"""relu: forward and backward vs loops, gradient check away from 0, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops import relu_backward, relu_forward

DTYPES = [np.float32, np.float64]


def relu_brute(x, dout):
    out = np.zeros_like(x)
    dx = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        if x[i] > 0:
            out[i] = x[i]
            dx[i] = dout[i]
    return out, dx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
def test_forward_backward_match_brute_force(xp, rng, dtype, layout):
    base = rng.standard_normal((2, 3, 6, 5)).astype(dtype)
    base[0, 0, 0, :3] = [0.0, -0.0, 1e-30]  # exact zeros get gradient 0 (ops/relu.py)
    x = xp.asarray(base)
    if layout == "transposed":
        x = x.transpose(0, 1, 3, 2)
    elif layout == "sliced":
        x = x[:, :, ::2]
    dout = rng.standard_normal(x.shape).astype(dtype)
    out, cache = relu_forward(x)
    dx = relu_backward(xp.asarray(dout), cache)
    want_out, want_dx = relu_brute(backend.to_host(x), dout)
    assert out.dtype == dtype and dx.dtype == dtype
    np.testing.assert_array_equal(backend.to_host(out), want_out)
    np.testing.assert_array_equal(backend.to_host(dx), want_dx)


def test_backward_gradcheck(xp, rng):
    shape = (2, 3, 5, 4)
    x = rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)  # |x| >= 0.1: no kink
    results = gradcheck.check_spec("relu", relu_forward, relu_backward, {"x": xp.asarray(x)},
                                   rng)
    assert results[0].passed, results[0]


def test_bad_input():
    _, cache = relu_forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"dout shape \(3, 2\) does not match the forward "
                                         r"output \(2, 3\)"):
        relu_backward(np.ones((3, 2)), cache)
