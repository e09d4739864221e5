"""The fast softmax cross-entropy: the plain op of minunet/ops/softmax.py as one twin pass.

Same names, signatures, cache (ops.softmax.SoftmaxXentCache) and numbers as the
plain op; read that file first for the math and the normalisation (docs/DESIGN.md,
"Loss"). The trick,
and what it buys: the plain op makes the max, the shifted logits, their
exponentials, the log-sum-exp, the log-probabilities and a one-hot mask as
separate whole arrays (K+ passes and temporaries); the twin (backend/cpu.py
softmax_xent_forward / backward, a Numba pixel loop; kernels/softmax_xent.cu on
the GPU) reads each pixel's K logits once, keeps them in registers, and writes
the probabilities and the loss in one pass; the backward writes
scale * w * (p - onehot) in one pass. Pixels with w = 0 are skipped.
"""

from __future__ import annotations

from .. import backend
from ..ops._check import check_softmax_xent
from ..ops.softmax import SoftmaxXentCache


def softmax_cross_entropy_forward(logits, labels, weights):
    """Weighted pixel-wise softmax cross-entropy, averaged over all N*H*W pixels.

    logits: (N, K, H, W) float; labels: (N, H, W) int in 0..K-1; weights: (N, H, W)
    (w = 0 ignores a pixel). Returns loss (0-d array of the logits' dtype) and a cache.
    """
    check_softmax_xent(logits, labels, weights)
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
