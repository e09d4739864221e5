"""The two doors agree: every fast op (minunet/fast) against its plain op (minunet/ops).

float64 to 1e-12 relative, float32 to 1e-5 relative by norm, per output and per
gradient; N = 1 and N = 3, odd and even sizes, 1, 2 and 3 CPU workers, and the
default chunk size as well as tiny chunks (a few rows each, forced by shrinking
backend.chunks.CPU_CHUNK_BYTES). Then the whole U-Net: logits and every
parameter gradient of the plain and the fast network agree in float64 to 1e-12.
On a machine with a GPU the same runs on CuPy (the `xp` fixture).
"""

from __future__ import annotations

import numpy as np
import pytest

from minunet import backend, fast, ops
from minunet.backend import chunks, threads
from minunet.models.unet import UNetConfig, build_model

TOL = {"float64": 1e-12, "float32": 1e-5}


def rel(a, b) -> float:
    """||a - b|| / ||b|| (0 when both are 0), on the host in float64."""
    a = backend.to_host(a).astype(np.float64)
    b = backend.to_host(b).astype(np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb else float(np.linalg.norm(a))


def agree(got, want, dtype, what):
    if got is None or want is None:
        assert got is None and want is None, what
        return
    err = rel(got, want)
    assert err <= TOL[dtype], f"{what}: fast vs plain relative error {err:.2e} > {TOL[dtype]}"


@pytest.fixture(params=[(1, None), (2, None), (2, 1), (3, 1)],
                ids=["1 worker", "2 workers", "2 workers tiny chunks", "3 workers tiny chunks"])
def cpu_setup(request, monkeypatch):
    """Worker count and chunk size of the fast ops on the CPU (the GPU ignores both)."""
    n, chunk = request.param
    callspec = getattr(request.node, "callspec", None)
    if callspec and callspec.params.get("xp") == "cupy" and request.param != (1, None):
        pytest.skip("the GPU ignores workers and chunks: its case runs once, with '1 worker'")
    monkeypatch.setattr(threads, "n_threads", lambda: n)
    if chunk is not None:
        monkeypatch.setattr(chunks, "CPU_CHUNK_BYTES", chunk)  # k-1 rows per chunk
    return request.param


DTYPES = ["float64", "float32"]


def arrays(xp, rng, dtype, *shapes):
    return [xp.asarray(rng.standard_normal(s).astype(dtype)) for s in shapes]


def run_both(xp, fwd_args, dout_of, name, dtype, **kw):
    """Forward and backward of op `name` on both doors; compare everything."""
    f_plain, b_plain = getattr(ops, name + "_forward"), getattr(ops, name + "_backward")
    f_fast, b_fast = getattr(fast, name + "_forward"), getattr(fast, name + "_backward")
    out_p, cache_p = f_plain(*fwd_args, **kw)
    out_f, cache_f = f_fast(*fwd_args, **kw)
    assert type(cache_p) is type(cache_f)  # the same cache type on both doors
    agree(out_f, out_p, dtype, f"{name} forward")
    dout = dout_of(out_p)
    g_p, g_f = b_plain(dout, cache_p), b_fast(dout, cache_f)
    g_p = g_p if isinstance(g_p, tuple) else (g_p,)
    g_f = g_f if isinstance(g_f, tuple) else (g_f,)
    for i, (a, b) in enumerate(zip(g_f, g_p, strict=True)):
        agree(a, b, dtype, f"{name} backward, gradient {i}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,H,W,Cout,k,relu", [
    (1, 3, 12, 9, 4, 3, True), (3, 2, 11, 13, 5, 3, False), (3, 4, 7, 7, 2, 1, False),
    (1, 5, 20, 17, 3, 3, False), (1, 1, 3, 3, 2, 3, True),
    (3, 1, 10, 11, 4, 3, False), (1, 1, 15, 9, 3, 3, True)])  # Cin = 1: the direct loops
def test_conv2d(xp, rng, cpu_setup, dtype, N, C, H, W, Cout, k, relu):
    x, w, b = arrays(xp, rng, dtype, (N, C, H, W), (Cout, C, k, k), (Cout,))
    run_both(xp, (x, w, b), lambda o: xp.asarray(rng.standard_normal(o.shape).astype(dtype)),
             "conv2d", dtype, relu=relu)
    # need_dx=False (the first layer): the same dw, db, and no dx on either door
    out, cache_p = ops.conv2d_forward(x, w, b, relu=relu)
    _, cache_f = fast.conv2d_forward(x, w, b, relu=relu)
    d = xp.asarray(rng.standard_normal(out.shape).astype(dtype))
    gp = ops.conv2d_backward(d, cache_p, need_dx=False)
    gf = fast.conv2d_backward(d, cache_f, need_dx=False)
    assert gp[0] is None and gf[0] is None
    agree(gf[1], gp[1], dtype, "conv2d dw, need_dx=False")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,Cin,H,W,Cout", [(1, 4, 5, 7, 2), (3, 3, 6, 4, 5), (3, 8, 1, 1, 4)])
def test_upconv2x2(xp, rng, cpu_setup, dtype, N, Cin, H, W, Cout):
    x, w, b = arrays(xp, rng, dtype, (N, Cin, H, W), (Cin, Cout, 2, 2), (Cout,))
    run_both(xp, (x, w, b), lambda o: xp.asarray(rng.standard_normal(o.shape).astype(dtype)),
             "upconv2x2", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3, 4, 6), (3, 5, 10, 2), (3, 1, 2, 2)])
def test_maxpool2x2_with_ties(xp, rng, cpu_setup, dtype, shape):
    x = xp.asarray(rng.integers(0, 3, shape).astype(dtype))  # many ties: the tie rule agrees
    run_both(xp, (x,), lambda o: xp.asarray(rng.standard_normal(o.shape).astype(dtype)),
             "maxpool2x2", dtype)
    _, cp = ops.maxpool2x2_forward(x)
    _, cf = fast.maxpool2x2_forward(x)
    assert (backend.to_host(cp.arg) == backend.to_host(cf.arg)).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3, 5, 4), (3, 2, 7, 9)])
def test_relu(xp, rng, cpu_setup, dtype, shape):
    (x,) = arrays(xp, rng, dtype, shape)
    run_both(xp, (x,), lambda o: xp.asarray(rng.standard_normal(o.shape).astype(dtype)),
             "relu", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,K,H,W", [(1, 2, 5, 4), (3, 3, 7, 9), (3, 5, 1, 3)])
def test_softmax_cross_entropy(xp, rng, cpu_setup, dtype, N, K, H, W):
    (logits,) = arrays(xp, rng, dtype, (N, K, H, W))
    logits = logits * 8  # some pixels far from uniform
    labels = xp.asarray(rng.integers(0, K, (N, H, W)))
    weights = rng.uniform(0.5, 3.0, (N, H, W))
    weights[rng.random((N, H, W)) < 0.3] = 0.0  # ignored pixels
    weights = xp.asarray(weights.astype(dtype))
    run_both(xp, (logits, labels, weights), lambda o: 1.7, "softmax_cross_entropy", dtype)


def test_the_simple_ops_are_shared():
    """Crop, concat and dropout have nothing to speed up: the fast door re-exports them."""
    for name in ("center_crop_forward", "center_crop_backward", "concat_forward",
                 "concat_backward", "dropout_forward", "dropout_backward", "dropout_mask_hashed"):
        assert getattr(fast, name) is getattr(ops, name)
    assert set(fast.__all__) == set(ops.__all__) - {"im2col", "col2im"}  # those are in twins


def test_both_doors_export_the_same_ops():
    pairs = [n for n in ops.__all__ if n.endswith(("_forward", "_backward"))]
    for name in pairs:
        assert callable(getattr(fast, name)), name
    for name in ("Conv2dCache", "Upconv2x2Cache", "MaxPool2x2Cache", "ReluCache",
                 "SoftmaxXentCache"):
        assert getattr(fast, name) is getattr(ops, name), name


@pytest.mark.parametrize("upconv_relu", [False, True])
def test_whole_unet_plain_equals_fast(xp, rng, cpu_setup, upconv_relu):
    """Logits, loss and every parameter gradient of the two doors, float64, to 1e-12."""
    device = "cpu" if xp is np else "cuda"
    nets = {}
    for kind in ("plain", "fast"):
        cfg = UNetConfig(base=2, dtype="float64", ops=kind, upconv_relu=upconv_relu)
        nets[kind] = build_model(cfg, seed=5).to(device)
    x = xp.asarray(rng.standard_normal((3, 1, 204, 188)))  # N = 3, non-square
    labels = xp.asarray(rng.integers(0, 2, (3, 20, 4)))
    weights = xp.asarray(rng.random((3, 20, 4)) + 0.5)
    out = {}
    for kind, m in nets.items():
        for k in m.params:  # non-zero biases, the same on both
            if k.endswith(".bias"):
                m.params[k] = xp.asarray(np.random.default_rng(7).standard_normal(
                    m.params[k].shape) * 0.1)
        logits = m.forward(x, dropout_key=9)
        o = ops if kind == "plain" else fast
        loss, cache = o.softmax_cross_entropy_forward(logits, labels, weights)
        m.zero_grad()
        m.backward(o.softmax_cross_entropy_backward(1.0, cache))
        out[kind] = (logits, loss, {k: v.copy() for k, v in m.grads.items()})
    agree(out["fast"][0], out["plain"][0], "float64", "logits")
    agree(out["fast"][1], out["plain"][1], "float64", "loss")
    for k in out["plain"][2]:
        agree(out["fast"][2][k], out["plain"][2][k], "float64", f"gradient of {k}")


def test_the_first_layer_runs_the_direct_loops():
    """One input channel, 3x3 (the U-Net's first layer) takes fast/conv.py's direct path on the
    CPU, so test_conv2d's Cin = 1 cases test it; wider layers keep the columns."""
    from minunet.fast import conv

    assert conv._direct(np.zeros((1, 1, 8, 8)), 3)
    assert not conv._direct(np.zeros((1, 2, 8, 8)), 3)  # 18 rows of columns: the GEMM
    assert not conv._direct(np.zeros((1, 1, 8, 8)), 1)  # 1x1: no columns to save
