"""weighted sums: UNet++'s BCE + Dice and UNet 3+'s hybrid, term by term, gradient checks."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from minunet.nn import gradcheck
from minunet.ops.loss import (
    LossTerm,
    bce_with_logits_forward,
    focal_forward,
    msssim_forward,
    soft_dice_backward,
    soft_dice_forward,
    soft_iou_forward,
    unet3p_loss_backward,
    unet3p_loss_forward,
    unetpp_loss_backward,
    unetpp_loss_forward,
    weighted_sum_backward,
    weighted_sum_forward,
)

W3 = (0.3, 0.3, 0.4)


def make(rng, shape):
    y = (rng.random(shape) < 0.5).astype(float)
    z = (2 * y - 1) * rng.uniform(0.2, 1.5, shape) + 0.5 * rng.standard_normal(shape)
    return z, y


def test_unetpp_is_half_bce_plus_dice(rng):
    z, y = make(rng, (2, 1, 5, 4))
    p = 1 / (1 + np.exp(-z))
    loss, cache = unetpp_loss_forward(z, y)
    want = 0.5 * float(bce_with_logits_forward(z, y)[0]) + float(soft_dice_forward(p, y, 1.0)[0])
    np.testing.assert_allclose(float(loss), want, rtol=1e-14)
    assert [float(v) for v in cache.values] == [float(bce_with_logits_forward(z, y)[0]),
                                                float(soft_dice_forward(p, y, 1.0)[0])]


def test_unet3p_is_focal_plus_msssim_plus_iou(rng):
    z, y = make(rng, (1, 1, 13, 12))
    p = 1 / (1 + np.exp(-z))
    loss, _ = unet3p_loss_forward(z, y, 0.25, 2.0, 1.0, 3, 1.5, W3)
    want = (float(focal_forward(z, y, 0.25, 2.0)[0])
            + float(msssim_forward(p, y, 1.0, 3, 1.5, W3)[0])
            + float(soft_iou_forward(p, y, 1.0)[0]))
    np.testing.assert_allclose(float(loss), want, rtol=1e-14)


def test_unet3p_published_setting_runs(rng):
    z, y = make(rng, (1, 1, 176, 176))
    loss, cache = unet3p_loss_forward(z, y)
    d = unet3p_loss_backward(1.0, cache)
    assert np.isfinite(float(loss)) and d.shape == z.shape and np.isfinite(d).all()


def test_unetpp_gradient_check(xp, rng):
    z, y = make(rng, (2, 2, 4, 3))
    inputs = {"logits": xp.asarray(z), "targets": xp.asarray(y)}
    (r,) = gradcheck.check_spec("unetpp_loss", unetpp_loss_forward, unetpp_loss_backward,
                                inputs, rng)
    assert r.passed, r


def test_unet3p_gradient_check(xp, rng):
    # MS-SSIM's term: the spec's threshold and floor (see test_loss_msssim.py)
    z, y = make(rng, (1, 1, 13, 12))
    inputs = {"logits": xp.asarray(z), "targets": xp.asarray(y), "alpha": 0.25, "gamma": 2.0,
              "smooth": 1.0, "win_size": 3, "sigma": 1.5, "weights": W3}
    (r,) = gradcheck.check_spec("unet3p_loss", unet3p_loss_forward, unet3p_loss_backward,
                                inputs, rng)
    assert r.passed, r


def test_generic_weighted_sum_chains_through_the_sigmoid(rng):
    z, y = make(rng, (1, 2, 3, 4))
    terms = [LossTerm(2.0, functools.partial(soft_dice_forward, smooth=0.5), soft_dice_backward,
                      "probs")]
    loss, cache = weighted_sum_forward(z, y, terms)
    p = 1 / (1 + np.exp(-z))
    l1, c1 = soft_dice_forward(p, y, 0.5)
    np.testing.assert_allclose(float(loss), 2 * float(l1), rtol=1e-15)
    np.testing.assert_allclose(weighted_sum_backward(3.0, cache),
                               6 * soft_dice_backward(1.0, c1) * p * (1 - p), rtol=1e-14)


def test_bad_input(rng):
    z, y = make(rng, (1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"weighted_sum needs at least one LossTerm"):
        weighted_sum_forward(z, y, [])
    with pytest.raises(ValueError, match=r"on='logits' or on='probs'"):
        weighted_sum_forward(z, y, [LossTerm(1.0, soft_dice_forward, soft_dice_backward, "p")])
    with pytest.raises(ValueError, match=r"msssim: a 3x3 tile is too small for 5 scales"):
        unet3p_loss_forward(z, y)
