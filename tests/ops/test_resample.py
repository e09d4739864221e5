"""bilinear_upsample and nearest_upsample2 (plain ops): forward vs loops in both corner modes,
the backward as the adjoint (dot-product test), the float64 gradient check, PyTorch parity
where torch is installed, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops.resample import (
    bilinear_upsample_backward,
    bilinear_upsample_forward,
    nearest_upsample2_backward,
    nearest_upsample2_forward,
)

FACTORS = [2, 4, 8, 16]


def source(o, size, factor, align_corners):
    """The source coordinate of output pixel o, as PyTorch's upsample_bilinear2d."""
    if align_corners:
        return o * (size - 1) / (size * factor - 1) if size * factor > 1 else 0.0
    return max((o + 0.5) / factor - 0.5, 0.0)


def bilinear_brute(x, factor, align_corners):
    N, C, H, W = x.shape
    out = np.zeros((N, C, H * factor, W * factor))
    for oy in range(H * factor):
        ty = source(oy, H, factor, align_corners)
        y0 = min(math.floor(ty), H - 1)
        y1, ly = min(y0 + 1, H - 1), ty - y0
        for ox in range(W * factor):
            tx = source(ox, W, factor, align_corners)
            x0 = min(math.floor(tx), W - 1)
            x1, lx = min(x0 + 1, W - 1), tx - x0
            out[:, :, oy, ox] = ((1 - ly) * ((1 - lx) * x[:, :, y0, x0] + lx * x[:, :, y0, x1])
                                 + ly * ((1 - lx) * x[:, :, y1, x0] + lx * x[:, :, y1, x1]))
    return out


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bilinear_matches_loops(xp, rng, factor, align_corners, dtype):
    x = rng.standard_normal((2, 3, 3, 5)).astype(dtype)
    out, _ = bilinear_upsample_forward(xp.asarray(x), factor, align_corners)
    assert out.dtype == dtype and out.shape == (2, 3, 3 * factor, 5 * factor)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(backend.to_host(out), bilinear_brute(x, factor, align_corners),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_backward_is_the_adjoint(rng, factor, align_corners):
    x = rng.standard_normal((1, 2, 4, 3))
    out, cache = bilinear_upsample_forward(x, factor, align_corners)
    d = rng.standard_normal(out.shape)
    lhs, rhs = float((out * d).sum()), float((x * bilinear_upsample_backward(d, cache)).sum())
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("align_corners", [False, True])
def test_gradient_checks_float64(xp, rng, factor, align_corners):
    x = xp.asarray(rng.standard_normal((2, 2, 3, 4)))
    results = gradcheck.check_spec(
        "bilinear_upsample", lambda x: bilinear_upsample_forward(x, factor, align_corners),
        bilinear_upsample_backward, {"x": x}, rng)
    results += gradcheck.check_spec("nearest_upsample2", nearest_upsample2_forward,
                                    nearest_upsample2_backward, {"x": x}, rng)
    for r in results:
        assert r.passed, r


def test_nearest_copies_blocks_and_sums_them_back(rng):
    x = rng.standard_normal((1, 2, 3, 2))
    out, cache = nearest_upsample2_forward(x)
    for y in range(6):
        for xx in range(4):
            np.testing.assert_array_equal(out[:, :, y, xx], x[:, :, y // 2, xx // 2])
    d = rng.standard_normal(out.shape)
    np.testing.assert_allclose(nearest_upsample2_backward(d, cache),
                               d[:, :, 0::2, 0::2] + d[:, :, 0::2, 1::2] + d[:, :, 1::2, 0::2]
                               + d[:, :, 1::2, 1::2], rtol=1e-15)


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_matches_pytorch(rng, factor, align_corners):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 5, 4))
    out, cache = bilinear_upsample_forward(x, factor, align_corners)
    d = rng.standard_normal(out.shape)
    tx = torch.tensor(x, requires_grad=True)
    tout = torch.nn.functional.interpolate(tx, scale_factor=factor, mode="bilinear",
                                           align_corners=align_corners)
    tout.backward(torch.tensor(d))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bilinear_upsample_backward(d, cache), tx.grad.numpy(),
                               rtol=1e-12, atol=1e-12)


def test_bad_input_is_one_clear_error(rng):
    with pytest.raises(ValueError, match="factor must be an integer >= 1"):
        bilinear_upsample_forward(rng.standard_normal((1, 1, 2, 2)), 1.5)
    with pytest.raises(ValueError, match="must be a 4-D array"):
        nearest_upsample2_forward(rng.standard_normal((2, 2)))
