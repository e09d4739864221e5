"""Two ways of joining maps: the residual add and the channel-wise scale, with their backward.

Residual add (He et al. 2016; the Residual U-Net's units, MobileNetV2's inverted residuals):
out = a + b, so both inputs get the whole gradient: da = db = dout. Where a tensor feeds both
the add and another layer, its gradients from the two uses are summed (docs/DESIGN.md,
"Gradients accumulate").

Channel scale (squeeze-excitation, Hu et al. 2018, in EfficientNet's MBConv blocks): a gate
s (N, C), one number per image and channel, multiplies the whole channel (the gate may also come
as (N, C, 1, 1), the shape a global pool and 1x1 convolutions give it; ds then has that shape):

    out[n, c, y, x] = x[n, c, y, x] * s[n, c]
    dx = dout * s[n, c]        ds[n, c] = sum over (y, x) of dout * x
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ..backend.device import xp_of
from ._check import check_dout, check_float, check_ndim, check_same_dtype


class AddCache(NamedTuple):
    shape: tuple  # the shape of a, b and out


def add_forward(a, b):
    """a, b: the same shape. Returns out = a + b and an AddCache."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"add: the shapes differ ({a.shape} and {b.shape}); a residual add "
                         "needs maps of one shape (crop, pad or project one of them)")
    check_same_dtype(a=a, b=b)
    return a + b, AddCache(tuple(a.shape))


def add_backward(dout, cache):
    """dout: the output's shape. Returns (da, db) = (dout, dout)."""
    check_dout("add", dout, cache.shape)
    return dout, dout.copy()


class ChannelScaleCache(NamedTuple):
    x: object  # (N, C, H, W)
    s: object  # (N, C), or (N, C, 1, 1) as the gate came


def channel_scale_forward(x, s):
    """x: (N, C, H, W); s: (N, C) or (N, C, 1, 1). Returns out (N, C, H, W) = x * s per
    channel and a cache."""
    check_ndim("channel_scale input x", x, 4, "N, C, H, W")
    if getattr(s, "ndim", None) != 4:
        check_ndim("channel_scale gate s", s, 2, "N, C")
    check_float("channel_scale input x", x)
    check_same_dtype(x=x, s=s)
    if tuple(s.shape) not in (tuple(x.shape[:2]), (*x.shape[:2], 1, 1)):
        raise ValueError(f"channel_scale: gate s {s.shape} must be (N, C) = {x.shape[:2]} or "
                         f"(N, C, 1, 1) of x {x.shape}")
    return x * s.reshape(*s.shape[:2], 1, 1), ChannelScaleCache(x, s)  # gate (N, C, 1, 1)


def channel_scale_backward(dout, cache):
    """dout: (N, C, H, W). Returns (dx (N, C, H, W), ds of the gate's shape: (N, C) or
    (N, C, 1, 1))."""
    check_dout("channel_scale", dout, cache.x.shape)
    s = cache.s
    ds = (dout * cache.x).sum(axis=(2, 3))  # (N, C)
    return dout * s.reshape(*s.shape[:2], 1, 1), ds.reshape(s.shape)


class BinaryLogitsCache(NamedTuple):
    shape: tuple  # z's shape (N, 1, H, W)


def binary_logits_forward(z):
    """z: (N, 1, H, W), the logit of a sigmoid head. Returns ([0, z] (N, 2, H, W), a cache).

    A one-channel sigmoid output is a two-class softmax with the first logit held at 0:
    softmax([0, z]) = [1 - sigma(z), sigma(z)], so a network with a sigmoid head (UNet++,
    UNet 3+) serves every command that reads class probabilities, and the U-Net's weighted
    cross-entropy on [0, z] is the weighted binary cross-entropy on z. backward: dz = dout[:, 1]
    (the constant channel passes no gradient)."""
    check_ndim("binary_logits input z", z, 4, "N, 1, H, W")
    check_float("binary_logits input z", z)
    if z.shape[1] != 1:
        raise ValueError(f"binary_logits takes the one channel of a sigmoid head, got z of "
                         f"shape {z.shape}")
    xp = xp_of(z)
    return xp.concatenate([xp.zeros_like(z), z], axis=1), BinaryLogitsCache(tuple(z.shape))


def binary_logits_backward(dout, cache):
    """dout: (N, 2, H, W). Returns dz (N, 1, H, W) = dout[:, 1:]."""
    n, _, h, w = cache.shape
    check_dout("binary_logits", dout, (n, 2, h, w))
    return dout[:, 1:].copy()


class LogMeanSoftmaxCache(NamedTuple):
    logp: tuple  # each input's log-softmax over the classes, (N, K, H, W) each
    out: object  # the output (N, K, H, W)


def log_mean_softmax_forward(*logits):
    """logits: J >= 1 arrays (N, K, H, W), the class logits of J heads (UNet++'s deep
    supervision, averaged at inference). Returns (out (N, K, H, W), a cache) with

        out = log((1/J) sum_j softmax(a_j))       (softmax over the K classes)

    so that softmax(out) = exp(out) is the mean of the heads' class probabilities (the sum
    of exp(out) over K is already 1). Computed in log space, stably for any finite logits:
    log softmax(a_j) = a_j - logsumexp_K(a_j), then a log-sum-exp over the heads minus log J;
    no probability is formed, so heads that saturate (p = 1 in float32) stay finite.

    backward: with p_j = softmax(a_j) and w_j = p_j / (J * exp(out)) (the share of head j in
    the mean at each class, sum_j w_j = 1),
        da_j = dout * w_j - p_j * sum_K(dout * w_j)."""
    if not logits:
        raise ValueError("log_mean_softmax needs at least one array of logits")
    for a in logits:
        check_ndim("log_mean_softmax logits", a, 4, "N, K, H, W")
        check_float("log_mean_softmax logits", a)
        if tuple(a.shape) != tuple(logits[0].shape):
            raise ValueError(f"log_mean_softmax: the heads' shapes differ ({a.shape} and "
                             f"{logits[0].shape})")
    check_same_dtype(**{f"a{j}": a for j, a in enumerate(logits)})
    xp = xp_of(logits[0])
    logp = []
    for a in logits:
        m = a.max(axis=1, keepdims=True)  # (N, 1, H, W)
        logp.append(a - m - xp.log(xp.exp(a - m).sum(axis=1, keepdims=True)))
    stacked = xp.stack(logp)  # (J, N, K, H, W)
    m = stacked.max(axis=0)  # (N, K, H, W)
    out = m + xp.log(xp.exp(stacked - m).sum(axis=0)) - math.log(len(logits))
    return out.astype(logits[0].dtype, copy=False), LogMeanSoftmaxCache(tuple(logp), out)


def log_mean_softmax_backward(dout, cache):
    """dout: (N, K, H, W). Returns (da_1, ..., da_J), each (N, K, H, W) (a tuple, also for
    J = 1)."""
    check_dout("log_mean_softmax", dout, cache.out.shape)
    xp = xp_of(dout)
    log_j = math.log(len(cache.logp))
    grads = []
    for logp in cache.logp:
        dw = dout * xp.exp(logp - log_j - cache.out)  # dout * w_j
        grads.append(dw - xp.exp(logp) * dw.sum(axis=1, keepdims=True))
    return tuple(grads)
