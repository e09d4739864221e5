"""The fast upconv2x2: the plain op of minunet/ops/upconv.py, its products on every core.

Same names, signatures, cache (ops.upconv.Upconv2x2Cache) and numbers as the
plain op; read that file first for the math. The tricks, and what each buys:

- Row blocks. The products are split into row blocks (of w's Cout*4 columns
  forward, of its Cin rows backward) that `backend.parallel_for` runs on every
  CPU core, each block writing its own rows of the result: every core busy,
  each with a single-threaded BLAS, deterministic sums (images in order).
- Twins for the 2x2 interleave. NumPy's transpose-and-copy of the plain op runs
  as a Numba row loop on the CPU (backend/cpu.py upconv_scatter / upconv_gather,
  bias added in the same pass) and a CUDA kernel on the GPU (kernels/upconv.cu).
- Per image. The product runs image by image on x[n] (Cin, H*W) as it lies in
  memory, so no (Cin, N*H*W) transposed copy of the input is made.
"""

from __future__ import annotations

from .. import backend
from ..ops._check import check_dout, check_upconv2x2
from ..ops.upconv import Upconv2x2Cache


def upconv2x2_forward(x, w, b):
    """Transposed convolution, kernel 2, stride 2, with bias.

    x: (N, Cin, H, W); w: (Cin, Cout, 2, 2); b: (Cout,)
    Returns out (N, Cout, 2H, 2W) and an Upconv2x2Cache.
    """
    check_upconv2x2(x, w, b)
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
    # cols.transpose(0, 1, 4, 2, 5, 3).reshape(N, Cout, 2H, 2W) + b (see ops/upconv.py)
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
    check_dout("upconv2x2", dout, (N, Cout, 2 * H, 2 * W))
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
