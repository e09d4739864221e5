"""batchnorm2d (the plain op): forward and running statistics vs loops, the float64 gradient
check in training and eval mode (batch 1 included), PyTorch parity where torch is installed,
bad input."""

from __future__ import annotations

import numpy as np
import pytest

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops.norm import batchnorm2d_backward, batchnorm2d_forward

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def batchnorm_brute(x, gamma, beta, rmean, rvar, training, momentum=0.1, eps=1e-5):
    """The module docstring's formulas, one channel and one value at a time (float64).
    Returns out and the updated (running_mean, running_var)."""
    N, C, H, W = x.shape
    out = np.zeros(x.shape)
    rmean, rvar = rmean.astype(np.float64).copy(), rvar.astype(np.float64).copy()
    for c in range(C):
        values = [float(x[n, c, i, j]) for n in range(N) for i in range(H) for j in range(W)]
        M = len(values)
        if training:
            mu = sum(values) / M
            var = sum((v - mu) ** 2 for v in values) / M
            rmean[c] = (1 - momentum) * rmean[c] + momentum * mu
            rvar[c] = (1 - momentum) * rvar[c] + momentum * var * M / (M - 1)
        else:
            mu, var = float(rmean[c]), float(rvar[c])
        for n in range(N):
            for i in range(H):
                for j in range(W):
                    xhat = (float(x[n, c, i, j]) - mu) / (var + eps) ** 0.5
                    out[n, c, i, j] = float(gamma[c]) * xhat + float(beta[c])
    return out, rmean, rvar


def make(rng, shape, dtype=np.float64):
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    rmean = (rng.standard_normal(C) * 0.1).astype(dtype)
    rvar = rng.uniform(0.5, 2.0, C).astype(dtype)
    return x, gamma, beta, rmean, rvar


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 3, 3)])  # batch 1: over H x W
@pytest.mark.parametrize("training", [True, False])
def test_forward_and_running_statistics_match_loops(xp, rng, dtype, shape, training):
    x, gamma, beta, rmean, rvar = make(rng, shape, dtype)
    want, want_mean, want_var = batchnorm_brute(x, gamma, beta, rmean, rvar, training)
    rm, rv = xp.asarray(rmean), xp.asarray(rvar)
    count = xp.asarray(np.array([0 if training else 7], np.int64))
    out, _ = batchnorm2d_forward(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta), rm, rv,
                                 count, training=training)
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_allclose(backend.to_host(out), want, **TOL[dtype])
    np.testing.assert_allclose(backend.to_host(rm), want_mean, **TOL[dtype])
    np.testing.assert_allclose(backend.to_host(rv), want_var, **TOL[dtype])
    assert int(backend.to_host(count)[0]) == (1 if training else 7)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 3, 4)])
@pytest.mark.parametrize("training", [True, False])
def test_gradient_check_float64(xp, rng, shape, training):
    x, gamma, beta, rmean, rvar = make(rng, shape)
    count = np.array([3], np.int64)

    def forward(x, gamma, beta):
        return batchnorm2d_forward(x, gamma, beta, xp.asarray(rmean), xp.asarray(rvar),
                                   xp.asarray(count.copy()), training=training)

    results = gradcheck.check_spec(
        "batchnorm2d", forward, batchnorm2d_backward,
        {"x": xp.asarray(x), "gamma": xp.asarray(gamma), "beta": xp.asarray(beta)}, rng)
    for r in results:
        assert r.passed, r


def test_training_mode_gradient_has_the_paths_through_mean_and_variance(rng):
    """The compact backward is not gamma * dout / s: that is the eval-mode gradient, which a
    backward without the paths through mu and var would give in training mode too."""
    x, gamma, beta, rmean, rvar = make(rng, (2, 3, 4, 4))
    out, cache = batchnorm2d_forward(x, gamma, beta, rmean, rvar, np.zeros(1, np.int64),
                                     eps=1e-300)  # eps ~ 0: the identities below are exact
    dout = rng.standard_normal(out.shape)
    dx, _, _ = batchnorm2d_backward(dout, cache)
    naive = gamma[:, None, None] * dout * cache.inv_std[:, None, None]
    assert np.abs(dx - naive).max() > 0.1
    # out does not change when x moves along 1 or along xhat (a shift or a scale of a channel
    # is normalised away), so dx is orthogonal to both, channel by channel
    np.testing.assert_allclose(dx.sum(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose((dx * cache.xhat).sum(axis=(0, 2, 3)), 0, atol=1e-12)


def test_matches_pytorch_in_both_modes_over_several_steps(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    C = 3
    rmean, rvar = np.zeros(C), np.ones(C)
    count = np.zeros(1, np.int64)
    t_mean, t_var = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    gamma, beta = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
    for step in range(4):
        x = rng.standard_normal((2, C, 5, 4)) * (step + 1) + step
        dout = rng.standard_normal(x.shape)
        out, cache = batchnorm2d_forward(x, gamma, beta, rmean, rvar, count, training=True)
        dx, dgamma, dbeta = batchnorm2d_backward(dout, cache)
        tx = torch.tensor(x, requires_grad=True)
        tg = torch.tensor(gamma, requires_grad=True)
        tb = torch.tensor(beta, requires_grad=True)
        tout = F.batch_norm(tx, t_mean, t_var, tg, tb, training=True, momentum=0.1, eps=1e-5)
        tout.backward(torch.tensor(dout))
        np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12, atol=1e-12)
        for ours, theirs in ((dx, tx), (dgamma, tg), (dbeta, tb)):
            np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(rmean, t_mean.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rvar, t_var.numpy(), rtol=1e-12, atol=1e-14)
    x = rng.standard_normal((1, C, 3, 3))
    out, cache = batchnorm2d_forward(x, gamma, beta, rmean, rvar, count, training=False)
    tx = torch.tensor(x, requires_grad=True)
    tout = F.batch_norm(tx, t_mean, t_var, torch.tensor(gamma), torch.tensor(beta),
                        training=False, eps=1e-5)
    dout = rng.standard_normal(x.shape)
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(batchnorm2d_backward(dout, cache)[0], tx.grad.numpy(),
                               rtol=1e-12, atol=1e-12)


def test_bad_input_is_one_clear_error(rng):
    x, gamma, beta, rmean, rvar = make(rng, (2, 3, 4, 4))
    fresh = np.zeros(1, np.int64)
    with pytest.raises(ValueError, match="eval mode before any training batch"):
        batchnorm2d_forward(x, gamma, beta, rmean, rvar, fresh, training=False)
    with pytest.raises(ValueError, match="more than one value per channel"):
        batchnorm2d_forward(x[:1, :, :1, :1], gamma, beta, rmean, rvar, fresh)
    with pytest.raises(ValueError, match=r"gamma has shape \(2,\).*expected \(3,\)"):
        batchnorm2d_forward(x, gamma[:2], beta, rmean, rvar, fresh)
    with pytest.raises(ValueError, match="dtypes differ"):
        batchnorm2d_forward(x.astype(np.float32), gamma, beta, rmean, rvar, fresh)
    with pytest.raises(ValueError, match="momentum in"):
        batchnorm2d_forward(x, gamma, beta, rmean, rvar, fresh, momentum=1.5)
