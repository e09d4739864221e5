"""Batch normalisation over (N, H, W) per channel (Ioffe and Szegedy 2015), and its backward.

The U-Net of 2015 has none; its successors (the U-Net of milesial/Pytorch-UNet, the Residual
U-Net, UNet++, UNet 3+, the MobileNetV2 and EfficientNet encoders) put one after almost every
convolution. For each channel c, over the M = N*H*W values x_i of that channel:

    mu = (1/M) sum_i x_i                     var = (1/M) sum_i (x_i - mu)^2   (biased)
    xhat_i = (x_i - mu) / s,  s = sqrt(var + eps)
    out_i = gamma * xhat_i + beta

Training mode normalises with the batch's own mu and var (the biased variance, as the paper
and PyTorch do) and updates the running statistics, PyTorch's convention (torch.nn.BatchNorm2d,
momentum 0.1, eps 1e-5):

    running_mean <- (1 - momentum) * running_mean + momentum * mu
    running_var  <- (1 - momentum) * running_var  + momentum * var * M / (M - 1)   (unbiased)

Eval mode normalises with the running statistics instead: a fixed affine map of x.

The backward of training mode, step by step. Every xhat_i depends on every x_j of its channel
through mu and var, so dL/dx_j has three paths. With g_i = dL/dxhat_i = gamma * dout_i:

    dL/dvar = sum_i g_i * (x_i - mu) * (-1/2) s^-3 = -(1 / (2 s^2)) sum_i g_i xhat_i
    dL/dmu  = sum_i g_i * (-1/s) + dL/dvar * (-2/M) sum_i (x_i - mu) = -(1/s) sum_i g_i
              (the second term vanishes: the deviations sum to zero)
    dL/dx_j = g_j / s + dL/dvar * 2 (x_j - mu) / M + dL/dmu / M

Putting s xhat_j = x_j - mu into the middle term and collecting 1/s gives the compact form

    dx_j = (1/s) * (g_j - mean_i(g_i) - xhat_j * mean_i(g_i xhat_i))

that is: the upstream gradient, minus its mean (the path through mu), minus its projection
on xhat (the path through var), scaled by 1/s. The parameters: dgamma = sum_i dout_i xhat_i,
dbeta = sum_i dout_i. In eval mode mu and s are constants: dx = gamma * dout / s.

Batch 1 works: the statistics run over H x W. A channel with M = 1 value cannot be normalised
in training (its variance is 0 and its unbiased variance undefined): an error, as in PyTorch.
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend.device import xp_of
from ._check import check_dout, check_float, check_ndim, check_same_dtype


class BatchNorm2dCache(NamedTuple):
    xhat: object  # (N, C, H, W) the normalised input
    gamma: object  # (C,) the scale
    inv_std: object  # (C,) 1 / sqrt(var + eps): the batch's (training) or the running (eval)
    training: bool  # True: the statistics came from the batch (the three-path backward)


def batchnorm2d_forward(x, gamma, beta, running_mean, running_var, num_batches,
                        training: bool = True, momentum: float = 0.1, eps: float = 1e-5):
    """x: (N, C, H, W); gamma, beta: (C,) parameters; running_mean, running_var: (C,) buffers
    of x's dtype, updated in place in training mode; num_batches: (1,) int64 buffer, the
    batches seen in training (PyTorch's num_batches_tracked), incremented in training mode.
    Returns out (N, C, H, W) and a BatchNorm2dCache.

    Eval mode (training=False) uses the running statistics and refuses to run before any
    training batch (they would still be their initial 0 and 1).
    """
    check_batchnorm2d(x, gamma, beta, running_mean, running_var, momentum, eps, num_batches,
                      training)
    # BEGIN SOLUTION batchnorm2d.forward
    # canary: mu13-c988d20e3a6e
    xp = xp_of(x)
    N, C, H, W = x.shape
    M = N * H * W
    axes = (0, 2, 3)  # the statistics of a channel run over the batch and the image
    if training:
        mu = x.mean(axis=axes)  # (C,)
        var = x.var(axis=axes)  # (C,) biased: (1/M) sum (x - mu)^2
        running_mean *= 1 - momentum
        running_mean += momentum * mu
        running_var *= 1 - momentum
        running_var += momentum * var * (M / (M - 1))  # the unbiased variance
        num_batches += 1
    else:
        mu, var = running_mean, running_var
    inv_std = 1.0 / xp.sqrt(var + eps)  # (C,)
    xhat = (x - mu[:, None, None]) * inv_std[:, None, None]  # (N, C, H, W)
    out = gamma[:, None, None] * xhat + beta[:, None, None]  # (N, C, H, W)
    return out, BatchNorm2dCache(xhat, gamma, inv_std.astype(x.dtype, copy=False), training)
    # END SOLUTION


def batchnorm2d_backward(dout, cache):
    """dout: (N, C, H, W). Returns (dx (N, C, H, W), dgamma (C,), dbeta (C,)): the compact
    form of the module docstring in training mode, gamma * dout / s in eval mode."""
    check_dout("batchnorm2d", dout, cache.xhat.shape)
    # BEGIN SOLUTION batchnorm2d.backward
    # canary: mu13-7ececd102da4
    axes = (0, 2, 3)
    xhat, inv_std = cache.xhat, cache.inv_std[:, None, None]  # (N, C, H, W), (C, 1, 1)
    dgamma = (dout * xhat).sum(axis=axes)  # (C,)
    dbeta = dout.sum(axis=axes)  # (C,)
    g = cache.gamma[:, None, None] * dout  # (N, C, H, W) dL/dxhat
    if not cache.training:
        return g * inv_std, dgamma, dbeta
    g_mean = g.mean(axis=axes, keepdims=True)  # (1, C, 1, 1) the path through mu
    proj = (g * xhat).mean(axis=axes, keepdims=True)  # (1, C, 1, 1) the path through var
    dx = inv_std * (g - g_mean - xhat * proj)  # (N, C, H, W)
    return dx, dgamma, dbeta
    # END SOLUTION


def check_batchnorm2d(x, gamma, beta, running_mean, running_var, momentum, eps,
                      num_batches=None, training: bool = True) -> None:
    """x (N, C, H, W) float; gamma, beta, running_mean, running_var (C,) of x's dtype;
    momentum in [0, 1]; eps > 0; in training more than one value per channel; in eval mode
    at least one training batch seen (num_batches, when given)."""
    check_ndim("batchnorm2d input x", x, 4, "N, C, H, W")
    check_float("batchnorm2d input x", x)
    C = x.shape[1]
    for name, a in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                    ("running_var", running_var)):
        check_ndim(f"batchnorm2d {name}", a, 1, "C")
        if a.shape != (C,):
            raise ValueError(f"batchnorm2d {name} has shape {a.shape}, but x {x.shape} has "
                             f"{C} channels: expected ({C},)")
    check_same_dtype(x=x, gamma=gamma, beta=beta, running_mean=running_mean,
                     running_var=running_var)
    if not 0.0 <= momentum <= 1.0 or not eps > 0:
        raise ValueError(f"batchnorm2d needs momentum in [0, 1] and eps > 0, got momentum "
                         f"{momentum}, eps {eps}")
    N, _, H, W = x.shape
    if training and N * H * W < 2:
        raise ValueError(f"batchnorm2d in training mode needs more than one value per "
                         f"channel, got x of shape {x.shape}; use a larger tile or batch")
    if not training and num_batches is not None and int(num_batches[0]) == 0:
        raise ValueError("batchnorm2d in eval mode before any training batch: its running "
                         "statistics are still the initial mean 0, variance 1; train first "
                         "or load trained buffers")
