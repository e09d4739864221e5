"""conv2d_general (padding, stride, groups; the plain op): forward vs loops, im2col/col2im as
adjoints, the float64 gradient check, the valid stride-1 case equal to ops/conv.py, PyTorch
parity where torch is installed, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops import conv2d_forward
from minunet.ops.conv_general import (
    col2im_general,
    conv2d_general_backward,
    conv2d_general_forward,
    im2col_general,
)

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
# (N, Cin, Cout, H, W, k, stride, padding, groups): same, strided, depthwise, pointwise, odd
CASES = [
    (2, 3, 4, 7, 6, 3, 1, 1, 1),
    (1, 2, 3, 8, 8, 3, 2, 1, 1),
    (2, 4, 4, 7, 9, 3, 1, 1, 4),
    (1, 6, 6, 9, 9, 5, 2, 2, 6),
    (2, 4, 8, 5, 5, 1, 1, 0, 2),
    (1, 3, 2, 9, 7, 4, 2, 1, 1),
]


def conv_brute(x, w, b, stride, padding, groups):
    """out[n, o, y, x] = b[o] + sum_{c in o's group, i, j} w[o, c, i, j] *
    xpad[n, g*Cg + c, s*y + i, s*x + j], by loops (float64)."""
    N, Cin, H, W = x.shape
    Cout, Cg, k, _ = w.shape
    xpad = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2))
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    out = np.zeros((N, Cout, Ho, Wo))
    Og = Cout // groups
    for n in range(N):
        for o in range(Cout):
            first = (o // Og) * Cg  # the first input channel of o's group
            for y in range(Ho):
                for xx in range(Wo):
                    s = 0.0 if b is None else float(b[o])
                    for c in range(Cg):
                        for i in range(k):
                            for j in range(k):
                                s += float(w[o, c, i, j]) * xpad[n, first + c, stride * y + i,
                                                                  stride * xx + j]
                    out[n, o, y, xx] = s
    return out


def make(rng, case, dtype=np.float64, bias=True):
    N, Cin, Cout, H, W, k, _, _, groups = case
    return (rng.standard_normal((N, Cin, H, W)).astype(dtype),
            rng.standard_normal((Cout, Cin // groups, k, k)).astype(dtype),
            rng.standard_normal(Cout).astype(dtype) if bias else None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_loops(xp, rng, dtype, case, bias):
    x, w, b = make(rng, case, dtype, bias)
    stride, padding, groups = case[6:]
    out, _ = conv2d_general_forward(xp.asarray(x), xp.asarray(w),
                                    None if b is None else xp.asarray(b), stride, padding, groups)
    assert out.dtype == dtype
    np.testing.assert_allclose(backend.to_host(out), conv_brute(x, w, b, stride, padding, groups),
                               **TOL[dtype])


@pytest.mark.parametrize("k, stride, padding", [(3, 1, 1), (3, 2, 1), (5, 2, 2), (4, 2, 1),
                                                 (2, 3, 0)])
def test_col2im_is_the_adjoint_of_im2col(rng, k, stride, padding):
    """<im2col(x), c> == <x, col2im(c)> for random x and c: the dot-product test."""
    x = rng.standard_normal((2, 3, 9, 8))
    cols = im2col_general(x, k, stride, padding)
    c = rng.standard_normal(cols.shape)
    lhs = float((cols * c).sum())
    rhs = float((x * col2im_general(c, x.shape, k, stride, padding)).sum())
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def test_valid_stride_one_equals_the_lesson(rng):
    x, w, b = make(rng, (2, 3, 4, 7, 6, 3, 1, 0, 1))
    ours, _ = conv2d_general_forward(x, w, b)
    lesson, _ = conv2d_forward(x, w, b)
    np.testing.assert_allclose(ours, lesson, rtol=1e-14, atol=1e-14)
    same, _ = conv2d_general_forward(x, w, b, padding="same")
    assert same.shape == (2, 4, 7, 6)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_gradient_check_float64(xp, rng, case, bias):
    x, w, b = make(rng, case, bias=bias)
    stride, padding, groups = case[6:]
    inputs = {"x": xp.asarray(x), "w": xp.asarray(w)}
    if bias:
        inputs["b"] = xp.asarray(b)

    def forward(x, w, b=None):
        return conv2d_general_forward(x, w, b, stride, padding, groups)

    for r in gradcheck.check_spec("conv2d_general", forward, conv2d_general_backward,
                                  inputs, rng):
        assert r.passed, r
    _, cache = forward(**inputs)
    if not bias:
        assert conv2d_general_backward(xp.asarray(rng.standard_normal(
            cache.out_shape)), cache)[2] is None


@pytest.mark.parametrize("case", CASES)
def test_matches_pytorch(rng, case):
    torch = pytest.importorskip("torch")
    x, w, b = make(rng, case)
    stride, padding, groups = case[6:]
    out, cache = conv2d_general_forward(x, w, b, stride, padding, groups)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv2d_general_backward(dout, cache)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    tout = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding, groups=groups)
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    for ours, theirs in ((dx, tx), (dw, tw), (db, tb)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_bad_input_is_one_clear_error(rng):
    x, w, b = make(rng, (1, 4, 6, 5, 5, 3, 1, 1, 1))
    with pytest.raises(ValueError, match="groups 3 must divide the input channels"):
        conv2d_general_forward(x, w, b, groups=3)
    with pytest.raises(ValueError, match="weight needs 2 input channels per group"):
        conv2d_general_forward(x, w, b, groups=2)
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        conv2d_general_forward(x, w, b, stride=0)
    with pytest.raises(ValueError, match="'same' needs an odd kernel"):
        conv2d_general_forward(x, w[:, :, :2, :2], b, padding="same")
    with pytest.raises(ValueError, match="does not fit the input 5x5 padded by 0"):
        conv2d_general_forward(x, rng.standard_normal((6, 4, 7, 7)), b)
    with pytest.raises(ValueError, match="bias shape"):
        conv2d_general_forward(x, w, b[:2])
