"""The fast conv's CPU loops for 3x3 layers (minunet/fast/conv.py `_plan`): the rows loops
(backend/cpu_rows.py) and Winograd F(2x2, 3x3) (backend/cpu_winograd.py).

Each loop against brute-force loops; then the fast conv against the plain op
(minunet.ops.conv) for every class of layer the rule picks, forward and both
gradients, with and without the fused ReLU, need_dx False and True, odd and even
heights, 1-3 workers and tiny chunks: float64 to 1e-12; float32 to F32_TOL (the
rows loops add in another order; Winograd adds its transforms' rounding, bounded
on its own in test_winograd_float32_error). Same inputs, same bits, run to run.
"""

from __future__ import annotations

import numpy as np
import pytest

from minunet import backend, fast, ops
from minunet.backend import chunks, cpu_rows, cpu_winograd, threads
from minunet.fast import conv

# float32, fast against plain, ||fast - plain|| / ||plain|| per output and gradient: measured
# 2e-8 to 4e-7 on the shapes below (plain's own im2col GEMM is one of the two roundings)
F32_TOL = 2e-6
F64_TOL = 1e-12
# Winograd's own float32 error, ||winograd - exact|| / ||exact|| with the exact product in
# float64, He-scaled weights, 32 to 256 input channels: measured 1.9e-7 to 4.8e-7, growing
# with the channels (im2col + GEMM on the same inputs: 3.0e-7 to 3.6e-7)
WINOGRAD_F32 = 1e-6


def rel(a, b) -> float:
    """||a - b|| / ||b||, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def conv_loops(x, w):
    """Valid 3x3 correlation by brute force in float64: x (C, H, W), w (O, C, 3, 3)."""
    C, H, W = x.shape
    out = np.zeros((w.shape[0], H - 2, W - 2))
    for i in range(3):
        for j in range(3):
            out += np.einsum("oc,cyx->oyx", w[:, :, i, j].astype(np.float64),
                             x[:, i : i + H - 2, j : j + W - 2].astype(np.float64))
    return out


# --- the loops against brute force ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("R", [1, 3, 4, 7])  # tails of 1-3 rows after the 4-row passes
def test_conv3_rows_against_loops(rng, dtype, relu, R):
    x = rng.standard_normal((3, 12, 9)).astype(dtype)
    w = rng.standard_normal((2, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(2).astype(dtype)
    out = np.full((2, 10, 7), 7.0, dtype)
    cpu_rows.conv3_rows(x, 1, w, b, relu, out, 2, R)  # input rows 1.., output rows 2..
    want = conv_loops(x[:, 1:], w)[:, :R] + b[:, None, None]
    want = np.maximum(want, 0) if relu else want
    np.testing.assert_allclose(out[:, 2 : 2 + R], want, rtol=1e-5, atol=1e-5)
    assert (out[:, :2] == 7).all() and (out[:, 2 + R :] == 7).all()  # no other row touched


@pytest.mark.parametrize("relu", [True, False])
def test_grad_rows_layouts(rng, relu):
    Cout, Ho, Wo = 2, 6, 5
    d, o = rng.standard_normal((2, Cout, Ho, Wo))
    g = np.where(o > 0, d, 0) if relu else d
    r0, r1, y0, y1 = -2, 8, 1, 4  # two rows above the image, two below
    Wf = Wo + 2
    gp = np.full((Cout, r1 - r0, Wo + 4), 9.0)
    gf = np.full((Cout, (y1 - y0) * Wf), 9.0)
    cpu_rows.grad_rows(d, o, relu, r0, r1, y0, y1, gp, gf)
    want = np.zeros_like(gp)
    want[:, 2 : 2 + Ho, 2 : 2 + Wo] = g  # row r of g is row r - r0 of gp
    np.testing.assert_array_equal(gp, want)
    want_f = np.zeros((Cout, y1 - y0, Wf))
    want_f[:, :, :Wo] = g[:, y0:y1]
    np.testing.assert_array_equal(gf, want_f.reshape(Cout, -1))
    with pytest.raises(ValueError, match="gp"):
        cpu_rows.grad_rows(d, o, relu, r0, r1, y0, y1, gp[:, 1:], gf)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv3_dw_rows_against_loops(rng, dtype):
    Cin, Cout, H, W, y0, R = 3, 3, 9, 8, 2, 4  # odd Cout: the last channel alone
    x = rng.standard_normal((Cin, H, W)).astype(dtype)
    g = rng.standard_normal((Cout, R, W - 2)).astype(dtype)
    gf = np.concatenate([g, np.zeros((Cout, R, 2), dtype)], axis=2).reshape(Cout, R * W)
    dw, db = np.ones((Cout, Cin, 3, 3)), np.ones(Cout)  # added to
    cpu_rows.conv3_dw_rows(x.reshape(Cin, H * W), W, gf, y0, R, dw, db)
    want = np.ones((Cout, Cin, 3, 3))
    for i in range(3):
        for j in range(3):
            want[:, :, i, j] += np.einsum("oyx,cyx->oc", g.astype(np.float64),
                                          x[:, y0 + i : y0 + i + R, j : j + W - 2])
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dw, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(db, 1 + g.sum(axis=(1, 2), dtype=np.float64), rtol=tol, atol=tol)


@pytest.mark.parametrize("relu", [True, False])
def test_winograd_steps_against_loops(rng, relu):
    """filter, input, 16 products, output: the conv of rows 2..5 of x, written to rows 1..4."""
    Cin, Cout, H, W = 3, 2, 9, 10
    x, w, b = rng.standard_normal((Cin, H, W)), rng.standard_normal((Cout, Cin, 3, 3)), \
        rng.standard_normal(Cout)
    U = cpu_winograd.winograd_filter(w)
    nt, Tw = 2, (W - 2) // 2
    V = cpu_winograd.winograd_input(x, 2, nt, np.empty((16, Cin, nt * Tw)))
    out = np.full((Cout, 7, W - 2), 7.0)
    cpu_winograd.winograd_output(U @ V, b, relu, out, 1, nt)
    want = conv_loops(x[:, 2 : 2 + 2 * nt + 2], w) + b[:, None, None]
    want = np.maximum(want, 0) if relu else want
    np.testing.assert_allclose(out[:, 1:5], want, rtol=1e-12, atol=1e-12)
    assert (out[:, 0] == 7).all() and (out[:, 5:] == 7).all()
    with pytest.raises(ValueError, match="even"):
        cpu_winograd.winograd_input(x[:, :, :9], 0, 1, np.empty((16, Cin, 3)))


def test_winograd_filter_flip(rng):
    """flip=True: the transformed filters of dx (flipped, transposed) straight from w."""
    w = rng.standard_normal((5, 3, 3, 3))
    wf = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    np.testing.assert_allclose(cpu_winograd.winograd_filter(w, flip=True),
                               cpu_winograd.winograd_filter(wf), rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match=r"\(16, 3, 5\)"):
        cpu_winograd.winograd_filter(w, out=np.empty((16, 5, 3)), flip=True)


def test_winograd_float32_error(rng):
    """Winograd's float32 error against the exact product (float64), He-scaled weights: within
    WINOGRAD_F32, and at most twice the im2col GEMM's on the same inputs."""
    errs = []
    for Cin, Cout in ((32, 32), (64, 128), (256, 64)):
        x = rng.standard_normal((Cin, 10, 34)).astype(np.float32)
        w = (rng.standard_normal((Cout, Cin, 3, 3)) * np.sqrt(2 / (9 * Cin))).astype(np.float32)
        exact = conv_loops(x, w)
        out = np.empty((Cout, 8, 32), np.float32)
        V = cpu_winograd.winograd_input(x, 0, 4, np.empty((16, Cin, 4 * 16), np.float32))
        M = cpu_winograd.winograd_filter(w) @ V
        cpu_winograd.winograd_output(M, np.zeros(Cout, np.float32), False, out, 0, 4)
        gemm = ops.conv2d_forward(x[None], w, np.zeros(Cout, np.float32))[0][0]
        errs.append((rel(out, exact), rel(gemm, exact)))
    assert max(e for e, _ in errs) <= WINOGRAD_F32, errs
    assert all(0 < e <= 2 * g for e, g in errs), errs  # rounding measured, not far off GEMM's


# --- the fast conv against the plain op, every class the rule picks ---------------------------

# (N, Cin, H, W, Cout): the plan each picks on the CPU
CASES = {
    ("rows", "rows", "rows"): [(2, 8, 13, 20, 8), (1, 16, 10, 9, 3), (1, 2, 7, 6, 16)],
    ("winograd", "rows", "rows"): [(1, 12, 11, 20, 24), (1, 24, 4, 258, 20)],  # Cin <= 16;
    # Cin <= 32 and Wo >= 256
    ("winograd", "winograd", "rows"): [(2, 24, 10, 20, 20), (1, 40, 9, 34, 40)],
    ("winograd", "winograd", "shifted"): [(1, 40, 9, 18, 40), (2, 72, 10, 20, 64)],  # many
    # channels on a small image: 48 * Cin * Cout >= 4096 * Wo
    ("winograd", "rows", "shifted"): [(1, 16, 8, 20, 260)],
    ("winograd", "gemm", "gemm"): [(1, 40, 9, 12, 40), (1, 8, 8, 12, 36)],  # Wo < TINY_WO
    ("gemm", "gemm", "gemm"): [(1, 20, 8, 13, 20)],  # odd output width: no Winograd
}
SHAPES = [(plan, shape) for plan, shapes in CASES.items() for shape in shapes]


@pytest.fixture(params=[(1, None), (2, None), (2, 1), (3, 1)],
                ids=["1 worker", "2 workers", "2 workers tiny chunks", "3 workers tiny chunks"])
def cpu_setup(request, monkeypatch):
    """Worker count and chunk size (CPU_CHUNK_BYTES = 1: the smallest chunks: 2 rows for
    Winograd, 4 for the rows loops) of the fast ops."""
    n, chunk = request.param
    monkeypatch.setattr(threads, "n_threads", lambda: n)
    if chunk is not None:
        monkeypatch.setattr(chunks, "CPU_CHUNK_BYTES", chunk)
    return request.param


@pytest.mark.parametrize("plan,shape", SHAPES, ids=[f"{'-'.join(p)} {s}" for p, s in SHAPES])
def test_the_rule_picks(plan, shape):
    N, Cin, H, W, Cout = shape
    assert tuple(conv._plan(np.zeros((N, Cin, H, W)), np.zeros((Cout, Cin, 3, 3)))) == plan


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("plan,shape", SHAPES, ids=[f"{'-'.join(p)} {s}" for p, s in SHAPES])
def test_fast_equals_plain(rng, cpu_setup, dtype, relu, plan, shape):
    N, Cin, H, W, Cout = shape
    x = rng.standard_normal((N, Cin, H, W)).astype(dtype)
    w = rng.standard_normal((Cout, Cin, 3, 3)).astype(dtype)
    b = rng.standard_normal(Cout).astype(dtype)
    out_p, cache_p = ops.conv2d_forward(x, w, b, relu=relu)
    out_f, cache_f = fast.conv2d_forward(x, w, b, relu=relu)
    tol = F64_TOL if dtype == "float64" else F32_TOL
    assert rel(out_f, out_p) <= tol
    d = rng.standard_normal(out_p.shape).astype(dtype)
    for need_dx in (True, False):
        g_p = ops.conv2d_backward(d, cache_p, need_dx=need_dx)
        g_f = fast.conv2d_backward(d, cache_f, need_dx=need_dx)
        assert (g_f[0] is None) == (not need_dx)
        for name, a, want in zip(("dx", "dw", "db"), g_f, g_p, strict=True):
            if want is not None:
                assert a.dtype == want.dtype and a.shape == want.shape
                assert rel(a, want) <= tol, (name, need_dx, rel(a, want))


@pytest.mark.parametrize("plan,shape", SHAPES, ids=[f"{'-'.join(p)} {s}" for p, s in SHAPES])
def test_the_backward_runs_the_planned_dw(rng, monkeypatch, plan, shape):
    """The loops the rule names are the ones that run (an equal result alone would not
    tell, since every path is right): dw by the rows loops, by the shifted GEMMs, or by the
    GEMM's columns."""
    from minunet.backend import cpu_rows

    ran = []

    def spy(f, tag):
        def run(*a, **k):
            ran.append(tag)
            return f(*a, **k)
        return run

    for mod, name, tag in ((cpu_rows, "conv3_dw_rows", "rows"), (conv, "_shifted_dw", "shifted"),
                           (conv, "_columns", "gemm")):
        monkeypatch.setattr(mod, name, spy(getattr(mod, name), tag))
    N, Cin, H, W, Cout = shape
    x = rng.standard_normal((N, Cin, H, W))
    out, cache = fast.conv2d_forward(x, rng.standard_normal((Cout, Cin, 3, 3)),
                                     np.zeros(Cout), relu=True)
    ran.clear()  # the forward's columns, if any
    fast.conv2d_backward(rng.standard_normal(out.shape), cache)
    assert ran and set(ran) == {plan[2]}


@pytest.mark.parametrize("plan,shape", SHAPES, ids=[f"{'-'.join(p)} {s}" for p, s in SHAPES])
def test_run_to_run_bit_identical(rng, monkeypatch, plan, shape):
    """Two workers, tiny chunks (several chunks per worker, dw summed per worker): twice the
    same call, the same bits."""
    monkeypatch.setattr(threads, "n_threads", lambda: 2)
    monkeypatch.setattr(chunks, "CPU_CHUNK_BYTES", 1)
    N, Cin, H, W, Cout = shape
    x, w, b = (rng.standard_normal(s).astype(np.float32)
               for s in ((N, Cin, H, W), (Cout, Cin, 3, 3), (Cout,)))
    d = rng.standard_normal((N, Cout, H - 2, W - 2)).astype(np.float32)
    runs = []
    for _ in range(2):
        out, cache = fast.conv2d_forward(x, w, b, relu=True)
        runs.append((out, *fast.conv2d_backward(d, cache)))
    for a, c in zip(*runs, strict=True):
        assert np.array_equal(a, c)


def test_the_unet_layers_and_the_switch(monkeypatch):
    """The U-Net at 316/8 and 572/16: its first layer keeps the direct loops, channels up to 16
    take the rows loops, the rest Winograd; MINUNET_CONV_PATH=gemm turns both off."""
    def plans(size, base):
        from minunet.bench import layer_specs
        from minunet.models.unet import UNetConfig

        out = {}
        for sp in layer_specs(UNetConfig(base=base), size, 1):
            if sp["kind"] == "conv" and sp["w"][2] == 3:
                out[sp["name"]] = tuple(conv._plan(np.empty(sp["x"]), np.empty(sp["w"])))
        return out

    p = plans(316, 8)
    assert p["down0.conv0"] == ("direct", "gemm", "direct")
    assert p["down0.conv1"] == p["up0.conv1"] == p["down1.conv1"] == ("rows", "rows", "rows")
    assert p["bottleneck.conv1"] == ("winograd", "gemm", "gemm")  # 12 px
    assert p["down2.conv1"] == ("winograd", "winograd", "rows")  # 32 channels at 72 px
    assert p["down3.conv1"] == p["up3.conv0"] == ("winograd", "winograd", "shifted")  # 64 at 32
    assert plans(572, 16)["down1.conv1"] == ("winograd", "rows", "rows")
    p = plans(572, 64)  # the paper's widths: Winograd forward and dx; dw by the rows loops on
    # the two top levels (64-128 channels at 280-568 px), shifted below
    assert set(v for k, v in p.items() if k != "down0.conv0") == {
        ("winograd", "winograd", "rows"), ("winograd", "winograd", "shifted")}
    assert p["down1.conv1"] == p["up1.conv1"] == ("winograd", "winograd", "rows")
    assert p["down2.conv0"] == p["bottleneck.conv1"] == ("winograd", "winograd", "shifted")
    monkeypatch.setenv("MINUNET_CONV_PATH", "gemm")
    p = plans(316, 8)
    assert p["down0.conv0"] == ("direct", "gemm", "direct")
    assert set(v for k, v in p.items() if k != "down0.conv0") == {("gemm", "gemm", "gemm")}
    monkeypatch.setenv("MINUNET_CONV_PATH", "fastest")
    with pytest.raises(ValueError, match="MINUNET_CONV_PATH must be one of auto, gemm"):
        conv._plan(np.empty((1, 8, 10, 10)), np.empty((8, 8, 3, 3)))


@pytest.mark.parametrize("Cin,Cout", [(16, 16), (32, 64)])
def test_workspaces_stay_bounded(rng, monkeypatch, Cin, Cout):
    """Every workspace the rows loops and Winograd use is a chunk's, not the layer's: with
    the default 4 MB chunks, under 4 MB for a layer whose columns would be 6-12 MB."""
    monkeypatch.setattr(threads, "n_threads", lambda: 2)
    backend.release_workspaces()
    H = W = 120
    x = rng.standard_normal((1, Cin, H, W)).astype(np.float32)
    w = rng.standard_normal((Cout, Cin, 3, 3)).astype(np.float32)
    out, cache = fast.conv2d_forward(x, w, np.zeros(Cout, np.float32), relu=True)
    fast.conv2d_backward(rng.standard_normal(out.shape).astype(np.float32), cache)
    assert Cin * 9 * (H - 2) * (W - 2) * 4 > 6 * 2**20  # the whole layer's columns
    assert chunks._workspaces and max(b.nbytes for b in chunks._workspaces.values()) <= 4 * 2**20
    backend.release_workspaces()


@pytest.mark.parametrize("Cin,Cout", [(1024, 512), (512, 1024)])
def test_paper_widths_equal_plain(rng, monkeypatch, Cin, Cout):
    """The paper's channel counts (up3.conv0, bottleneck.conv0 at 572/64) at a small size, float64,
    against the plain op to 1e-12: Winograd's filters too big for a workspace, chunks small
    enough (as if the layer were wide) that the image has 3, the last with an odd row, and
    Winograd's dx, in runs as big as its filters allow, in arrays of their own. (Runs of 2
    rows, several per chunk: test_fast_equals_plain with tiny chunks.)"""
    monkeypatch.setattr(threads, "n_threads", lambda: 2)
    monkeypatch.setattr(chunks, "CPU_CHUNK_BYTES", 600_000)  # chunks of 4 rows
    N, H, W = 1, 11, 20
    assert tuple(conv._plan(np.zeros((N, Cin, H, W)), np.zeros((Cout, Cin, 3, 3)))) == (
        "winograd", "winograd", "shifted")
    x = rng.standard_normal((N, Cin, H, W))
    w = rng.standard_normal((Cout, Cin, 3, 3)) * np.sqrt(2 / (9 * Cin))
    b = rng.standard_normal(Cout)
    out_p, cache_p = ops.conv2d_forward(x, w, b, relu=True)
    out_f, cache_f = fast.conv2d_forward(x, w, b, relu=True)
    assert rel(out_f, out_p) <= F64_TOL
    d = rng.standard_normal(out_p.shape)
    for name, a, want in zip(("dx", "dw", "db"), fast.conv2d_backward(d, cache_f),
                             ops.conv2d_backward(d, cache_p), strict=True):
        assert rel(a, want) <= F64_TOL, (name, rel(a, want))


def test_big_filters_leave_no_workspace(rng, monkeypatch):
    """Winograd's transformed filters of 256 -> 512 channels (8 MB in float32) are the call's
    own array, not a workspace that would stay for the rest of the process (and in its peak);
    dw's per-worker sums, past 4 MB in float64, run in float32 and still match the plain op."""
    monkeypatch.setattr(threads, "n_threads", lambda: 2)
    backend.release_workspaces()
    x = rng.standard_normal((1, 256, 12, 20)).astype(np.float32)
    w = (rng.standard_normal((512, 256, 3, 3)) / 48).astype(np.float32)
    b = np.zeros(512, np.float32)
    out, cache = fast.conv2d_forward(x, w, b, relu=True)
    d = rng.standard_normal(out.shape).astype(np.float32)
    got = fast.conv2d_backward(d, cache)
    assert 16 * 512 * 256 * 4 > 4 * 2**20 and 512 * 256 * 9 * 8 > 4 * 2**20
    for a, want in zip(got, ops.conv2d_backward(d, ops.conv2d_forward(x, w, b, relu=True)[1]),
                       strict=True):
        assert a.dtype == np.float32 and rel(a, want) <= F32_TOL
    assert chunks._workspaces and max(b.nbytes for b in chunks._workspaces.values()) <= 4 * 2**20
    backend.release_workspaces()
