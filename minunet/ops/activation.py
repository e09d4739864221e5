"""The family's activations: sigmoid, ReLU6 and SiLU (swish), each with its backward.

ReLU, the U-Net's, is ops/relu.py. Its successors add: the sigmoid (a one-class head's
probability, and the gate of squeeze-excitation), ReLU6 (MobileNetV2, Sandler et al. 2018:
min(max(x, 0), 6), robust in low precision) and SiLU (EfficientNet, Tan and Le 2019; swish,
Ramachandran et al. 2017: x * sigmoid(x)). Elementwise, so each backward is dout times the
derivative at x:

    sigmoid   s = 1 / (1 + exp(-x))        ds/dx = s (1 - s)
              (computed as exp(min(x, 0)) / (1 + exp(-|x|)): no exponential of a large positive
              number, so no overflow for x = -1000)
    relu6     min(max(x, 0), 6)            1 on 0 < x < 6, else 0 (at exactly 0 and 6: 0, as
                                           ReLU's kink at 0 in ops/relu.py)
    silu      x * s                        s + x s (1 - s) = s (1 + x (1 - s))
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend.device import xp_of
from ._check import check_dout, check_float


class ActivationCache(NamedTuple):
    x: object  # (any shape) the input
    s: object  # (x's shape) sigmoid(x) for sigmoid and silu; None for relu6


def sigmoid(x):
    """1 / (1 + exp(-x)) without overflow (module docstring). x: any shape, float."""
    xp = xp_of(x)
    e = xp.exp(-xp.abs(x))  # in (0, 1]
    return xp.where(x >= 0, 1.0, e) / (1.0 + e)


def sigmoid_forward(x):
    """x: any shape. Returns out = sigmoid(x) (same shape) and an ActivationCache."""
    check_float("sigmoid input x", x)
    s = sigmoid(x).astype(x.dtype, copy=False)
    return s, ActivationCache(None, s)


def sigmoid_backward(dout, cache):
    """dout: the output's shape. Returns dx = dout * s (1 - s)."""
    check_dout("sigmoid", dout, cache.s.shape)
    return dout * cache.s * (1 - cache.s)


def relu6_forward(x):
    """x: any shape. Returns out = min(max(x, 0), 6) (same shape) and an ActivationCache."""
    check_float("relu6 input x", x)
    xp = xp_of(x)
    return xp.clip(x, 0, 6), ActivationCache(x, None)


def relu6_backward(dout, cache):
    """dout: the output's shape. Returns dx = dout where 0 < x < 6, else 0."""
    check_dout("relu6", dout, cache.x.shape)
    xp = xp_of(dout)
    inside = (cache.x > 0) & (cache.x < 6)
    return xp.where(inside, dout, xp.zeros((), dtype=dout.dtype))


def silu_forward(x):
    """x: any shape. Returns out = x * sigmoid(x) (same shape) and an ActivationCache."""
    check_float("silu input x", x)
    s = sigmoid(x).astype(x.dtype, copy=False)
    return x * s, ActivationCache(x, s)


def silu_backward(dout, cache):
    """dout: the output's shape. Returns dx = dout * s (1 + x (1 - s))."""
    check_dout("silu", dout, cache.x.shape)
    s = cache.s
    return dout * s * (1 + cache.x * (1 - s))
