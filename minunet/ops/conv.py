"""Valid 2-D convolution (stride 1, no padding) by im2col and one matrix product.

Ronneberger et al. 2015, Sec. 2: the U-Net's 3x3 convolutions are "unpadded",
so every 3x3 layer shrinks the map by 2 pixels; the last layer is a 1x1 conv.

    out[n, o, y, xx] = b[o] + sum_{c,i,j} w[o, c, i, j] * x[n, c, y+i, xx+j]

im2col copies every k x k input window into one column, so the sum over
(c, i, j) becomes a single matrix product. With Ho = H-k+1, Wo = W-k+1:

    cols[(c*k + i)*k + j, (n*Ho + y)*Wo + xx] = x[n, c, y+i, xx+j]   (Cin*k*k, N*Ho*Wo)
    out = W2 @ cols + b,   W2 = w.reshape(Cout, Cin*k*k)             (Cout, N*Ho*Wo)

The backward pass is three products with the same pieces (D = dL/dout laid
out like the product's result, (Cout, N*Ho*Wo)):

    dW2  = D @ cols.T                                  (Cout, Cin*k*k)
    db   = D summed over its columns                   (Cout,)
    dcol = W2.T @ D                                    (Cin*k*k, N*Ho*Wo)
    dx   = col2im(dcol): every input pixel gets the sum of the column entries
           that were copied from it (the adjoint of the copy: a +=)

With relu=True the layer returns max(out, 0) and its backward first lets the
gradient through only where out > 0 (the gradient at exactly 0 is taken as 0).

This is the lesson: whole arrays, no chunks. For the paper's second layer the
column matrix alone is 64*9 * 568*568 * 4 bytes = 743 MB; minunet/fast/conv.py
computes the same numbers in row chunks that fit in cache, on every core.
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend.device import xp_of
from ._check import check_conv2d, check_dout


class Conv2dCache(NamedTuple):
    x: object  # (N, Cin, H, W) input
    w: object  # (Cout, Cin, k, k) weight
    out: object  # (N, Cout, Ho, Wo) output when a ReLU was fused in (its mask), else None


def im2col(x, k):
    """The column matrix of a valid k x k convolution.

    x: (N, C, H, W). Returns cols (C*k*k, N*Ho*Wo), laid out as in the module
    docstring: one slice copy per kernel offset (i, j), none per pixel.
    """
    xp = xp_of(x)
    N, C, H, W = x.shape
    Ho, Wo = H - k + 1, W - k + 1
    # BEGIN SOLUTION conv2d.im2col
    # canary: mu13-3744feb7bea6
    cols = xp.empty((C, k, k, N, Ho, Wo), dtype=x.dtype)  # (C, k, k, N, Ho, Wo)
    for i in range(k):
        for j in range(k):  # the window offset (i, j): every output pixel at once
            cols[:, i, j] = x[:, :, i : i + Ho, j : j + Wo].transpose(1, 0, 2, 3)  # (C, N, Ho, Wo)
    return cols.reshape(C * k * k, N * Ho * Wo)  # (C*k*k, N*Ho*Wo)
    # END SOLUTION


def col2im(cols, x_shape, k):
    """The adjoint of im2col: sum the column entries back onto the pixels they came from.

    cols: (C*k*k, N*Ho*Wo); x_shape: (N, C, H, W). Returns dx (N, C, H, W).
    """
    xp = xp_of(cols)
    N, C, H, W = x_shape
    Ho, Wo = H - k + 1, W - k + 1
    # BEGIN SOLUTION conv2d.col2im
    # canary: mu13-1dde2ff976b5
    c6 = cols.reshape(C, k, k, N, Ho, Wo)  # (C, k, k, N, Ho, Wo)
    dx = xp.zeros((C, N, H, W), dtype=cols.dtype)  # (C, N, H, W)
    for i in range(k):
        for j in range(k):  # a pixel was copied once per window offset that covers it: +=
            dx[:, :, i : i + Ho, j : j + Wo] += c6[:, i, j]
    return xp.ascontiguousarray(dx.transpose(1, 0, 2, 3))  # (N, C, H, W)
    # END SOLUTION


def conv2d_forward(x, w, b, relu=False):
    """Valid 2-D convolution (cross-correlation), stride 1, with bias (and ReLU if relu).

    x: (N, Cin, H, W); w: (Cout, Cin, k, k); b: (Cout,)
    Returns out (N, Cout, H-k+1, W-k+1) and a Conv2dCache.
    """
    check_conv2d(x, w, b)
    xp = xp_of(x, w, b)
    N, Cin, H, W = x.shape
    Cout, _, k, _ = w.shape
    Ho, Wo = H - k + 1, W - k + 1
    # BEGIN SOLUTION conv2d.forward
    # canary: mu13-ac92c73efda1
    cols = im2col(x, k)  # (Cin*k*k, N*Ho*Wo)
    out = w.reshape(Cout, Cin * k * k) @ cols + b[:, None]  # (Cout, N*Ho*Wo)
    out = xp.ascontiguousarray(out.reshape(Cout, N, Ho, Wo).transpose(1, 0, 2, 3))  # (N,Cout,Ho,Wo)
    if relu:
        out = xp.maximum(out, 0)
    # END SOLUTION
    return out, Conv2dCache(x, w, out if relu else None)


def conv2d_backward(dout, cache, need_dx=True):
    """Gradients of conv2d_forward.

    dout: (N, Cout, Ho, Wo), the gradient of the output (after the ReLU, if fused).
    Returns (dx (N, Cin, H, W), dw (Cout, Cin, k, k), db (Cout,)); dx is None when
    need_dx is False (the network's first layer needs no input gradient).
    """
    x, w, out = cache
    xp = xp_of(dout, x)
    N, Cin, H, W = x.shape
    Cout, _, k, _ = w.shape
    Ho, Wo = H - k + 1, W - k + 1
    check_dout("conv2d", dout, (N, Cout, Ho, Wo))
    # BEGIN SOLUTION conv2d.backward
    # canary: mu13-e7cedba07646
    if out is not None:  # the ReLU: the gradient passes where the output is > 0
        dout = xp.where(out > 0, dout, xp.zeros((), dtype=dout.dtype))
    D = dout.transpose(1, 0, 2, 3).reshape(Cout, N * Ho * Wo)  # (Cout, N*Ho*Wo)
    cols = im2col(x, k)  # (Cin*k*k, N*Ho*Wo): recomputed, cheaper to keep x than 9x its size
    W2 = w.reshape(Cout, Cin * k * k)  # (Cout, Cin*k*k)
    dw = (D @ cols.T).reshape(w.shape)  # (Cout, Cin, k, k)
    db = D.sum(axis=1)  # (Cout,)
    dx = col2im(W2.T @ D, x.shape, k) if need_dx else None  # (N, Cin, H, W)
    # END SOLUTION
    return dx, dw, db
