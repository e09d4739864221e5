"""2x2 max-pooling with stride 2, and its backward.

Ronneberger et al. 2015, Sec. 2: "a 2x2 max pooling operation with stride 2 for
downsampling". The paper applies it only to maps of even height and width (that
is what makes 572 a valid input size), so an odd size is refused.

The forward keeps, for each 2x2 window, which of its four pixels was the
maximum; the backward sends the window's whole gradient to that pixel and zero
to the other three (the max is locally the identity of the winner).

Tie rule (docs/DESIGN.md, "Max-pool ties"): each window is read in the order
(0,0), (0,1), (1,0), (1,1) and the FIRST maximum in that order wins. The
arg-max is stored as a uint8 a = 2*i + j, 0..3.
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend.device import xp_of
from ._check import check_dout, check_maxpool2x2


class MaxPool2x2Cache(NamedTuple):
    arg: object  # (N, C, H/2, W/2) uint8: position 2*i + j of each window's maximum


def maxpool2x2_forward(x):
    """2x2 max-pool, stride 2.

    x: (N, C, H, W) with H and W even. Returns out (N, C, H/2, W/2) and a MaxPool2x2Cache.
    """
    check_maxpool2x2(x)
    xp = xp_of(x)
    N, C, H, W = x.shape
    # BEGIN SOLUTION maxpool2x2.forward
    # canary: mu13-07a9f1237f6b
    win = x.reshape(N, C, H // 2, 2, W // 2, 2)  # (N, C, Ho, i, Wo, j)
    win = win.transpose(0, 1, 2, 4, 3, 5).reshape(N, C, H // 2, W // 2, 4)  # (..., 2i+j)
    arg = xp.argmax(win, axis=-1)  # (N, C, Ho, Wo); argmax returns the FIRST maximum
    out = xp.take_along_axis(win, arg[..., None], axis=-1)[..., 0]  # (N, C, Ho, Wo)
    # END SOLUTION
    return out, MaxPool2x2Cache(arg.astype(xp.uint8))


def maxpool2x2_backward(dout, cache):
    """dout: (N, C, H/2, W/2) -> dx (N, C, H, W): each window's gradient at its arg-max."""
    check_dout("maxpool2x2", dout, cache.arg.shape)
    xp = xp_of(dout)
    N, C, Ho, Wo = dout.shape
    # BEGIN SOLUTION maxpool2x2.backward
    # canary: mu13-31afa4c19101
    dwin = xp.zeros((N, C, Ho, Wo, 4), dtype=dout.dtype)  # (N, C, Ho, Wo, 2i+j)
    xp.put_along_axis(dwin, cache.arg[..., None].astype(xp.intp), dout[..., None], axis=-1)
    dx = dwin.reshape(N, C, Ho, Wo, 2, 2).transpose(0, 1, 2, 4, 3, 5)  # (N, C, Ho, i, Wo, j)
    return dx.reshape(N, C, 2 * Ho, 2 * Wo)
    # END SOLUTION
