"""CPU twins of the hot loops: Numba loops, and NumPy slice copies for im2col.

Each public function has the signature and layout of its dispatcher in
`minunet/backend/twins.py` and of its CUDA twin in `kernels/*.cu` (launched by
backend/gpu.py). The fast ops (minunet/fast) run on them; the plain ops
(minunet/ops) compute the same things on whole arrays without them. Tests
compare each twin with brute-force loops (tests/backend/test_cpu_twins.py) and
with its CUDA twin (tests/backend/test_gpu.py).

Why the loops run on ONE thread: the layers' row chunks already run on every
core (backend/threads.py), and these loops run inside those chunks. A parallel
Numba loop would also fight BLAS threads for the cores: on a 2-core machine a
conv layer measured 3-50x slower with parallel twins than with serial ones.
The loops are still written with `prange` over an index whose iterations write
disjoint outputs, with every reduction in a fixed order, so PARALLEL = True is
safe and gives the same numbers. `nogil=True` lets the worker threads run them
at the same time. Functions are compiled on first use and cached on disk
(`cache=True`), so `import minunet` stays fast.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import threads

PARALLEL = False  # see the module docstring


def _by_planes(P, fn):
    """fn(p0, p1) over blocks of P planes (images x channels), a block per worker thread."""
    threads.parallel_for(threads.split(P, threads.workers()), lambda block, worker: fn(*block))


# --- im2col / col2im --------------------------------------------------------
# im2col is NumPy slice copies, not a Numba loop: one strided copy per kernel
# offset (i, j) over all channels and rows moves whole rows of Wo pixels at a
# time at memory-copy speed (about 30 GB/s on this 2-core machine, against 10 GB/s
# for the Numba loop we tried). col2im is the other way round: as 9 slice `+=`
# over the chunk it read-modify-wrote each input row 9 times (about 11 GB/s);
# the Numba gather below adds all 9 contributions into one input row while that
# row sits in L1 (4-5x faster). No Python loop runs over pixels.


def im2col(x, k, y0, y1, out):
    """See minunet.backend.twins.im2col. x (C, H, W); out (C*k*k, (y1-y0)*(W-k+1))."""
    C, H, W = x.shape
    Wo = W - k + 1
    o5 = out.reshape(C, k, k, y1 - y0, Wo)  # (C, k, k, rows, Wo) view of out
    for i in range(k):
        for j in range(k):
            o5[:, i, j] = x[:, y0 + i : y1 + i, j : j + Wo]
    return out


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _col2im(cols, k, y0, y1, dx):
    C, H, W = dx.shape
    Wo = W - k + 1
    rows = y1 - y0
    for c in prange(C):
        for yy in range(y0, y1 + k - 1):  # every input row this chunk's columns came from
            drow = dx[c, yy]
            for i in range(k):  # kernel rows in order: the reference's order of additions
                r = yy - y0 - i  # the chunk's output row that read input row yy at offset i
                if r < 0 or r >= rows:
                    continue
                for j in range(k):
                    src = cols[(c * k + i) * k + j, r * Wo : (r + 1) * Wo]
                    for xx in range(Wo):
                        drow[xx + j] += src[xx]


def col2im(cols, k, y0, y1, dx):
    """See minunet.backend.twins.col2im. cols (C*k*k, (y1-y0)*(W-k+1)); dx (C, H, W) += ."""
    _col2im(cols, k, y0, y1, dx)
    return dx


# --- direct convolution for few input channels -------------------------------------------
# With Cin*k*k tiny (the U-Net's first layer: one channel, 3x3: 9 rows of columns) the
# column matrix is 9 copies of the image and the GEMM a (Cout x 9) @ (9 x L) product that
# BLAS runs at a few GFLOP/s; these loops read the image in place instead: for each output
# row, k*k (times Cin) vectorised multiply-adds of a shifted input row.


@njit(cache=True, nogil=True)
def _direct_conv_rows(x1, w, b, y0, y1, relu, out3):
    Cout, Cin, k, _ = w.shape
    Wo = out3.shape[2]
    z = out3.dtype.type(0)
    for o in range(Cout):
        bo = out3.dtype.type(b[o])
        for y in range(y0, y1):
            orow = out3[o, y]
            orow[:] = z
            for c in range(Cin):  # the products in the column matrix's row order
                if k == 3:  # one pass per channel: 9 multiply-adds per pixel in registers
                    r0, r1, r2 = x1[c, y], x1[c, y + 1], x1[c, y + 2]
                    w00, w01, w02 = w[o, c, 0, 0], w[o, c, 0, 1], w[o, c, 0, 2]
                    w10, w11, w12 = w[o, c, 1, 0], w[o, c, 1, 1], w[o, c, 1, 2]
                    w20, w21, w22 = w[o, c, 2, 0], w[o, c, 2, 1], w[o, c, 2, 2]
                    for xx in range(Wo):
                        orow[xx] += (w00 * r0[xx] + w01 * r0[xx + 1] + w02 * r0[xx + 2]
                                     + w10 * r1[xx] + w11 * r1[xx + 1] + w12 * r1[xx + 2]
                                     + w20 * r2[xx] + w21 * r2[xx + 1] + w22 * r2[xx + 2])
                    continue
                for i in range(k):
                    for j in range(k):
                        wv = w[o, c, i, j]
                        xrow = x1[c, y + i, j : j + Wo]
                        for xx in range(Wo):
                            orow[xx] += wv * xrow[xx]
            for xx in range(Wo):  # the epilogue, as _bias_relu
                v = orow[xx] + bo
                orow[xx] = (z if v <= 0 else v) if relu else v


def direct_conv_rows(x1, w, b, y0, y1, relu, out3):
    """Output rows y0..y1-1 of a valid k x k conv of one image, without columns, in place.

    x1 (Cin, H, W) and out3 (Cout, Ho, Wo) contiguous, w (Cout, Cin, k, k), b (Cout,):
    out3[o, y, xx] = epilogue(sum_{c,i,j} w[o,c,i,j] * x1[c, y+i, xx+j] + b[o]), the sum
    in (c, i, j) order, the epilogue max(., 0) if relu. Returns out3.
    """
    _direct_conv_rows(x1, w.astype(x1.dtype, copy=False), b.astype(x1.dtype, copy=False),
                      y0, y1, relu, out3)
    return out3


@njit(cache=True, nogil=True, fastmath=True)
def _direct_dw_rows(x1, d3, o3, relu, y0, y1, k, dw, db):
    Cout, Ho, Wo = d3.shape
    Cin = x1.shape[0]
    acc = np.zeros(k * k)  # float64, whatever the dtype
    g = np.empty(Wo)  # one row of the gradient after the ReLU mask, float64
    for o in range(Cout):
        acc_b = 0.0
        for y in range(y0, y1):
            drow, orow = d3[o, y], o3[o, y]
            for xx in range(Wo):
                acc_b += drow[xx] if (not relu or orow[xx] > 0) else 0.0
        db[o] += acc_b
        for c in range(Cin):
            acc[:] = 0.0
            for y in range(y0, y1):  # one pass over the rows: all k*k sums at once
                drow, orow = d3[o, y], o3[o, y]
                for xx in range(Wo):
                    g[xx] = drow[xx] if (not relu or orow[xx] > 0) else 0.0
                for i in range(k):
                    xrow = x1[c, y + i]
                    for j in range(k):
                        a = 0.0
                        for xx in range(Wo):
                            a += g[xx] * xrow[xx + j]
                        acc[i * k + j] += a
            for i in range(k):
                for j in range(k):
                    dw[o, c, i, j] += acc[i * k + j]


def direct_dw_rows(x1, d3, o3, relu, y0, y1, k, dw, db):
    """dw (Cout, Cin, k, k) += sum over output rows y0..y1-1 of g[o, y, xx] * x1[c, y+i, xx+j]
    and db (Cout,) += the sum of g over those rows, both float64 (one worker's partial sums),
    where g = d3 where o3 > 0 else 0 if relu (the fused ReLU's mask, read in place), else d3.

    x1 (Cin, H, W), d3 and o3 (Cout, Ho, Wo): views with contiguous rows. Each sum runs in
    float64 in a fixed order for a given build (fastmath lets Numba vectorise the reduction:
    the same order run to run, not necessarily the written one).
    """
    _direct_dw_rows(x1, d3, o3, relu, y0, y1, k, dw, db)


# --- 2x2 max-pool -------------------------------------------------------------


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _maxpool_fwd(x, out, arg):
    P, Ho, Wo = out.shape
    for p in prange(P):
        for y in range(Ho):
            for xx in range(Wo):
                # window order 0: (0,0), 1: (0,1), 2: (1,0), 3: (1,1); strict '>' keeps
                # the first maximum in this order (docs/DESIGN.md, "Max-pool ties")
                best = x[p, 2 * y, 2 * xx]
                a = 0
                v = x[p, 2 * y, 2 * xx + 1]
                if v > best:
                    best = v
                    a = 1
                v = x[p, 2 * y + 1, 2 * xx]
                if v > best:
                    best = v
                    a = 2
                v = x[p, 2 * y + 1, 2 * xx + 1]
                if v > best:
                    best = v
                    a = 3
                out[p, y, xx] = best
                arg[p, y, xx] = a


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _maxpool_bwd(dout, arg, dx):
    P, Ho, Wo = dout.shape
    for p in prange(P):
        for y in range(Ho):
            for xx in range(Wo):
                a = arg[p, y, xx]
                dx[p, 2 * y + a // 2, 2 * xx + a % 2] = dout[p, y, xx]


def maxpool2x2_forward(x):
    """See minunet.backend.twins.maxpool2x2_forward."""
    N, C, H, W = x.shape
    x3 = np.ascontiguousarray(x).reshape(N * C, H, W)  # (N*C, H, W)
    out = np.empty((N * C, H // 2, W // 2), dtype=x.dtype)
    arg = np.empty((N * C, H // 2, W // 2), dtype=np.uint8)
    _by_planes(N * C, lambda p0, p1: _maxpool_fwd(x3[p0:p1], out[p0:p1], arg[p0:p1]))
    return out.reshape(N, C, H // 2, W // 2), arg.reshape(N, C, H // 2, W // 2)


def maxpool2x2_backward(dout, arg):
    """See minunet.backend.twins.maxpool2x2_backward."""
    N, C, Ho, Wo = dout.shape
    dx = np.zeros((N * C, 2 * Ho, 2 * Wo), dtype=dout.dtype)  # pixels that lost get 0
    d3 = np.ascontiguousarray(dout).reshape(N * C, Ho, Wo)
    a3 = np.ascontiguousarray(arg).reshape(N * C, Ho, Wo)
    _by_planes(N * C, lambda p0, p1: _maxpool_bwd(d3[p0:p1], a3[p0:p1], dx[p0:p1]))
    return dx.reshape(N, C, 2 * Ho, 2 * Wo)


# --- fused softmax + weighted cross-entropy ----------------------------------


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _softmax_xent_fwd(logits, labels, weights, probs, row_loss):
    N, K, H, W = logits.shape
    for r in prange(N * H):  # one image row per iteration
        n = r // H
        y = r % H
        acc = 0.0
        for xx in range(W):
            m = logits[n, 0, y, xx]
            for c in range(1, K):
                m = max(m, logits[n, c, y, xx])
            s = 0.0
            for c in range(K):
                e = np.exp(logits[n, c, y, xx] - m)
                probs[n, c, y, xx] = e
                s += e
            for c in range(K):
                probs[n, c, y, xx] /= s
            # -log p_l = log(sum exp(z - m)) - (z_l - m): stable for any logit size
            w = weights[n, y, xx]
            if w != 0:
                acc += w * (np.log(s) - (logits[n, labels[n, y, xx], y, xx] - m))
        row_loss[r] = acc


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _softmax_xent_bwd(probs, labels, weights, scale, dlogits):
    N, K, H, W = probs.shape
    for r in prange(N * H):
        n = r // H
        y = r % H
        for xx in range(W):
            g = scale * weights[n, y, xx]
            lab = labels[n, y, xx]
            for c in range(K):
                onehot = 1.0 if c == lab else 0.0
                dlogits[n, c, y, xx] = g * (probs[n, c, y, xx] - onehot)


def softmax_xent_forward(logits, labels, weights):
    """See minunet.backend.twins.softmax_xent_forward."""
    N, K, H, W = logits.shape
    probs = np.empty(logits.shape, dtype=logits.dtype)
    row_loss = np.empty(N * H, dtype=np.float64)  # summed in a fixed order below
    _softmax_xent_fwd(np.ascontiguousarray(logits), np.ascontiguousarray(labels),
                      np.ascontiguousarray(weights), probs, row_loss)
    return np.asarray(row_loss.sum(), dtype=logits.dtype), probs


def softmax_xent_backward(probs, labels, weights, scale):
    """See minunet.backend.twins.softmax_xent_backward."""
    dlogits = np.empty(probs.shape, dtype=probs.dtype)
    _softmax_xent_bwd(probs, np.ascontiguousarray(labels), np.ascontiguousarray(weights),
                      probs.dtype.type(scale), dlogits)
    return dlogits


# --- momentum SGD update --------------------------------------------------------


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _sgd_update(w, v, g, lr, momentum, weight_decay):
    for i in prange(w.size):
        vi = momentum * v[i] - lr * (g[i] + weight_decay * w[i])
        v[i] = vi
        w[i] += vi


def sgd_update(w, v, g, lr, momentum, weight_decay):
    """See minunet.backend.twins.sgd_update. w, v, g: same shape, contiguous; updated in place."""
    t = w.dtype.type
    _sgd_update(w.reshape(-1), v.reshape(-1), g.reshape(-1), t(lr), t(momentum), t(weight_decay))


def sgd_update_many(ws, vs, gs, lr, momentum, weight_decay):
    """See minunet.backend.twins.sgd_update_many: sgd_update over lists of arrays."""
    for w, v, g in zip(ws, vs, gs, strict=True):
        sgd_update(w, v, g, lr, momentum, weight_decay)


# --- fused bias + ReLU, ReLU backward ---------------------------------------------


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _bias_relu(x3, b):
    P, C, S = x3.shape
    z = x3.dtype.type(0)
    for pc in prange(P * C):  # one (image, channel) plane per iteration
        row = x3[pc // C, pc % C]  # a contiguous plane: a loop Numba vectorises
        bc = row.dtype.type(b[pc % C])
        for s in range(S):
            v = row[s] + bc
            row[s] = z if v <= 0 else v  # a NaN passes, as numpy.maximum and relu.cu


def bias_relu_forward(x, b):
    """See minunet.backend.twins.bias_relu_forward: x = max(x + b[c], 0) in place; returns x."""
    N, C = x.shape[:2]
    _bias_relu(x.reshape(N, C, -1), b.astype(x.dtype, copy=False))
    return x


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _bias_rows(o, rs, L, b, relu):
    # row r of the chunk is o[r * rs : r * rs + L] of a flat 1-D window (see _rows)
    z = o.dtype.type(0)
    for r in prange(b.size):
        row = o[r * rs : r * rs + L]
        bc = row.dtype.type(b[r])
        if relu:
            for s in range(L):
                v = row[s] + bc
                row[s] = z if v <= 0 else v  # as _bias_relu: a NaN passes
        else:
            for s in range(L):
                row[s] += bc


def bias_relu_rows(o2, b, relu):
    """See minunet.backend.twins.bias_relu_rows: o2 (C, L) += b[:, None], then max(., 0) if
    relu, in place, where o2 lies (a conv's row chunk of (C, H*W) planes); returns o2."""
    if o2.shape[0] != b.shape[0] or o2.strides[1] != o2.itemsize:
        raise ValueError(f"bias_relu_rows: o2 (C, L) with contiguous rows and b (C,), got "
                         f"{o2.shape}, strides {o2.strides} and {b.shape}")
    if o2.size:
        o, rs = _rows(o2)
        _bias_rows(o, rs, o2.shape[1], b.astype(o2.dtype, copy=False), relu)
    return o2


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _relu_bwd(d, ds, o, os, dx, L):
    # row r of each operand starts at r * (its row stride) of a flat 1-D window.
    # The loop runs over row slices: Numba vectorises that (6x faster, measured)
    # and not the same loop with the offsets r * ds + i written out.
    z = dx.dtype.type(0)
    for r in prange(dx.size // L):
        drow, orow, xrow = d[r * ds : r * ds + L], o[r * os : r * os + L], dx[r * L : (r + 1) * L]
        for i in range(L):
            xrow[i] = drow[i] if orow[i] > 0 else z


def _rows(a):
    """A 2-D array (R, L) with contiguous rows (a conv's row chunk (C, L) of an (C, H*W)
    plane) as (flat 1-D window over its memory, row stride in elements); other layouts
    are copied first."""
    if a.strides[1] != a.itemsize or a.strides[0] % a.itemsize:
        a = np.ascontiguousarray(a)
    R, L = a.shape
    rs = a.strides[0] // a.itemsize if R > 1 else L
    flat = np.lib.stride_tricks.as_strided(a, shape=((R - 1) * rs + L,), strides=(a.itemsize,))
    return flat, rs


def relu_backward(dout, out, dx=None):
    """See minunet.backend.twins.relu_backward: dx = dout where out > 0, else 0.

    A conv's row chunks (C, L) of (C, H*W) planes are read where they lie: no
    contiguous copy first, and the inner loop runs along contiguous memory.
    """
    if dx is None:
        dx = np.empty(out.shape, dtype=dout.dtype)
    elif not dx.flags.c_contiguous or dx.shape != out.shape:
        raise ValueError(f"relu_backward: dx must be contiguous with shape {out.shape}")
    if out.size == 0:
        return dx
    L = out.shape[-1] if out.ndim == 2 else out.size
    (d, ds), (o, os) = _rows(dout.reshape(-1, L)), _rows(out.reshape(-1, L))
    _relu_bwd(d, ds, o, os, dx.reshape(-1), L)
    return dx


# --- the rearrangements around the up-conv GEMM --------------------------------------


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _upconv_scatter(cols, b, p0, out):
    P, _, _, H, W = cols.shape  # (planes, i, j, H, W); plane p is global plane p0 + p = (n, o)
    C = b.size
    for p in prange(P):
        bo = out.dtype.type(b[(p0 + p) % C])
        for y in range(H):
            for i in range(2):
                orow = out[p, 2 * y + i]
                for j in range(2):
                    src = cols[p, i, j, y]
                    for x in range(W):
                        orow[2 * x + j] = src[x] + bo


def upconv_scatter(cols, b):
    """See minunet.backend.twins.upconv_scatter: (N, Cout, 2, 2, H, W) + bias -> (N, Cout, 2H, 2W).

    Plain array code: cols.transpose(0, 1, 4, 2, 5, 3).reshape(N, Cout, 2H, 2W) + b,
    whose innermost copy runs over j, 2 long; the loop here runs along rows.
    """
    N, Cout, _, _, H, W = cols.shape
    c5 = np.ascontiguousarray(cols).reshape(N * Cout, 2, 2, H, W)
    out = np.empty((N * Cout, 2 * H, 2 * W), dtype=cols.dtype)
    b = np.ascontiguousarray(b, dtype=cols.dtype)
    _by_planes(N * Cout, lambda p0, p1: _upconv_scatter(c5[p0:p1], b, p0, out[p0:p1]))
    return out.reshape(N, Cout, 2 * H, 2 * W)


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _upconv_gather(dout, dcols):
    P, _, _, H, W = dcols.shape
    for p in prange(P):
        for y in range(H):
            for i in range(2):
                drow = dout[p, 2 * y + i]
                for j in range(2):
                    dst = dcols[p, i, j, y]
                    for x in range(W):
                        dst[x] = drow[2 * x + j]


def upconv_gather(dout):
    """See minunet.backend.twins.upconv_gather: (N, Cout, 2H, 2W) -> (N, Cout, 2, 2, H, W).

    Plain array code: dout.reshape(N, Cout, H, 2, W, 2).transpose(0, 1, 3, 5, 2, 4), copied.
    """
    N, Cout, H2, W2 = dout.shape
    d3 = np.ascontiguousarray(dout).reshape(N * Cout, H2, W2)
    dcols = np.empty((N * Cout, 2, 2, H2 // 2, W2 // 2), dtype=dout.dtype)
    _by_planes(N * Cout, lambda p0, p1: _upconv_gather(d3[p0:p1], dcols[p0:p1]))
    return dcols.reshape(N, Cout, 2, 2, H2 // 2, W2 // 2)


# --- BatchNorm: the per-channel sums and the fused epilogues (kernels/batchnorm.cu) ---------
# The partial sums follow the kernel's order exactly (work items of BN_CHUNK values; lane t of
# BN_BLOCK adds values t, t+256, ... in float64; then a fixed tree), so the twins agree bit for
# bit. The lanes are a (256,) array that stays in L1: the loop over a row of 256 vectorises.

BN_BLOCK = 256  # kernels/batchnorm.cu: kBnBlock
BN_CHUNK = 2048  # kernels/batchnorm.cu: kBnChunk


def bn_chunks(HW: int) -> int:
    """Work items per plane of HW values: ceil(HW / BN_CHUNK)."""
    return -(-HW // BN_CHUNK)


@njit(cache=True, nogil=True)
def _tree(acc):
    """acc[0] += ... the kernel's fixed tree over BN_BLOCK lanes (acc is overwritten)."""
    half = acc.size // 2
    while half > 0:
        for t in range(half):
            acc[t] += acc[t + half]
        half //= 2
    return acc[0]


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _bn_stats_partials(x2, C, p0, p1, part):
    HW = x2.shape[1]
    nq = part.shape[1]
    for p in prange(p0, p1):
        shift = np.float64(x2[p % C, 0])  # x[0, c, 0, 0]
        s, ss = np.zeros(BN_BLOCK), np.zeros(BN_BLOCK)
        for q in range(nq):
            s[:] = 0.0
            ss[:] = 0.0
            e1 = min(HW, (q + 1) * BN_CHUNK)
            for base in range(q * BN_CHUNK, e1, BN_BLOCK):
                for t in range(min(BN_BLOCK, e1 - base)):
                    v = np.float64(x2[p, base + t]) - shift
                    s[t] += v
                    ss[t] += v * v
            part[p, q, 0] = _tree(s)
            part[p, q, 1] = _tree(ss)


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _bn_grad_partials(d2, h2, p0, p1, part):
    HW = d2.shape[1]
    nq = part.shape[1]
    for p in prange(p0, p1):
        s, sh = np.zeros(BN_BLOCK), np.zeros(BN_BLOCK)
        for q in range(nq):
            s[:] = 0.0
            sh[:] = 0.0
            e1 = min(HW, (q + 1) * BN_CHUNK)
            for base in range(q * BN_CHUNK, e1, BN_BLOCK):
                for t in range(min(BN_BLOCK, e1 - base)):
                    g = np.float64(d2[p, base + t])
                    s[t] += g
                    sh[t] += g * np.float64(h2[p, base + t])
            part[p, q, 0] = _tree(s)
            part[p, q, 1] = _tree(sh)


def _planes(a):
    """(N, C, H, W) -> (N*C, H*W) contiguous view (copied if it must be)."""
    N, C, H, W = a.shape
    return np.ascontiguousarray(a).reshape(N * C, H * W)


def bn_stats_partials(x):
    """See minunet.backend.twins.bn_stats_partials. x (N, C, H, W) -> part (N, C, nq, 2) float64."""
    N, C, H, W = x.shape
    x2 = _planes(x)  # (N*C, H*W)
    part = np.empty((N * C, bn_chunks(H * W), 2))
    _by_planes(N * C, lambda p0, p1: _bn_stats_partials(x2, C, p0, p1, part))
    return part.reshape(N, C, -1, 2)


def bn_grad_partials(dout, xhat):
    """See minunet.backend.twins.bn_grad_partials. -> part (N, C, nq, 2) float64."""
    N, C, H, W = dout.shape
    d2, h2 = _planes(dout), _planes(xhat)  # (N*C, H*W)
    part = np.empty((N * C, bn_chunks(H * W), 2))
    _by_planes(N * C, lambda p0, p1: _bn_grad_partials(d2, h2, p0, p1, part))
    return part.reshape(N, C, -1, 2)


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _bn_normalize(x2, mean, inv_std, gamma, beta, p0, p1, xhat, out):
    C = mean.size
    for p in prange(p0, p1):
        c = p % C
        m, s, g, b = mean[c], inv_std[c], gamma[c], beta[c]
        xr, hr, orow = x2[p], xhat[p], out[p]
        for q in range(xr.size):
            h = (xr[q] - m) * s
            hr[q] = h
            orow[q] = g * h + b


def bn_normalize(x, mean, inv_std, gamma, beta):
    """See minunet.backend.twins.bn_normalize. Returns (xhat, out), both (N, C, H, W)."""
    N, C, H, W = x.shape
    x2 = _planes(x)
    xhat, out = np.empty_like(x2), np.empty_like(x2)
    par = [np.ascontiguousarray(a, dtype=x.dtype) for a in (mean, inv_std, gamma, beta)]
    _by_planes(N * C, lambda p0, p1: _bn_normalize(x2, *par, p0, p1, xhat, out))
    return xhat.reshape(x.shape), out.reshape(x.shape)


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _bn_backward_dx(d2, h2, k, m1, m2, p0, p1, dx):
    C = k.size
    for p in prange(p0, p1):
        c = p % C
        kc, a, b = k[c], m1[c], m2[c]
        dr, hr, xr = d2[p], h2[p], dx[p]
        for q in range(dr.size):
            xr[q] = kc * ((dr[q] - a) - hr[q] * b)


def bn_backward_dx(dout, xhat, k, m1, m2):
    """See minunet.backend.twins.bn_backward_dx. Returns dx (N, C, H, W)."""
    N, C, H, W = dout.shape
    d2, h2 = _planes(dout), _planes(xhat)
    dx = np.empty_like(d2)
    par = [np.ascontiguousarray(a, dtype=dout.dtype) for a in (k, m1, m2)]
    _by_planes(N * C, lambda p0, p1: _bn_backward_dx(d2, h2, *par, p0, p1, dx))
    return dx.reshape(dout.shape)


# --- bilinear up-sampling and its adjoint (kernels/resample.cu) -----------------------------
# The taps are computed in float64 as the kernel and the plain op's interpolation matrix do;
# the sums run in the kernel's order: the twins agree bit for bit.


@njit(cache=True, nogil=True)
def _bilinear_taps(S, f, align, dtype_one):
    """Per output index o of an axis: i0, i1 (int64) and the weights w0, w1 (of x's dtype)."""
    So = S * f
    i0 = np.empty(So, dtype=np.int64)
    i1 = np.empty(So, dtype=np.int64)
    w0 = np.empty(So, dtype=dtype_one.dtype)
    w1 = np.empty(So, dtype=dtype_one.dtype)
    for o in range(So):
        if align:
            t = o * ((S - 1) / (So - 1)) if So > 1 else 0.0
        else:
            t = max((o + 0.5) / f - 0.5, 0.0)
        i = min(int(t), S - 1)
        lam = t - i
        i0[o], i1[o] = i, min(i + 1, S - 1)
        w0[o], w1[o] = 1.0 - lam, lam
    return i0, i1, w0, w1


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _bilinear_forward(x3, f, align, p0, p1, out):
    _, H, W = x3.shape
    one = np.ones(1, dtype=x3.dtype)
    y0, y1, w0y, w1y = _bilinear_taps(H, f, align, one)
    x0, x1, w0x, w1x = _bilinear_taps(W, f, align, one)
    for p in prange(p0, p1):
        src, dst = x3[p], out[p]
        for Y in range(H * f):
            ra, rb = src[y0[Y]], src[y1[Y]]
            a, b = w0y[Y], w1y[Y]
            orow = dst[Y]
            for X in range(W * f):
                r0 = w0x[X] * ra[x0[X]] + w1x[X] * ra[x1[X]]
                r1 = w0x[X] * rb[x0[X]] + w1x[X] * rb[x1[X]]
                orow[X] = a * r0 + b * r1


def bilinear_forward(x, factor, align_corners):
    """See minunet.backend.twins.bilinear_forward. x (N, C, H, W) -> (N, C, f*H, f*W)."""
    N, C, H, W = x.shape
    f = int(factor)
    x3 = np.ascontiguousarray(x).reshape(N * C, H, W)  # (planes, H, W)
    out = np.empty((N * C, f * H, f * W), dtype=x.dtype)
    _by_planes(N * C, lambda p0, p1: _bilinear_forward(x3, f, bool(align_corners), p0, p1, out))
    return out.reshape(N, C, f * H, f * W)


@njit(cache=True, nogil=True)
def _band(i, S, So):
    """The outputs o (lo <= o < hi) whose taps can include input index i (resample.cu)."""
    if S == 1:
        return 0, So
    f = So // S
    lo_b = (i - 1) * (So - 1) // (S - 1) if i >= 1 else 0
    hi_b = (i + 1) * (So - 1) // (S - 1) + 2
    lo = max(0, min(f * (i - 1), lo_b) - 1)
    hi = min(So, max(f * (i + 2), hi_b))
    return lo, hi


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _bilinear_adjoint(src, at, p0, p1, dst):
    # at = a.T (S, So), contiguous: the weights of one input index lie in one row
    _, So, Q = src.shape
    S = dst.shape[1]
    for p in prange(p0, p1):
        for i in range(S):
            lo, hi = _band(i, S, So)
            wrow = at[i]
            if Q == 1:  # along W: a dot product over the band
                acc = dst.dtype.type(0)
                for o in range(lo, hi):
                    acc += wrow[o] * src[p, o, 0]
                dst[p, i, 0] = acc
                continue
            drow = dst[p, i]  # along H: whole rows of Q values at a time
            drow[:] = 0
            for o in range(lo, hi):
                w = wrow[o]
                srow = src[p, o]
                for q in range(Q):
                    drow[q] += w * srow[q]


def bilinear_adjoint(src, a):
    """See minunet.backend.twins.bilinear_adjoint. src (P, So, Q), a (So, S) -> (P, S, Q)."""
    P, So, Q = src.shape
    S = a.shape[1]
    src = np.ascontiguousarray(src)
    at = np.ascontiguousarray(a.T, dtype=src.dtype)  # (S, So)
    dst = np.empty((P, S, Q), dtype=src.dtype)
    _by_planes(P, lambda p0, p1: _bilinear_adjoint(src, at, p0, p1, dst))
    return dst


# --- depthwise convolution, padded and strided (kernels/depthwise.cu) ------------------------
# Loops along rows: for each tap (i, j) the output columns whose input column lies inside the
# image form one range [xa, xb), so the inner loop has no test. The forward and dx add each
# pixel's terms in the kernel's (i, j) order: bit for bit. dw/db sum along rows in float64.


@njit(cache=True, nogil=True)
def _valid(j, s, p, W, Wo):
    """The output columns xx with 0 <= s*xx + j - p < W: the range [xa, xb)."""
    xa = max(0, -((j - p) // s))  # ceil((p - j) / s), at least 0
    xb = min(Wo, (W - 1 - j + p) // s + 1) if W - 1 - j + p >= 0 else 0
    return xa, max(xa, xb)


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _depthwise_forward(x, w, b, s, p, q0, q1, out):
    N, C, H, W = x.shape
    _, Co, Ho, Wo = out.shape
    m, k = Co // C, w.shape[2]
    for pl in prange(q0, q1):  # plane (n, o)
        n, o = pl // Co, pl % Co
        src, dst, wo = x[n, o // m], out[n, o], w[o, 0]
        for y in range(Ho):
            orow = dst[y]
            orow[:] = 0
            for i in range(k):
                iy = s * y + i - p
                if iy < 0 or iy >= H:
                    continue
                xrow = src[iy]
                for j in range(k):
                    xa, xb = _valid(j, s, p, W, Wo)
                    wij = wo[i, j]
                    for xx in range(xa, xb):
                        orow[xx] += wij * xrow[s * xx + j - p]
            for xx in range(Wo):
                orow[xx] += b[o]


def depthwise_forward(x, w, b, stride, padding):
    """See minunet.backend.twins.depthwise_forward. x (N, C, H, W), w (Co, 1, k, k), b (Co,)."""
    N, C, H, W = x.shape
    Co, _, k, _ = w.shape
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w, dtype=x.dtype)
    b = np.ascontiguousarray(b, dtype=x.dtype)
    out = np.empty((N, Co, Ho, Wo), dtype=x.dtype)
    _by_planes(N * Co, lambda q0, q1: _depthwise_forward(x, w, b, stride, padding, q0, q1, out))
    return out


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _depthwise_backward_dx(dout, w, s, p, q0, q1, dx):
    N, C, H, W = dx.shape
    _, Co, Ho, Wo = dout.shape
    m, k = Co // C, w.shape[2]
    for pl in prange(q0, q1):  # plane (n, c)
        n, c = pl // C, pl % C
        for Y in range(H):
            drow = dx[n, c, Y]
            drow[:] = 0
            for r in range(m):
                o = c * m + r
                for i in range(k):
                    ry = Y + p - i
                    if ry < 0 or ry % s != 0 or ry // s >= Ho:
                        continue
                    dorow = dout[n, o, ry // s]
                    for j in range(k):
                        xa, xb = _valid(j, s, p, W, Wo)
                        wij = w[o, 0, i, j]
                        for xx in range(xa, xb):
                            drow[s * xx + j - p] += wij * dorow[xx]


def depthwise_backward_dx(dout, w, x_shape, stride, padding):
    """See minunet.backend.twins.depthwise_backward_dx. Returns dx of x_shape (N, C, H, W)."""
    N, C, H, W = x_shape
    dout = np.ascontiguousarray(dout)
    w = np.ascontiguousarray(w, dtype=dout.dtype)
    dx = np.empty((N, C, H, W), dtype=dout.dtype)
    _by_planes(N * C, lambda q0, q1: _depthwise_backward_dx(dout, w, stride, padding, q0, q1, dx))
    return dx


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _depthwise_dw(dout, x, k, s, p, q0, q1, part):
    N, C, H, W = x.shape
    _, Co, Ho, Wo = dout.shape
    m = Co // C
    for pl in prange(q0, q1):  # plane (n, o)
        n, o = pl // Co, pl % Co
        src, d = x[n, o // m], dout[n, o]
        for i in range(k):
            for j in range(k):
                xa, xb = _valid(j, s, p, W, Wo)
                acc = 0.0
                for y in range(Ho):
                    iy = s * y + i - p
                    if iy < 0 or iy >= H:
                        continue
                    for xx in range(xa, xb):
                        acc += np.float64(d[y, xx]) * np.float64(src[iy, s * xx + j - p])
                part[n, o, i * k + j] = acc
        acc = 0.0
        for y in range(Ho):
            for xx in range(Wo):
                acc += np.float64(d[y, xx])
        part[n, o, k * k] = acc


def depthwise_dw_partials(dout, x, k, stride, padding):
    """See minunet.backend.twins.depthwise_dw_partials. -> (N, Co, k*k + 1) float64."""
    N, Co = dout.shape[:2]
    dout, x = np.ascontiguousarray(dout), np.ascontiguousarray(x)
    part = np.empty((N, Co, k * k + 1))
    _by_planes(N * Co, lambda q0, q1: _depthwise_dw(dout, x, k, stride, padding, q0, q1, part))
    return part


# --- im2col / col2im with zero padding and stride (kernels/im2col.cu) ------------------------
# As im2col above: one strided slice copy per kernel offset (i, j), over the output rows and
# columns whose input pixel lies inside the image; the padding's entries are zero stripes.
# col2im gathers as _col2im does, in (i, j) order per pixel: bit for bit with the kernel.


def _inside(i, s, p, y0, y1, H):
    """The output rows y in [y0, y1) with 0 <= s*y + i - p < H: the range [ya, yb)."""
    ya = max(y0, -((i - p) // s))
    yb = min(y1, (H - 1 - i + p) // s + 1) if H - 1 - i + p >= 0 else y0
    return ya, max(ya, yb)


def im2col_padded(x, k, stride, padding, y0, y1, out):
    """See minunet.backend.twins.im2col_padded. x (C, H, W); out (C*k*k, (y1-y0)*Wo)."""
    C, H, W = x.shape
    s, p = stride, padding
    Wo = (W + 2 * p - k) // s + 1
    o5 = out.reshape(C, k, k, y1 - y0, Wo)  # (C, k, k, rows, Wo) view of out
    for i in range(k):
        ya, yb = _inside(i, s, p, y0, y1, H)
        for j in range(k):
            xa, xb = _inside(j, s, p, 0, Wo, W)
            o = o5[:, i, j]  # (C, rows, Wo)
            o[:, : ya - y0], o[:, yb - y0 :], o[:, :, :xa], o[:, :, xb:] = 0, 0, 0, 0
            if ya < yb and xa < xb:
                o[:, ya - y0 : yb - y0, xa:xb] = x[:, s * ya + i - p : s * (yb - 1) + i - p + 1 : s,
                                                   s * xa + j - p : s * (xb - 1) + j - p + 1 : s]
    return out


@njit(parallel=PARALLEL, cache=True, nogil=True)
def _col2im_padded(cols, k, s, p, y0, y1, dx):
    C, H, W = dx.shape
    Wo = (W + 2 * p - k) // s + 1
    for c in prange(C):
        for Y in range(max(0, s * y0 - p), min(H, s * (y1 - 1) - p + k)):  # the chunk's band
            drow = dx[c, Y]
            for i in range(k):  # kernel rows in order: the kernel's order of additions
                r = Y + p - i
                if r < 0 or r % s != 0 or r // s < y0 or r // s >= y1:
                    continue
                y = r // s - y0  # the chunk's output row that read input row Y at offset i
                for j in range(k):
                    xa, xb = _valid(j, s, p, W, Wo)
                    src = cols[(c * k + i) * k + j, y * Wo : (y + 1) * Wo]
                    for xx in range(xa, xb):
                        drow[s * xx + j - p] += src[xx]


def col2im_padded(cols, k, stride, padding, y0, y1, dx):
    """See minunet.backend.twins.col2im_padded. dx (C, H, W) += the gather of cols."""
    _col2im_padded(cols, k, stride, padding, y0, y1, dx)
    return dx
