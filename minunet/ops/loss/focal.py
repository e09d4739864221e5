"""Binary focal loss on logits (Lin, Goyal, Girshick, He and Dollar 2017, "Focal loss for dense
object detection", Eq. 5), the form of torchvision.ops.sigmoid_focal_loss.

For a logit z, p = sigma(z) and a target y in {0, 1}: p_t = p if y = 1 else 1 - p, and
alpha_t = alpha if y = 1 else 1 - alpha. The focal loss scales the cross-entropy -log p_t by
(1 - p_t)^gamma, which shrinks the loss of well-classified pixels (p_t near 1):

    FL(z, y) = alpha_t * (1 - p_t)^gamma * ce(z, y),   ce = -log p_t = the BCE on logits

Written for any y in [0, 1] as torchvision does: p_t = p y + (1 - p)(1 - y),
alpha_t = alpha y + (1 - alpha)(1 - y), ce = max(z, 0) - z y + log(1 + exp(-|z|)) (stable, see
bce.py). alpha=None drops alpha_t (torchvision's alpha < 0); gamma = 0 and alpha=None give the
plain BCE. Defaults alpha = 0.25, gamma = 2 (the paper's best setting). The loss is the mean
over all N*C*H*W entries.

Gradient. Write m = 1 - p_t = p (1 - y) + q y with q = 1 - p = sigma(-z) (computed as such, so
m keeps its digits when p is near 1). With dp/dz = p q, dq/dz = -p q and dce/dz = p - y:

    dm/dz  = (1 - y) p q - y p q = (1 - 2 y) p q
    dFL/dz = alpha_t * [gamma m^(gamma-1) (1 - 2 y) p q * ce + m^gamma (p - y)]
    dL/dz  = dFL/dz / (N*C*H*W)

Where m = 0 (p saturated at the label) the first term is taken as 0: its limit, since p q
vanishes faster than m^(gamma-1) grows for any gamma > 0.
"""

from __future__ import annotations

from typing import NamedTuple

from ...backend.device import xp_of
from ._common import check_prediction_and_targets, scalar, sigmoid


class FocalCache(NamedTuple):
    probs: object  # (N, C, H, W) p = sigma(z)
    probs_neg: object  # (N, C, H, W) q = sigma(-z) = 1 - p, with all its digits
    targets: object  # (N, C, H, W) y, in the logits' dtype
    ce: object  # (N, C, H, W) the BCE per entry
    m: object  # (N, C, H, W) 1 - p_t
    alpha_t: object  # (N, C, H, W), or 1.0 when alpha is None
    gamma: float
    scale: float  # 1 / (N*C*H*W)


def focal_forward(logits, targets, alpha: float | None = 0.25, gamma: float = 2.0):
    """logits: (N, C, H, W) float; targets: (N, C, H, W) in [0, 1]; alpha in [0, 1] or None;
    gamma >= 0. Returns loss (0-d array of the logits' dtype, the mean over N*C*H*W) and a
    FocalCache."""
    check_focal(logits, targets, alpha, gamma)
    xp = xp_of(logits, targets)
    y = targets.astype(logits.dtype, copy=False)
    p, q = sigmoid(logits), sigmoid(-logits)  # (N, C, H, W) each, p + q = 1
    ce = xp.maximum(logits, 0) - logits * y + xp.log1p(xp.exp(-xp.abs(logits)))
    m = p * (1 - y) + q * y  # (N, C, H, W) 1 - p_t
    a = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)  # alpha_t
    scale = 1.0 / logits.size
    loss = scalar(xp, (a * m**gamma * ce).sum() * scale, logits.dtype)
    return loss, FocalCache(p, q, y, ce, m, a, gamma, scale)


def focal_backward(dloss, cache):
    """dloss: scalar upstream gradient. Returns dlogits (N, C, H, W)."""
    p, q, y, ce, m, a, gamma, scale = cache
    xp = xp_of(p)
    if gamma == 0:
        through_m = 0.0
    else:  # gamma m^(gamma-1) dm/dz ce, taken as 0 where m = 0 (see the module docstring)
        safe = xp.where(m > 0, m, 1)
        through_m = xp.where(m > 0, gamma * safe ** (gamma - 1), 0) * (1 - 2 * y) * p * q * ce
    return (float(dloss) * scale) * a * (through_m + m**gamma * (p - y))  # (N, C, H, W)


def check_focal(logits, targets, alpha, gamma) -> None:
    """logits (N, C, H, W) float, targets the same shape in [0, 1], alpha in [0, 1] or None,
    gamma >= 0."""
    check_prediction_and_targets("focal", "logits", logits, targets, pred_in_unit=False)
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"focal: alpha must lie in [0, 1] (or be None for no class "
                         f"weighting), got alpha={alpha}")
    if not gamma >= 0:
        raise ValueError(f"focal: gamma must be >= 0, got gamma={gamma}")
