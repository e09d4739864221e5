"""The U-Net family's CUDA kernels (issue 25), run on the CPU in emulation, against their twins.

As tests/emulation/test_kernels.py: each kernel's own source under AddressSanitizer and UBSan,
every template instance (float32, float64), odd sizes, the launcher's geometry (backend/gpu.py)
and 1 and a few blocks, in index order, reversed and shuffled: all variants the same bits.

Bit for bit with the CPU twin (the same IEEE operations in the same order, no FMA):
BatchNorm's partial sums (the twin follows the kernel's lanes and tree), its epilogues, the
bilinear forward and its adjoint gather, the depthwise forward and dx gather, the padded and
strided im2col and col2im (col2im gathers in the twin's (i, j) order). With a tolerance: the
depthwise dw/db partials (the kernel sums by block trees, the twin along rows; both in float64):
relative 1e-12 (float64 and float32 inputs alike, before the cast).
"""

from __future__ import annotations

import numpy as np
import pytest
from emu_helpers import bits_equal, i32, run_variants, skip_without_compiler

from minunet.backend import cpu, gpu

skip_without_compiler()

DTYPES = [np.float32, np.float64]

TESTED = {  # template -> the test below that runs every instance of it
    "bn_stats_partials": "test_bn_partials", "bn_grad_partials": "test_bn_partials",
    "bn_normalize": "test_bn_epilogues", "bn_backward_dx": "test_bn_epilogues",
    "bilinear_forward": "test_bilinear", "bilinear_adjoint": "test_bilinear",
    "depthwise_forward": "test_depthwise", "depthwise_backward_dx": "test_depthwise",
    "depthwise_dw_partials": "test_depthwise",
    "im2col_padded": "test_im2col_padded", "col2im_padded": "test_col2im_padded",
}


def ctype(dtype):
    return "float" if np.dtype(dtype) == np.float32 else "double"


def test_every_family_template_has_a_test():
    assert all(callable(globals()[t]) for t in TESTED.values())


# --- BatchNorm ------------------------------------------------------------------------------

BN_SHAPES = [(1, 2, 3, 4), (2, 3, 7, 5), (1, 1, 61, 67), (2, 2, 45, 50)]  # 4117, 2250 values:
# more than one 2048-value work item per plane, the last one partial


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_bn_partials(programs, dtype, shape, rng):
    N, C, H, W = shape
    x = (rng.standard_normal(shape) * 3 + 7).astype(dtype)
    d = rng.standard_normal(shape).astype(dtype)
    h = rng.standard_normal(shape).astype(dtype)
    nq = -(-(H * W) // gpu.BN_CHUNK)
    prog = programs["batchnorm.cu"]
    geometry = gpu.bn_partials_geometry(N * C, H * W)

    def make_stats(grid, block, order, seed):
        part = np.full((N, C, nq, 2), np.nan)
        args = (x, part, np.int64(N * C), np.int32(C), np.int64(H * W), np.int32(nq))
        return [(f"bn_stats_partials<{ctype(dtype)}>", grid, block, args, order, seed)], (part,)

    (part,) = run_variants(prog, *geometry, make_stats)
    bits_equal(part, cpu.bn_stats_partials(x), "bn_stats_partials vs CPU twin")
    v = x.astype(np.float64) - x[0, :, 0, 0].astype(np.float64)[None, :, None, None]
    sums = part.sum(axis=(0, 2))
    np.testing.assert_allclose(sums[:, 0], v.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(sums[:, 1], (v * v).sum(axis=(0, 2, 3)), rtol=1e-12)

    def make_grad(grid, block, order, seed):
        part = np.full((N, C, nq, 2), np.nan)
        args = (d, h, part, np.int64(N * C), np.int64(H * W), np.int32(nq))
        return [(f"bn_grad_partials<{ctype(dtype)}>", grid, block, args, order, seed)], (part,)

    (part,) = run_variants(prog, *geometry, make_grad)
    bits_equal(part, cpu.bn_grad_partials(d, h), "bn_grad_partials vs CPU twin")
    d64, h64 = d.astype(np.float64), h.astype(np.float64)
    np.testing.assert_allclose(part.sum(axis=(0, 2))[:, 1], (d64 * h64).sum(axis=(0, 2, 3)),
                               rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES[:3])
def test_bn_epilogues(programs, dtype, shape, rng):
    N, C, H, W = shape
    x, d, h = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    mean, inv_std, gamma, beta, k, m1, m2 = (rng.standard_normal(C).astype(dtype)
                                             for _ in range(7))
    prog = programs["batchnorm.cu"]
    geometry = gpu.plane_geometry(N * C, H * W)
    sizes = (np.int64(N * C), np.int32(C), np.int64(H * W))

    def make_norm(grid, block, order, seed):
        xhat, out = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
        args = (x, mean, inv_std, gamma, beta, xhat, out, *sizes)
        return [(f"bn_normalize<{ctype(dtype)}>", grid, block, args, order, seed)], (xhat, out)

    xhat, out = run_variants(prog, *geometry, make_norm)
    twin_xhat, twin_out = cpu.bn_normalize(x, mean, inv_std, gamma, beta)
    bits_equal(xhat, twin_xhat, "bn_normalize xhat vs CPU twin")
    bits_equal(out, twin_out, "bn_normalize out vs CPU twin")
    c = (None, slice(None), None, None)  # (C,) -> (1, C, 1, 1)
    bits_equal(xhat, (x - mean[c]) * inv_std[c], "xhat vs the formula")

    def make_dx(grid, block, order, seed):
        dx = np.full(shape, np.nan, dtype)
        args = (d, h, k, m1, m2, dx, *sizes)
        return [(f"bn_backward_dx<{ctype(dtype)}>", grid, block, args, order, seed)], (dx,)

    (dx,) = run_variants(prog, *geometry, make_dx)
    bits_equal(dx, cpu.bn_backward_dx(d, h, k, m1, m2), "bn_backward_dx vs CPU twin")
    bits_equal(dx, k[c] * ((d - m1[c]) - h * m2[c]), "bn_backward_dx vs the formula")


# --- bilinear up-sampling --------------------------------------------------------------------

BILINEAR_CASES = [  # (P, H, W, factor, align_corners): odd sizes, 1-pixel axes, every factor
    (2, 3, 5, 2, 0), (1, 4, 3, 4, 1), (3, 1, 2, 8, 0), (1, 2, 1, 16, 1), (2, 5, 7, 3, 1),
    (1, 1, 1, 2, 1), (2, 6, 5, 2, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", BILINEAR_CASES)
def test_bilinear(programs, dtype, case, rng):
    """Forward against the twin (bits) and the plain op; the adjoint along W then H against
    the twin (bits) and the plain backward."""
    from minunet.ops import resample

    P, H, W, f, align = case
    x = rng.standard_normal((1, P, H, W)).astype(dtype)
    prog = programs["resample.cu"]
    expr = f"bilinear_forward<{ctype(dtype)}>"

    def make_fwd(grid, block, order, seed):
        out = np.full((1, P, f * H, f * W), np.nan, dtype)
        args = (x, out, np.int64(P), *i32(H, W, f, align))
        return [(expr, grid, block, args, order, seed)], (out,)

    (out,) = run_variants(prog, *gpu.plane_geometry(P, H * W * f * f), make_fwd)
    bits_equal(out, cpu.bilinear_forward(x, f, bool(align)), "bilinear forward vs CPU twin")
    plain, cache = resample.bilinear_upsample_forward(x, f, bool(align))
    np.testing.assert_allclose(out, plain, rtol=0, atol=TOL_PLAIN[np.dtype(dtype)])

    dout = rng.standard_normal((P, f * H, f * W)).astype(dtype)
    a_w, a_h = cache.a_w, cache.a_h  # (Wo, W), (Ho, H): the plain op's matrices
    adj = f"bilinear_adjoint<{ctype(dtype)}>"

    d3 = dout.reshape(P * f * H, f * W, 1)  # (rows, Wo, 1): along W first

    def make_w(grid, block, order, seed):
        t = np.full((P * f * H, W, 1), np.nan, dtype)
        args = (d3, a_w, t, np.int64(P * f * H), *i32(W, f * W, 1))
        return [(adj, grid, block, args, order, seed)], (t,)

    (t,) = run_variants(prog, *gpu.plane_geometry(P * f * H, W), make_w)
    t3 = t.reshape(P, f * H, W)  # then along H

    def make_h(grid, block, order, seed):
        dx = np.full((P, H, W), np.nan, dtype)
        args = (t3, a_h, dx, np.int64(P), *i32(H, f * H, W))
        return [(adj, grid, block, args, order, seed)], (dx,)

    (dx,) = run_variants(prog, *gpu.plane_geometry(P, H * W), make_h)
    twin = cpu.bilinear_adjoint(cpu.bilinear_adjoint(dout.reshape(P * f * H, f * W, 1), a_w)
                                .reshape(P, f * H, W), a_h)
    bits_equal(dx, twin, "bilinear adjoint vs CPU twin")
    np.testing.assert_allclose(dx, resample.bilinear_upsample_backward(dout[None], cache)[0],
                               rtol=0, atol=TOL_PLAIN[np.dtype(dtype)] * 4 * f * f)


TOL_PLAIN = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-14}  # vs the plain op's BLAS


# --- depthwise convolution -------------------------------------------------------------------

DEPTHWISE_CASES = [  # (N, C, m, H, W, k, stride, padding)
    (1, 2, 1, 7, 9, 3, 1, 1), (2, 3, 1, 9, 8, 5, 2, 2), (1, 2, 2, 6, 5, 3, 2, 0),
    (1, 1, 1, 50, 47, 3, 1, 1),  # more than one 2048-pixel work item
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DEPTHWISE_CASES)
def test_depthwise(programs, dtype, case, rng):
    from minunet.ops import conv_general

    N, C, m, H, W, k, s, p = case
    Co = C * m
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((Co, 1, k, k)).astype(dtype)
    b = rng.standard_normal(Co).astype(dtype)
    dout = rng.standard_normal((N, Co, Ho, Wo)).astype(dtype)
    prog, t = programs["depthwise.cu"], ctype(dtype)
    sizes = i32(C, m, H, W, k, s, p, Ho, Wo)

    def make_fwd(grid, block, order, seed):
        out = np.full((N, Co, Ho, Wo), np.nan, dtype)
        args = (x, w, b, out, np.int64(N * Co), *sizes)
        return [(f"depthwise_forward<{t}>", grid, block, args, order, seed)], (out,)

    (out,) = run_variants(prog, *gpu.plane_geometry(N * Co, Ho * Wo), make_fwd)
    bits_equal(out, cpu.depthwise_forward(x, w, b, s, p), "depthwise forward vs CPU twin")
    plain, cache = conv_general.conv2d_general_forward(x, w, b, stride=s, padding=p, groups=C)
    np.testing.assert_allclose(out, plain, rtol=0, atol=TOL_PLAIN[np.dtype(dtype)] * k * k * 4)

    def make_dx(grid, block, order, seed):
        dx = np.full((N, C, H, W), np.nan, dtype)
        args = (dout, w, dx, np.int64(N * C), *sizes)
        return [(f"depthwise_backward_dx<{t}>", grid, block, args, order, seed)], (dx,)

    (dx,) = run_variants(prog, *gpu.plane_geometry(N * C, H * W), make_dx)
    bits_equal(dx, cpu.depthwise_backward_dx(dout, w, x.shape, s, p), "depthwise dx vs twin")
    pdx, pdw, pdb = conv_general.conv2d_general_backward(dout, cache)
    np.testing.assert_allclose(dx, pdx, rtol=0, atol=TOL_PLAIN[np.dtype(dtype)] * k * k * 4 * m)

    nq = -(-(Ho * Wo) // gpu.DW_CHUNK)

    def make_dw(grid, block, order, seed):
        part = np.full((N, Co, nq, k * k + 1), np.nan)
        args = (dout, x, part, np.int64(N * Co), *sizes, np.int32(nq))
        return [(f"depthwise_dw_partials<{t}>", grid, block, args, order, seed)], (part,)

    (part,) = run_variants(prog, *gpu.depthwise_dw_geometry(N * Co, Ho * Wo), make_dw)
    np.testing.assert_allclose(part.sum(axis=2), cpu.depthwise_dw_partials(dout, x, k, s, p),
                               rtol=1e-12, atol=1e-12 * Ho * Wo)  # float64 sums, other orders
    sums = part.sum(axis=(0, 2))
    np.testing.assert_allclose(sums[:, : k * k].reshape(pdw.shape), pdw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sums[:, k * k], pdb, rtol=1e-5, atol=1e-5)


# --- im2col / col2im with padding and stride ---------------------------------------------------

PADDED_CASES = [  # (C, H, W, k, stride, padding, y0, y1): chunks inside the output rows
    (2, 7, 9, 3, 1, 1, 0, 7), (3, 9, 8, 5, 2, 2, 1, 4), (2, 6, 5, 3, 2, 0, 0, 2),
    (1, 5, 5, 1, 2, 0, 1, 3), (2, 8, 7, 4, 3, 1, 0, 3), (1, 1, 1, 3, 1, 1, 0, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", PADDED_CASES)
def test_im2col_padded(programs, dtype, case, rng):
    from minunet.ops import conv_general

    C, H, W, k, s, p, y0, y1 = case
    Wo = (W + 2 * p - k) // s + 1
    x = rng.standard_normal((C, H, W)).astype(dtype)
    expr = f"im2col_padded<{ctype(dtype)}>"

    def make(grid, block, order, seed):
        out = np.full((C * k * k, (y1 - y0) * Wo), np.nan, dtype)
        return [(expr, grid, block, (x, out, *i32(C, H, W, k, s, p, y0, y1)), order, seed)], (out,)

    (out,) = run_variants(programs["im2col_padded.cu"], *gpu.im2col_padded_geometry(*case), make)
    bits_equal(out, cpu.im2col_padded(x, k, s, p, y0, y1, np.empty_like(out)), "vs CPU twin")
    plain = conv_general.im2col_general(x[None], k, s, p)  # (C*k*k, Ho*Wo)
    bits_equal(out, plain[:, y0 * Wo : y1 * Wo], "im2col_padded vs plain op")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", PADDED_CASES)
def test_col2im_padded(programs, dtype, case, rng):
    C, H, W, k, s, p, y0, y1 = case
    Wo = (W + 2 * p - k) // s + 1
    cols = rng.standard_normal((C * k * k, (y1 - y0) * Wo)).astype(dtype)
    dx0 = rng.standard_normal((C, H, W)).astype(dtype)  # col2im ADDS into dx
    expr = f"col2im_padded<{ctype(dtype)}>"

    def make(grid, block, order, seed):
        dx = dx0.copy()
        return [(expr, grid, block, (cols, dx, *i32(C, H, W, k, s, p, y0, y1)), order, seed)], (dx,)

    (dx,) = run_variants(programs["im2col_padded.cu"], *gpu.col2im_padded_geometry(*case), make)
    bits_equal(dx, cpu.col2im_padded(cols, k, s, p, y0, y1, dx0.copy()), "col2im_padded vs twin")
