"""Winograd's minimal filtering F(2x2, 3x3) for the CPU's 3x3 convolutions with many channels.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016): a 2x2
block of a valid 3x3 correlation of a 4x4 input tile d with a 3x3 filter g is

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, 4x4)

        B^T = [1  0 -1  0]    G = [ 1    0    0 ]    A^T = [1 1  1  0]
              [0  1  1  0]        [1/2  1/2  1/2]          [0 1 -1 -1]
              [0 -1  1  0]        [1/2 -1/2  1/2]
              [0  1  0 -1]        [ 0    0    1 ]

and over channels the elementwise products become 16 matrix products, one per entry
xi = 4a + b of the 4x4 transform: M[xi] = U[xi] @ V[xi], U[xi] (Cout, Cin) the
transformed filters, V[xi] (Cin, tiles) the transformed input tiles. What it buys:
16 multiplies per 2x2 outputs instead of 36 (2.25x fewer GEMM flops), and V holds
16/4 = 4 values per output pixel and channel where im2col's columns hold 9, so the
copy before the GEMM moves less too. The fast conv (minunet/fast/conv.py) runs it
per row chunk:

    winograd_filter(w)                        U = G g G^T, (16, Cout, Cin), once per call
                                              (flip=True: dx's, from w itself)
    winograd_input(x1, xr0, nt, V)            V (16, Cin, nt*Tw): nt rows of tiles
    numpy.matmul(U, V, out=M)                 16 BLAS GEMMs, M (16, Cout, nt*Tw)
    winograd_output(M, b, relu, out3, or0, nt)  A^T M A, bias and ReLU fused

The same three steps give dx: the input gradient of a valid conv is the valid conv
of the gradient zero-padded by 2 with the flipped, transposed filters (a gather per
dx row, no col2im).

Rounding: the transforms add and subtract (and halve, in G), so float32 results
differ from the exact product by about as much as the GEMM's: ||error|| / ||out||
against a float64 reference, He-scaled weights, 32 to 256 input channels, measured
1.9e-7 to 4.8e-7 (im2col + GEMM on the same inputs: 3.0e-7 to 3.6e-7); the bound
tests/fast/test_conv_paths.py holds is 1e-6. Larger tiles (F(4x4, 3x3)) save more
multiplies but their transforms' constants grow and so does the float32 error; not done.

The loops run on one thread, `nogil`, inside the conv's row chunks (see
backend/cpu.py); every sum has a fixed order. Tile rows are two output rows; a
tile is two output columns, so the output width must be even (the U-Net's are).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _transform(g, t, u, k):
    """u[:, k] = the 16 entries of G g G^T (4a+b order) in float64; t a (4, 3) scratch."""
    for j in range(3):  # G's four rows: g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2
        g0, g1, g2 = np.float64(g[0, j]), np.float64(g[1, j]), np.float64(g[2, j])
        t[0, j], t[1, j], t[2, j], t[3, j] = g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2
    for a in range(4):  # (G g) G^T: the same four combinations along the row
        r0, r1, r2 = t[a, 0], t[a, 1], t[a, 2]
        u[4 * a, k], u[4 * a + 1, k] = r0, 0.5 * (r0 + r1 + r2)
        u[4 * a + 2, k], u[4 * a + 3, k] = 0.5 * (r0 - r1 + r2), r2


@njit(cache=True, nogil=True)
def _winograd_filter(w, U):
    Cout, Cin = w.shape[0], w.shape[1]
    t = np.empty((4, 3))
    u = np.empty((16, Cin))  # one output channel's U, written to U[:, o] in runs of Cin
    for o in range(Cout):
        for c in range(Cin):
            _transform(w[o, c], t, u, c)
        for xi in range(16):
            for c in range(Cin):
                U[xi, o, c] = u[xi, c]


@njit(cache=True, nogil=True)
def _winograd_filter_flip(w, U):
    Cout, Cin = w.shape[0], w.shape[1]
    t = np.empty((4, 3))
    u = np.empty((16, Cout))  # one input channel's, written to U[:, c] in runs of Cout
    for c in range(Cin):
        for o in range(Cout):
            _transform(w[o, c], t, u, o)
        for a in range(4):  # U[4a+b, c, o] = u[4p(a)+p(b), o], p swapping 0 and 3
            pa = 3 - a if a % 3 == 0 else a
            for b in range(4):
                pb = 3 - b if b % 3 == 0 else b
                for o in range(Cout):
                    U[4 * a + b, c, o] = u[4 * pa + pb, o]


def winograd_filter(w, out=None, flip=False):
    """U (16, Cout, Cin) in w's dtype: U[4a+b, o, c] = (G w[o, c] G^T)[a, b], computed in
    float64. w: (Cout, Cin, 3, 3); out: a C-contiguous array of U's shape to write U into,
    or None for a new one. Returns U. (A loop: NumPy's einsum of G, w, G took 4 ms for
    128 x 128 channels, this 0.2.)

    flip=True: U (16, Cin, Cout) of the flipped, transposed filters wf[c, o] = w[o, c, ::-1,
    ::-1] (those of dx), without writing wf: G J = P G (J reverses the 3 columns, P swaps
    rows 0 and 3 of the 4), so G wf G^T = P (G w G^T) P^T, the same 16 numbers with the
    indices 0 and 3 swapped."""
    Cout, Cin = w.shape[:2]
    shape = (16, Cin, Cout) if flip else (16, Cout, Cin)
    U = np.empty(shape, dtype=w.dtype) if out is None else out
    if U.shape != shape or U.dtype != w.dtype or not U.flags.c_contiguous:
        raise ValueError(f"winograd_filter: out must be C-contiguous {shape} of w's dtype, got "
                         f"{U.shape} {U.dtype}")
    (_winograd_filter_flip if flip else _winograd_filter)(np.ascontiguousarray(w), U)
    return U


@njit(cache=True, nogil=True)
def _winograd_input(x1, xr0, nt, V):
    Cin, _, W = x1.shape
    Tw = (W - 2) // 2
    u = np.empty((4, W), dtype=x1.dtype)  # B^T d along the columns: one row per a
    for c in range(Cin):
        for r in range(nt):
            y = xr0 + 2 * r  # the tile row's first input row
            d0, d1, d2, d3 = x1[c, y], x1[c, y + 1], x1[c, y + 2], x1[c, y + 3]
            u0, u1, u2, u3 = u[0], u[1], u[2], u[3]
            for X in range(W):
                u0[X] = d0[X] - d2[X]
            for X in range(W):
                u1[X] = d1[X] + d2[X]
            for X in range(W):
                u2[X] = d2[X] - d1[X]
            for X in range(W):
                u3[X] = d1[X] - d3[X]
            s = r * Tw
            for a in range(4):  # (B^T d) B along the rows: tile t covers columns 2t..2t+3
                ua = u[a]
                v = V[4 * a, c, s : s + Tw]
                for t in range(Tw):
                    v[t] = ua[2 * t] - ua[2 * t + 2]
                v = V[4 * a + 1, c, s : s + Tw]
                for t in range(Tw):
                    v[t] = ua[2 * t + 1] + ua[2 * t + 2]
                v = V[4 * a + 2, c, s : s + Tw]
                for t in range(Tw):
                    v[t] = ua[2 * t + 2] - ua[2 * t + 1]
                v = V[4 * a + 3, c, s : s + Tw]
                for t in range(Tw):
                    v[t] = ua[2 * t + 1] - ua[2 * t + 3]


def winograd_input(x1, xr0, nt, V):
    """The transformed input tiles of nt tile rows (2nt output rows) of one image.

    x1 (Cin, Hx, Wx) C-contiguous, Wx even; V (16, Cin, nt*Tw), Tw = (Wx-2)/2: tile
    (r, t) covers input rows xr0+2r .. xr0+2r+3 and columns 2t .. 2t+3, and
    V[4a+b, c, r*Tw + t] = (B^T d B)[a, b] of that tile of channel c. Returns V.
    """
    Tw = (x1.shape[2] - 2) // 2
    if x1.shape[2] % 2 or V.shape != (16, x1.shape[0], nt * Tw) or xr0 + 2 * nt + 2 > x1.shape[1]:
        raise ValueError(f"winograd_input: x1 (Cin, H, W) with W even, V (16, Cin, nt*(W-2)/2), "
                         f"rows inside x1; got {x1.shape}, {V.shape}, xr0 {xr0}, nt {nt}")
    _winograd_input(x1, xr0, nt, V)
    return V


@njit(cache=True, nogil=True)
def _winograd_output(M, b, relu, out3, or0, nt):
    Cout, _, Wo = out3.shape
    Tw = Wo // 2
    z = out3.dtype.type(0)
    r8 = np.empty((8, Tw), dtype=out3.dtype)  # A^T M: rows s = 0, 1, for each column b
    for o in range(Cout):
        bo = out3.dtype.type(b[o])
        for r in range(nt):
            s = r * Tw
            for bb in range(4):
                m0, m1 = M[bb, o, s : s + Tw], M[4 + bb, o, s : s + Tw]
                m2, m3 = M[8 + bb, o, s : s + Tw], M[12 + bb, o, s : s + Tw]
                ra, rb = r8[bb], r8[4 + bb]
                for t in range(Tw):
                    ra[t] = m0[t] + m1[t] + m2[t]
                for t in range(Tw):
                    rb[t] = m1[t] - m2[t] - m3[t]
            for row in range(2):  # (A^T M) A along the rows, then bias and ReLU
                q0, q1, q2, q3 = r8[4 * row], r8[4 * row + 1], r8[4 * row + 2], r8[4 * row + 3]
                orow = out3[o, or0 + 2 * r + row]
                for t in range(Tw):
                    e = q0[t] + q1[t] + q2[t] + bo
                    f = q1[t] - q2[t] - q3[t] + bo
                    if relu:  # as backend/cpu.py _bias_relu: a NaN passes
                        e = z if e <= 0 else e
                        f = z if f <= 0 else f
                    orow[2 * t] = e
                    orow[2 * t + 1] = f


def winograd_output(M, b, relu, out3, or0, nt):
    """Output rows or0 .. or0+2nt-1 from the 16 products: out = epi(A^T M A + b).

    M (16, Cout, nt*Tw) from numpy.matmul(U, V); b (Cout,); out3 (Cout, Ho3, Wo)
    C-contiguous, Wo = 2*Tw; epi = max(., 0) if relu else the identity. Returns out3.
    """
    Cout, _, Wo = out3.shape
    if Wo % 2 or M.shape != (16, Cout, nt * (Wo // 2)) or or0 + 2 * nt > out3.shape[1]:
        raise ValueError(f"winograd_output: M (16, Cout, nt*Wo/2), out3 (Cout, H, Wo) with Wo "
                         f"even; got {M.shape}, {out3.shape}, or0 {or0}, nt {nt}")
    if not out3.flags.c_contiguous:
        raise ValueError("winograd_output: out3 must be C-contiguous")
    _winograd_output(M, b.astype(out3.dtype, copy=False), relu, out3, or0, nt)
    return out3
