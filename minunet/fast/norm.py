"""The fast batchnorm2d: the plain op of minunet/ops/norm.py in two passes over memory each way.

Same names, signatures, cache (ops.norm.BatchNorm2dCache) and numbers as the plain op
(tests/fast/test_agree_family.py); read that file first for the math and the derivation of
the compact backward. The plain forward reads x four times (mean, variance, xhat, out) and
its backward six (two sums, g, two means, dx); here each direction reads its inputs twice:

- One-pass statistics. `backend.bn_stats_partials` sums v = x - x[0, c, 0, 0] and v*v per
  channel in ONE pass (the shift by the channel's first value keeps the variance free of
  the cancellation of E[x^2] - E[x]^2), in float64 even for float32 x, in work items of
  2048 values summed in a fixed order: deterministic, and the Numba twin and the CUDA kernel
  (kernels/batchnorm.cu) agree bit for bit. The backward's two sums (dbeta = sum dout,
  dgamma = sum dout*xhat) come from one pass the same way (`bn_grad_partials`).
- Fused epilogues. xhat and out = gamma*xhat + beta in one pass (`bn_normalize`); the
  backward's dx = k*((dout - m1) - xhat*m2), with k = gamma/s, m1 = dbeta/M, m2 = dgamma/M
  per channel (the compact form: mean(g) = gamma*dbeta/M, mean(g*xhat) = gamma*dgamma/M), in
  one pass (`bn_backward_dx`).
- Planes on every core: the CPU twins run the N*C planes on all workers (backend/threads.py).
Only (C,)-sized arithmetic (the means, the running statistics) runs as array code.
"""

from __future__ import annotations

from .. import backend
from ..ops._check import check_dout
from ..ops.norm import BatchNorm2dCache, check_batchnorm2d

__all__ = ["BatchNorm2dCache", "batchnorm2d_forward", "batchnorm2d_backward"]


def batchnorm2d_forward(x, gamma, beta, running_mean, running_var, num_batches,
                        training: bool = True, momentum: float = 0.1, eps: float = 1e-5):
    """x: (N, C, H, W); gamma, beta: (C,) parameters; running_mean, running_var: (C,) buffers
    updated in place in training mode; num_batches: (1,) int64, incremented in training mode.
    Returns out (N, C, H, W) and a BatchNorm2dCache (see minunet/ops/norm.py)."""
    check_batchnorm2d(x, gamma, beta, running_mean, running_var, momentum, eps, num_batches,
                      training)
    xp = backend.xp_of(x)
    x = xp.ascontiguousarray(x)
    N, C, H, W = x.shape
    M = N * H * W
    if training:
        sums = backend.bn_stats_partials(x).sum(axis=(0, 2))  # (C, 2) float64
        d_mean = sums[:, 0] / M  # (C,) mean of x - shift
        mu = (x[0, :, 0, 0].astype(xp.float64) + d_mean).astype(x.dtype)  # (C,)
        var = xp.maximum(sums[:, 1] / M - d_mean * d_mean, 0.0).astype(x.dtype)  # biased
        running_mean *= 1 - momentum
        running_mean += momentum * mu
        running_var *= 1 - momentum
        running_var += momentum * var * (M / (M - 1))  # the unbiased variance
        num_batches += 1
    else:
        mu, var = running_mean, running_var
    inv_std = (1.0 / xp.sqrt(var + eps)).astype(x.dtype, copy=False)  # (C,)
    xhat, out = backend.bn_normalize(x, mu, inv_std, gamma, beta)  # (N, C, H, W) each
    return out, BatchNorm2dCache(xhat, gamma, inv_std, training)


def batchnorm2d_backward(dout, cache):
    """dout: (N, C, H, W). Returns (dx (N, C, H, W), dgamma (C,), dbeta (C,))."""
    check_dout("batchnorm2d", dout, cache.xhat.shape)
    xp = backend.xp_of(dout)
    N, C, H, W = dout.shape
    M = N * H * W
    sums = backend.bn_grad_partials(dout, cache.xhat).sum(axis=(0, 2))  # (C, 2) float64
    dbeta, dgamma = sums[:, 0], sums[:, 1]  # (C,) sum dout, sum dout*xhat
    k = cache.gamma.astype(xp.float64) * cache.inv_std  # (C,) gamma / s
    if cache.training:  # the paths through the mean and the variance
        m1, m2 = dbeta / M, dgamma / M
    else:  # the statistics are constants: dx = gamma * dout / s
        m1 = m2 = xp.zeros(C)
    dt = dout.dtype
    dx = backend.bn_backward_dx(dout, cache.xhat, k.astype(dt), m1.astype(dt), m2.astype(dt))
    return dx, dgamma.astype(dt), dbeta.astype(dt)
