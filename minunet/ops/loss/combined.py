"""Weighted sums of losses on one network output: UNet++'s BCE + Dice, UNet 3+'s hybrid loss.

A segmentation network ends in logits z (N, K, H, W). Some losses take the logits (BCE, focal:
stable on logits), others probabilities p = sigma(z) (Dice, IoU, MS-SSIM). A weighted sum

    L(z) = sum_t c_t * L_t(z or sigma(z), y)

differentiates term by term (linearity); a term on p goes back through the sigmoid,
dp/dz = p (1 - p):

    dL/dz = sum_{t on z} c_t dL_t/dz + (sum_{t on p} c_t dL_t/dp) * p (1 - p)

`weighted_sum_forward(logits, targets, terms)` takes the terms as LossTerm(weight, forward,
backward, on) with on = "logits" or "probs"; extra arguments of a loss go in with
functools.partial. Two named sums (sigmoid outputs, binary or one channel per class):

UNet++ (Zhou et al. 2018): the paper writes L = -(1/N) sum_b (1/2 Y_b log P_b + 2 Y_b P_b /
(Y_b + P_b)), the released code (keras/helper_functions.py: bce_dice_loss) computes
0.5 * binary_crossentropy - dice_coef with smooth = 1. We implement

    L = 0.5 * BCE(z, y) + (1 - Dice(sigma(z), y)),   Dice smoothed with s = 1

the code's loss plus the constant 1 (so L >= 0; the gradient is the same). The BCE is the mean
over pixels (the paper's 1/N sum Y log P with both classes' terms, as Keras computes it), the
Dice per image and class as in dice.py.

UNet 3+ (Huang et al. 2020): the hybrid loss l_seg = l_fl + l_ms-ssim + l_iou, equal weights:

    L = Focal(z, y; alpha, gamma) + (1 - MS-SSIM(sigma(z), y)) + (1 - IoU(sigma(z), y))

with focal.py's defaults alpha = 0.25, gamma = 2 (Lin et al. 2017), MS-SSIM on probabilities
(data range 1) and the IoU smoothed with s = 1 (their code uses s = 0; pass smooth=0.0).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ...backend.device import xp_of
from ._common import check_prediction_and_targets, scalar, sigmoid
from .bce import bce_with_logits_backward, bce_with_logits_forward
from .dice import soft_dice_backward, soft_dice_forward
from .focal import focal_backward, focal_forward
from .iou import soft_iou_backward, soft_iou_forward
from .msssim import MSSSIM_WEIGHTS, msssim_backward, msssim_forward


class LossTerm(NamedTuple):
    weight: float  # c_t
    forward: Callable  # forward(pred, targets) -> (loss, cache)
    backward: Callable  # backward(dloss, cache) -> dpred
    on: str  # "logits" (pred = z) or "probs" (pred = sigma(z))


class WeightedSumCache(NamedTuple):
    probs: object  # (N, K, H, W) sigma(z)
    terms: tuple  # the LossTerms
    caches: tuple  # one cache per term
    values: tuple  # each term's loss (0-d arrays), for logging


def weighted_sum_forward(logits, targets, terms: Sequence[LossTerm]):
    """logits: (N, K, H, W) float; targets: (N, K, H, W) in [0, 1]; terms: LossTerms.
    Returns loss = sum_t c_t L_t (0-d array of the logits' dtype) and a WeightedSumCache."""
    check_prediction_and_targets("weighted_sum", "logits", logits, targets, pred_in_unit=False)
    if not terms or any(t.on not in ("logits", "probs") for t in terms):
        raise ValueError("weighted_sum needs at least one LossTerm, each with on='logits' or "
                         "on='probs'")
    xp = xp_of(logits, targets)
    probs = sigmoid(logits)  # (N, K, H, W)
    values, caches = [], []
    for t in terms:
        value, cache = t.forward(logits if t.on == "logits" else probs, targets)
        values.append(value)
        caches.append(cache)
    total = sum(t.weight * v for t, v in zip(terms, values, strict=True))  # 0-d, no host sync
    loss = scalar(xp, total, logits.dtype)
    return loss, WeightedSumCache(probs, tuple(terms), tuple(caches), tuple(values))


def weighted_sum_backward(dloss, cache):
    """dloss: scalar upstream gradient. Returns dlogits (N, K, H, W) (module docstring)."""
    p = cache.probs
    dz, dp = 0.0, 0.0
    for t, c in zip(cache.terms, cache.caches, strict=True):
        g = t.backward(t.weight * float(dloss), c)
        if t.on == "logits":
            dz = dz + g
        else:
            dp = dp + g
    return dz + dp * p * (1 - p)  # (N, K, H, W)


def unetpp_terms(smooth: float = 1.0) -> tuple[LossTerm, ...]:
    """UNet++'s 0.5 * BCE + Dice loss (module docstring)."""
    return (LossTerm(0.5, bce_with_logits_forward, bce_with_logits_backward, "logits"),
            LossTerm(1.0, functools.partial(soft_dice_forward, smooth=smooth),
                     soft_dice_backward, "probs"))


def unet3p_terms(alpha: float | None = 0.25, gamma: float = 2.0, smooth: float = 1.0,
                 win_size: int = 11, sigma: float = 1.5,
                 weights: tuple = MSSSIM_WEIGHTS) -> tuple[LossTerm, ...]:
    """UNet 3+'s focal + MS-SSIM + IoU (module docstring); win_size, sigma and weights are
    MS-SSIM's (published defaults; smaller ones for cheap gradient checks on small tiles)."""
    return (LossTerm(1.0, functools.partial(focal_forward, alpha=alpha, gamma=gamma),
                     focal_backward, "logits"),
            LossTerm(1.0, functools.partial(msssim_forward, data_range=1.0, win_size=win_size,
                                            sigma=sigma, weights=weights),
                     msssim_backward, "probs"),
            LossTerm(1.0, functools.partial(soft_iou_forward, smooth=smooth),
                     soft_iou_backward, "probs"))


def unetpp_loss_forward(logits, targets, smooth: float = 1.0):
    """logits, targets: (N, K, H, W). L = 0.5 BCE(z, y) + 1 - Dice(sigma(z), y)."""
    return weighted_sum_forward(logits, targets, unetpp_terms(smooth))


def unet3p_loss_forward(logits, targets, alpha: float | None = 0.25, gamma: float = 2.0,
                        smooth: float = 1.0, win_size: int = 11, sigma: float = 1.5,
                        weights: tuple = MSSSIM_WEIGHTS):
    """logits, targets: (N, K, H, W), H, W >= win_size * 2^(len(weights)-1) (176 published).
    L = Focal(z, y) + 1 - MS-SSIM(sigma(z), y) + 1 - IoU(sigma(z), y)."""
    return weighted_sum_forward(logits, targets,
                                unet3p_terms(alpha, gamma, smooth, win_size, sigma, weights))


unetpp_loss_backward = weighted_sum_backward  # dlogits (N, K, H, W)
unet3p_loss_backward = weighted_sum_backward  # dlogits (N, K, H, W)
