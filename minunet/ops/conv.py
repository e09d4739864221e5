"""Valid 2-D convolution (stride 1, no padding) by im2col + GEMM, and its backward.

The U-Net's 3x3 convolutions are "unpadded" (Ronneberger et al. 2015, Sec. 2),
so every 3x3 layer shrinks the map by 2 pixels; the final layer is a 1x1 conv.

im2col turns the convolution into one matrix product. For one image x (C, H, W)
and a k x k kernel, the column matrix has one row per (c, i, j) and one column
per output pixel (y, xx):

    cols[(c*k + i)*k + j, y*Wo + xx] = x[c, y + i, xx + j]      (C*k*k, Ho*Wo)
    out = w.reshape(Cout, C*k*k) @ cols + b                      (Cout, Ho*Wo)

The backward pass is three products with the same pieces:

    dw   = dout @ cols.T = (cols @ dout.T).T   (Cout, C*k*k)
    dcol = w.T @ dout                    (C*k*k, Ho*Wo)
    dx   = col2im(dcol)                  each pixel sums the entries copied from it
    db   = dout summed over N, Ho, Wo

For the paper's second layer (64 channels, 568 x 568 output) the column matrix
would be 64*9*568*568*4 bytes = 743 MB, so both passes work on chunks of output
rows whose columns fit `backend.chunk_bytes` (4 MB on the CPU, small enough to
stay in cache between im2col and the GEMM; at most `WORKSPACE_BYTES` = 64 MB),
in a reused buffer. The backward recomputes each chunk's columns rather than
keeping them.
"""

from __future__ import annotations

from typing import NamedTuple

from .. import backend
from ._check import check_float, check_ndim, check_same_dtype


class Conv2dCache(NamedTuple):
    x: object  # (N, Cin, H, W) input, contiguous
    w: object  # (Cout, Cin, k, k) weight
    out: object  # (N, Cout, Ho, Wo) output when a ReLU was fused in (its mask), else None


# --- the plain references (readable; tests and tutorials compare against them) ---


def im2col_reference(x, k, y0, y1):
    """Column matrix of output rows y0..y1-1 of one image, in plain array code.

    x: (C, H, W). Returns (C*k*k, (y1-y0)*Wo), Wo = W-k+1, laid out as in the
    module docstring: one slice copy per kernel offset (i, j), none per pixel.
    """
    xp = backend.xp_of(x)
    C, H, W = x.shape
    Wo = W - k + 1
    rows = y1 - y0
    cols = xp.empty((C, k, k, rows, Wo), dtype=x.dtype)  # (C, k, k, rows, Wo)
    for i in range(k):
        for j in range(k):
            cols[:, i, j] = x[:, y0 + i : y1 + i, j : j + Wo]
    return cols.reshape(C * k * k, rows * Wo)  # (C*k*k, rows*Wo)


def col2im_reference(cols, k, y0, y1, dx):
    """Adjoint of `im2col_reference`: dx (C, H, W) += the column gradients. Returns dx."""
    C, H, W = dx.shape
    Wo = W - k + 1
    rows = y1 - y0
    c5 = cols.reshape(C, k, k, rows, Wo)  # (C, k, k, rows, Wo)
    for i in range(k):
        for j in range(k):
            dx[:, y0 + i : y1 + i, j : j + Wo] += c5[:, i, j]
    return dx


# --- the op -----------------------------------------------------------------------


def _check_conv_inputs(x, w, b):
    check_ndim("conv2d input x", x, 4, "N, Cin, H, W")
    check_ndim("conv2d weight w", w, 4, "Cout, Cin, k, k")
    check_ndim("conv2d bias b", b, 1, "Cout")
    check_float("conv2d input x", x)
    check_same_dtype(x=x, w=w, b=b)
    N, Cin, H, W = x.shape
    Cout, Cin_w, kh, kw = w.shape
    if kh != kw:
        raise ValueError(f"conv2d supports square kernels only, got weight shape {w.shape}")
    if Cin_w != Cin:
        raise ValueError(
            f"conv2d channel mismatch: input x {x.shape} has {Cin} channels but weight "
            f"{w.shape} expects {Cin_w} (weight layout is Cout, Cin, k, k)"
        )
    if b.shape != (Cout,):
        raise ValueError(f"conv2d bias shape {b.shape} does not match weight {w.shape}: "
                         f"expected ({Cout},)")
    if kh > H or kw > W:
        raise ValueError(f"conv2d kernel {kh}x{kw} is larger than the input image {H}x{W} "
                         f"(x shape {x.shape}); a valid convolution needs H, W >= k")


def _row_chunks(Ho, xp, row_bytes):
    """Split output rows 0..Ho into chunks whose column matrix fits `backend.chunk_bytes`."""
    step = max(1, min(Ho, backend.chunk_bytes(xp) // max(1, row_bytes)))
    return [(y0, min(Ho, y0 + step)) for y0 in range(0, Ho, step)]


def _columns(x1, k, y0, y1):
    """Columns of one image x1 (C, H, W) for output rows y0..y1-1, in the workspace."""
    C, H, W = x1.shape
    if k == 1:  # a 1x1 conv needs no copy: the image itself is the column matrix
        return x1.reshape(C, H * W)[:, y0 * W : y1 * W]  # (C, rows*W)
    Wo = W - k + 1
    xp = backend.xp_of(x1)
    buf = backend.workspace(xp, x1.dtype, C * k * k * (y1 - y0) * Wo, slot=0)
    return backend.im2col(x1, k, y0, y1, buf.reshape(C * k * k, (y1 - y0) * Wo))


def conv2d_forward(x, w, b, relu=False):
    """Valid 2-D convolution (cross-correlation), stride 1, with bias (and a fused ReLU).

    x: (N, Cin, H, W); w: (Cout, Cin, k, k); b: (Cout,)
    out[n, o, y, xx] = b[o] + sum_{c,i,j} w[o, c, i, j] * x[n, c, y+i, xx+j]
    relu=True applies max(out, 0) in the same pass as the bias (the U-Net's 3x3
    layers): the same result as relu_forward(conv2d_forward(x, w, b)), one pass
    over memory fewer.
    Returns out (N, Cout, H-k+1, W-k+1) and a Conv2dCache.
    """
    _check_conv_inputs(x, w, b)
    xp = backend.xp_of(x, w, b)
    x = xp.ascontiguousarray(x)
    N, Cin, H, W = x.shape
    Cout, _, k, _ = w.shape
    Ho, Wo = H - k + 1, W - k + 1
    w2 = xp.ascontiguousarray(w).reshape(Cout, Cin * k * k)  # (Cout, Cin*k*k)
    out = xp.empty((N, Cout, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        o2 = out[n].reshape(Cout, Ho * Wo)  # (Cout, Ho*Wo) view of out[n]
        for y0, y1 in _row_chunks(Ho, xp, Cin * k * k * Wo * x.itemsize):
            cols = _columns(x[n], k, y0, y1)  # (Cin*k*k, (y1-y0)*Wo)
            xp.matmul(w2, cols, out=o2[:, y0 * Wo : y1 * Wo])
    if relu:
        backend.bias_relu_forward(out, b)
    else:
        out += b[None, :, None, None]
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
    if dout.shape != (N, Cout, Ho, Wo):
        raise ValueError(f"conv2d_backward: dout shape {dout.shape} does not match the "
                         f"forward output {(N, Cout, Ho, Wo)}")
    dout = xp.ascontiguousarray(dout)
    w2 = xp.ascontiguousarray(w).reshape(Cout, Cin * k * k)  # (Cout, Cin*k*k)
    dw2 = xp.zeros((Cout, Cin * k * k), dtype=x.dtype)  # (Cout, Cin*k*k)
    db = xp.zeros(Cout, dtype=x.dtype)
    dx = xp.zeros_like(x) if need_dx else None
    for n in range(N):
        d2 = dout[n].reshape(Cout, Ho * Wo)  # (Cout, Ho*Wo)
        for y0, y1 in _row_chunks(Ho, xp, Cin * k * k * Wo * x.itemsize):
            dchunk = d2[:, y0 * Wo : y1 * Wo]  # (Cout, L), L = (y1-y0)*Wo
            if out is not None:  # the fused ReLU: the gradient passes where the output is > 0
                o_chunk = out[n].reshape(Cout, Ho * Wo)[:, y0 * Wo : y1 * Wo]  # (Cout, L)
                dchunk = backend.relu_backward(dchunk, o_chunk)  # chunk by chunk: in cache
            db += dchunk.sum(axis=1)
            cols = _columns(x[n], k, y0, y1)  # (Cin*k*k, L)
            dw2 += (cols @ dchunk.T).T  # (Cout, Cin*k*k); this operand order is the
            # fast one for BLAS when L is long and Cout, Cin*k*k are short
            if not need_dx:
                continue
            if k == 1:  # col2im of a 1x1 conv is the identity
                dx[n].reshape(Cin, H * W)[:, y0 * W : y1 * W] += w2.T @ dchunk
                continue
            dbuf = backend.workspace(xp, x.dtype, Cin * k * k * (y1 - y0) * Wo, slot=1)
            dcols = xp.matmul(w2.T, dchunk, out=dbuf.reshape(Cin * k * k, (y1 - y0) * Wo))
            backend.col2im(dcols, k, y0, y1, dx[n])
    return dx, dw2.reshape(w.shape), db
