"""soft_dice and soft_iou: loops, smoothing, empty masks, gradient checks, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from minunet.nn import gradcheck
from minunet.ops.loss import (
    soft_dice_backward,
    soft_dice_forward,
    soft_iou_backward,
    soft_iou_forward,
)

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def overlap_brute(p, y, s, kind):
    """1 - mean over (n, k) of Dice or IoU, the sums by loops over pixels."""
    N, K, H, W = p.shape
    scores = []
    for n, k in np.ndindex(N, K):
        inter = ps = ys = 0.0
        for i, j in np.ndindex(H, W):
            inter += float(p[n, k, i, j]) * float(y[n, k, i, j])
            ps += float(p[n, k, i, j])
            ys += float(y[n, k, i, j])
        if kind == "dice":
            scores.append((2 * inter + s) / (ps + ys + s))
        else:
            scores.append((inter + s) / (ps + ys - inter + s))
    return 1.0 - sum(scores) / len(scores)


PAIRS = {"dice": (soft_dice_forward, soft_dice_backward),
         "iou": (soft_iou_forward, soft_iou_backward)}


def make(rng, shape, dtype=np.float64):
    p = rng.uniform(0.02, 0.98, shape).astype(dtype)
    y = (rng.random(shape) < 0.4).astype(dtype)
    return p, y


@pytest.mark.parametrize("kind", ["dice", "iou"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_forward_matches_loops(xp, rng, kind, dtype, smooth):
    p, y = make(rng, (2, 3, 4, 5), dtype)
    loss, _ = PAIRS[kind][0](xp.asarray(p), xp.asarray(y), smooth)
    assert loss.dtype == dtype and loss.shape == ()
    np.testing.assert_allclose(float(loss), overlap_brute(p, y, smooth, kind), **TOL[dtype])


@pytest.mark.parametrize("kind", ["dice", "iou"])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_gradient_check(xp, rng, kind, smooth):
    p, y = make(rng, (2, 3, 4, 3))
    y[0, 1] = 0.0  # an empty target channel
    inputs = {"probs": xp.asarray(p), "targets": xp.asarray(y), "smooth": smooth}
    (r,) = gradcheck.check_spec(f"soft_{kind}", *PAIRS[kind], inputs, rng)
    assert r.passed, r


@pytest.mark.parametrize("kind", ["dice", "iou"])
def test_perfect_disjoint_and_empty(kind):
    y = np.zeros((1, 2, 3, 3))
    y[0, 0, 1:, 1:] = 1.0  # channel 0: 4 pixels; channel 1: empty
    forward = PAIRS[kind][0]
    # perfect: channel 0 scores 1 for any s; the empty channel predicted empty scores s/s = 1
    assert float(forward(y.copy(), y, 1.0)[0]) == 0.0
    # disjoint: channel 0 has I = 0, so scores s / (9 + s) with P = 5, Y = 4 (IoU: U = 9 + s);
    # channel 1 predicts 9 pixels where there are none: s / (9 + s) too
    np.testing.assert_allclose(float(forward(1.0 - y, y, 1.0)[0]), 1 - 1 / 10, rtol=1e-15)


def test_dice_gradient_formula_by_hand():
    # one pixel, one class: D = (2 p y + s) / (p + y + s); p = 0.5, y = 1, s = 1:
    # D = 2 / 2.5 = 0.8, dD/dp = (2 y - D) / (p + y + s) = 1.2 / 2.5 = 0.48, dL/dp = -0.48
    loss, cache = soft_dice_forward(np.full((1, 1, 1, 1), 0.5), np.ones((1, 1, 1, 1)), 1.0)
    np.testing.assert_allclose(float(loss), 0.2, rtol=1e-15)
    np.testing.assert_allclose(soft_dice_backward(1.0, cache).item(), -0.48, rtol=1e-15)


@pytest.mark.parametrize("kind", ["dice", "iou"])
def test_bad_input(rng, kind):
    p, y = make(rng, (1, 2, 3, 3))
    forward = PAIRS[kind][0]
    with pytest.raises(ValueError, match=rf"soft_{kind}: probs must lie in \[0, 1\], found "
                                         r"values .*apply sigmoid/softmax to logits first"):
        forward(p * 3 - 1, y)
    with pytest.raises(ValueError, match=rf"soft_{kind}: targets must have the shape"):
        forward(p, y[:, :1])
    with pytest.raises(ValueError, match=rf"soft_{kind}: the smoothing term must be >= 0"):
        forward(p, y, -1.0)
