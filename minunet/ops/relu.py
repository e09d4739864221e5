"""ReLU, max(x, 0), and its backward. The gradient at exactly 0 is taken as 0."""

from __future__ import annotations

from typing import NamedTuple

from .. import backend


class ReluCache(NamedTuple):
    out: object  # (any shape) the forward output; > 0 exactly where the gradient passes


def relu_forward(x):
    """x: any shape. Returns out = max(x, 0) (same shape) and a ReluCache."""
    xp = backend.xp_of(x)
    out = xp.maximum(x, 0)
    return out, ReluCache(out)


def relu_backward(dout, cache):
    """dout: the output's shape. Returns dx = dout where out > 0, else 0."""
    if dout.shape != cache.out.shape:
        raise ValueError(f"relu_backward: dout shape {dout.shape} does not match the forward "
                         f"output {cache.out.shape}")
    xp = backend.xp_of(dout)
    return xp.where(cache.out > 0, dout, xp.zeros((), dtype=dout.dtype))
