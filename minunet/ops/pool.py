"""2x2 max-pooling with stride 2, and its backward.

Ronneberger et al. 2015, Sec. 2: "a 2x2 max pooling operation with stride 2 for
downsampling". The paper applies it only to maps of even height and width (that
is what makes 572 a valid input size), so an odd size is refused.

Tie rule: each 2x2 window is read in the order (0,0), (0,1), (1,0), (1,1), and
the FIRST maximum in that order wins; the whole gradient goes to that one pixel.
The arg-max is stored as a uint8 0..3 in that order (a = 2*i + j).
"""

from __future__ import annotations

from typing import NamedTuple

from .. import backend
from ._check import check_float, check_ndim


class MaxPool2x2Cache(NamedTuple):
    arg: object  # (N, C, H/2, W/2) uint8: position 2*i + j of each window's maximum


def maxpool2x2_reference(x):
    """Plain array code: (N, C, H, W) -> out (N, C, H/2, W/2), arg uint8 (same shape)."""
    xp = backend.xp_of(x)
    N, C, H, W = x.shape
    win = x.reshape(N, C, H // 2, 2, W // 2, 2)  # (N, C, Ho, i, Wo, j)
    win = win.transpose(0, 1, 2, 4, 3, 5).reshape(N, C, H // 2, W // 2, 4)  # (..., 2i+j)
    arg = xp.argmax(win, axis=-1)  # argmax returns the first maximum: the tie rule
    out = xp.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    return out, arg.astype(xp.uint8)


def maxpool2x2_backward_reference(dout, arg):
    """Plain array code: route dout (N, C, Ho, Wo) to the arg-max pixels of (N, C, 2Ho, 2Wo)."""
    xp = backend.xp_of(dout)
    N, C, Ho, Wo = dout.shape
    dwin = xp.zeros((N, C, Ho, Wo, 4), dtype=dout.dtype)  # (N, C, Ho, Wo, 2i+j)
    xp.put_along_axis(dwin, arg[..., None].astype(xp.intp), dout[..., None], axis=-1)
    dx = dwin.reshape(N, C, Ho, Wo, 2, 2).transpose(0, 1, 2, 4, 3, 5)  # (N, C, Ho, i, Wo, j)
    return dx.reshape(N, C, 2 * Ho, 2 * Wo)


def maxpool2x2_forward(x):
    """2x2 max-pool, stride 2.

    x: (N, C, H, W) with H and W even. Returns out (N, C, H/2, W/2) and a MaxPool2x2Cache.
    """
    check_ndim("maxpool2x2 input x", x, 4, "N, C, H, W")
    check_float("maxpool2x2 input x", x)
    H, W = x.shape[2:]
    if H % 2 or W % 2:
        raise ValueError(
            f"maxpool2x2 needs an even height and width, got x shape {x.shape}; the U-Net "
            f"only pools even sizes, so choose a valid tile size (minunet.model.valid_sizes)"
        )
    out, arg = backend.maxpool2x2_forward(x)
    return out, MaxPool2x2Cache(arg)


def maxpool2x2_backward(dout, cache):
    """dout: (N, C, H/2, W/2) -> dx (N, C, H, W); zero except at each window's arg-max."""
    if dout.shape != cache.arg.shape:
        raise ValueError(f"maxpool2x2_backward: dout shape {dout.shape} does not match the "
                         f"forward output {cache.arg.shape}")
    return backend.maxpool2x2_backward(dout, cache.arg)
