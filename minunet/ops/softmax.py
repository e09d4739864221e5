"""Pixel-wise softmax fused with the weighted cross-entropy loss, and its backward.

Ronneberger et al. 2015, Sec. 3 (Eq. 1): p_k(x) = exp(a_k(x)) / sum_k' exp(a_k'(x))
and E = sum_x w(x) log p_l(x)(x), with a weight map w that balances the classes
and stresses the borders between touching cells. minunet minimises the mean

    L = (1 / (N*H*W)) * sum_x w(x) * (-log p_l(x)(x))

where the mean runs over ALL pixels (also those with w = 0, which are ignored).
Fusing softmax and the loss gives the famous simple gradient

    dL/da_k(x) = w(x) * (p_k(x) - [k == l(x)]) / (N*H*W)

Stability: log p_l = (a_l - m) - log(sum_k exp(a_k - m)) with m = max_k a_k, so
no exponential ever exceeds 1 (safe for |logits| = 1e4 and beyond).
"""

from __future__ import annotations

from typing import NamedTuple

from .. import backend
from ._check import check_float, check_ndim


class SoftmaxXentCache(NamedTuple):
    probs: object  # (N, K, H, W) softmax probabilities
    labels: object  # (N, H, W) int class indices
    weights: object  # (N, H, W) per-pixel weights
    scale: float  # 1 / (N*H*W)


def softmax_xent_reference(logits, labels, weights):
    """Plain array code: returns (loss_sum, probs) like backend.softmax_xent_forward."""
    xp = backend.xp_of(logits)
    m = logits.max(axis=1, keepdims=True)  # (N, 1, H, W)
    z = logits - m  # (N, K, H, W), every entry <= 0
    lse = xp.log(xp.exp(z).sum(axis=1, keepdims=True))  # (N, 1, H, W)
    logp = z - lse  # (N, K, H, W) log-probabilities
    logp_l = xp.take_along_axis(logp, labels[:, None].astype(xp.intp), axis=1)[:, 0]  # (N, H, W)
    loss_sum = -(weights * logp_l).sum()
    return loss_sum, xp.exp(logp)


def softmax_xent_backward_reference(probs, labels, weights, scale):
    """Plain array code: dlogits = scale * w * (probs - onehot(labels)), (N, K, H, W)."""
    xp = backend.xp_of(probs)
    K = probs.shape[1]
    onehot = labels[:, None] == xp.arange(K).reshape(1, K, 1, 1)  # (N, K, H, W) bool
    return (scale * weights[:, None]) * (probs - onehot)


def _check(logits, labels, weights):
    check_ndim("softmax_cross_entropy logits", logits, 4, "N, K, H, W")
    check_ndim("softmax_cross_entropy labels", labels, 3, "N, H, W")
    check_ndim("softmax_cross_entropy weights", weights, 3, "N, H, W")
    check_float("softmax_cross_entropy logits", logits)
    N, K, H, W = logits.shape
    if labels.shape != (N, H, W) or weights.shape != (N, H, W):
        raise ValueError(f"softmax_cross_entropy: logits {logits.shape} need labels and weights "
                         f"of shape {(N, H, W)}, got labels {labels.shape}, weights "
                         f"{weights.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"softmax_cross_entropy labels must be integer class indices, "
                         f"got dtype {labels.dtype}")
    if not backend.is_gpu_array(labels):  # on the GPU this check would need a sync;
        lo, hi = int(labels.min()), int(labels.max())  # the data loaders check labels once
        if lo < 0 or hi >= K:
            raise ValueError(f"softmax_cross_entropy labels must lie in 0..{K - 1} for K = {K} "
                             f"classes (logits {logits.shape}), found values {lo}..{hi}")


def softmax_cross_entropy_forward(logits, labels, weights):
    """Weighted pixel-wise softmax cross-entropy, averaged over all N*H*W pixels.

    logits: (N, K, H, W) float; labels: (N, H, W) int in 0..K-1; weights: (N, H, W)
    (w = 0 ignores a pixel). Returns loss (0-d array of the logits' dtype) and a cache.
    """
    _check(logits, labels, weights)
    xp = backend.xp_of(logits, weights)
    weights = weights.astype(logits.dtype, copy=False)
    loss_sum, probs = backend.softmax_xent_forward(xp.ascontiguousarray(logits), labels, weights)
    N, _, H, W = logits.shape
    scale = 1.0 / (N * H * W)
    return loss_sum * scale, SoftmaxXentCache(probs, labels, weights, scale)


def softmax_cross_entropy_backward(dloss, cache):
    """dloss: scalar upstream gradient (1.0 for the loss). Returns dlogits (N, K, H, W)."""
    return backend.softmax_xent_backward(cache.probs, cache.labels, cache.weights,
                                         float(dloss) * cache.scale)
