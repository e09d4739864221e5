"""The CUDA kernels (kernels/*.cu via minunet/backend/gpu.py) against their CPU twins.

Every test here needs CuPy and a CUDA GPU: the module is marked `gpu` and skips as a whole,
with the reason, when backend.gpu_status() says none is available. What runs without a GPU
(the kernel files, their headers, an NVRTC compile) is in test_kernel_files.py.

Tolerances (relative to the largest reference value): float64 1e-12, float32 1e-5. Kernels
that only move data (im2col, col2im, max-pool, the up-conv rearrangements) must match their
CPU twins bit for bit: col2im adds its terms in the CPU twin's order.
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
from minunet.nn import gradcheck  # noqa: E402

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64]
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def assert_close(got, ref, dtype, what=""):
    """got (device or host) == ref (host) within RTOL[dtype] of the largest |ref|."""
    got = backend.to_host(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    rtol = RTOL[np.dtype(dtype)]
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-30)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale, err_msg=what)


def _free_bytes() -> int:
    return int(cp.cuda.Device().mem_info[0])


# --- kernel lookup -----------------------------------------------------------------------


def test_kernel_lookup_compiles_each_file_once_per_device():
    k1 = gpu.kernel("im2col.cu", "im2col", np.float32)
    k2 = gpu.kernel("im2col.cu", "col2im", np.float64)
    assert k1 is not None and k2 is not None
    dev = cp.cuda.runtime.getDevice()
    mod = gpu._modules[(dev, "im2col.cu")]
    gpu.kernel("im2col.cu", "im2col", np.float64)
    assert gpu._modules[(dev, "im2col.cu")] is mod  # cached, not recompiled
    with pytest.raises(ValueError, match="no kernel"):
        gpu.kernel("im2col.cu", "nope", np.float32)
    with pytest.raises(ValueError, match="float32 or float64"):
        gpu.kernel("im2col.cu", "im2col", np.float16)


def test_compile_all_instances():
    gpu.compile_all()  # every name expression of every file resolves


# --- im2col / col2im -----------------------------------------------------------------------


IM2COL_CASES = [  # (C, H, W, k, y0, y1)
    (3, 9, 11, 1, 0, 9),
    (3, 9, 11, 2, 2, 6),
    (3, 9, 11, 3, 0, 7),
    (2, 12, 7, 5, 3, 8),
    (7300, 3, 3, 3, 0, 1),  # C*k*k = 65700 rows > 65535: grid.y strides
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C,H,W,k,y0,y1", IM2COL_CASES)
def test_im2col_matches_cpu(C, H, W, k, y0, y1, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((C, H, W)).astype(dtype)
    L = (y1 - y0) * (W - k + 1)
    ref = cpu.im2col(x, k, y0, y1, np.empty((C * k * k, L), dtype=dtype))
    out = cp.full((C * k * k, L), np.nan, dtype=dtype)
    got = gpu.im2col(cp.asarray(x), k, y0, y1, out)
    assert got is out
    np.testing.assert_array_equal(out.get(), ref)


def test_im2col_accepts_a_strided_image_and_refuses_a_bad_out():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 8, 10))
    xs = cp.asarray(x)[:, :, ::2]  # (3, 8, 5), not contiguous
    ref = cpu.im2col(np.ascontiguousarray(x[:, :, ::2]), 3, 0, 6, np.empty((27, 18)))
    out = cp.empty((27, 18))
    np.testing.assert_array_equal(gpu.im2col(xs, 3, 0, 6, out).get(), ref)
    with pytest.raises(ValueError, match="im2col out"):
        gpu.im2col(cp.asarray(x), 3, 0, 6, cp.empty((27, 10)))
    with pytest.raises(ValueError, match="im2col out"):
        gpu.im2col(cp.asarray(x), 3, 0, 6, cp.empty((27, 48), dtype=cp.float32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C,H,W,k,y0,y1", IM2COL_CASES + [(65600, 2, 2, 2, 0, 1)])
def test_col2im_matches_cpu(C, H, W, k, y0, y1, dtype):
    rng = np.random.default_rng(3)
    L = (y1 - y0) * (W - k + 1)
    cols = rng.standard_normal((C * k * k, L)).astype(dtype)
    dx0 = rng.standard_normal((C, H, W)).astype(dtype)  # col2im ADDS into dx
    ref = cpu.col2im(cols, k, y0, y1, dx0.copy())
    dx = cp.asarray(dx0)
    got = gpu.col2im(cp.asarray(cols), k, y0, y1, dx)
    assert got is dx
    np.testing.assert_array_equal(dx.get(), ref)  # same terms, same order: same bits
    dx2 = cp.asarray(dx0)
    gpu.col2im(cp.asarray(cols), k, y0, y1, dx2)
    np.testing.assert_array_equal(dx2.get(), dx.get())  # deterministic


@pytest.mark.slow
def test_im2col_64bit_offsets():
    # out has C*k*k * L > 2**31 elements, so row offsets r*L overflow 32 bits
    C, k, H, W = 1024, 3, 3, 240002
    L = W - k + 1
    need = 4 * (C * H * W + C * k * k * L) + 2**30
    if _free_bytes() < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free GPU memory")
    assert C * k * k * L > 2**31
    x = cp.random.default_rng(0).standard_normal((C, H, W), dtype=cp.float32)
    out = cp.empty((C * k * k, L), dtype=cp.float32)
    gpu.im2col(x, k, 0, 1, out)
    last = x[-1:].get()  # the last channel: the rows at the largest offsets
    ref = cpu.im2col(last, k, 0, 1, np.empty((k * k, L), dtype=np.float32))
    np.testing.assert_array_equal(out[-k * k:].get(), ref)
    np.testing.assert_array_equal(out[:k * k].get(),
                                  cpu.im2col(x[:1].get(), k, 0, 1, np.empty_like(ref)))


# --- max-pool ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 6, 10), (1, 70000, 2, 2)])  # planes > 65535
def test_maxpool_forward_matches_cpu(shape, dtype):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, shape).astype(dtype)  # many ties: the tie rule decides
    out_ref, arg_ref = cpu.maxpool2x2_forward(x)
    out, arg = gpu.maxpool2x2_forward(cp.asarray(x))
    assert arg.dtype == cp.uint8
    np.testing.assert_array_equal(out.get(), out_ref)
    np.testing.assert_array_equal(arg.get(), arg_ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_tie_rule_first_maximum_in_window_order(dtype):
    # windows: all equal -> 0; (0,1) and (1,1) tie at the max -> 1; only (1,0) -> 2; (1,1) -> 3
    x = np.array([[[[5, 5, 1, 7, 0, 0, 0, 0],
                    [5, 5, 0, 7, 9, 0, 0, 1]]]], dtype=dtype)
    out, arg = gpu.maxpool2x2_forward(cp.asarray(x))
    np.testing.assert_array_equal(arg.get().ravel(), [0, 1, 2, 3])
    np.testing.assert_array_equal(out.get().ravel(), [5, 7, 9, 1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_backward_matches_cpu(dtype):
    rng = np.random.default_rng(5)
    dout = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    arg = rng.integers(0, 4, (2, 3, 4, 5)).astype(np.uint8)
    ref = cpu.maxpool2x2_backward(dout, arg)
    got = gpu.maxpool2x2_backward(cp.asarray(dout), cp.asarray(arg))
    np.testing.assert_array_equal(got.get(), ref)  # zeros written everywhere else too


# --- bias + ReLU ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_relu_forward_matches_numpy(dtype):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 5, 7, 3)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    # the NumPy code it fuses: the conv's bias add, then the ReLU
    ref = np.maximum(x + b[None, :, None, None], 0)
    xd = cp.asarray(x)
    got = gpu.bias_relu_forward(xd, cp.asarray(b))
    assert got is xd  # in place
    np.testing.assert_array_equal(xd.get(), ref)
    with pytest.raises(ValueError, match="C-contiguous"):
        gpu.bias_relu_forward(cp.asarray(x)[:, :, ::2], cp.asarray(b))
    with pytest.raises(ValueError, match="bias"):
        gpu.bias_relu_forward(cp.asarray(x), cp.asarray(b[:4]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward_matches_numpy(dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    x[0, 0, 0, :2] = 0.0  # the gradient at exactly 0 is 0
    dout = rng.standard_normal(x.shape).astype(dtype)
    dout[1, 1, 1, 1] = np.inf  # a select, not a product: no NaN from inf * 0
    x[1, 1, 1, 1] = -1.0  # ... on a dead unit
    out = np.maximum(x, 0)  # the ReLU's output
    ref = np.where(out > 0, dout, 0)  # the plain backward, written out
    assert not np.isnan(ref).any()
    got = gpu.relu_backward(cp.asarray(dout), cp.asarray(out))
    np.testing.assert_array_equal(got.get(), ref)
    dx = cp.full(x.shape, cp.nan, dtype=dtype)  # a workspace, as conv2d_backward passes
    assert gpu.relu_backward(cp.asarray(dout), cp.asarray(out), dx) is dx
    np.testing.assert_array_equal(dx.get(), ref)
    with pytest.raises(ValueError, match="contiguous"):
        gpu.relu_backward(cp.asarray(dout), cp.asarray(out), cp.empty(x.shape[::-1], dtype).T)


@pytest.mark.slow
def test_bias_relu_forward_64bit_offsets():
    planes, S = 2, 2**30 + 7  # N*C*S > 2**31 elements
    need = 4 * planes * S + 2**30
    if _free_bytes() < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free GPU memory")
    x = cp.full((1, planes, S), -0.5, dtype=cp.float32)
    x[0, 1, -5:] = cp.asarray(np.array([-2.0, -1.0, 0.0, 1.0, 2.0], dtype=np.float32))
    b = cp.asarray(np.array([0.0, 1.0], dtype=np.float32))
    gpu.bias_relu_forward(x, b)
    np.testing.assert_array_equal(x[0, 1, -6:].get(), [0.5, 0.0, 0.0, 1.0, 2.0, 3.0])
    assert float(x[0, 0].max()) == 0.0


# --- softmax + weighted cross-entropy --------------------------------------------------------


def _softmax_inputs(rng, shape, dtype, zero_frac=0.25):
    N, K, H, W = shape
    logits = (3 * rng.standard_normal(shape)).astype(dtype)
    labels = rng.integers(0, K, (N, H, W))
    weights = rng.uniform(0.5, 2.0, (N, H, W)).astype(dtype)
    weights[rng.random((N, H, W)) < zero_frac] = 0.0
    return logits, labels, weights


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 2, 9, 13), (2, 7, 3, 3),
                                   (1, 2, 520, 520)])  # 270400 pixels > 1024 blocks * 256
def test_softmax_xent_forward_matches_cpu(shape, dtype):
    rng = np.random.default_rng(8)
    logits, labels, weights = _softmax_inputs(rng, shape, dtype)
    loss_ref, probs_ref = cpu.softmax_xent_forward(logits, labels, weights)
    loss, probs = gpu.softmax_xent_forward(cp.asarray(logits), cp.asarray(labels),
                                           cp.asarray(weights))
    assert loss.shape == () and loss.dtype == dtype and probs.dtype == dtype
    assert_close(loss, loss_ref, dtype, "loss_sum")
    assert_close(probs, probs_ref, dtype, "probs")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_backward_matches_cpu(dtype):
    rng = np.random.default_rng(9)
    logits, labels, weights = _softmax_inputs(rng, (2, 3, 6, 5), dtype)
    _, probs = cpu.softmax_xent_forward(logits, labels, weights)
    scale = 1.0 / (2 * 6 * 5)
    ref = cpu.softmax_xent_backward(probs, labels, weights, scale)
    got = gpu.softmax_xent_backward(cp.asarray(probs), cp.asarray(labels), cp.asarray(weights),
                                    scale)
    assert_close(got, ref, dtype, "dlogits")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_deterministic_and_stable(dtype):
    rng = np.random.default_rng(10)
    logits, labels, weights = _softmax_inputs(rng, (1, 2, 300, 301), dtype)
    logits[0, :, :2] = np.array([1e4, -1e4], dtype=dtype)[:, None, None]  # no overflow
    args = (cp.asarray(logits), cp.asarray(labels), cp.asarray(weights))
    loss1, probs1 = gpu.softmax_xent_forward(*args)
    loss2, probs2 = gpu.softmax_xent_forward(*args)
    assert loss1.get().tobytes() == loss2.get().tobytes()  # the same bits, run to run
    assert np.isfinite(loss1.get()) and bool(cp.isfinite(probs1).all())
    np.testing.assert_array_equal(probs1.get(), probs2.get())
    ref, _ = cpu.softmax_xent_forward(logits, labels, weights)
    assert_close(loss1, ref, dtype, "loss_sum with |logits| = 1e4")


def test_softmax_xent_label_dtypes():
    rng = np.random.default_rng(11)
    logits, labels, weights = _softmax_inputs(rng, (2, 3, 4, 6), np.float64)
    ref_loss, ref_probs = cpu.softmax_xent_forward(logits, labels, weights)
    ref_d = cpu.softmax_xent_backward(ref_probs, labels, weights, 0.5)
    for ldt in (np.int64, np.int32, np.uint8, np.int16):
        lab = cp.asarray(labels.astype(ldt))
        loss, probs = gpu.softmax_xent_forward(cp.asarray(logits), lab, cp.asarray(weights))
        assert_close(loss, ref_loss, np.float64, f"loss with {ldt.__name__} labels")
        d = gpu.softmax_xent_backward(probs, lab, cp.asarray(weights), 0.5)
        assert_close(d, ref_d, np.float64, f"dlogits with {ldt.__name__} labels")


def test_softmax_xent_bad_label_gives_nan_not_garbage():
    rng = np.random.default_rng(12)
    logits, labels, weights = _softmax_inputs(rng, (1, 2, 3, 3), np.float64, zero_frac=0.0)
    labels[0, 1, 1] = 5  # out of range, weight != 0
    loss, _ = gpu.softmax_xent_forward(cp.asarray(logits), cp.asarray(labels),
                                       cp.asarray(weights))
    assert np.isnan(loss.get())


# --- up-conv rearrangements ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_upconv_scatter_matches_numpy(dtype):
    rng = np.random.default_rng(13)
    N, Cout, H, W = 2, 3, 4, 5
    cols = rng.standard_normal((N, Cout, 2, 2, H, W)).astype(dtype)
    b = rng.standard_normal(Cout).astype(dtype)
    # the rearrangement as a NumPy transpose: (N, Cout, i, j, H, W) -> (N, Cout, H, i, W, j)
    ref = cols.transpose(0, 1, 4, 2, 5, 3).reshape(N, Cout, 2 * H, 2 * W) + b[None, :, None, None]
    got = gpu.upconv_scatter(cp.asarray(cols), cp.asarray(b))
    np.testing.assert_array_equal(got.get(), ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_upconv_gather_matches_numpy(dtype):
    rng = np.random.default_rng(14)
    N, Cout, H, W = 2, 3, 4, 5
    dout = rng.standard_normal((N, Cout, 2 * H, 2 * W)).astype(dtype)
    # the inverse as a NumPy transpose: (N, Cout, H, i, W, j) -> (N, Cout, i, j, H, W)
    ref = dout.reshape(N, Cout, H, 2, W, 2).transpose(0, 1, 3, 5, 2, 4)
    got = gpu.upconv_gather(cp.asarray(dout))
    np.testing.assert_array_equal(got.get(), ref)
    back = gpu.upconv_scatter(got, cp.zeros(Cout, dtype=dtype))  # the two are inverses
    np.testing.assert_array_equal(back.get(), dout)


# --- momentum SGD -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update_matches_cpu(dtype):
    rng = np.random.default_rng(15)
    w, v, g = (rng.standard_normal((4, 3, 3, 3)).astype(dtype) for _ in range(3))
    lr, m, wd = 0.01, 0.99, 5e-4
    w_ref, v_ref = w.copy(), v.copy()
    cpu.sgd_update(w_ref, v_ref, g, lr, m, wd)
    wd_, vd = cp.asarray(w), cp.asarray(v)
    gpu.sgd_update(wd_, vd, cp.asarray(g), lr, m, wd)
    assert_close(vd, v_ref, dtype, "v")
    assert_close(wd_, w_ref, dtype, "w")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update_many_matches_cpu(dtype):
    rng = np.random.default_rng(16)
    shapes = [(8, 3, 3, 3), (8,), (0,), (3, 8, 2, 2), (5, 7), (1,)]  # an empty one too
    ws = [rng.standard_normal(s).astype(dtype) for s in shapes]
    vs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    wd_ = [cp.asarray(a) for a in ws]
    vd = [cp.asarray(a) for a in vs]
    gd = [cp.asarray(a) for a in gs]
    for step in range(3):  # the pointer table is built once and reused
        gpu.sgd_update_many(wd_, vd, gd, 0.01, 0.99, 1e-4)
        for w, v, g in zip(ws, vs, gs, strict=True):
            cpu.sgd_update(w, v, g, 0.01, 0.99, 1e-4)
        for i in range(len(shapes)):
            assert_close(wd_[i], ws[i], dtype, f"w[{i}] after step {step}")
            assert_close(vd[i], vs[i], dtype, f"v[{i}] after step {step}")
    with pytest.raises(ValueError, match="equally many"):
        gpu.sgd_update_many(wd_, vd[:-1], gd, 0.01, 0.99)


def test_backend_dispatches_to_gpu():
    rng = np.random.default_rng(17)
    x = cp.asarray(rng.standard_normal((1, 2, 4, 4)))
    out, arg = backend.maxpool2x2_forward(x)
    assert backend.is_gpu_array(out) and backend.is_gpu_array(arg)


# --- every op: float64 gradient check on CuPy, and CPU vs GPU ----------------------------
# Both doors: the fast ops are the ones that run the kernels above; the plain ops (whole-array
# CuPy code) must run on the GPU too.

KINDS = ["fast", "plain"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", gradcheck.op_names())
def test_op_gradcheck_on_gpu(op, kind):
    results = gradcheck.run_checks([op], dtype="float64", device="cuda", kind=kind)
    assert results
    bad = [f"{r.op} d{r.input}: {r.max_rel_error:.2e} > {r.threshold:.0e} ({r.explain()})"
           for r in results if not r.passed]
    assert not bad, "; ".join(bad)


def _run_op(check, inputs, dout):
    out, cache = check.forward(*inputs.values())
    grads = check.backward(dout, cache)
    return out, grads if isinstance(grads, tuple | list) else (grads,)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("check", [pytest.param(c, id=f"{kind}-{c.name}")
                                   for kind in KINDS for c in gradcheck.op_checks(kind)])
def test_op_cpu_gpu_agree(check, dtype):
    rng = np.random.default_rng(18)
    host = check.make_inputs(rng, dtype)
    dev = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in host.items()}
    out_h, _ = check.forward(*{k: (v.copy() if isinstance(v, np.ndarray) else v)
                                for k, v in host.items()}.values())
    if np.ndim(out_h) == 0:
        dout_h = dout_d = 0.75
    else:
        dout_h = rng.standard_normal(np.shape(out_h)).astype(dtype)
        dout_d = cp.asarray(dout_h)
    out_h, grads_h = _run_op(check, host, dout_h)
    out_d, grads_d = _run_op(check, dev, dout_d)
    assert backend.is_gpu_array(out_d)
    assert_close(out_d, out_h, dtype, f"{check.name} forward")
    assert len(grads_d) == len(grads_h)
    for name, gd, gh in zip(check.wrt, grads_d, grads_h, strict=True):
        assert backend.is_gpu_array(gd)
        assert_close(gd, gh, dtype, f"{check.name} d{name}")
