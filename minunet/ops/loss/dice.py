"""Soft Dice loss on probabilities, per image and class, with a smoothing term.

Definition: the Dice coefficient (Dice 1945) of a prediction P and a target Y is
2 |P & Y| / (|P| + |Y|); its soft form on probabilities replaces the set sizes by sums (V-Net,
Milletari et al. 2016, sums squares in the denominator; we sum p and y as UNet++ does). UNet++
(Zhou et al. 2018) uses it per image in its loss, with a smoothing term s = 1 in its released
code (keras/helper_functions.py: dice_coef, smooth = 1.; that code sums over the whole batch,
the same as per image for a batch of one).
For image n and class k, with sums over the H*W pixels:

    I = sum p y      P = sum p      Y = sum y
    D[n, k] = (2 I + s) / (P + Y + s)
    L = 1 - (1 / (N*K)) sum_{n,k} D[n, k]

s keeps D defined for an empty target and prediction (then D = 1: a perfect empty match).

Input: probabilities p in [0, 1] (N, K, H, W), NOT logits: composing with a sigmoid or softmax
is the caller's (minunet/ops/loss/combined.py does it for UNet++'s loss). Targets y (N, K, H, W)
in [0, 1], one-hot or soft.

Gradient (quotient rule; only I and P depend on p[n, k, h, w], with dI/dp = y, dP/dp = 1):

    dD/dp = (2 y (P + Y + s) - (2 I + s)) / (P + Y + s)^2 = (2 y - D) / (P + Y + s)
    dL/dp = -(1 / (N*K)) * (2 y - D[n, k]) / (P + Y + s)[n, k]
"""

from __future__ import annotations

from typing import NamedTuple

from ...backend.device import xp_of
from ._common import check_prediction_and_targets, scalar


class SoftDiceCache(NamedTuple):
    targets: object  # (N, K, H, W) in the probabilities' dtype
    dice: object  # (N, K, 1, 1) D per image and class
    denom: object  # (N, K, 1, 1) P + Y + s


def soft_dice_forward(probs, targets, smooth: float = 1.0):
    """probs: (N, K, H, W) float in [0, 1]; targets: (N, K, H, W) in [0, 1]; smooth: s >= 0.
    Returns loss (0-d array of the probs' dtype) = 1 - mean_{n,k} D[n, k], and a SoftDiceCache."""
    check_overlap_loss("soft_dice", probs, targets, smooth)
    xp = xp_of(probs, targets)
    targets = targets.astype(probs.dtype, copy=False)
    axes = (2, 3)  # the sums run over the pixels of one image and class
    inter = (probs * targets).sum(axis=axes, keepdims=True)  # (N, K, 1, 1) I
    denom = probs.sum(axis=axes, keepdims=True) + targets.sum(axis=axes, keepdims=True) + smooth
    dice = (2 * inter + smooth) / denom  # (N, K, 1, 1)
    loss = scalar(xp, 1.0 - dice.mean(), probs.dtype)
    return loss, SoftDiceCache(targets, dice, denom)


def soft_dice_backward(dloss, cache):
    """dloss: scalar upstream gradient. Returns dprobs (N, K, H, W)."""
    targets, dice, denom = cache
    N, K = dice.shape[:2]
    return (-float(dloss) / (N * K)) * (2 * targets - dice) / denom  # (N, K, H, W)


def check_overlap_loss(op, probs, targets, smooth) -> None:
    """probs, targets (N, K, H, W) in [0, 1]; smooth >= 0 (Dice and IoU share this)."""
    check_prediction_and_targets(op, "probs", probs, targets, pred_in_unit=True)
    if not smooth >= 0:
        raise ValueError(f"{op}: the smoothing term must be >= 0, got smooth={smooth}")
