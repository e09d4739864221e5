"""Every CUDA kernel (kernels/*.cu), run on the CPU in emulation, against its twin and plain op.

Each kernel's own source is compiled by g++ with AddressSanitizer and UBSan
(minunet/backend/emulate.py, kernels/cuda_emu.h): an out-of-bounds read or write, a signed
overflow or a barrier not every thread reaches fails the test with the sanitizer's report.
Every template instance that backend/gpu.py compiles is run, in float32 and float64, on
odd sizes, with the launcher's own geometry and with 1 and a few blocks (grid-stride loops
wrap), in index order, in reverse and shuffled (emu_helpers.run_variants: the same bits).

Equal bit for bit to the CPU twin and the plain op: the data movers (im2col, col2im in its
gather order, max-pool with its tie rule, the up-conv rearrangements), bias+ReLU, the ReLU
backward and the SGD update (the same IEEE operations in the same order, no FMA contraction).
With a tolerance: softmax_xent (the kernel's one-pass online max/sum against the twin's two
passes in double; glibc's expf/logf), relative to the largest value: float32 4e-7 for
probabilities (a few ulp of 1), 1e-6 for the loss; float64 1e-15 and 1e-13.

64-bit offsets are run for im2col and col2im only (test_im2col_col2im_64bit_offsets): they
touch a band of rows, so a 4 GiB array of untouched zero pages suffices. Every other kernel
reads and writes every element, so its 64-bit path needs > 2**31 elements in each of two or
three arrays (>= 8.6 GiB each in float32) and minutes of emulated threads: beyond this
machine's memory and the two-minute budget. For them the 64-bit path stays with the GPU
tests (tests/backend/test_gpu.py, e.g. test_bias_relu_forward_64bit_offsets).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from emu_helpers import bits_equal, i32, run_variants, skip_without_compiler
from test_kernels_family import TESTED as FAMILY_TESTED

from minunet import ops
from minunet.backend import cpu, emulate, gpu

skip_without_compiler()

DTYPES = [np.float32, np.float64]
TOL = {np.dtype(np.float32): (4e-7, 1e-6), np.dtype(np.float64): (1e-15, 1e-13)}  # probs, loss


def instances(file, name):
    """The name expressions of template `name` that backend/gpu.py compiles from `file`."""
    return [e for e in gpu.name_expressions(file) if e.startswith(name + "<")]


def dtype_of(expr):
    return np.float32 if "<float" in expr else np.float64


# --- the list of kernels -----------------------------------------------------------------


def test_every_global_function_is_a_known_kernel():
    """Every __global__ function in kernels/*.cu is in gpu.KERNEL_FILES (and so is run below)."""
    for path in sorted(gpu.kernel_dir().glob("*.cu")):
        found = set(re.findall(r"__global__ void (\w+)", path.read_text()))
        assert found == set(gpu.KERNEL_FILES[path.name]), path.name
    assert {p.name for p in gpu.kernel_dir().glob("*.cu")} == set(gpu.KERNEL_FILES)


TESTED = {  # template -> the test below that runs every instance of it
    "im2col": "test_im2col", "col2im": "test_col2im",
    "maxpool2x2_forward": "test_maxpool", "maxpool2x2_backward": "test_maxpool",
    "softmax_xent_forward": "test_softmax_xent", "sum_partials": "test_softmax_xent",
    "softmax_xent_backward": "test_softmax_xent",
    "bias_relu_forward": "test_bias_relu_forward", "relu_backward": "test_relu_backward",
    "upconv_scatter": "test_upconv", "upconv_gather": "test_upconv",
    "sgd_update": "test_sgd_update", "sgd_update_many": "test_sgd_update_many",
}


def test_every_template_has_a_test():
    """The U-Net's kernels here, the family's in test_kernels_family.py."""
    assert set(TESTED) | set(FAMILY_TESTED) == {n for names in gpu.KERNEL_FILES.values()
                                                 for n in names}
    assert all(callable(globals()[t]) for t in TESTED.values())


# --- im2col / col2im ------------------------------------------------------------------------

IM2COL_SHAPES = [  # (C, H, W, k, y0, y1): odd sizes, chunks inside the image, k = 1..5
    (3, 9, 11, 3, 0, 7), (2, 12, 7, 5, 3, 8), (3, 9, 11, 1, 0, 9), (3, 9, 11, 2, 2, 6),
    (5, 7, 13, 3, 2, 5), (1, 40, 37, 3, 0, 38),
]


@pytest.mark.parametrize("expr", instances("im2col.cu", "im2col"))
@pytest.mark.parametrize("shape", IM2COL_SHAPES)
def test_im2col(programs, expr, shape, rng):
    C, H, W, k, y0, y1 = shape
    dt = dtype_of(expr)
    x = rng.standard_normal((C, H, W)).astype(dt)
    Wo = W - k + 1
    L = (y1 - y0) * Wo

    def make(grid, block, order, seed):
        out = np.full((C * k * k, L), np.nan, dtype=dt)  # every entry must be written
        return [(expr, grid, block, (x, out, *i32(C, H, W, k, y0, y1)), order, seed)], (out,)

    (out,) = run_variants(programs["im2col.cu"], *gpu.im2col_geometry(*shape), make)
    bits_equal(out, cpu.im2col(x, k, y0, y1, np.empty_like(out)), "im2col vs CPU twin")
    plain = ops.conv.im2col(x[None], k)  # (C*k*k, Ho*Wo), all rows of the one image
    bits_equal(out, plain[:, y0 * Wo : y1 * Wo], "im2col vs plain op")


@pytest.mark.parametrize("expr", instances("im2col.cu", "col2im"))
@pytest.mark.parametrize("shape", IM2COL_SHAPES)
def test_col2im(programs, expr, shape, rng):
    C, H, W, k, y0, y1 = shape
    dt = dtype_of(expr)
    Wo = W - k + 1
    L = (y1 - y0) * Wo
    cols = rng.standard_normal((C * k * k, L)).astype(dt)
    dx0 = rng.standard_normal((C, H, W)).astype(dt)  # col2im ADDS into dx

    def make(grid, block, order, seed):
        dx = dx0.copy()
        return [(expr, grid, block, (cols, dx, *i32(C, H, W, k, y0, y1)), order, seed)], (dx,)

    (dx,) = run_variants(programs["im2col.cu"], *gpu.col2im_geometry(*shape), make)
    # the gather adds in the twin's (i, j) order: the same bits
    bits_equal(dx, cpu.col2im(cols, k, y0, y1, dx0.copy()), "col2im vs CPU twin")
    if y0 == 0 and y1 == H - k + 1:  # the whole image: the plain op, from zero
        zero = np.zeros_like(dx0)
        prog = programs["im2col.cu"]
        prog.launch(expr, *gpu.col2im_geometry(*shape), (cols, zero, *i32(C, H, W, k, y0, y1)))
        bits_equal(zero, ops.conv.col2im(cols, (1, C, H, W), k)[0], "col2im vs plain op")


def test_im2col_col2im_64bit_offsets(programs, rng):
    """Channel offsets past 2**31 elements: x and dx (2, H, W) with H*W just above 2**30, the
    chunk at the bottom of channel 1, so (c*H + y0)*W > 2**31 while H*W < 2**31 (the launchers'
    limit). Only the touched band travels (emulate.Window): the arrays are 4.3 GiB of
    zero pages each, never written. float32 only: float64 doubles that to 8.6 GiB per array, and
    the offsets are counted in elements, so both types take the same 64-bit path."""
    C, W = 2, 2**15
    H = 2**15 + 16
    k, y0, y1 = 3, H - 6, H - 2
    assert (C - 1) * H * W + y0 * W > 2**31 > H * W
    Wo = W - k + 1
    L = (y1 - y0) * Wo
    lo, hi = (H + y0) * W, (H + y1 + k - 1) * W  # the rows of channel 1 that the chunk touches
    x = np.zeros((C, H, W), dtype=np.float32)
    x[1, y0 : y1 + k - 1] = rng.standard_normal((y1 - y0 + k - 1, W))
    prog = programs["im2col.cu"]
    out = np.full((C * k * k, L), np.nan, dtype=np.float32)
    prog.launch("im2col<float>", *gpu.im2col_geometry(C, H, W, k, y0, y1),
                (emulate.Window(x, lo, hi), out, *i32(C, H, W, k, y0, y1)))
    ref = cpu.im2col(x, k, y0, y1, np.empty_like(out))
    bits_equal(out[k * k :], ref[k * k :], "im2col channel 1 (64-bit offsets)")
    assert not out[: k * k].any()  # channel 0 reads zeros (only channel 1's band travelled)

    cols = rng.standard_normal((C * k * k, L)).astype(np.float32)
    dx = np.zeros((C, H, W), dtype=np.float32)
    dx[1, y0 : y1 + k - 1] = rng.standard_normal((y1 - y0 + k - 1, W))
    ref_dx = np.zeros((C, H, W), dtype=np.float32)  # zero pages too: no 4 GiB copy of dx
    ref_dx[1, y0 : y1 + k - 1] = dx[1, y0 : y1 + k - 1]
    ref = cpu.col2im(cols, k, y0, y1, ref_dx)[1, y0 : y1 + k - 1]
    prog.launch("col2im<float>", *gpu.col2im_geometry(C, H, W, k, y0, y1),
                (cols, emulate.Window(dx, lo, hi), *i32(C, H, W, k, y0, y1)))
    bits_equal(dx[1, y0 : y1 + k - 1], ref, "col2im channel 1 (64-bit offsets)")


# --- max-pool ------------------------------------------------------------------------------

POOL_SHAPES = [(1, 3, 8, 10), (2, 3, 14, 6), (1, 2, 9, 7), (2, 1, 34, 36)]  # (N, C, H, W)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", POOL_SHAPES)
def test_maxpool(programs, dtype, shape, rng):
    """Forward and backward. Values from {0, 1, 2} make ties in most windows: the FIRST
    maximum in window order wins, as in the twin and the plain op (argmax)."""
    N, C, H, W = shape
    Ho, Wo, P = H // 2, W // 2, N * C
    x = rng.integers(0, 3, (N, C, H, W)).astype(dtype)
    dout = rng.standard_normal((N, C, Ho, Wo)).astype(dtype)
    fwd, bwd = (f"maxpool2x2_{d}<{'float' if dtype == np.float32 else 'double'}>"
                for d in ("forward", "backward"))
    prog = programs["pool.cu"]

    def make_fwd(grid, block, order, seed):
        out = np.full((N, C, Ho, Wo), np.nan, dtype=dtype)
        arg = np.full((N, C, Ho, Wo), 255, dtype=np.uint8)
        args = (x, out, arg, np.int64(P), *i32(H, W))
        return [(fwd, grid, block, args, order, seed)], (out, arg)

    out, arg = run_variants(prog, *gpu.maxpool2x2_geometry(P, Ho, Wo), make_fwd)
    twin_out, twin_arg = cpu.maxpool2x2_forward(x)
    bits_equal(out, twin_out, "max-pool out vs CPU twin")
    bits_equal(arg, twin_arg, "max-pool arg vs CPU twin")

    def make_bwd(grid, block, order, seed):
        dx = np.full((N, C, 2 * Ho, 2 * Wo), np.nan, dtype=dtype)  # every pixel written
        args = (dout, arg, dx, np.int64(P), *i32(Ho, Wo))
        return [(bwd, grid, block, args, order, seed)], (dx,)

    (dx,) = run_variants(prog, *gpu.maxpool2x2_geometry(P, Ho, Wo), make_bwd)
    bits_equal(dx, cpu.maxpool2x2_backward(dout, arg), "max-pool dx vs CPU twin")
    if H % 2 == 0 and W % 2 == 0:  # the plain op takes even sizes only
        plain_out, cache = ops.pool.maxpool2x2_forward(x)
        bits_equal(out, plain_out, "max-pool out vs plain op")
        bits_equal(arg, cache.arg, "max-pool arg vs plain op")
        bits_equal(dx, ops.pool.maxpool2x2_backward(dout, cache), "max-pool dx vs plain op")


# --- softmax + weighted cross-entropy ----------------------------------------------------

SOFTMAX_SHAPES = [(1, 2, 5, 7), (2, 3, 13, 17), (1, 5, 21, 23), (1, 1, 3, 3)]  # (N, K, H, W)


def _softmax_case(rng, shape, dt, ldt):
    N, K, H, W = shape
    z = (rng.standard_normal((N, K, H, W)) * 4).astype(dt)
    z[0, :, 0, 0] = [1e4 * (c + 1) for c in range(K)]  # huge logits: no overflow
    labels = rng.integers(0, K, (N, H, W)).astype(ldt)
    w = rng.random((N, H, W)).astype(dt)
    w[:, ::3, ::2] = 0  # ignored pixels
    labels[0, 0, 2] = K + 3  # a label outside 0..K-1 on an ignored pixel is skipped
    w[0, 0, 2] = 0
    return z, labels, w


@pytest.mark.parametrize("expr", instances("softmax_xent.cu", "softmax_xent_forward"))
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
def test_softmax_xent(programs, expr, shape, rng):
    """softmax_xent_forward + sum_partials, then softmax_xent_backward, of one instance pair."""
    N, K, H, W = shape
    dt = dtype_of(expr)
    ldt = np.int64 if "long long" in expr else np.int32
    ctype = "float" if dt == np.float32 else "double"
    z, labels, w = _softmax_case(rng, shape, dt, ldt)
    npix = N * H * W
    prog = programs["softmax_xent.cu"]

    def make_fwd(grid, block, order, seed):
        probs = np.full(z.shape, np.nan, dtype=dt)
        partial = np.full(grid[0], np.nan)
        loss = np.full((), np.nan, dtype=dt)
        args = (z, labels, w, probs, partial, np.int32(K), np.int64(H * W), np.int64(npix))
        sum_grid, sum_block = gpu.sum_partials_geometry()
        return [(expr, grid, block, args, order, seed),
                (f"sum_partials<{ctype}>", sum_grid, sum_block,
                 (partial, np.int32(grid[0]), loss), order, seed)], (probs, loss)

    grid, block = gpu.softmax_xent_forward_geometry(npix)
    tp, tl = TOL[np.dtype(dt)]
    # the loss adds one partial sum per block: its last bits depend on the grid (by design)
    probs, loss = run_variants(prog, grid, block, make_fwd, grid_dependent={1: tl})
    twin_loss, twin_probs = cpu.softmax_xent_forward(z, labels, w)
    np.testing.assert_allclose(probs, twin_probs, rtol=0, atol=tp, err_msg="probs vs twin")
    np.testing.assert_allclose(loss, twin_loss, rtol=tl, err_msg="loss vs twin")
    plain_labels = np.where(w == 0, 0, labels)  # the plain op refuses labels out of range
    plain_loss, cache = ops.softmax.softmax_cross_entropy_forward(z, plain_labels, w)
    np.testing.assert_allclose(probs, cache.probs, rtol=0, atol=tp, err_msg="probs vs plain")
    np.testing.assert_allclose(loss * cache.scale, plain_loss, rtol=tl, err_msg="loss vs plain")

    bwd = expr.replace("forward", "backward")
    scale = dt(1.0 / npix)

    def make_bwd(grid, block, order, seed):
        dz = np.full(z.shape, np.nan, dtype=dt)
        args = (probs, labels, w, dz, scale, np.int32(K), np.int64(H * W), np.int64(npix))
        return [(bwd, grid, block, args, order, seed)], (dz,)

    (dz,) = run_variants(prog, *gpu.softmax_xent_backward_geometry(npix), make_bwd)
    twin = cpu.softmax_xent_backward(probs, labels, w, scale)
    if dt == np.float64:  # the same operations in the same type
        bits_equal(dz, twin, "dlogits vs twin")
    else:  # the twin's Numba code computes (probs - 1.0) in double: one rounding fewer
        np.testing.assert_allclose(dz, twin, rtol=0, atol=tp * float(scale), err_msg="dlogits")
    plain = ops.softmax.softmax_cross_entropy_backward(1.0, cache._replace(probs=probs))
    keep = w[:, None] != 0  # where the plain op's labels were changed, w = 0 makes both 0
    np.testing.assert_allclose(np.where(keep, dz, 0), np.where(keep, plain, 0), rtol=0,
                               atol=2 * tp * float(scale), err_msg="dlogits vs plain op")


@pytest.mark.parametrize("expr", instances("softmax_xent.cu", "softmax_xent_forward"))
def test_softmax_xent_bad_label_gives_nan(programs, expr, rng):
    """A label outside 0..K-1 on a pixel with w != 0: loss NaN, no read outside the logits."""
    dt = dtype_of(expr)
    ldt = np.int64 if "long long" in expr else np.int32
    ctype = "float" if dt == np.float32 else "double"
    N, K, H, W = 1, 3, 4, 5
    z, labels, w = _softmax_case(rng, (N, K, H, W), dt, ldt)
    labels[0, 3, 4], w[0, 3, 4] = -1, 1
    probs, loss = np.empty_like(z), np.zeros((), dtype=dt)
    grid, block = gpu.softmax_xent_forward_geometry(N * H * W)
    partial = np.empty(grid[0])
    programs["softmax_xent.cu"].run([
        (expr, grid, block, (z, labels, w, probs, partial, np.int32(K), np.int64(H * W),
                             np.int64(N * H * W))),
        (f"sum_partials<{ctype}>", *gpu.sum_partials_geometry(),
         (partial, np.int32(grid[0]), loss))])
    assert np.isnan(loss)


# --- bias + ReLU, ReLU backward -------------------------------------------------------------

RELU_SHAPES = [(1, 3, 5, 7), (2, 4, 9, 31), (3, 1, 1, 1), (1, 2, 23, 25)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", RELU_SHAPES)
def test_bias_relu_forward(programs, dtype, shape, rng):
    """x = relu(x + b[c]) in place; a NaN passes through (as numpy.maximum, the plain op)."""
    N, C = shape[:2]
    x0 = rng.standard_normal(shape).astype(dtype)
    x0.reshape(-1)[::17] = np.nan
    b = rng.standard_normal(C).astype(dtype)
    planes, S = N * C, x0.size // (N * C)
    expr = f"bias_relu_forward<{'float' if dtype == np.float32 else 'double'}>"

    def make(grid, block, order, seed):
        x = x0.copy()
        args = (x, b, np.int64(planes), np.int32(C), np.int64(S))
        return [(expr, grid, block, args, order, seed)], (x,)

    (x,) = run_variants(programs["relu.cu"], *gpu.bias_relu_geometry(planes, S), make)
    plain, _ = ops.relu.relu_forward(x0 + b[None, :, None, None])
    bits_equal(x, plain, "bias+relu vs plain op")
    bits_equal(x, cpu.bias_relu_forward(x0.copy(), b), "bias+relu vs CPU twin")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", RELU_SHAPES)
def test_relu_backward(programs, dtype, shape, rng):
    out = np.maximum(rng.standard_normal(shape), 0).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    dout.reshape(-1)[::5] = np.inf  # does not leak through a dead unit: a select
    expr = f"relu_backward<{'float' if dtype == np.float32 else 'double'}>"

    def make(grid, block, order, seed):
        dx = np.full(shape, np.nan, dtype=dtype)
        return [(expr, grid, block, (dout, out, dx, np.int64(out.size)), order, seed)], (dx,)

    (dx,) = run_variants(programs["relu.cu"], *gpu.elementwise_geometry(out.size), make)
    bits_equal(dx, cpu.relu_backward(dout, out), "relu backward vs CPU twin")
    bits_equal(dx, ops.relu.relu_backward(dout, ops.relu.ReluCache(out)), "vs plain op")


# --- the up-conv rearrangements ------------------------------------------------------------

UPCONV_SHAPES = [(1, 3, 2, 5, 7), (2, 2, 3, 4, 3), (1, 1, 1, 1, 1), (1, 2, 3, 11, 13)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", UPCONV_SHAPES)  # (N, Cin, Cout, H, W)
def test_upconv(programs, dtype, shape, rng):
    """scatter after the GEMM gives the plain op's output; gather gives the plain backward's
    rearranged dout (checked through its dx, the same GEMM on the same numbers)."""
    N, Cin, Cout, H, W = shape
    x = rng.standard_normal((N, Cin, H, W)).astype(dtype)
    wt = rng.standard_normal((Cin, Cout, 2, 2)).astype(dtype)
    b = rng.standard_normal(Cout).astype(dtype)
    X = x.transpose(1, 0, 2, 3).reshape(Cin, N * H * W)  # (Cin, N*H*W), as the plain op
    cols = (wt.reshape(Cin, Cout * 4).T @ X).reshape(Cout, 2, 2, N, H, W)
    cols = np.ascontiguousarray(cols.transpose(3, 0, 1, 2, 4, 5))  # (N, Cout, 2, 2, H, W)
    ctype = "float" if dtype == np.float32 else "double"
    planes = N * Cout
    prog = programs["upconv.cu"]

    def make_scatter(grid, block, order, seed):
        out = np.full((N, Cout, 2 * H, 2 * W), np.nan, dtype=dtype)
        args = (cols, b, out, np.int64(planes), *i32(Cout, H, W))
        return [(f"upconv_scatter<{ctype}>", grid, block, args, order, seed)], (out,)

    (out,) = run_variants(prog, *gpu.upconv_geometry(planes, H, W), make_scatter)
    bits_equal(out, cpu.upconv_scatter(cols, b), "upconv scatter vs CPU twin")
    plain, cache = ops.upconv.upconv2x2_forward(x, wt, b)
    bits_equal(out, plain, "upconv scatter vs plain op")

    dout = rng.standard_normal((N, Cout, 2 * H, 2 * W)).astype(dtype)

    def make_gather(grid, block, order, seed):
        dcols = np.full((N, Cout, 2, 2, H, W), np.nan, dtype=dtype)
        args = (dout, dcols, np.int64(planes), *i32(H, W))
        return [(f"upconv_gather<{ctype}>", grid, block, args, order, seed)], (dcols,)

    (dcols,) = run_variants(prog, *gpu.upconv_geometry(planes, H, W), make_gather)
    bits_equal(dcols, cpu.upconv_gather(dout), "upconv gather vs CPU twin")
    D = np.ascontiguousarray(dcols.transpose(1, 2, 3, 0, 4, 5)).reshape(Cout * 4, N * H * W)
    dx = np.ascontiguousarray((wt.reshape(Cin, Cout * 4) @ D).reshape(Cin, N, H, W)
                              .transpose(1, 0, 2, 3))
    bits_equal(dx, ops.upconv.upconv2x2_backward(dout, cache)[0], "upconv gather vs plain op")


# --- momentum SGD ----------------------------------------------------------------------------


def _sgd_reference(w, v, g, lr, m, wd):
    """The formula of sgd.cu's header in NumPy, in the arrays' dtype (no plain op exists)."""
    v = m * v - lr * (g + wd * w)
    return w + v, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 255, 257, 3001])
def test_sgd_update(programs, dtype, n, rng):
    w0, v0, g = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    lr, m, wd = dtype(0.01), dtype(0.99), dtype(5e-4)
    expr = f"sgd_update<{'float' if dtype == np.float32 else 'double'}>"

    def make(grid, block, order, seed):
        w, v = w0.copy(), v0.copy()
        return [(expr, grid, block, (w, v, g, np.int64(n), lr, m, wd), order, seed)], (w, v)

    w, v = run_variants(programs["sgd.cu"], *gpu.elementwise_geometry(n), make)
    tw, tv = w0.copy(), v0.copy()
    cpu.sgd_update(tw, tv, g, lr, m, wd)
    bits_equal(w, tw, "sgd w vs CPU twin")
    bits_equal(v, tv, "sgd v vs CPU twin")
    rw, rv = _sgd_reference(w0, v0, g, lr, m, wd)
    bits_equal(w, rw, "sgd w vs the formula")
    bits_equal(v, rv, "sgd v vs the formula")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update_many(programs, dtype, rng):
    """Arrays of sizes 0 (first, middle, last), 1 and a few hundred: the binary search over
    the offsets finds each element's array."""
    sizes = [0, 300, 1, 0, 257, 64, 0]
    ws0, vs0, gs = ([rng.standard_normal(s).astype(dtype) for s in sizes] for _ in range(3))
    lr, m, wd = dtype(0.01), dtype(0.99), dtype(5e-4)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    expr = f"sgd_update_many<{'float' if dtype == np.float32 else 'double'}>"

    def make(grid, block, order, seed):
        ws, vs = [a.copy() for a in ws0], [a.copy() for a in vs0]
        args = (emulate.Pointers(tuple(ws)), emulate.Pointers(tuple(vs)),
                emulate.Pointers(tuple(gs)), offsets, np.int32(len(sizes)), lr, m, wd)
        return [(expr, grid, block, args, order, seed)], (*ws, *vs)

    got = run_variants(programs["sgd.cu"], *gpu.elementwise_geometry(int(offsets[-1])), make)
    tws, tvs = [a.copy() for a in ws0], [a.copy() for a in vs0]
    cpu.sgd_update_many(tws, tvs, gs, lr, m, wd)
    for i, (a, b) in enumerate(zip(got, tws + tvs, strict=True)):
        bits_equal(a, b, f"sgd_update_many array {i} vs CPU twin")
