"""Up-sampling without weights: bilinear by an integer factor, nearest by 2, and their backward.

The U-Net learns its up-sampling (ops/upconv.py); several successors interpolate instead: the
bilinear option of the milesial U-Net, UNet 3+'s full-scale skips (bilinear by 2, 4, 8 and 16),
the decoders of the encoder U-Nets. Bilinear interpolation is linear in x and separable, so it
is two small matrices, one per axis:

    out[n, c] = A_h @ x[n, c] @ A_w.T        A_h (Ho, H), A_w (Wo, W)

Row o of A (one axis, input size S, output size So = f * S) holds the two weights of the input
pixels around the source coordinate t of output pixel o:

    align_corners False (PyTorch's default): t = (o + 0.5) / f - 0.5, clamped below at 0
                        (pixel centres line up; the border pixels are repeated)
    align_corners True: t = o * (S - 1) / (So - 1) (the corner pixels line up exactly)
    i0 = floor(t), i1 = min(i0 + 1, S - 1), l = t - i0:  A[o, i0] += 1 - l, A[o, i1] += l

The backward is the adjoint of that linear map: dx[n, c] = A_h.T @ dout[n, c] @ A_w (a
dot-product test shows <A x, d> = <x, A.T d>). Nearest by 2 copies each pixel into a 2x2
block; its adjoint sums each 2x2 block of the gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend.device import xp_of
from ._check import check_dout, check_float, check_ndim


class BilinearCache(NamedTuple):
    a_h: object  # (Ho, H) the interpolation matrix of the rows
    a_w: object  # (Wo, W) the interpolation matrix of the columns


def interpolation_matrix(size: int, factor: int, align_corners: bool, dtype, xp=np):
    """A (size*factor, size) of bilinear interpolation along one axis (module docstring)."""
    n_out = size * factor
    o = np.arange(n_out, dtype=np.float64)
    if align_corners:
        t = o * ((size - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        t = np.maximum((o + 0.5) / factor - 0.5, 0.0)
    i0 = np.minimum(np.floor(t).astype(np.int64), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    lam = t - i0
    a = np.zeros((n_out, size))
    np.add.at(a, (np.arange(n_out), i0), 1.0 - lam)  # i0 == i1 at the border: both add up
    np.add.at(a, (np.arange(n_out), i1), lam)
    return xp.asarray(a.astype(dtype))


def bilinear_upsample_forward(x, factor: int, align_corners: bool = False):
    """x: (N, C, H, W); factor: 2, 4, 8 or 16 (any integer >= 1). Returns out
    (N, C, factor*H, factor*W) and a BilinearCache."""
    check_resample("bilinear_upsample", x, factor)
    xp = xp_of(x)
    _, _, H, W = x.shape
    a_h = interpolation_matrix(H, factor, align_corners, x.dtype, xp)  # (Ho, H)
    a_w = interpolation_matrix(W, factor, align_corners, x.dtype, xp)  # (Wo, W)
    out = a_h @ (x @ a_w.T)  # (N, C, H, Wo) then (N, C, Ho, Wo)
    return out, BilinearCache(a_h, a_w)


def bilinear_upsample_backward(dout, cache):
    """dout: (N, C, Ho, Wo). Returns dx (N, C, H, W) = A_h.T @ dout @ A_w (the adjoint)."""
    check_dout("bilinear_upsample", dout, (*dout.shape[:2], cache.a_h.shape[0],
                                           cache.a_w.shape[0]))
    return cache.a_h.T @ (dout @ cache.a_w)  # (N, C, Ho, W) then (N, C, H, W)


class NearestCache(NamedTuple):
    x_shape: tuple  # (N, C, H, W)


def nearest_upsample2_forward(x):
    """x: (N, C, H, W). Returns out (N, C, 2H, 2W), each pixel copied into a 2x2 block."""
    check_resample("nearest_upsample2", x, 2)
    xp = xp_of(x)
    N, C, H, W = x.shape
    out = xp.broadcast_to(x[:, :, :, None, :, None], (N, C, H, 2, W, 2))  # (N, C, H, 2, W, 2)
    return xp.ascontiguousarray(out).reshape(N, C, 2 * H, 2 * W), NearestCache(tuple(x.shape))


def nearest_upsample2_backward(dout, cache):
    """dout: (N, C, 2H, 2W). Returns dx (N, C, H, W): the sum of each 2x2 block."""
    N, C, H, W = cache.x_shape
    check_dout("nearest_upsample2", dout, (N, C, 2 * H, 2 * W))
    return dout.reshape(N, C, H, 2, W, 2).sum(axis=(3, 5))  # (N, C, H, W)


def check_resample(op: str, x, factor) -> None:
    """x (N, C, H, W) float; factor an integer >= 1."""
    check_ndim(f"{op} input x", x, 4, "N, C, H, W")
    check_float(f"{op} input x", x)
    if not isinstance(factor, int | np.integer) or factor < 1:
        raise ValueError(f"{op} factor must be an integer >= 1 (2, 4, 8, 16), got {factor!r}")
