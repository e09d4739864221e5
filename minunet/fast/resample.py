"""The fast up-sampling: the plain ops of minunet/ops/resample.py without the dense matrices' work.

Same names, signatures, caches (ops.resample.BilinearCache, NearestCache) and numbers as the
plain ops (tests/fast/test_agree_family.py); read that file first for the math. The plain
bilinear multiplies by A_w (Wo, W) and A_h (Ho, H), two dense matrices with two non-zeros a
row: a factor-16 up-sampling of a 64 x 64 map spends 64 multiply-adds per output where 4 do.

- Direct gather, forward. Each output pixel computes its 4 taps and weights (as the plain
  matrix does, in float64) and reads its 4 inputs, in one pass: no intermediate (N, C, H, Wo)
  array and no zeros multiplied (backend.bilinear_forward; kernels/resample.cu on the GPU).
- Banded adjoint as a gather, backward. dx = A_h.T @ dout @ A_w, along W then along H; each
  input index sums only the band of outputs that can reach it, with the weights read from the
  cache's matrices (exactly the plain op's): deterministic, no atomics, ~2f terms an entry
  instead of f*S (backend.bilinear_adjoint).
- Planes on every core: the CPU twins run the planes on all workers.
- The matrices of the cache are made once per (size, factor, corner mode, dtype, device) and
  kept: on the GPU no host-to-device copy happens after the first call.

Nearest up-sampling by 2 is one broadcast copy forward and one reshaped sum backward: nothing
to speed up, so the plain pair serves both doors.
"""

from __future__ import annotations

from .. import backend
from ..ops._check import check_dout
from ..ops.resample import (
    BilinearCache,
    NearestCache,
    check_resample,
    interpolation_matrix,
    nearest_upsample2_backward,
    nearest_upsample2_forward,
)

__all__ = ["BilinearCache", "NearestCache", "bilinear_upsample_forward",
           "bilinear_upsample_backward", "nearest_upsample2_forward",
           "nearest_upsample2_backward"]

_matrices: dict = {}  # (size, factor, align_corners, dtype, device) -> (size*factor, size)


def _matrix(x, size: int, factor: int, align_corners: bool):
    """The plain op's interpolation matrix for x's dtype and device, made once and kept."""
    xp = backend.xp_of(x)
    device = x.device.id if backend.is_gpu_array(x) else -1
    key = (size, factor, bool(align_corners), x.dtype.str, device)
    a = _matrices.get(key)
    if a is None:
        if len(_matrices) >= 64:  # sizes come and go (tests, tiles of several sizes)
            _matrices.clear()
        a = _matrices[key] = interpolation_matrix(size, factor, align_corners, x.dtype, xp)
    return a


def bilinear_upsample_forward(x, factor: int, align_corners: bool = False):
    """x: (N, C, H, W); factor: 2, 4, 8 or 16 (any integer >= 1). Returns out
    (N, C, factor*H, factor*W) and a BilinearCache (the two interpolation matrices)."""
    check_resample("bilinear_upsample", x, factor)
    _, _, H, W = x.shape
    f = int(factor)
    out = backend.bilinear_forward(x, f, align_corners)  # (N, C, f*H, f*W)
    return out, BilinearCache(_matrix(x, H, f, align_corners), _matrix(x, W, f, align_corners))


def bilinear_upsample_backward(dout, cache):
    """dout: (N, C, Ho, Wo). Returns dx (N, C, H, W) = A_h.T @ dout @ A_w (the adjoint)."""
    (Ho, H), (Wo, W) = cache.a_h.shape, cache.a_w.shape
    check_dout("bilinear_upsample", dout, (*dout.shape[:2], Ho, Wo))
    N, C = dout.shape[:2]
    d3 = dout.reshape(N * C * Ho, Wo, 1)  # (rows, Wo, 1): the adjoint along W
    t = backend.bilinear_adjoint(d3, cache.a_w)  # (N*C*Ho, W, 1)
    dx = backend.bilinear_adjoint(t.reshape(N * C, Ho, W), cache.a_h)  # (N*C, H, W): along H
    return dx.reshape(N, C, H, W)
