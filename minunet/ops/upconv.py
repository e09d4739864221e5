"""2x2 transposed convolution with stride 2 ("up-convolution"), and its backward.

Ronneberger et al. 2015, Sec. 2: every step of the expansive path starts with
"a 2x2 convolution ("up-convolution") that halves the number of feature
channels". With kernel 2 and stride 2 the output windows do not overlap: input
pixel (y, xx) alone paints the 2x2 output block at (2y, 2xx):

    out[n, o, 2y+i, 2xx+j] = b[o] + sum_c x[n, c, y, xx] * w[c, o, i, j]

The weight layout is (Cin, Cout, 2, 2), as torch.nn.ConvTranspose2d. One matrix
product computes all four taps (i, j) of every pixel; a rearrangement then puts
tap (i, j) of pixel (y, xx) at (2y+i, 2xx+j):

    X    = x laid out (Cin, N*H*W)
    cols = w.reshape(Cin, Cout*4).T @ X                          (Cout*4, N*H*W)
    out  = cols (Cout, i, j, N, H, W) -> (N, Cout, H, i, W, j) = (N, Cout, 2H, 2W)

The backward undoes the rearrangement (D = dout as (Cout*4, N*H*W)) and takes
the two adjoint products; the bias gradient sums dout over all but channels:

    dX = w.reshape(Cin, Cout*4) @ D      dw = X @ D.T      db = sum over n, y, x of dout
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend.device import xp_of
from ._check import check_dout, check_upconv2x2


class Upconv2x2Cache(NamedTuple):
    x: object  # (N, Cin, H, W) input
    w: object  # (Cin, Cout, 2, 2) weight


def upconv2x2_forward(x, w, b):
    """Transposed convolution, kernel 2, stride 2, with bias.

    x: (N, Cin, H, W); w: (Cin, Cout, 2, 2); b: (Cout,)
    Returns out (N, Cout, 2H, 2W) and an Upconv2x2Cache.
    """
    check_upconv2x2(x, w, b)
    xp = xp_of(x, w, b)
    N, Cin, H, W = x.shape
    Cout = w.shape[1]
    # BEGIN SOLUTION upconv2x2.forward
    # canary: mu13-271b2d629176
    X = x.transpose(1, 0, 2, 3).reshape(Cin, N * H * W)  # (Cin, N*H*W)
    cols = w.reshape(Cin, Cout * 4).T @ X  # (Cout*4, N*H*W), row (o*2 + i)*2 + j
    out = cols.reshape(Cout, 2, 2, N, H, W).transpose(3, 0, 4, 1, 5, 2)  # (N, Cout, H, i, W, j)
    out = out.reshape(N, Cout, 2 * H, 2 * W) + b[None, :, None, None]  # (N, Cout, 2H, 2W)
    # END SOLUTION
    return xp.ascontiguousarray(out), Upconv2x2Cache(x, w)


def upconv2x2_backward(dout, cache):
    """Gradients of upconv2x2_forward.

    dout: (N, Cout, 2H, 2W). Returns (dx (N, Cin, H, W), dw (Cin, Cout, 2, 2), db (Cout,)).
    """
    x, w = cache
    xp = xp_of(dout, x)
    N, Cin, H, W = x.shape
    Cout = w.shape[1]
    check_dout("upconv2x2", dout, (N, Cout, 2 * H, 2 * W))
    # BEGIN SOLUTION upconv2x2.backward
    # canary: mu13-24deb9ca38e2
    D = dout.reshape(N, Cout, H, 2, W, 2).transpose(1, 3, 5, 0, 2, 4)  # (Cout, i, j, N, H, W)
    D = D.reshape(Cout * 4, N * H * W)  # (Cout*4, N*H*W)
    X = x.transpose(1, 0, 2, 3).reshape(Cin, N * H * W)  # (Cin, N*H*W)
    dX = w.reshape(Cin, Cout * 4) @ D  # (Cin, N*H*W)
    dx = xp.ascontiguousarray(dX.reshape(Cin, N, H, W).transpose(1, 0, 2, 3))  # (N, Cin, H, W)
    dw = (X @ D.T).reshape(w.shape)  # (Cin, Cout, 2, 2)
    db = dout.sum(axis=(0, 2, 3))  # (Cout,)
    # END SOLUTION
    return dx, dw, db
