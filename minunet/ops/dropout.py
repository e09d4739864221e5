"""Inverted dropout with an explicit mask, and its backward.

Ronneberger et al. 2015, Sec. 3.1: "Drop-out layers at the end of the
contracting path perform further implicit data augmentation." Inverted dropout
scales the kept units by 1/(1-p) during training, so inference is the identity.
The mask is an argument, made by `dropout_mask` from an explicit random
generator, so that a gradient check (or a resumed run) can fix it.
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend.device import to_device, to_host, xp_of


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
    if xp is not None and xp_of(keep) is not xp:
        keep = to_device(keep) if xp.__name__ == "cupy" else to_host(keep)
    return (keep * (1.0 / (1.0 - p))).astype(dtype)  # (shape) of dtype


def counter_uniform(shape, key, like):
    """Uniform [0, 1) numbers that depend only on (key, position): a counter-based RNG.

    Element i is splitmix64(key * golden + i) (Steele, Lea, Flood 2014) scaled to
    53 bits. NumPy and CuPy compute the same bits, so a dropout mask is identical
    on the CPU and the GPU, is made on the device without a host copy, and a
    resumed run redraws exactly the masks of the run it continues.
    shape: output shape; key: Python int; like: an array whose module (numpy or
    cupy) the result uses. Returns float64 of `shape`.
    """
    xp = xp_of(like)
    u64 = xp.uint64
    n = 1
    for s in shape:
        n *= s
    mix = (key * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = xp.arange(n, dtype=u64) + u64(mix)  # wraps modulo 2^64
    z = (z ^ (z >> u64(30))) * u64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> u64(27))) * u64(0x94D049BB133111EB)
    z = z ^ (z >> u64(31))
    return ((z >> u64(11)).astype(xp.float64) * (1.0 / 2**53)).reshape(shape)


def dropout_mask_hashed(shape, p, key, dtype, like):
    """Scaled keep-mask like `dropout_mask`, drawn with `counter_uniform(shape, key, like)`."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    keep = counter_uniform(shape, key, like) >= p  # (shape) bool
    return (keep * (1.0 / (1.0 - p))).astype(dtype)


def dropout_forward(x, scale_mask):
    """x: any shape; scale_mask: same shape (from dropout_mask). Returns x * mask, cache."""
    if scale_mask.shape != x.shape:
        raise ValueError(f"dropout: mask shape {scale_mask.shape} does not match x {x.shape}")
    # BEGIN SOLUTION dropout.forward
    # canary: mu13-62f802b85be6
    return x * scale_mask, DropoutCache(scale_mask)
    # END SOLUTION


def dropout_backward(dout, cache):
    """dout: the output's shape. Returns dx = dout * mask."""
    xp_of(dout, cache.scale_mask)  # refuses a host/device mix with a clear error
    # BEGIN SOLUTION dropout.backward
    # canary: mu13-008e08825cb9
    return dout * cache.scale_mask
    # END SOLUTION
