"""msssim: loops, the published setting, the ReLU, gradient checks, the tile-size error.

MS-SSIM's gradient in float64, and why its checks are not the one-line check_op of the other
losses. The backward agrees with PyTorch's autograd to ~1e-13 (test_loss_torch_parity.py), but
central differences meet two obstacles here, both measured:
- curvature: with C2 = 9e-4 against windows of variance ~0.05, the h^2 error of a central
  difference is ~1e-7 relative at h = 1e-4 (7.5e-6 at h = 1e-3: it scales as h^2);
- cancellation: entries near zero (Gaussian tails, opposing scales) carry the rounding of the
  loss (~1e-15) divided by 2h, relatively huge against a ~1e-7 entry.
So the element-wise check uses check_op's floor_fraction (the float32 device: entries below 1%
of the largest are judged against that floor) and the named threshold below; a wrong term of
the backward is off by 1e-3 or more (the planted-bug test shows it). The published setting
(176 x 176, five scales) is checked along random directions with a step of 1e-3 (smaller steps
are rounding-bound: the slope is ~1e-5 and the loss rounds at ~1e-15).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops.loss import MSSSIM_WEIGHTS, gaussian_window, msssim_backward, msssim_forward
from minunet.ops.loss import msssim as msssim_module

# element-wise: the msssim spec's threshold (1e-6) and floor (1 % of max), minunet/nn/opspec.py:
# worst 3.5e-7 measured over 20 seeds
DIRECTIONAL_STEP = 1e-3  # worst 3.7e-7 measured along 5 directions (threshold 1e-6)
W3 = (0.3, 0.3, 0.4)  # three scales, for tiles small enough to check every element


def make(rng, shape, noise=0.2):
    """A target image in [0, 1] and a prediction near it (MS-SSIM well above 0)."""
    y = rng.random(shape)
    return np.clip(y + noise * rng.standard_normal(shape), 0.0, 1.0), y


def msssim_brute(x, y, L, win, sigma, weights):
    """1 - mean MS-SSIM by loops: each window's weighted sums, the 2x2 means, scale by scale."""
    g = gaussian_window(win, sigma)
    C1, C2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    N, C = x.shape[:2]
    total = 0.0
    for n, c in np.ndindex(N, C):
        a, b = x[n, c].tolist(), y[n, c].tolist()
        ms = 1.0
        for j, beta in enumerate(weights):
            if j > 0:
                a, b = ([[sum(m[2 * r + u][2 * s + v] for u in (0, 1) for v in (0, 1)) / 4
                          for s in range(len(m[0]) // 2)] for r in range(len(m) // 2)]
                        for m in (a, b))
            H, W = len(a), len(a[0])
            cs_sum = ssim_sum = 0.0
            for r in range(H - win + 1):
                for s in range(W - win + 1):
                    mx = my = sxx = syy = sxy = 0.0
                    for u in range(win):
                        for v in range(win):
                            w = g[u] * g[v]
                            p, q = a[r + u][s + v], b[r + u][s + v]
                            mx, my = mx + w * p, my + w * q
                            sxx, syy, sxy = sxx + w * p * p, syy + w * q * q, sxy + w * p * q
                    cs = (2 * (sxy - mx * my) + C2) / (sxx - mx * mx + syy - my * my + C2)
                    cs_sum += cs
                    ssim_sum += cs * (2 * mx * my + C1) / (mx * mx + my * my + C1)
            count = (H - win + 1) * (W - win + 1)
            value = (cs_sum if j < len(weights) - 1 else ssim_sum) / count
            ms *= max(value, 0.0) ** beta
        total += ms
    return 1.0 - total / (N * C)


def test_published_constants():
    assert MSSSIM_WEIGHTS == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    g = gaussian_window()
    assert len(g) == 11 and math.isclose(sum(g), 1.0, rel_tol=1e-15)
    assert math.isclose(g[5] / g[4], math.exp(1 / (2 * 1.5**2)), rel_tol=1e-14)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("shape, win, weights", [((2, 1, 7, 6), 3, (1.0,)),
                                                 ((1, 2, 13, 15), 3, W3),
                                                 ((1, 1, 23, 22), 11, (0.5, 0.5))])
def test_forward_matches_loops(xp, rng, dtype, tol, shape, win, weights):
    x, y = make(rng, shape)
    loss, _ = msssim_forward(xp.asarray(x.astype(dtype)), xp.asarray(y.astype(dtype)), 1.0,
                             win, 1.5, weights)
    assert loss.dtype == dtype and loss.shape == ()
    np.testing.assert_allclose(float(loss), msssim_brute(x, y, 1.0, win, 1.5, weights),
                               rtol=tol, atol=tol)


def test_published_setting_matches_loops_on_a_smallest_tile(rng):
    x, y = make(rng, (1, 1, 176, 177))
    loss, cache = msssim_forward(x, y)
    assert [s.x.shape[2:] for s in cache.scales] == [(176, 177), (88, 88), (44, 44), (22, 22),
                                                     (11, 11)]
    np.testing.assert_allclose(float(loss), msssim_brute(x, y, 1.0, 11, 1.5, MSSSIM_WEIGHTS),
                               rtol=1e-12)


def test_identical_images_score_one_and_scale_invariance(rng):
    x, _ = make(rng, (1, 1, 13, 12))
    loss, cache = msssim_forward(x, x.copy(), 1.0, 3, 1.5, W3)
    np.testing.assert_allclose(float(loss), 0.0, atol=1e-15)
    np.testing.assert_allclose(msssim_backward(1.0, cache), 0.0, atol=1e-15)  # a minimum
    y = np.clip(x + 0.1, 0, 1)
    a = msssim_forward(x, y, 1.0, 3, 1.5, W3)[0]
    b = msssim_forward(255 * x, 255 * y, 255.0, 3, 1.5, W3)[0]  # C1, C2 scale with L^2
    np.testing.assert_allclose(float(a), float(b), rtol=1e-12)


def test_negative_contrast_structure_is_clamped(rng):
    # y = 1 - x: anti-correlated, every cs_j < 0, so MS-SSIM = 0 (the ReLU), the loss 1, and
    # no gradient passes the ReLU
    x, _ = make(rng, (1, 1, 13, 12))
    loss, cache = msssim_forward(x, 1.0 - x, 1.0, 3, 1.5, W3)
    assert (cache.values < 0).all()
    assert float(loss) == 1.0
    np.testing.assert_array_equal(msssim_backward(1.0, cache), 0.0)


@pytest.mark.parametrize("shape, weights", [((1, 1, 7, 6), (1.0,)), ((2, 2, 13, 12), W3),
                                            ((1, 1, 12, 13), W3)])
def test_gradient_check(xp, rng, shape, weights):
    x, y = make(rng, shape)
    inputs = {"x": xp.asarray(x), "y": xp.asarray(y), "data_range": 1.0, "win_size": 3,
              "sigma": 1.5, "weights": weights}
    (r,) = gradcheck.check_spec("msssim", msssim_forward, msssim_backward, inputs, rng)
    assert (backend.to_host(msssim_forward(*inputs.values())[1].values) > 0.1).all()  # no ReLU
    assert r.passed, r


@pytest.mark.parametrize("shape, win", [((1, 1, 176, 180), 11), ((2, 2, 48, 49), 3)])
def test_directional_gradient_check_five_scales(rng, shape, win):
    x, y = make(rng, shape)
    loss, cache = msssim_forward(x, y, 1.0, win)
    grad = msssim_backward(1.0, cache)
    results = gradcheck.directional_check(
        lambda p: msssim_forward(p["x"], y, 1.0, win)[0], {"x": x}, {"x": grad}, n_dirs=4,
        rng=rng, h=DIRECTIONAL_STEP)
    assert all(r.passed for r in results), results


def test_a_wrong_backward_is_caught(rng, monkeypatch):
    # drop the luminance term's gradient: the check above must fail by far
    x, y = make(rng, (1, 1, 12, 13))
    real = msssim_module.MsssimScale

    def no_luminance(*args):
        s = real(*args)
        return s._replace(l_map=None) if s.l_map is not None else s

    inputs = {"x": x, "y": y, "data_range": 1.0, "win_size": 3, "sigma": 1.5, "weights": W3}

    def forward(*a):
        loss, cache = msssim_forward(*a)
        scales = tuple(no_luminance(*s) for s in cache.scales)
        return loss, cache._replace(scales=scales)

    (r,) = gradcheck.check_spec("msssim", forward, msssim_backward, inputs, rng)
    assert r.max_rel_error > 1e-3, r


def test_backward_is_the_adjoint_of_the_filter_and_pool(rng):
    a = rng.standard_normal((2, 3, 9, 8))
    g = gaussian_window(5, 1.0)
    d = rng.standard_normal((2, 3, 5, 4))
    lhs = (msssim_module.filter_valid(a, g) * d).sum()
    np.testing.assert_allclose(lhs, (a * msssim_module.filter_valid_adjoint(d, g, 9, 8)).sum(),
                               rtol=1e-13)
    d = rng.standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose((msssim_module.avgpool2(a) * d).sum(),
                               (a * msssim_module.avgpool2_adjoint(d, 9, 8)).sum(), rtol=1e-13)


def test_tile_too_small(rng):
    x, y = make(rng, (1, 1, 175, 200))
    with pytest.raises(ValueError, match=r"^msssim: a 175x200 tile is too small for 5 scales with "
                                         r"a 11x11 window: .* must be >= 176; use a larger tile$"):
        msssim_forward(x, y)


def test_bad_input(rng):
    x, y = make(rng, (1, 1, 13, 12))
    with pytest.raises(ValueError, match=r"the target y must have the shape of x"):
        msssim_forward(x, y[:, :, :12], 1.0, 3, 1.5, W3)
    with pytest.raises(ValueError, match=r"odd win_size"):
        msssim_forward(x, y, 1.0, 4, 1.5, (1.0,))
    with pytest.raises(ValueError, match=r"data_range > 0"):
        msssim_forward(x, y, 0.0, 3, 1.5, W3)
