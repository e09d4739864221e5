"""Inverted dropout with an explicit mask, and its backward.

Ronneberger et al. 2015, Sec. 3.1: "Drop-out layers at the end of the
contracting path perform further implicit data augmentation." Inverted dropout
scales the kept units by 1/(1-p) during training, so inference is the identity.
The mask is an argument, made by `dropout_mask` from an explicit random
generator, so that a gradient check (or a resumed run) can fix it.
"""

from __future__ import annotations

from typing import NamedTuple

from .. import backend


class DropoutCache(NamedTuple):
    scale_mask: object  # (same shape as x) 0 for a dropped unit, 1/(1-p) for a kept one


def dropout_mask(shape, p, rng, dtype, xp=None):
    """Keep-mask scaled for inverted dropout: 0 with probability p, else 1/(1-p).

    rng: a numpy.random.Generator (or cupy.random.Generator for device masks);
    xp: the array module of the result (default: numpy, or cupy for a cupy rng).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    keep = rng.random(shape) >= p  # (shape) bool
    if xp is not None and backend.xp_of(keep) is not xp:
        keep = backend.to_device(keep) if xp.__name__ == "cupy" else backend.to_host(keep)
    return (keep * (1.0 / (1.0 - p))).astype(dtype)  # (shape) of dtype


def dropout_forward(x, scale_mask):
    """x: any shape; scale_mask: same shape (from dropout_mask). Returns x * mask, cache."""
    if scale_mask.shape != x.shape:
        raise ValueError(f"dropout: mask shape {scale_mask.shape} does not match x {x.shape}")
    return x * scale_mask, DropoutCache(scale_mask)


def dropout_backward(dout, cache):
    """dout: the output's shape. Returns dx = dout * mask."""
    backend.xp_of(dout, cache.scale_mask)  # refuses a host/device mix with a clear error
    return dout * cache.scale_mask
