"""The fast conv2d: the plain op of minunet/ops/conv.py, in cache-sized row chunks on every core.

Same names, signatures, cache (ops.conv.Conv2dCache) and numbers as the plain op
(tests/fast/test_agree.py); read that file first for the math. The tricks, and
what each buys:

- Row chunks. The plain op's column matrix for the paper's second layer (64
  channels, 568 x 568 output) is 64*9*568*568*4 bytes = 743 MB. Here both passes
  work on chunks of output rows whose columns fit `backend.chunk_bytes` (4 MB on
  the CPU, small enough to stay in cache between im2col and the GEMM; at most
  `WORKSPACE_BYTES` = 64 MB on the GPU), in reused workspaces: bounded memory,
  no page faults, and the GEMM reads its operand from cache. The backward
  recomputes each chunk's columns rather than keeping them.
- Twins. im2col and col2im of a chunk run as Numba loops on the CPU
  (backend/cpu.py) and CUDA kernels on the GPU (kernels/im2col.cu); col2im is a
  gather (each pixel sums its own entries), deterministic, no atomics.
- Worker threads. The chunks are independent, so `backend.parallel_for` runs
  them on every CPU core at once, each worker with a single-threaded BLAS (one
  after another on the GPU, where each chunk fills the device). Each worker has
  its own workspaces and its own dw, db sums, added in worker order. In the
  backward, col2im of chunk t also adds into the k-1 input rows below it, which
  chunk t+1 adds into too; so the even chunks run first, then the odd ones, and
  two chunks that run at the same time never touch the same rows of dx.
- Fused epilogue. Bias and ReLU in one pass over the output (backend
  bias_relu_forward); the backward applies the ReLU mask chunk by chunk.
"""

from __future__ import annotations

from .. import backend
from ..ops._check import check_conv2d, check_dout
from ..ops.conv import Conv2dCache


def _row_chunks(N, Ho, k, xp, row_bytes):
    """Chunks (n, y0, y1) of output rows, image by image, for `backend.parallel_for`.

    Each chunk's column matrix fits `backend.chunk_bytes`; an image has at least two
    chunks per worker (so both backward phases keep every worker busy) when it is
    tall enough, and every chunk is at least k-1 rows tall (so that chunks two
    apart never touch the same input rows).
    """
    fit = backend.chunk_bytes(xp) // max(1, row_bytes)
    T = backend.workers(xp)
    per_worker = -(-Ho // (2 * T)) if T > 1 else Ho  # ceil(Ho / 2T)
    step = max(1, k - 1, min(fit, per_worker))
    return [(n, y0, min(Ho, y0 + step)) for n in range(N) for y0 in range(0, Ho, step)]


def _columns(x1, k, y0, y1, worker):
    """Columns of one image x1 (C, H, W) for output rows y0..y1-1, in the worker's workspace."""
    C, H, W = x1.shape
    if k == 1:  # a 1x1 conv needs no copy: the image itself is the column matrix
        return x1.reshape(C, H * W)[:, y0 * W : y1 * W]  # (C, rows*W)
    Wo = W - k + 1
    xp = backend.xp_of(x1)
    buf = backend.workspace(xp, x1.dtype, C * k * k * (y1 - y0) * Wo, slot=(0, worker))
    return backend.im2col(x1, k, y0, y1, buf.reshape(C * k * k, (y1 - y0) * Wo))


def _add_bias(out, b, relu):
    """The epilogue, in place: out += b per channel, then max(out, 0) if relu.

    out (N, C, H, W); the (image, channel block) pieces run on all workers.
    """
    xp = backend.xp_of(out)
    N, C = out.shape[:2]

    def piece(item, worker):
        n, c0, c1 = item
        o, bc = out[n : n + 1, c0:c1], b[c0:c1]  # contiguous slices
        if relu:
            backend.bias_relu_forward(o, bc)
        else:
            o += bc[None, :, None, None]

    blocks = [(n, c0, c1) for n in range(N) for c0, c1 in backend.split(xp, C)]
    backend.parallel_for(xp, blocks, piece)


def conv2d_forward(x, w, b, relu=False):
    """Valid 2-D convolution (cross-correlation), stride 1, with bias (and a fused ReLU).

    x: (N, Cin, H, W); w: (Cout, Cin, k, k); b: (Cout,)
    out[n, o, y, xx] = b[o] + sum_{c,i,j} w[o, c, i, j] * x[n, c, y+i, xx+j]
    relu=True applies max(out, 0) in the same pass as the bias (the U-Net's 3x3
    layers): the same result as relu_forward(conv2d_forward(x, w, b)), one pass
    over memory fewer.
    Returns out (N, Cout, H-k+1, W-k+1) and a Conv2dCache.
    """
    check_conv2d(x, w, b)
    xp = backend.xp_of(x, w, b)
    x = xp.ascontiguousarray(x)
    N, Cin, H, W = x.shape
    Cout, _, k, _ = w.shape
    Ho, Wo = H - k + 1, W - k + 1
    w2 = xp.ascontiguousarray(w).reshape(Cout, Cin * k * k)  # (Cout, Cin*k*k)
    out = xp.empty((N, Cout, Ho, Wo), dtype=x.dtype)

    def conv_chunk(chunk, worker):
        n, y0, y1 = chunk
        cols = _columns(x[n], k, y0, y1, worker)  # (Cin*k*k, (y1-y0)*Wo)
        xp.matmul(w2, cols, out=out[n].reshape(Cout, Ho * Wo)[:, y0 * Wo : y1 * Wo])

    chunks = _row_chunks(N, Ho, k, xp, Cin * k * k * Wo * x.itemsize)
    backend.parallel_for(xp, chunks, conv_chunk)
    _add_bias(out, b, relu)
    return out, Conv2dCache(x, w, out if relu else None)


def conv2d_backward(dout, cache, need_dx=True):
    """Gradients of conv2d_forward.

    dout: (N, Cout, Ho, Wo), the gradient of the output (after the ReLU, if fused).
    Returns (dx (N, Cin, H, W), dw (Cout, Cin, k, k), db (Cout,)); dx is None when
    need_dx is False (the network's first layer).
    """
    x, w, out = cache
    xp = backend.xp_of(dout, x)
    N, Cin, H, W = x.shape
    Cout, _, k, _ = w.shape
    Ho, Wo = H - k + 1, W - k + 1
    check_dout("conv2d", dout, (N, Cout, Ho, Wo))
    dout = xp.ascontiguousarray(dout)
    w2 = xp.ascontiguousarray(w).reshape(Cout, Cin * k * k)  # (Cout, Cin*k*k)
    T = backend.workers(xp)
    dw_parts = [xp.zeros((Cout, Cin * k * k), dtype=x.dtype) for _ in range(T)]  # per worker
    db_parts = [xp.zeros(Cout, dtype=x.dtype) for _ in range(T)]
    dx = xp.zeros_like(x) if need_dx else None

    def grad_chunk(chunk, worker):
        n, y0, y1 = chunk
        dchunk = dout[n].reshape(Cout, Ho * Wo)[:, y0 * Wo : y1 * Wo]  # (Cout, L), L=(y1-y0)*Wo
        if out is not None:  # the fused ReLU: the gradient passes where the output is > 0
            o_chunk = out[n].reshape(Cout, Ho * Wo)[:, y0 * Wo : y1 * Wo]  # (Cout, L)
            mbuf = backend.workspace(xp, x.dtype, Cout * (y1 - y0) * Wo, slot=(2, worker))
            dchunk = backend.relu_backward(dchunk, o_chunk, mbuf.reshape(Cout, (y1 - y0) * Wo))
        db_parts[worker] += dchunk.sum(axis=1)
        cols = _columns(x[n], k, y0, y1, worker)  # (Cin*k*k, L)
        dw_parts[worker] += (cols @ dchunk.T).T  # (Cout, Cin*k*k); this operand order is
        # the fast one for BLAS when L is long and Cout, Cin*k*k are short
        if not need_dx:
            return
        if k == 1:  # col2im of a 1x1 conv is the identity
            dx[n].reshape(Cin, H * W)[:, y0 * W : y1 * W] += w2.T @ dchunk
            return
        dbuf = backend.workspace(xp, x.dtype, Cin * k * k * (y1 - y0) * Wo, slot=(1, worker))
        dcols = xp.matmul(w2.T, dchunk, out=dbuf.reshape(Cin * k * k, (y1 - y0) * Wo))
        backend.col2im(dcols, k, y0, y1, dx[n])

    chunks = _row_chunks(N, Ho, k, xp, Cin * k * k * Wo * x.itemsize)
    for phase in (0, 1):  # even chunks, then odd ones: see the module docstring
        backend.parallel_for(xp, chunks[phase::2], grad_chunk)
    dw2, db = dw_parts[0], db_parts[0]
    for dwp, dbp in zip(dw_parts[1:], db_parts[1:], strict=True):  # in worker order: deterministic
        dw2 += dwp
        db += dbp
    return dx, dw2.reshape(w.shape), db
