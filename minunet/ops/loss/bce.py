"""Binary cross-entropy on logits, optionally weighted per pixel by the U-Net weight map.

Definition (the log-likelihood of a Bernoulli label, e.g. Bishop 2006, Sec. 4.3.2; PyTorch's
binary_cross_entropy_with_logits): for a logit z, p = sigma(z) = 1 / (1 + exp(-z)) and a
target y in [0, 1] (soft targets allowed),

    l(z, y) = -[y log p + (1 - y) log(1 - p)]

With log p = -log(1 + e^-z) and log(1 - p) = -z - log(1 + e^-z) this is
l = (1 - y) z + log(1 + e^-z); for z < 0 the same value is -y z + log(1 + e^z). One form for
every z, where no exponential exceeds 1 (safe for |z| = 1e4):

    l(z, y) = max(z, 0) - z y + log(1 + exp(-|z|))

The loss is the mean over all N*C*H*W entries, each weighted by the weight map w(n, h, w) of
Ronneberger et al. 2015 (Eq. 1) when one is given (w = 0 ignores a pixel; the mean still runs
over all pixels, as in minunet/ops/softmax.py):

    L = (1 / (N*C*H*W)) sum_{n,c,h,w} w(n, h, w) * l(z[n,c,h,w], y[n,c,h,w])

Gradient: dl/dz = (1 - y) - e^-z / (1 + e^-z) = (1 - y) - (1 - p) = p - y, so

    dL/dz = w * (sigma(z) - y) / (N*C*H*W)

(the two-class twin of the softmax's p - onehot).
"""

from __future__ import annotations

from typing import NamedTuple

from ...backend.device import xp_of
from .._check import check_ndim
from ._common import check_prediction_and_targets, scalar, sigmoid


class BceCache(NamedTuple):
    probs: object  # (N, C, H, W) sigma(logits)
    targets: object  # (N, C, H, W) in the logits' dtype
    weights: object  # (N, 1, H, W) in the logits' dtype, or None (all ones)
    scale: float  # 1 / (N*C*H*W)


def bce_with_logits_forward(logits, targets, weights=None):
    """logits: (N, C, H, W) float; targets: (N, C, H, W) in [0, 1]; weights: None or the weight
    map (N, H, W), shared by the C channels (w = 0 ignores a pixel).
    Returns loss (0-d array of the logits' dtype, the weighted mean over N*C*H*W) and a
    BceCache."""
    check_bce(logits, targets, weights)
    xp = xp_of(logits, targets, weights)
    targets = targets.astype(logits.dtype, copy=False)
    l = xp.maximum(logits, 0) - logits * targets + xp.log1p(xp.exp(-xp.abs(logits)))  # (N, C, H, W)
    if weights is not None:
        weights = weights.astype(logits.dtype, copy=False)[:, None]  # (N, 1, H, W)
        l = weights * l
    scale = 1.0 / logits.size
    loss = scalar(xp, l.sum() * scale, logits.dtype)
    return loss, BceCache(sigmoid(logits), targets, weights, scale)


def bce_with_logits_backward(dloss, cache):
    """dloss: scalar upstream gradient. Returns dlogits (N, C, H, W) = dloss * w * (p - y) / M."""
    d = (float(dloss) * cache.scale) * (cache.probs - cache.targets)  # (N, C, H, W)
    return d if cache.weights is None else cache.weights * d


def check_bce(logits, targets, weights) -> None:
    """logits (N, C, H, W) float, targets the same shape in [0, 1], weights None or (N, H, W)."""
    check_prediction_and_targets("bce_with_logits", "logits", logits, targets, pred_in_unit=False)
    if weights is None:
        return
    check_ndim("bce_with_logits weights", weights, 3, "N, H, W: the weight map")
    N, _, H, W = logits.shape
    if weights.shape != (N, H, W):
        raise ValueError(f"bce_with_logits: weights (the weight map) must have shape "
                         f"{(N, H, W)} for logits {logits.shape}, got {weights.shape}")
