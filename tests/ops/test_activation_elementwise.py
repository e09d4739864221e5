"""sigmoid, relu6, silu, the residual add and the channel scale (plain ops): forward and
backward vs elementwise formulas, no overflow, float64 gradient checks away from kinks,
PyTorch parity where torch is installed, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops.activation import (
    relu6_backward,
    relu6_forward,
    sigmoid_backward,
    sigmoid_forward,
    silu_backward,
    silu_forward,
)
from minunet.ops.elementwise import (
    add_backward,
    add_forward,
    channel_scale_backward,
    channel_scale_forward,
)

ACTIVATIONS = {"sigmoid": (sigmoid_forward, sigmoid_backward),
               "relu6": (relu6_forward, relu6_backward),
               "silu": (silu_forward, silu_backward)}


def reference(name, x):
    """(out, d out / dx) by the textbook formulas, in float64 (x away from overflow)."""
    s = 1 / (1 + np.exp(-x))
    if name == "sigmoid":
        return s, s * (1 - s)
    if name == "relu6":
        return np.minimum(np.maximum(x, 0), 6), ((x > 0) & (x < 6)).astype(float)
    return x * s, s + x * s * (1 - s)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_match_their_formulas(xp, rng, name, dtype):
    x = (rng.standard_normal((2, 3, 4, 5)) * 5).astype(dtype)
    x.flat[:3] = [0.0, 6.0, -0.0]  # the kinks of relu6: gradient 0 there
    fwd, bwd = ACTIVATIONS[name]
    out, cache = fwd(xp.asarray(x))
    d = rng.standard_normal(x.shape).astype(dtype)
    dx = bwd(xp.asarray(d), cache)
    want_out, slope = reference(name, x.astype(np.float64))
    tol = 1e-14 if dtype == np.float64 else 1e-6
    assert out.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(backend.to_host(out), want_out, rtol=tol, atol=tol)
    np.testing.assert_allclose(backend.to_host(dx), d * slope, rtol=tol, atol=tol)


def test_sigmoid_and_silu_do_not_overflow(rng):
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        s, _ = sigmoid_forward(x)
        out, _ = silu_forward(x)
    np.testing.assert_allclose(s, [0, 1 / (1 + np.exp(50)), 0.5, 1 / (1 + np.exp(-50)), 1],
                               rtol=1e-15, atol=0)
    assert np.isfinite(out).all() and out[0] == 0 and out[-1] == 1000


def test_gradient_checks_float64(xp, rng):
    x = rng.standard_normal((2, 3, 4, 4)) * 4
    x[np.abs(x) < 0.1] = 0.5  # away from relu6's kinks at 0 and 6
    x[np.abs(x - 6) < 0.1] = 5.5
    results = []
    for name, (fwd, bwd) in ACTIVATIONS.items():
        results += gradcheck.check_spec(name, fwd, bwd, {"x": xp.asarray(x)}, rng)
    a, b = (xp.asarray(rng.standard_normal((2, 3, 4, 4))) for _ in range(2))
    results += gradcheck.check_spec("add", add_forward, add_backward, {"a": a, "b": b}, rng)
    s = xp.asarray(rng.standard_normal((2, 3)))
    results += gradcheck.check_spec("channel_scale", channel_scale_forward,
                                    channel_scale_backward, {"x": a, "s": s}, rng)
    for r in results:
        assert r.passed, r


def test_channel_scale_matches_loops(rng):
    x, s = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3))
    d = rng.standard_normal(x.shape)
    out, cache = channel_scale_forward(x, s)
    dx, ds = channel_scale_backward(d, cache)
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(out[n, c], x[n, c] * s[n, c], rtol=1e-15)
            np.testing.assert_allclose(dx[n, c], d[n, c] * s[n, c], rtol=1e-15)
            np.testing.assert_allclose(ds[n, c], (d[n, c] * x[n, c]).sum(), rtol=1e-13)


def test_activations_match_pytorch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal((2, 3, 4, 5)) * 5
    d = rng.standard_normal(x.shape)
    for name, fn in (("sigmoid", torch.sigmoid), ("relu6", F.relu6), ("silu", F.silu)):
        fwd, bwd = ACTIVATIONS[name]
        out, cache = fwd(x)
        tx = torch.tensor(x, requires_grad=True)
        tout = fn(tx)
        tout.backward(torch.tensor(d))
        np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(bwd(d, cache), tx.grad.numpy(), rtol=1e-13, atol=1e-15)


def test_bad_input_is_one_clear_error(rng):
    with pytest.raises(ValueError, match="shapes differ"):
        add_forward(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match=r"must be \(N, C\)"):
        channel_scale_forward(np.zeros((1, 2, 3, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="float32 or float64"):
        sigmoid_forward(np.zeros(3, np.int64))
