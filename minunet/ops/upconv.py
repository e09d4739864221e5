"""2x2 transposed convolution with stride 2 ("up-convolution"), and its backward.

Ronneberger et al. 2015, Sec. 2: every step of the expansive path starts with
"a 2x2 convolution ("up-convolution") that halves the number of feature
channels". With kernel 2 and stride 2 the output windows do not overlap: input
pixel (y, xx) alone paints the 2x2 output block at (2y, 2xx), so

    out[n, o, 2y+i, 2xx+j] = b[o] + sum_c x[n, c, y, xx] * w[c, o, i, j]

The weight layout is (Cin, Cout, 2, 2), as torch.nn.ConvTranspose2d. One GEMM
does all four kernel taps at once:

    cols = w.reshape(Cin, Cout*4).T @ x[n].reshape(Cin, H*W)   (Cout*4, H*W)
    out[n] = cols rearranged (Cout, 2, 2, H, W) -> (Cout, H, 2, W, 2) -> (Cout, 2H, 2W)

and the backward reverses the rearrangement and takes the two adjoint products.
The products are split into row blocks (of w's Cout*4 columns forward, of its
Cin rows backward) that `backend.parallel_for` runs on every CPU core; each
block writes its own rows of the result.
"""

from __future__ import annotations

from typing import NamedTuple

from .. import backend
from ._check import check_float, check_ndim, check_same_dtype


class Upconv2x2Cache(NamedTuple):
    x: object  # (N, Cin, H, W) input, contiguous
    w: object  # (Cin, Cout, 2, 2) weight


def _check(x, w, b):
    check_ndim("upconv2x2 input x", x, 4, "N, Cin, H, W")
    check_ndim("upconv2x2 weight w", w, 4, "Cin, Cout, 2, 2")
    check_ndim("upconv2x2 bias b", b, 1, "Cout")
    check_float("upconv2x2 input x", x)
    check_same_dtype(x=x, w=w, b=b)
    if w.shape[2:] != (2, 2):
        raise ValueError(f"upconv2x2 weight must be (Cin, Cout, 2, 2), got {w.shape}")
    if w.shape[0] != x.shape[1]:
        raise ValueError(
            f"upconv2x2 channel mismatch: input x {x.shape} has {x.shape[1]} channels but "
            f"weight {w.shape} expects {w.shape[0]} (layout Cin, Cout, 2, 2 as ConvTranspose2d)"
        )
    if b.shape != (w.shape[1],):
        raise ValueError(f"upconv2x2 bias shape {b.shape} does not match weight {w.shape}: "
                         f"expected ({w.shape[1]},)")


def upconv2x2_forward(x, w, b):
    """Transposed convolution, kernel 2, stride 2, with bias.

    x: (N, Cin, H, W); w: (Cin, Cout, 2, 2); b: (Cout,)
    Returns out (N, Cout, 2H, 2W) and an Upconv2x2Cache.
    """
    _check(x, w, b)
    xp = backend.xp_of(x, w, b)
    x = xp.ascontiguousarray(x)
    N, Cin, H, W = x.shape
    Cout = w.shape[1]
    wt = xp.ascontiguousarray(w).reshape(Cin, Cout * 4).T  # (Cout*4, Cin)
    x3 = x.reshape(N, Cin, H * W)  # (N, Cin, H*W)
    cols = xp.empty((N, Cout * 4, H * W), dtype=x.dtype)  # (N, Cout*4, H*W)

    def product(block, worker):  # rows r0..r1-1 of cols[n] = wt @ x[n]
        n, r0, r1 = block
        xp.matmul(wt[r0:r1], x3[n], out=cols[n, r0:r1])

    blocks = [(n, r0, r1) for n in range(N) for r0, r1 in backend.split(xp, Cout * 4)]
    backend.parallel_for(xp, blocks, product)
    cols = cols.reshape(N, Cout, 2, 2, H, W)  # (N, Cout, i, j, H, W)
    # out[n, o, 2y+i, 2xx+j] = cols[n, o, i, j, y, xx] + b[o]: in plain array code
    # cols.transpose(0, 1, 4, 2, 5, 3).reshape(N, Cout, 2H, 2W) + b (see backend/cpu.py)
    out = backend.upconv_scatter(cols, b)  # (N, Cout, 2H, 2W)
    return out, Upconv2x2Cache(x, w)


def upconv2x2_backward(dout, cache):
    """Gradients of upconv2x2_forward.

    dout: (N, Cout, 2H, 2W). Returns (dx (N, Cin, H, W), dw (Cin, Cout, 2, 2), db (Cout,)).
    """
    x, w = cache
    xp = backend.xp_of(dout, x)
    N, Cin, H, W = x.shape
    Cout = w.shape[1]
    if dout.shape != (N, Cout, 2 * H, 2 * W):
        raise ValueError(f"upconv2x2_backward: dout shape {dout.shape} does not match the "
                         f"forward output {(N, Cout, 2 * H, 2 * W)}")
    dcols = backend.upconv_gather(dout)  # (N, Cout, i, j, H, W): the inverse rearrangement
    dcols = dcols.reshape(N, Cout * 4, H * W)  # (N, Cout*4, H*W)
    x3 = x.reshape(N, Cin, H * W)  # (N, Cin, H*W)
    w2 = xp.ascontiguousarray(w).reshape(Cin, Cout * 4)  # (Cin, Cout*4)
    dx = xp.empty((N, Cin, H * W), dtype=x.dtype)  # (N, Cin, H*W)
    dw = xp.zeros((Cin, Cout * 4), dtype=x.dtype)  # (Cin, Cout*4)

    def products(block, worker):  # rows c0..c1-1 of dx[n] = w2 @ dcols[n] and of dw
        c0, c1 = block
        for n in range(N):  # images in order: dw sums the same way on any number of workers
            xp.matmul(w2[c0:c1], dcols[n], out=dx[n, c0:c1])
            dw[c0:c1] += x3[n, c0:c1] @ dcols[n].T  # (c1-c0, Cout*4)

    backend.parallel_for(xp, backend.split(xp, Cin), products)
    dx = dx.reshape(N, Cin, H, W)
    db = dout.sum(axis=(0, 2, 3))
    return dx, dw.reshape(w.shape), db
