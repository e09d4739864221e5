"""focal: loops, special cases (gamma = 0 is the BCE), saturation, gradient check, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops.loss import (
    bce_with_logits_forward,
    focal_backward,
    focal_forward,
)

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def focal_brute(z, y, alpha, gamma):
    """mean of alpha_t (1 - p_t)^gamma (-log p_t) for binary y, one entry at a time (Lin et al.
    2017, Eq. 5: p_t = p if y = 1 else 1 - p)."""
    total = 0.0
    for zz, yy in zip(z.ravel().tolist(), y.ravel().tolist(), strict=True):
        p = 1 / (1 + math.exp(-zz))
        p_t = p if yy == 1 else 1 - p
        a_t = 1.0 if alpha is None else (alpha if yy == 1 else 1 - alpha)
        total += a_t * (1 - p_t) ** gamma * -math.log(p_t)
    return total / z.size


def make(rng, shape, dtype=np.float64, soft=False):
    z = (2 * rng.standard_normal(shape)).astype(dtype)
    y = rng.random(shape) if soft else (rng.random(shape) < 0.4).astype(float)
    return z, y.astype(dtype)


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
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (None, 2.0), (0.6, 0.5), (0.25, 0.0)])
def test_forward_matches_loops(xp, rng, dtype, alpha, gamma):
    z, y = make(rng, (2, 3, 4, 5), dtype)
    loss, _ = focal_forward(xp.asarray(z), xp.asarray(y), alpha, gamma)
    assert loss.dtype == dtype and loss.shape == ()
    np.testing.assert_allclose(float(loss), focal_brute(z, y, alpha, gamma), **TOL[dtype])


def test_gamma_zero_without_alpha_is_the_bce(rng):
    z, y = make(rng, (2, 2, 3, 4), soft=True)
    np.testing.assert_allclose(float(focal_forward(z, y, None, 0.0)[0]),
                               float(bce_with_logits_forward(z, y)[0]), rtol=1e-14)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (None, 0.5), (0.7, 1.0), (0.25, 0.0)])
@pytest.mark.parametrize("soft", [False, True])
def test_gradient_check(xp, rng, alpha, gamma, soft):
    z, y = gradcheck_inputs(rng, (2, 2, 4, 3), soft)
    inputs = {"logits": xp.asarray(z), "targets": xp.asarray(y), "alpha": alpha, "gamma": gamma}
    (r,) = gradcheck.check_spec("focal", focal_forward, focal_backward, inputs, rng)
    assert r.passed, r


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_saturated_logits_are_finite(xp, gamma):
    # |z| = 1e4 at the label: m = 1 - p_t = 0 exactly; the loss and the gradient are 0 there
    z = xp.asarray(np.array([1e4, -1e4, 1e4]).reshape(1, 1, 1, 3))
    y = xp.asarray(np.array([1.0, 0.0, 0.0]).reshape(1, 1, 1, 3))
    loss, cache = focal_forward(z, y, 0.25, gamma)
    d = backend.to_host(focal_backward(1.0, cache)).ravel()
    np.testing.assert_allclose(float(loss), 0.75 * 1e4 / 3, rtol=1e-12)  # only the wrong one
    np.testing.assert_allclose(d, [0.0, 0.0, 0.75 / 3], atol=1e-12)


def test_bad_input(rng):
    z, y = make(rng, (1, 2, 3, 3))
    with pytest.raises(ValueError, match=r"focal: alpha must lie in \[0, 1\]"):
        focal_forward(z, y, alpha=1.5)
    with pytest.raises(ValueError, match=r"focal: gamma must be >= 0, got gamma=-1"):
        focal_forward(z, y, gamma=-1)
    with pytest.raises(ValueError, match=r"focal: targets must lie in \[0, 1\]"):
        focal_forward(z, y - 1)
