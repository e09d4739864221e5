"""Wider pooling: k x k max-pool with stride k (k = 2, 4, 8) and ceil_mode; global average and
global max pooling; and their backward.

UNet 3+ (Huang et al. 2020) brings every encoder level to every decoder level, pooling by 2, 4
and 8 with ceil_mode, so that odd sizes keep their last partial window; squeeze-excitation
(EfficientNet) squeezes each channel to one number with a global average. ops/pool.py (2x2, even
sizes, the paper's) is the lesson; this file is the same idea with k x k windows:

    out[n, c, y, x] = max over the window rows k*y .. k*y+k-1, columns k*x .. k*x+k-1

With ceil_mode the map is padded on the bottom and right with -inf up to a multiple of k, so a
partial window takes the maximum of the pixels it has (Ho = ceil(H / k)); without it the rows
and columns past the last whole window are dropped (Ho = H // k) and get gradient 0.

Tie rule (docs/DESIGN.md, "Max-pool ties", carried over): each window is read row by row,
(0,0), (0,1), ..., (k-1,k-1), and the FIRST maximum in that order gets the gradient. The
backward puts each window's gradient at its arg-max, zero elsewhere.

Global average: out[n, c, 0, 0] = mean over (H, W); dx = dout / (H*W) at every pixel.
Global max: out[n, c, 0, 0] = max over (H, W); dx = dout at the first maximum in row-major
order. Both keep the two spatial axes, (N, C, 1, 1) as PyTorch's AdaptiveAvgPool2d(1) and
ONNX's GlobalAveragePool do, so a 1x1 convolution can follow (squeeze-excitation).
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend.device import xp_of
from ._check import check_dout, check_float, check_ndim


class MaxPoolCache(NamedTuple):
    arg: object  # (N, C, Ho, Wo) int: position k*i + j of each window's maximum
    x_shape: tuple  # (N, C, H, W)
    k: int


def pool_output_size(size: int, k: int, ceil_mode: bool) -> int:
    """Windows of k with stride k along an axis of `size`: ceil or floor of size / k."""
    return -(-size // k) if ceil_mode else size // k


def maxpool_forward(x, k: int = 2, ceil_mode: bool = False):
    """x: (N, C, H, W). Returns out (N, C, Ho, Wo) (Ho = H // k, or ceil(H / k) with
    ceil_mode) and a MaxPoolCache."""
    check_pool("maxpool", x, k, ceil_mode)
    xp = xp_of(x)
    N, C, H, W = x.shape
    Ho, Wo = pool_output_size(H, k, ceil_mode), pool_output_size(W, k, ceil_mode)
    if ceil_mode:  # -inf never wins a window that holds a pixel
        x = xp.pad(x, ((0, 0), (0, 0), (0, Ho * k - H), (0, Wo * k - W)),
                   constant_values=-xp.inf)
    win = x[:, :, : Ho * k, : Wo * k].reshape(N, C, Ho, k, Wo, k)  # (N, C, Ho, i, Wo, j)
    win = win.transpose(0, 1, 2, 4, 3, 5).reshape(N, C, Ho, Wo, k * k)  # (..., k*i + j)
    arg = xp.argmax(win, axis=-1)  # (N, C, Ho, Wo): argmax returns the FIRST maximum
    out = xp.take_along_axis(win, arg[..., None], axis=-1)[..., 0]  # (N, C, Ho, Wo)
    return out, MaxPoolCache(arg, (N, C, H, W), k)


def maxpool_backward(dout, cache):
    """dout: (N, C, Ho, Wo). Returns dx (N, C, H, W): each window's gradient at its arg-max."""
    check_dout("maxpool", dout, cache.arg.shape)
    xp = xp_of(dout)
    N, C, H, W = cache.x_shape
    _, _, Ho, Wo = dout.shape
    k = cache.k
    dwin = xp.zeros((N, C, Ho, Wo, k * k), dtype=dout.dtype)  # (N, C, Ho, Wo, k*i + j)
    xp.put_along_axis(dwin, cache.arg[..., None], dout[..., None], axis=-1)
    dx = dwin.reshape(N, C, Ho, Wo, k, k).transpose(0, 1, 2, 4, 3, 5)  # (N, C, Ho, i, Wo, j)
    dx = dx.reshape(N, C, Ho * k, Wo * k)
    full = xp.zeros((N, C, max(H, Ho * k), max(W, Wo * k)), dtype=dout.dtype)
    full[:, :, : Ho * k, : Wo * k] = dx  # floor mode: the dropped rows keep 0
    return xp.ascontiguousarray(full[:, :, :H, :W])  # ceil mode: the padding is cut off


class GlobalPoolCache(NamedTuple):
    x_shape: tuple  # (N, C, H, W)
    arg: object  # (N, C) the flat index of the maximum (global max), or None (average)


def global_avgpool_forward(x):
    """x: (N, C, H, W). Returns out (N, C, 1, 1), the mean of each channel, and a
    GlobalPoolCache."""
    check_pool("global_avgpool", x)
    return x.mean(axis=(2, 3), keepdims=True), GlobalPoolCache(tuple(x.shape), None)


def global_avgpool_backward(dout, cache):
    """dout: (N, C, 1, 1). Returns dx (N, C, H, W) = dout / (H*W) at every pixel."""
    N, C, H, W = cache.x_shape
    check_dout("global_avgpool", dout, (N, C, 1, 1))
    xp = xp_of(dout)
    return xp.broadcast_to(dout / (H * W), (N, C, H, W)).copy()


def global_maxpool_forward(x):
    """x: (N, C, H, W). Returns out (N, C, 1, 1), the maximum of each channel, and a
    GlobalPoolCache (its first position in row-major order)."""
    check_pool("global_maxpool", x)
    xp = xp_of(x)
    N, C, H, W = x.shape
    flat = x.reshape(N, C, H * W)  # (N, C, H*W)
    arg = xp.argmax(flat, axis=-1)  # (N, C), the first maximum
    out = xp.take_along_axis(flat, arg[..., None], axis=-1)  # (N, C, 1)
    return out[..., None], GlobalPoolCache((N, C, H, W), arg)


def global_maxpool_backward(dout, cache):
    """dout: (N, C, 1, 1). Returns dx (N, C, H, W): dout at each channel's arg-max, 0
    elsewhere."""
    N, C, H, W = cache.x_shape
    check_dout("global_maxpool", dout, (N, C, 1, 1))
    xp = xp_of(dout)
    dx = xp.zeros((N, C, H * W), dtype=dout.dtype)  # (N, C, H*W)
    xp.put_along_axis(dx, cache.arg[..., None], dout.reshape(N, C, 1), axis=-1)
    return dx.reshape(N, C, H, W)


def check_pool(op: str, x, k: int = 1, ceil_mode: bool = True) -> None:
    """x (N, C, H, W) float; k an integer >= 1 that leaves at least one window."""
    check_ndim(f"{op} input x", x, 4, "N, C, H, W")
    check_float(f"{op} input x", x)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"{op} window k must be an integer >= 1, got {k!r}")
    H, W = x.shape[2:]
    if min(H, W) == 0 or (not ceil_mode and min(H, W) < k):
        raise ValueError(f"{op} {k}x{k} on a {H}x{W} map leaves no whole window; use "
                         "ceil_mode=True or a larger map")
