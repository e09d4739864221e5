"""CPU loops of a 3x3 convolution without columns, for layers with few channels.

The fast conv (minunet/fast/conv.py) multiplies im2col's columns by the weights with
one BLAS GEMM per row chunk. With few channels that GEMM is skinny (Cout = 8-16
rows: BLAS runs it at 20-60 GFLOP/s) and the column copy costs as much as the
product; these loops read the image's rows in place instead:

    conv3_rows     the forward: out = epilogue(b + w * x), four output rows per pass
    grad_rows      the backward's input: the gradient after the ReLU mask, zero-padded
                   (for dx) and as flat rows (for dw)
    conv3_rows     again for dx: the valid conv of the padded gradient with the flipped,
                   transposed weights (a gather: each dx row is written by one chunk,
                   no col2im, no halo rows)
    conv3_dw_rows  dw, db: nine dot products per (o, c) over the chunk's rows as one run

The trick of conv3_rows: for one (o, c) pair its inner loop runs along four output
rows at once, so each of the six input rows it loads feeds up to three of them
(a load feeds 2-3 multiply-adds, not 1 as in a one-row loop). Numba (LLVM)
vectorises the loop along the row; `fastmath={"contract"}` lets it fuse each
multiply and add (FMA), a fixed choice for a given build: the same numbers run to
run. Measured on one core of a 2-core AMD EPYC (AVX-512), float32, CPU time of one
thread, 8 -> 8 channels at 312 x 312 output: 82 GFLOP/s; two rows per pass 67; one
row (backend/cpu.py direct_conv_rows) 54; im2col + GEMM 29, its GEMM alone 49.
Four output channels per pass (instead of four rows of one): 10. minunet/fast/conv.py
`_plan` holds the per-layer numbers that choose these loops.

All loops are serial (see backend/cpu.py: the fast conv's row chunks already run on
every core) and `nogil`, compiled on first use and cached on disk. Tested against
brute-force loops in tests/fast/test_conv_paths.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit

FM = {"contract"}  # FMA: one rounding per multiply-add; no reassociation


@njit(cache=True, nogil=True, fastmath=FM)
def _conv3_rows(x1, xr0, w, b, relu, out3, or0, R):
    Cout, Cin = w.shape[0], w.shape[1]
    Wo = out3.shape[2]
    z = out3.dtype.type(0)
    for o in range(Cout):
        bo = out3.dtype.type(b[o])
        q = 0
        while q < R:
            n = min(4, R - q)  # output rows in this pass: 4, or the chunk's last 1-3
            ya, yo = xr0 + q, or0 + q  # the pass's first input and output row
            for t in range(n):
                out3[o, yo + t, :] = bo
            for c in range(Cin):  # the sum in (c, i, j) order, c outermost
                p = w[o, c]
                p00, p01, p02 = p[0, 0], p[0, 1], p[0, 2]
                p10, p11, p12 = p[1, 0], p[1, 1], p[1, 2]
                p20, p21, p22 = p[2, 0], p[2, 1], p[2, 2]
                if n == 4:
                    a0, a1, a2 = x1[c, ya], x1[c, ya + 1], x1[c, ya + 2]
                    a3, a4, a5 = x1[c, ya + 3], x1[c, ya + 4], x1[c, ya + 5]
                    oa, ob, oc, od = out3[o, yo], out3[o, yo + 1], out3[o, yo + 2], out3[o, yo + 3]
                    for xx in range(Wo):
                        v0, v1, v2 = a0[xx], a0[xx + 1], a0[xx + 2]
                        v3, v4, v5 = a1[xx], a1[xx + 1], a1[xx + 2]
                        v6, v7, v8 = a2[xx], a2[xx + 1], a2[xx + 2]
                        v9, v10, v11 = a3[xx], a3[xx + 1], a3[xx + 2]
                        u0, u1, u2 = a4[xx], a4[xx + 1], a4[xx + 2]
                        u3, u4, u5 = a5[xx], a5[xx + 1], a5[xx + 2]
                        oa[xx] += (p00 * v0 + p01 * v1 + p02 * v2 + p10 * v3 + p11 * v4
                                   + p12 * v5 + p20 * v6 + p21 * v7 + p22 * v8)
                        ob[xx] += (p00 * v3 + p01 * v4 + p02 * v5 + p10 * v6 + p11 * v7
                                   + p12 * v8 + p20 * v9 + p21 * v10 + p22 * v11)
                        oc[xx] += (p00 * v6 + p01 * v7 + p02 * v8 + p10 * v9 + p11 * v10
                                   + p12 * v11 + p20 * u0 + p21 * u1 + p22 * u2)
                        od[xx] += (p00 * v9 + p01 * v10 + p02 * v11 + p10 * u0 + p11 * u1
                                   + p12 * u2 + p20 * u3 + p21 * u4 + p22 * u5)
                    continue
                for t in range(n):  # the chunk's last 1-3 rows, one at a time
                    a0, a1, a2 = x1[c, ya + t], x1[c, ya + t + 1], x1[c, ya + t + 2]
                    oa = out3[o, yo + t]
                    for xx in range(Wo):
                        oa[xx] += (p00 * a0[xx] + p01 * a0[xx + 1] + p02 * a0[xx + 2]
                                   + p10 * a1[xx] + p11 * a1[xx + 1] + p12 * a1[xx + 2]
                                   + p20 * a2[xx] + p21 * a2[xx + 1] + p22 * a2[xx + 2])
            if relu:  # the epilogue, as backend/cpu.py _bias_relu: a NaN passes
                for t in range(n):
                    oa = out3[o, yo + t]
                    for xx in range(Wo):
                        v = oa[xx]
                        oa[xx] = z if v <= 0 else v
            q += n


def conv3_rows(x1, xr0, w, b, relu, out3, or0, R):
    """R output rows of a valid 3x3 conv of one image, written in place without columns.

    x1 (Cin, Hx, Wo+2) and out3 (Cout, Ho3, Wo) C-contiguous, w (Cout, Cin, 3, 3), b (Cout,):
    for q < R, out3[o, or0+q, xx] = epi(b[o] + sum_{c,i,j} w[o,c,i,j] * x1[c, xr0+q+i, xx+j]),
    epi = max(., 0) if relu else the identity. Returns out3.
    """
    Cout, Wo = out3.shape[0], out3.shape[2]
    if w.shape != (Cout, x1.shape[0], 3, 3) or x1.shape[2] != Wo + 2:
        raise ValueError(f"conv3_rows: x1 (Cin, H, W), w (Cout, Cin, 3, 3), out3 (Cout, Ho, W-2); "
                         f"got {x1.shape}, {w.shape}, {out3.shape}")
    if not (x1.flags.c_contiguous and out3.flags.c_contiguous):
        raise ValueError("conv3_rows: x1 and out3 must be C-contiguous")
    if R > 0 and (min(xr0, or0) < 0 or xr0 + R + 2 > x1.shape[1] or or0 + R > out3.shape[1]):
        raise ValueError(f"conv3_rows: rows out of range (xr0 {xr0}, or0 {or0}, R {R})")
    _conv3_rows(x1, xr0, np.ascontiguousarray(w, dtype=x1.dtype), b.astype(x1.dtype, copy=False),
                relu, out3, or0, R)
    return out3


@njit(cache=True, nogil=True)
def _grad_rows(d3, o3, relu, r0, r1, y0, y1, gp, gf):
    Cout, Ho, Wo = d3.shape
    W = Wo + 2
    z = gp.dtype.type(0)
    g = np.empty(Wo, dtype=gp.dtype)
    for o in range(Cout):
        for r in range(min(r0, y0), max(r1, y1)):
            inside = 0 <= r < Ho
            if inside:  # the row of g: d3 where o3 > 0
                drow, orow = d3[o, r], o3[o, r]
                if relu:
                    for xx in range(Wo):
                        g[xx] = drow[xx] if orow[xx] > 0 else z
                else:
                    for xx in range(Wo):
                        g[xx] = drow[xx]
            if r0 <= r < r1:
                prow = gp[o, r - r0]
                if not inside:  # above or below the image: zeros
                    prow[:] = z
                else:
                    prow[0], prow[1], prow[Wo + 2], prow[Wo + 3] = z, z, z, z
                    for xx in range(Wo):
                        prow[xx + 2] = g[xx]
            if y0 <= r < y1:
                frow = gf[o, (r - y0) * W : (r - y0 + 1) * W]
                for xx in range(Wo):
                    frow[xx] = g[xx]
                frow[Wo], frow[Wo + 1] = z, z


def grad_rows(d3, o3, relu, r0, r1, y0, y1, gp, gf):
    """The gradient before a fused ReLU, in the two layouts the backward loops read.

    d3 (Cout, Ho, Wo) the gradient of the output, o3 (Cout, Ho, Wo) the output (its mask when
    relu); g = d3 where o3 > 0 (all of d3 if not relu). Writes, both C-contiguous:
    gp (Cout, r1-r0, Wo+4): rows r0..r1-1 of g padded by 2 zeros on every side, rows outside
      0..Ho-1 zeros (r0 may be negative, r1 may pass Ho; r1 = r0 writes nothing): the
      input of dx, a valid conv of it (conv3_rows, winograd_input);
    gf (Cout, (y1-y0)*(Wo+2)): rows y0..y1-1 (inside 0..Ho-1) one after the other, each Wo
      values and 2 zeros: the input of dw (conv3_dw_rows).
    Returns (gp, gf).
    """
    Cout, Ho, Wo = d3.shape
    if gp.shape != (Cout, r1 - r0, Wo + 4) or gf.shape != (Cout, (y1 - y0) * (Wo + 2)):
        raise ValueError(f"grad_rows: gp (Cout, r1-r0, Wo+4), gf (Cout, (y1-y0)*(Wo+2)); got "
                         f"{gp.shape}, {gf.shape}")
    contiguous = gp.flags.c_contiguous and gf.flags.c_contiguous
    if not (0 <= y0 <= y1 <= Ho and r0 <= r1 and contiguous):
        raise ValueError(f"grad_rows: need 0 <= y0 <= y1 <= Ho, r0 <= r1, C-contiguous gp, gf; "
                         f"got {(y0, y1, r0, r1)}")
    _grad_rows(d3, o3, relu, r0, r1, y0, y1, gp, gf)
    return gp, gf


@njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _conv3_dw_rows(xf, W, gf, y0, R, dw, db):
    Cout, Cin = dw.shape[0], dw.shape[1]
    P = R * W - 2  # the chunk's rows as one run; the last row's two padding zeros left out
    z = xf.dtype.type(0)
    for o in range(Cout):
        acc = 0.0
        g = gf[o, :P]
        for p in range(P):
            acc += g[p]
        db[o] += acc
    o = 0
    while o < Cout:  # two output channels at a time share the nine rows of x they read
        two = o + 1 < Cout
        g = gf[o, :P]
        h = gf[o + 1, :P] if two else g
        for c in range(Cin):
            s = y0 * W
            r0, r1, r2 = xf[c, s : s + P + 2], xf[c, s + W : s + W + P + 2], \
                xf[c, s + 2 * W : s + 2 * W + P + 2]
            a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = z
            b00 = b01 = b02 = b10 = b11 = b12 = b20 = b21 = b22 = z
            for p in range(P):
                gv, hv = g[p], h[p]
                v0, v1, v2 = r0[p], r0[p + 1], r0[p + 2]
                v3, v4, v5 = r1[p], r1[p + 1], r1[p + 2]
                v6, v7, v8 = r2[p], r2[p + 1], r2[p + 2]
                a00 += gv * v0
                a01 += gv * v1
                a02 += gv * v2
                a10 += gv * v3
                a11 += gv * v4
                a12 += gv * v5
                a20 += gv * v6
                a21 += gv * v7
                a22 += gv * v8
                b00 += hv * v0
                b01 += hv * v1
                b02 += hv * v2
                b10 += hv * v3
                b11 += hv * v4
                b12 += hv * v5
                b20 += hv * v6
                b21 += hv * v7
                b22 += hv * v8
            d = dw[o, c]
            d[0, 0] += a00
            d[0, 1] += a01
            d[0, 2] += a02
            d[1, 0] += a10
            d[1, 1] += a11
            d[1, 2] += a12
            d[2, 0] += a20
            d[2, 1] += a21
            d[2, 2] += a22
            if two:
                d = dw[o + 1, c]
                d[0, 0] += b00
                d[0, 1] += b01
                d[0, 2] += b02
                d[1, 0] += b10
                d[1, 1] += b11
                d[1, 2] += b12
                d[2, 0] += b20
                d[2, 1] += b21
                d[2, 2] += b22
        o += 2


def conv3_dw_rows(xf, W, gf, y0, R, dw, db):
    """dw, db of a valid 3x3 conv from R output rows y0.. of one image, without columns.

    xf (Cin, H*W) the input's flat planes; gf (Cout, R*W) grad_rows' flat rows of g (each
    row's W-2 values, then two zeros); dw (Cout, Cin, 3, 3) and db (Cout,) float64 or of x's
    dtype (the fast conv's per-worker sums at many channels), added to:
    dw[o,c,i,j] += sum_{q<R, xx<W-2} g[o, y0+q, xx] * x[c, y0+q+i, xx+j], db[o] += sum of g.

    The trick: in flat rows of the same width W the R rows are ONE run of R*W - 2 products
    (x's columns W-2, W-1 meet the gradient's padding zeros), so each of the nine sums is one
    vectorised reduction per chunk, not one per row (32 -> 32 channels at 72 px, one
    layer: 3.2 -> 1.3 ms); two output channels at a time share the nine loads of x (a
    further 10-15%). The sums run in x's dtype
    (`reassoc`: a fixed order for a given build, the same numbers run to run), then add to
    dw. x's values must be finite (a padding zero times inf is NaN).
    """
    sums = (np.dtype(np.float64), xf.dtype)
    if dw.dtype not in sums or db.dtype != dw.dtype or xf.shape[1] < (y0 + R + 2) * W:
        raise ValueError("conv3_dw_rows: dw, db both float64 or both x's dtype, and rows "
                         "y0..y0+R+1 inside x")
    if gf.shape[1] < R * W or not (xf.flags.c_contiguous and gf.flags.c_contiguous):
        raise ValueError("conv3_dw_rows: xf, gf C-contiguous, gf (Cout, R*W)")
    if R > 0:
        _conv3_dw_rows(xf, W, gf, y0, R, dw, db)
