"""The fast conv2d_general: minunet/ops/conv_general.py in row chunks, or without im2col.

Same names, signatures, cache type (ops.conv_general.ConvGeneralCache) and numbers as the plain
op (tests/fast/test_agree_family.py); read that file first for what padding, stride and groups
change in im2col. Three paths, chosen from the weight's shape and `groups`:

- groups = 1 (dense): fast/conv.py's machinery, generalised to padding and stride. Row chunks
  of output rows whose columns fit `backend.chunk_bytes`, in reused workspaces (no 743 MB
  column matrix), on every core (`backend.parallel_for`), per-worker dw/db added in worker
  order; the padded, strided im2col and its adjoint col2im (a deterministic gather) are twins
  (backend.im2col_padded / col2im_padded: NumPy slice copies and a Numba gather on the CPU,
  kernels/im2col_padded.cu on the GPU). Chunk t's col2im adds into input rows that chunk t+1's
  does; chunks are at least max(1, (k-1-s)//s + 1) rows tall, so that chunks two apart never
  share an input row, and the backward runs the even chunks, then the odd ones. The 1x1
  stride-1 unpadded conv needs no copy at all.
- depthwise (groups = Cin, one input channel per filter, Cout = m*Cin): no im2col. The plain op
  spends one tiny matrix product per channel on a k*k-row column matrix; here one direct loop
  over the pixels (backend.depthwise_forward; kernels/depthwise.cu) reads each input pixel
  from cache k*k times instead of copying it k*k times, the backward's dx is a gather, and
  dw, db come from one pass per tap summed in float64 (depthwise_dw_partials).
- other groups (1 < groups < Cin): not on the family's hot path; the plain op serves both
  doors for them (its cache then holds its column matrix).

The cache: the plain op keeps the whole column matrix in its `cols` field; the fast door keeps
the INPUT x there instead (N, Cin, H, W) and recomputes columns chunk by chunk in the backward
(the grouped fallback keeps the plain op's cache as it is).
"""

from __future__ import annotations

from .. import backend
from ..ops import conv_general as plain
from ..ops._check import check_dout
from ..ops.conv_general import (
    ConvGeneralCache,
    check_conv2d_general,
    conv_output_size,
    resolve_padding,
)

__all__ = ["ConvGeneralCache", "conv2d_general_forward", "conv2d_general_backward",
           "conv_output_size", "resolve_padding"]


def _path(w_shape, groups: int) -> str:
    """'dense', 'depthwise' or 'plain' (other groups) for a weight (Cout, Cin/groups, k, k)."""
    if groups == 1:
        return "dense"
    return "depthwise" if w_shape[1] == 1 else "plain"


def _row_chunks(N, Ho, k, s, xp, row_bytes):
    """Chunks (n, y0, y1) of output rows, as fast/conv.py's, at least max(1, (k-1-s)//s + 1)
    rows tall: then the input rows of chunks two apart never meet (module docstring)."""
    fit = backend.chunk_bytes(xp) // max(1, row_bytes)
    T = backend.workers(xp)
    per_worker = -(-Ho // (2 * T)) if T > 1 else Ho
    step = max(1, (k - 1 - s) // s + 1, min(fit, per_worker))
    return [(n, y0, min(Ho, y0 + step)) for n in range(N) for y0 in range(0, Ho, step)]


def _columns(x1, k, s, p, y0, y1, Wo, worker):
    """Columns (Cin*k*k, (y1-y0)*Wo) of image x1 (Cin, H, W), in the worker's workspace."""
    C, H, W = x1.shape
    if k == 1 and s == 1 and p == 0:  # the image itself is the column matrix
        return x1.reshape(C, H * W)[:, y0 * W : y1 * W]  # (C, rows*W)
    xp = backend.xp_of(x1)
    buf = backend.workspace(xp, x1.dtype, C * k * k * (y1 - y0) * Wo,
                            slot=backend.Slot("padded_cols", worker))
    return backend.im2col_padded(x1, k, s, p, y0, y1, buf.reshape(C * k * k, (y1 - y0) * Wo))


def conv2d_general_forward(x, w, b=None, stride: int = 1, padding=0, groups: int = 1):
    """x: (N, Cin, H, W); w: (Cout, Cin/groups, k, k); b: (Cout,) or None; stride >= 1;
    padding an int or 'same' (odd k); groups dividing Cin and Cout. Returns out
    (N, Cout, Ho, Wo), Ho = (H + 2p - k) // stride + 1, and a ConvGeneralCache."""
    p = resolve_padding(padding, w.shape[-1] if getattr(w, "ndim", 0) == 4 else 1)
    check_conv2d_general(x, w, b, stride, p, groups)
    path = _path(w.shape, groups)
    if path == "plain":
        return plain.conv2d_general_forward(x, w, b, stride, p, groups)
    xp = backend.xp_of(x)
    x = xp.ascontiguousarray(x)
    N, Cin, H, W = x.shape
    Cout, _, k, _ = w.shape
    s = stride
    Ho, Wo = conv_output_size(H, k, s, p), conv_output_size(W, k, s, p)
    cache = ConvGeneralCache(x, w, tuple(x.shape), (N, Cout, Ho, Wo), s, p, groups,
                             b is not None)  # x in the cols field: see the module docstring
    if path == "depthwise":
        bias = b if b is not None else xp.zeros(Cout, dtype=x.dtype)
        return backend.depthwise_forward(x, w, bias, s, p), cache
    w2 = xp.ascontiguousarray(w).reshape(Cout, Cin * k * k)  # (Cout, Cin*k*k)
    out = xp.empty((N, Cout, Ho, Wo), dtype=x.dtype)

    def conv_chunk(chunk, worker):
        n, y0, y1 = chunk
        cols = _columns(x[n], k, s, p, y0, y1, Wo, worker)  # (Cin*k*k, (y1-y0)*Wo)
        xp.matmul(w2, cols, out=out[n].reshape(Cout, Ho * Wo)[:, y0 * Wo : y1 * Wo])

    chunks = _row_chunks(N, Ho, k, s, xp, Cin * k * k * Wo * x.itemsize)
    backend.parallel_for(xp, chunks, conv_chunk)
    if b is not None:
        def add_bias(item, worker):
            n, c0, c1 = item
            out[n, c0:c1] += b[c0:c1, None, None]

        blocks = [(n, c0, c1) for n in range(N) for c0, c1 in backend.split(xp, Cout)]
        backend.parallel_for(xp, blocks, add_bias)
    return out, cache


def conv2d_general_backward(dout, cache):
    """dout: (N, Cout, Ho, Wo). Returns (dx (N, Cin, H, W), dw (Cout, Cin/groups, k, k),
    db (Cout,) or None when the forward had no bias)."""
    check_dout("conv2d_general", dout, cache.out_shape)
    w, s, p = cache.w, cache.stride, cache.padding
    path = _path(w.shape, cache.groups)
    if path == "plain":
        return plain.conv2d_general_backward(dout, cache)
    x = cache.cols  # the input (module docstring)
    xp = backend.xp_of(dout, x)
    dout = xp.ascontiguousarray(dout)
    N, Cin, H, W = x.shape
    Cout, _, k, _ = w.shape
    _, _, Ho, Wo = cache.out_shape
    if path == "depthwise":
        dx = backend.depthwise_backward_dx(dout, w, x.shape, s, p)
        sums = backend.depthwise_dw_partials(dout, x, k, s, p).sum(axis=0)  # (Cout, k*k + 1)
        dw = sums[:, : k * k].reshape(w.shape).astype(x.dtype)
        db = sums[:, k * k].astype(x.dtype) if cache.has_bias else None
        return dx, dw, db
    w2 = xp.ascontiguousarray(w).reshape(Cout, Cin * k * k)  # (Cout, Cin*k*k)
    T = backend.workers(xp)
    dw_parts = [xp.zeros((Cout, Cin * k * k), dtype=x.dtype) for _ in range(T)]  # per worker
    db_parts = [xp.zeros(Cout, dtype=x.dtype) for _ in range(T)]
    dx = xp.zeros_like(x)

    def grad_chunk(chunk, worker):
        n, y0, y1 = chunk
        L = (y1 - y0) * Wo
        dchunk = dout[n].reshape(Cout, Ho * Wo)[:, y0 * Wo : y1 * Wo]  # (Cout, L)
        if cache.has_bias:
            db_parts[worker] += dchunk.sum(axis=1)
        cols = _columns(x[n], k, s, p, y0, y1, Wo, worker)  # (Cin*k*k, L)
        dw_parts[worker] += (cols @ dchunk.T).T  # (Cout, Cin*k*k), BLAS's fast operand order
        if k == 1 and s == 1 and p == 0:  # col2im of a 1x1 conv is the identity
            dx[n].reshape(Cin, H * W)[:, y0 * W : y1 * W] += w2.T @ dchunk
            return
        dbuf = backend.workspace(xp, x.dtype, Cin * k * k * L,
                                 slot=backend.Slot("padded_dcols", worker))
        dcols = xp.matmul(w2.T, dchunk, out=dbuf.reshape(Cin * k * k, L))
        backend.col2im_padded(dcols, k, s, p, y0, y1, dx[n])

    chunks = _row_chunks(N, Ho, k, s, xp, Cin * k * k * Wo * x.itemsize)
    for phase in (0, 1):  # even chunks, then odd ones: see the module docstring
        backend.parallel_for(xp, chunks[phase::2], grad_chunk)
    dw2, db = dw_parts[0], db_parts[0]
    for dwp, dbp in zip(dw_parts[1:], db_parts[1:], strict=True):  # in worker order
        dw2 += dwp
        db += dbp
    return dx, dw2.reshape(w.shape), (db if cache.has_bias else None)
