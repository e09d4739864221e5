"""The U-Net family's CUDA kernels (issue 25) against their CPU twins, on a GPU.

Skips as a whole without CuPy and a CUDA GPU (the emulation in tests/emulation/ runs the same
kernels' source on the CPU). Tolerances as tests/backend/test_gpu.py: float64 1e-12, float32
1e-5 relative to the largest value; data movers and sums the header promises bit for bit are
compared exactly except where nvcc's FMA contraction may change a last bit (the epilogues).
"""

from __future__ import annotations

import numpy as np
import pytest

from minunet import backend
from minunet.backend import cpu

_status = backend.gpu_status()
if not _status.available:
    pytest.skip(f"no GPU: {_status.reason}", allow_module_level=True)

import cupy as cp  # noqa: E402  (only after the skip: CuPy may be missing)

from minunet.backend import gpu  # noqa: E402

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64]
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def assert_close(got, ref, dtype, what=""):
    got, ref = backend.to_host(got), np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    scale = max(float(np.max(np.abs(ref))), 1e-30) if ref.size else 1.0
    err = float(np.max(np.abs(got.astype(np.float64) - ref))) / scale if ref.size else 0.0
    assert err <= RTOL[np.dtype(dtype)], f"{what}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_kernels_match_cpu(rng, dtype):
    shape = (2, 3, 45, 51)
    x, d, h = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    C = shape[1]
    par = [rng.standard_normal(C).astype(dtype) for _ in range(4)]
    gx, gd, gh = cp.asarray(x), cp.asarray(d), cp.asarray(h)
    # the sums: float64 in a fixed order on both sides; the products may be contracted (FMA)
    assert_close(gpu.bn_stats_partials(gx), cpu.bn_stats_partials(x), np.float64, "stats")
    assert_close(gpu.bn_grad_partials(gd, gh), cpu.bn_grad_partials(d, h), np.float64, "grad")
    for got, ref in zip(gpu.bn_normalize(gx, *map(cp.asarray, par)), cpu.bn_normalize(x, *par),
                        strict=True):
        assert_close(got, ref, dtype, "bn_normalize")
    assert_close(gpu.bn_backward_dx(gd, gh, *map(cp.asarray, par[:3])),
                 cpu.bn_backward_dx(d, h, *par[:3]), dtype, "bn_backward_dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("factor, align", [(2, False), (4, True), (16, False)])
def test_bilinear_kernels_match_cpu(rng, dtype, factor, align):
    from minunet.ops.resample import interpolation_matrix

    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    assert_close(gpu.bilinear_forward(cp.asarray(x), factor, align),
                 cpu.bilinear_forward(x, factor, align), dtype, "bilinear forward")
    a = interpolation_matrix(7, factor, align, dtype)  # (7*f, 7)
    src = rng.standard_normal((4, 7 * factor, 3)).astype(dtype)
    assert_close(gpu.bilinear_adjoint(cp.asarray(src), cp.asarray(a)),
                 cpu.bilinear_adjoint(src, a), dtype, "bilinear adjoint")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, k, s, p", [(1, 3, 1, 1), (1, 5, 2, 2), (2, 3, 2, 0)])
def test_depthwise_kernels_match_cpu(rng, dtype, m, k, s, p):
    N, C, H, W = 2, 3, 40, 37
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((C * m, 1, k, k)).astype(dtype)
    b = rng.standard_normal(C * m).astype(dtype)
    out = cpu.depthwise_forward(x, w, b, s, p)
    d = rng.standard_normal(out.shape).astype(dtype)
    gx, gw, gd = cp.asarray(x), cp.asarray(w), cp.asarray(d)
    assert_close(gpu.depthwise_forward(gx, gw, cp.asarray(b), s, p), out, dtype, "forward")
    assert_close(gpu.depthwise_backward_dx(gd, gw, x.shape, s, p),
                 cpu.depthwise_backward_dx(d, w, x.shape, s, p), dtype, "dx")
    assert_close(gpu.depthwise_dw_partials(gd, gx, k, s, p),
                 cpu.depthwise_dw_partials(d, x, k, s, p), np.float64, "dw, db")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, s, p, y0, y1", [(3, 1, 1, 0, 9), (5, 2, 2, 2, 6), (4, 3, 1, 1, 3)])
def test_im2col_padded_kernels_match_cpu(rng, dtype, k, s, p, y0, y1):
    C, H, W = 3, 17, 19
    Wo = (W + 2 * p - k) // s + 1
    x = rng.standard_normal((C, H, W)).astype(dtype)
    out = cp.empty((C * k * k, (y1 - y0) * Wo), dtype=dtype)
    ref = cpu.im2col_padded(x, k, s, p, y0, y1, np.empty(out.shape, dtype))
    assert (backend.to_host(gpu.im2col_padded(cp.asarray(x), k, s, p, y0, y1, out)) == ref).all()
    cols = rng.standard_normal(out.shape).astype(dtype)
    dx0 = rng.standard_normal((C, H, W)).astype(dtype)
    got = gpu.col2im_padded(cp.asarray(cols), k, s, p, y0, y1, cp.asarray(dx0))
    assert (backend.to_host(got) == cpu.col2im_padded(cols, k, s, p, y0, y1, dx0.copy())).all()
