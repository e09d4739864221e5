"""Soft IoU (Jaccard) loss on probabilities, per image and class, with a smoothing term.

Definition: the Jaccard index |P & Y| / |P | Y| (Jaccard 1912) in its soft form on
probabilities (Rahman and Wang 2016, "Optimizing intersection-over-union in deep neural
networks"), the IoU term of UNet 3+'s hybrid loss (Huang et al. 2020: per image,
1 - sum(P Y) / sum(P + Y - P Y)). For image n and class k, with sums over the H*W pixels:

    I = sum p y      U = sum p + sum y - I + s
    J[n, k] = (I + s) / U
    L = 1 - (1 / (N*K)) sum_{n,k} J[n, k]

s = 1 by default keeps J defined for an empty target and prediction; UNet 3+'s code has s = 0
(pass smooth=0.0; an all-zero image and target then divide 0 by 0).

Input: probabilities p in [0, 1] (N, K, H, W), not logits (compose with a sigmoid or softmax
first); targets y (N, K, H, W) in [0, 1].

Gradient (quotient rule; dI/dp = y, dU/dp = 1 - y):

    dJ/dp = (y U - (I + s)(1 - y)) / U^2 = (y - J (1 - y)) / U
    dL/dp = -(1 / (N*K)) * (y - J[n, k] (1 - y)) / U[n, k]
"""

from __future__ import annotations

from typing import NamedTuple

from ...backend.device import xp_of
from ._common import scalar
from .dice import check_overlap_loss


class SoftIouCache(NamedTuple):
    targets: object  # (N, K, H, W) in the probabilities' dtype
    iou: object  # (N, K, 1, 1) J per image and class
    union: object  # (N, K, 1, 1) U = P + Y - I + s


def soft_iou_forward(probs, targets, smooth: float = 1.0):
    """probs: (N, K, H, W) float in [0, 1]; targets: (N, K, H, W) in [0, 1]; smooth: s >= 0.
    Returns loss (0-d array of the probs' dtype) = 1 - mean_{n,k} J[n, k], and a SoftIouCache."""
    check_overlap_loss("soft_iou", probs, targets, smooth)
    xp = xp_of(probs, targets)
    targets = targets.astype(probs.dtype, copy=False)
    axes = (2, 3)  # the sums run over the pixels of one image and class
    inter = (probs * targets).sum(axis=axes, keepdims=True)  # (N, K, 1, 1) I
    union = probs.sum(axis=axes, keepdims=True) + targets.sum(axis=axes, keepdims=True) \
        - inter + smooth  # (N, K, 1, 1) U
    iou = (inter + smooth) / union  # (N, K, 1, 1)
    loss = scalar(xp, 1.0 - iou.mean(), probs.dtype)
    return loss, SoftIouCache(targets, iou, union)


def soft_iou_backward(dloss, cache):
    """dloss: scalar upstream gradient. Returns dprobs (N, K, H, W)."""
    targets, iou, union = cache
    N, K = iou.shape[:2]
    return (-float(dloss) / (N * K)) * (targets - iou * (1 - targets)) / union  # (N, K, H, W)
