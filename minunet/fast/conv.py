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
  after another on the GPU, where each chunk fills the device). Each worker takes
  one run of consecutive chunks (`_blocks`): ONE thread dispatch per layer and
  direction (it was two forward, for the GEMMs and then the epilogue, and two
  backward, for the even and then the odd chunks: at 316/8 a step had 100
  dispatches, about 80 us each when idle, and each a barrier where a worker that
  the OS has descheduled on a shared machine holds the other up). Each worker has
  its own workspaces and its own dw, db sums, added in worker order. In the
  backward, col2im of a chunk also adds into the k-1 input rows below it, which
  the next chunk adds into too: inside a run that is the same worker, one chunk
  after the other; the first chunk of every run but the first adds its dx into a
  private halo (its rows, k-1 more) that is added into dx after the dispatch, in
  worker order. Every sum has a fixed order: the same numbers run to run.
- Direct loops for few input channels (Cin*k*k <= DIRECT_MAX = 9: the U-Net's
  first layer, one channel, 3x3). There the column matrix is 9 shifted copies of
  the image and the GEMM a (Cout x 9) @ (9 x L) product that BLAS runs at a few
  GFLOP/s (4-5 at 572/16 and 316/8, measured with `bench --layers`); on the CPU
  the forward reads the image's rows in place (backend/cpu.py direct_conv_rows: 9
  multiply-adds per pixel in registers, bias and ReLU fused) and the backward sums
  dw, db from the rows in float64 (direct_dw_rows); dx, when asked, keeps the
  GEMM + col2im. It buys about 20% of that layer's time (572/16: 23 -> 17 ms of
  forward + backward, 16 -> 13 ms of CPU time, on a shared 2-core machine).
- Fused epilogue. Bias and ReLU in one pass over the output; on the CPU each chunk
  runs it (backend.bias_relu_rows) right after its GEMM, while the chunk's output
  is still in cache and in the same dispatch; on the GPU one launch over the whole
  output (backend.bias_relu_forward). The backward applies the ReLU mask chunk by
  chunk.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..ops._check import check_conv2d, check_dout
from ..ops.conv import Conv2dCache


def _row_chunks(N, Ho, k, xp, row_bytes):
    """Chunks (n, y0, y1) of output rows, image by image, for `backend.parallel_for`.

    Each chunk's column matrix fits `backend.chunk_bytes`; an image has at least two
    chunks per worker when it is tall enough, and every chunk is at least k-1 rows
    tall (so that only neighbouring chunks touch the same input rows). One chunk per
    worker was tried (fewer Python calls per layer): 316/8 gained (75 -> 62 ms) but
    572/16 lost 17% of CPU time (bigger chunks fall out of cache), so it is not done.
    """
    fit = backend.chunk_bytes(xp) // max(1, row_bytes)
    T = backend.workers(xp)
    per_worker = -(-Ho // (2 * T)) if T > 1 else Ho  # ceil(Ho / 2T)
    step = max(1, k - 1, min(fit, per_worker))
    return [(n, y0, min(Ho, y0 + step)) for n in range(N) for y0 in range(0, Ho, step)]


DIRECT_MAX = 9  # Cin*k*k up to this: the direct loops on the CPU (the U-Net's first layer)


def _direct(x, k) -> bool:
    """Whether a conv of x (N, Cin, H, W) with a k x k kernel runs the direct loops: on the
    CPU, for k > 1 (a 1x1 conv has no columns to save) and Cin*k*k <= DIRECT_MAX."""
    return not backend.is_gpu_array(x) and k > 1 and x.shape[1] * k * k <= DIRECT_MAX


def _blocks(chunks, T):
    """The chunks cut into T runs of consecutive chunks, one run per worker, in order.

    A worker's run is one item of `backend.parallel_for` (one dispatch per layer and
    direction), and its chunks lie next to each other, so only the first chunk of a
    run shares input rows with another worker's chunk (the last one of the run before).
    """
    step = -(-len(chunks) // max(1, T))  # ceil(len / T)
    return [chunks[i : i + step] for i in range(0, len(chunks), step)]


def _each(fn):
    """fn(chunk, worker) for each chunk of a run: the item function of a run of chunks."""
    def run(block, worker):
        for chunk in block:
            fn(chunk, worker)
    return run


def _columns(x1, k, y0, y1, worker):
    """Columns of one image x1 (C, H, W) for output rows y0..y1-1, in the worker's workspace."""
    C, H, W = x1.shape
    if k == 1:  # a 1x1 conv needs no copy: the image itself is the column matrix
        return x1.reshape(C, H * W)[:, y0 * W : y1 * W]  # (C, rows*W)
    Wo = W - k + 1
    xp = backend.xp_of(x1)
    buf = backend.workspace(xp, x1.dtype, C * k * k * (y1 - y0) * Wo,
                            slot=backend.Slot("cols", worker))
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

    fused = not backend.is_gpu_array(x)  # the CPU: the epilogue runs on each chunk, in the
    # same dispatch as its GEMM
    bias = b.astype(x.dtype, copy=False)

    if _direct(x, k):
        from ..backend import cpu
        wc = xp.ascontiguousarray(w)

    def conv_chunk(chunk, worker):
        n, y0, y1 = chunk
        if _direct(x, k):  # no columns: shifted rows of the image, bias and ReLU fused
            cpu.direct_conv_rows(x[n], wc, bias, y0, y1, relu, out[n])
            return
        cols = _columns(x[n], k, y0, y1, worker)  # (Cin*k*k, (y1-y0)*Wo)
        o2 = out[n].reshape(Cout, Ho * Wo)[:, y0 * Wo : y1 * Wo]  # (Cout, (y1-y0)*Wo)
        xp.matmul(w2, cols, out=o2)
        if fused:  # bias (and ReLU) while the chunk's output is still in cache
            backend.bias_relu_rows(o2, bias, relu)

    chunks = _row_chunks(N, Ho, k, xp, Cin * k * k * Wo * x.itemsize)
    backend.parallel_for(xp, _blocks(chunks, backend.workers(xp)), _each(conv_chunk))
    if not fused:  # the GPU: one launch over the whole output
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
    direct = _direct(x, k)
    acc = np.float64 if direct else x.dtype  # the direct loops sum dw, db in float64
    dw_parts = [xp.zeros((Cout, Cin * k * k), dtype=acc) for _ in range(T)]  # per worker
    db_parts = [xp.zeros(Cout, dtype=acc) for _ in range(T)]
    if direct:
        from ..backend import cpu
    dx = xp.zeros_like(x) if need_dx else None

    def grad_chunk(chunk, worker, dxn, r0):
        """One chunk's dw, db (into the worker's sums) and dx (into dxn, whose row 0 is the
        image's input row r0)."""
        n, y0, y1 = chunk
        dchunk = dout[n].reshape(Cout, Ho * Wo)[:, y0 * Wo : y1 * Wo]  # (Cout, L), L=(y1-y0)*Wo
        if direct:  # dw, db from the rows in place, the ReLU mask read there: no columns
            cpu.direct_dw_rows(x[n], dout[n], dout[n] if out is None else out[n],
                               out is not None, y0, y1, k, dw_parts[worker].reshape(w.shape),
                               db_parts[worker])
            if not need_dx:
                return
        if out is not None:  # the fused ReLU: the gradient passes where the output is > 0
            o_chunk = out[n].reshape(Cout, Ho * Wo)[:, y0 * Wo : y1 * Wo]  # (Cout, L)
            mbuf = backend.workspace(xp, x.dtype, Cout * (y1 - y0) * Wo,
                                     slot=backend.Slot("relu_mask", worker))
            dchunk = backend.relu_backward(dchunk, o_chunk, mbuf.reshape(Cout, (y1 - y0) * Wo))
        if not direct:
            db_parts[worker] += dchunk.sum(axis=1)
            cols = _columns(x[n], k, y0, y1, worker)  # (Cin*k*k, L)
            dw_parts[worker] += (cols @ dchunk.T).T  # (Cout, Cin*k*k); this operand order
            # is the fast one for BLAS when L is long and Cout, Cin*k*k are short
        if not need_dx:
            return
        if k == 1:  # col2im of a 1x1 conv is the identity
            dxn.reshape(Cin, -1)[:, (y0 - r0) * W : (y1 - r0) * W] += w2.T @ dchunk
            return
        dbuf = backend.workspace(xp, x.dtype, Cin * k * k * (y1 - y0) * Wo,
                                 slot=backend.Slot("dcols", worker))
        dcols = xp.matmul(w2.T, dchunk, out=dbuf.reshape(Cin * k * k, (y1 - y0) * Wo))
        backend.col2im(dcols, k, y0 - r0, y1 - r0, dxn)

    chunks = _row_chunks(N, Ho, k, xp, Cin * k * k * Wo * x.itemsize)
    blocks = _blocks(chunks, T)
    halos = [None] * T  # worker w > 0: (n, y0, its first chunk's dx rows), added after

    def grad_block(block, worker):
        for i, (n, y0, y1) in enumerate(block):
            if i == 0 and worker > 0 and need_dx and k > 1:  # rows the worker before also adds to
                halo = xp.zeros((Cin, y1 - y0 + k - 1, W), dtype=x.dtype)
                grad_chunk((n, y0, y1), worker, halo, y0)
                halos[worker] = (n, y0, halo)
            else:
                grad_chunk((n, y0, y1), worker, dx[n] if need_dx else None, 0)

    backend.parallel_for(xp, blocks, grad_block)
    for h in halos[1:]:  # in worker order: deterministic
        if h is not None:
            n, y0, halo = h
            dx[n, :, y0 : y0 + halo.shape[1]] += halo
    dw2, db = dw_parts[0], db_parts[0]
    for dwp, dbp in zip(dw_parts[1:], db_parts[1:], strict=True):  # in worker order: deterministic
        dw2 += dwp
        db += dbp
    if direct:
        dw2, db = dw2.astype(x.dtype), db.astype(x.dtype)
    return dx, dw2.reshape(w.shape), db
