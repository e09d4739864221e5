"""Pixel-wise softmax fused with the weighted cross-entropy loss, and its backward.

Ronneberger et al. 2015, Sec. 3 (Eq. 1): p_k(x) = exp(a_k(x)) / sum_k' exp(a_k'(x))
and E = sum_x w(x) log p_l(x)(x), with a weight map w that balances the classes
and stresses the borders between touching cells. minunet minimises the mean
(docs/DESIGN.md, "Loss"):

    L = (1 / (N*H*W)) * sum_x w(x) * (-log p_l(x)(x))

where the mean runs over ALL pixels (also those with w = 0, which are ignored).
Fusing softmax and the loss gives the famous simple gradient

    dL/da_k(x) = w(x) * (p_k(x) - [k == l(x)]) / (N*H*W)

Stability: log p_l = (a_l - m) - log(sum_k exp(a_k - m)) with m = max_k a_k, so
no exponential ever exceeds 1 (safe for |logits| = 1e4 and beyond).
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend.device import xp_of
from ._check import check_softmax_xent


class SoftmaxXentCache(NamedTuple):
    probs: object  # (N, K, H, W) softmax probabilities
    labels: object  # (N, H, W) int class indices
    weights: object  # (N, H, W) per-pixel weights, in the logits' dtype
    scale: float  # 1 / (N*H*W)


def softmax_cross_entropy_forward(logits, labels, weights):
    """Weighted pixel-wise softmax cross-entropy, averaged over all N*H*W pixels.

    logits: (N, K, H, W) float; labels: (N, H, W) int in 0..K-1; weights: (N, H, W)
    (w = 0 ignores a pixel). Returns loss (0-d array of the logits' dtype) and a cache.
    """
    check_softmax_xent(logits, labels, weights)
    xp = xp_of(logits, weights)
    weights = weights.astype(logits.dtype, copy=False)
    N, K, H, W = logits.shape
    # BEGIN SOLUTION softmax_cross_entropy.forward
    # canary: mu13-1d5c5322d950
    z = logits - logits.max(axis=1, keepdims=True)  # (N, K, H, W), every entry <= 0
    logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))  # (N, K, H, W) log-probabilities
    logp_l = xp.take_along_axis(logp, labels[:, None].astype(xp.intp), axis=1)[:, 0]  # (N, H, W)
    scale = 1.0 / (N * H * W)
    loss = -(weights * logp_l).sum() * scale
    return loss, SoftmaxXentCache(xp.exp(logp), labels, weights, scale)
    # END SOLUTION


def softmax_cross_entropy_backward(dloss, cache):
    """dloss: scalar upstream gradient (1.0 for the loss). Returns dlogits (N, K, H, W)."""
    probs, labels, weights, scale = cache
    xp = xp_of(probs)
    K = probs.shape[1]
    # BEGIN SOLUTION softmax_cross_entropy.backward
    # canary: mu13-041b94961792
    onehot = labels[:, None] == xp.arange(K).reshape(1, K, 1, 1)  # (N, K, H, W) bool
    return (float(dloss) * scale * weights[:, None]) * (probs - onehot)  # (N, K, H, W)
    # END SOLUTION
