"""bce_with_logits: loops, the weight map, stability at |z| = 1e4, gradient check, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops.loss import bce_with_logits_backward, bce_with_logits_forward

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def bce_brute(z, y, w=None):
    """Loss and dlogits (dloss = 1), one entry at a time, from -[y log p + (1-y) log(1-p)]."""
    N, C, H, W = z.shape
    M = z.size
    total, d = 0.0, np.zeros(z.shape)
    for n, c, i, j in np.ndindex(N, C, H, W):
        zz, yy = float(z[n, c, i, j]), float(y[n, c, i, j])
        ww = 1.0 if w is None else float(w[n, i, j])
        p = 1 / (1 + math.exp(-zz))
        total += ww * -(yy * math.log(p) + (1 - yy) * math.log(1 - p))
        d[n, c, i, j] = ww * (p - yy) / M
    return total / M, d


def make(rng, shape, dtype=np.float64, soft=False):
    z = (2 * rng.standard_normal(shape)).astype(dtype)
    y = rng.random(shape) if soft else (rng.random(shape) < 0.4).astype(float)
    w = rng.uniform(0.5, 2.0, (shape[0], *shape[2:]))
    w[rng.random(w.shape) < 0.25] = 0.0  # ignored pixels
    return z, y.astype(dtype), w.astype(dtype)


def gradcheck_inputs(rng, shape, soft):
    """Logits and targets whose gradient entries are all far from 0 (as the ReLU check keeps
    away from its kink): an entry near 0 carries the loss's rounding (~1e-16 / 2h) relatively
    hugely. |z| in [0.2, 1.5] puts p in [0.18, 0.82]; soft targets in [0.05, 0.1] or
    [0.9, 0.95] stay 0.08 or more away from p (worst over 40 seeds: 5e-9)."""
    z = rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    label = rng.random(shape) < 0.4
    if not soft:
        return z, label.astype(float)
    return z, np.where(label, rng.uniform(0.9, 0.95, shape), rng.uniform(0.05, 0.1, shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_forward_backward_match_loops(xp, rng, dtype, weighted, soft):
    z, y, w = make(rng, (2, 3, 4, 5), dtype, soft)
    w = w if weighted else None
    loss, cache = bce_with_logits_forward(xp.asarray(z), xp.asarray(y),
                                          None if w is None else xp.asarray(w))
    d = bce_with_logits_backward(1.0, cache)
    want, want_d = bce_brute(z, y, w)
    assert loss.dtype == dtype and loss.shape == () and d.dtype == dtype
    np.testing.assert_allclose(float(loss), want, **TOL[dtype])
    np.testing.assert_allclose(backend.to_host(d), want_d, **TOL[dtype])


@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_check(xp, rng, weighted):
    z, y = gradcheck_inputs(rng, (2, 2, 5, 4), soft=True)
    w = rng.uniform(0.5, 2.0, (2, 5, 4))
    w[rng.random(w.shape) < 0.25] = 0.0
    inputs = {"logits": xp.asarray(z), "targets": xp.asarray(y),
              "weights": xp.asarray(w) if weighted else None}
    (r,) = gradcheck.check_spec("bce_with_logits", bce_with_logits_forward,
                                bce_with_logits_backward, inputs, rng)
    assert r.passed, r


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_logits_do_not_overflow(xp, dtype):
    # z = 1e4, y = 0: l = 1e4; z = -1e4, y = 0: l = e^-1e4 = 0; dl/dz = p - y = 1 and 0
    z = xp.asarray(np.array([1e4, -1e4], dtype=dtype).reshape(1, 1, 1, 2))
    loss, cache = bce_with_logits_forward(z, xp.zeros((1, 1, 1, 2), dtype=dtype))
    d = backend.to_host(bce_with_logits_backward(1.0, cache))
    np.testing.assert_allclose(float(loss), 1e4 / 2, rtol=1e-7)
    np.testing.assert_allclose(d.ravel(), [0.5, 0.0], atol=1e-7)


def test_zero_weight_ignores_a_pixel_of_every_channel(rng):
    z, y, w = make(rng, (1, 2, 3, 3))
    w[0, 1, 2] = 0.0
    loss, cache = bce_with_logits_forward(z, y, w)
    np.testing.assert_array_equal(bce_with_logits_backward(1.0, cache)[0, :, 1, 2], 0.0)
    z[0, :, 1, 2] = [50.0, -80.0]
    assert float(bce_with_logits_forward(z, y, w)[0]) == float(loss)


def test_bad_input(rng):
    z, y, w = make(rng, (1, 2, 3, 3))
    with pytest.raises(ValueError, match=r"bce_with_logits logits must be a 4-D"):
        bce_with_logits_forward(z[0], y[0])
    with pytest.raises(ValueError, match=r"targets must have the shape of the logits "
                                         r"\(1, 2, 3, 3\), got \(1, 1, 3, 3\)"):
        bce_with_logits_forward(z, y[:, :1])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\], found values 0..2"):
        bce_with_logits_forward(z, 2 * y)
    with pytest.raises(ValueError, match=r"weights \(the weight map\) must have shape "
                                         r"\(1, 3, 3\) for logits \(1, 2, 3, 3\), got \(1, 3, 2\)"):
        bce_with_logits_forward(z, y, w[:, :, :2])
    with pytest.raises(ValueError, match=r"must be float32 or float64, got int64"):
        bce_with_logits_forward(z.astype(np.int64), y)
