"""softmax_cross_entropy: loops, stability at |logit| = 1e4, w = 0, normalisation, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops import softmax_cross_entropy_backward, softmax_cross_entropy_forward

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def softmax_xent_brute(logits, labels, weights):
    """Loss (mean over N*H*W pixels), probs and dlogits (for dloss = 1), one pixel at a time."""
    N, K, H, W = logits.shape
    probs = np.zeros(logits.shape)
    dlogits = np.zeros(logits.shape)
    total = 0.0
    for n, y, xx in np.ndindex(N, H, W):
        z = [float(logits[n, k, y, xx]) for k in range(K)]
        m = max(z)
        s = sum(math.exp(v - m) for v in z)
        p = [math.exp(v - m) / s for v in z]
        lab, w = int(labels[n, y, xx]), float(weights[n, y, xx])
        total += w * (math.log(s) - (z[lab] - m))  # -log p_lab, stable
        for k in range(K):
            probs[n, k, y, xx] = p[k]
            dlogits[n, k, y, xx] = w * (p[k] - (k == lab)) / (N * H * W)
    return total / (N * H * W), probs, dlogits


def make(rng, n, k, h, w, dtype=np.float64, scale=1.0):
    logits = (scale * rng.standard_normal((n, k, h, w))).astype(dtype)
    labels = rng.integers(0, k, (n, h, w))
    weights = rng.uniform(0.5, 2.0, (n, h, w))
    weights[rng.random((n, h, w)) < 0.25] = 0.0
    return logits, labels, weights.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
def test_forward_backward_match_brute_force(xp, rng, dtype, label_dtype):
    logits, labels, weights = make(rng, 2, 3, 4, 5, dtype, scale=3.0)
    labels = labels.astype(label_dtype)
    loss, cache = softmax_cross_entropy_forward(xp.asarray(logits), xp.asarray(labels),
                                                xp.asarray(weights))
    dlogits = softmax_cross_entropy_backward(1.0, cache)
    want_loss, want_probs, want_d = softmax_xent_brute(logits, labels, weights)
    assert loss.dtype == dtype and dlogits.dtype == dtype and dlogits.shape == logits.shape
    np.testing.assert_allclose(float(loss), want_loss, **TOL[dtype])
    np.testing.assert_allclose(backend.to_host(cache.probs), want_probs, **TOL[dtype])
    np.testing.assert_allclose(backend.to_host(dlogits), want_d, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(xp, rng, dtype):
    logits, labels, weights = make(rng, 2, 4, 5, 3, dtype)
    lt = xp.asarray(np.ascontiguousarray(logits.transpose(0, 1, 3, 2))).transpose(0, 1, 3, 2)
    lb = xp.asarray(np.ascontiguousarray(labels.transpose(0, 2, 1))).transpose(0, 2, 1)
    wt = xp.asarray(np.repeat(weights, 2, axis=2))[:, :, ::2]
    assert not (lt.flags.c_contiguous or lb.flags.c_contiguous or wt.flags.c_contiguous)
    loss, cache = softmax_cross_entropy_forward(lt, lb, wt)
    dlogits = softmax_cross_entropy_backward(1.0, cache)
    want_loss, _, want_d = softmax_xent_brute(logits, labels, weights)
    np.testing.assert_allclose(float(loss), want_loss, **TOL[dtype])
    np.testing.assert_allclose(backend.to_host(dlogits), want_d, **TOL[dtype])


def test_backward_gradcheck(xp, rng):
    logits, labels, weights = make(rng, 2, 3, 5, 4)
    assert (weights == 0).any()  # the check covers ignored pixels
    inputs = {"logits": xp.asarray(logits), "labels": xp.asarray(labels),
              "weights": xp.asarray(weights)}
    results = gradcheck.check_spec("softmax_cross_entropy", softmax_cross_entropy_forward,
                                   softmax_cross_entropy_backward, inputs, rng)
    assert results[0].passed, results[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_logits_do_not_overflow(xp, dtype):
    # N=1, K=3, H=1, W=2. Pixel 0: logits (1e4, -1e4, 0), label 2: -log p_2 = 1e4 (+ e^-1e4).
    # Pixel 1: logits (-1e4, 1e4, 1e4), label 1: p = (0, 1/2, 1/2), -log p_1 = log 2.
    logits = np.array([[1e4, -1e4], [-1e4, 1e4], [0.0, 1e4]], dtype=dtype)[None, :, None, :]
    labels = np.array([[[2, 1]]])
    weights = np.ones((1, 1, 2), dtype=dtype)
    loss, cache = softmax_cross_entropy_forward(xp.asarray(logits), xp.asarray(labels),
                                                xp.asarray(weights))
    d = backend.to_host(softmax_cross_entropy_backward(1.0, cache))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(d))
    np.testing.assert_allclose(float(loss), (1e4 + math.log(2)) / 2, rtol=1e-6)
    # dlogits = w * (p - onehot) / (N*H*W) with p = (1, 0, 0) and (0, 1/2, 1/2)
    want = np.array([[1.0, 0.0], [0.0, -0.5], [-1.0, 0.5]])[None, :, None, :] / 2
    np.testing.assert_allclose(d, want, atol=1e-7)


def test_zero_weight_ignores_a_pixel(xp, rng):
    logits, labels, weights = make(rng, 1, 3, 3, 3)
    weights[0, 1, 2] = 0.0
    loss, cache = softmax_cross_entropy_forward(*(xp.asarray(a) for a in (logits, labels, weights)))
    d = backend.to_host(softmax_cross_entropy_backward(1.0, cache))
    np.testing.assert_array_equal(d[0, :, 1, 2], 0.0)
    logits[0, :, 1, 2] = [50.0, -80.0, 1e4]  # anything at the ignored pixel
    labels[0, 1, 2] = 1
    loss2, _ = softmax_cross_entropy_forward(*(xp.asarray(a) for a in (logits, labels, weights)))
    assert float(loss2) == float(loss)


@pytest.mark.parametrize("n, h, w", [(1, 1, 1), (2, 3, 5), (3, 4, 4)])
def test_loss_is_normalised_by_all_pixels(n, h, w):
    # equal logits: -log p = log K at every pixel, so the mean is log K for any N, H, W
    k = 4
    loss, _ = softmax_cross_entropy_forward(np.zeros((n, k, h, w)), np.zeros((n, h, w), int),
                                            np.ones((n, h, w)))
    np.testing.assert_allclose(float(loss), math.log(k), rtol=1e-14)
    # half the pixels ignored: the mean still divides by all N*H*W pixels
    weights = np.ones((n, h, w))
    weights.reshape(-1)[::2] = 0.0
    loss, _ = softmax_cross_entropy_forward(np.zeros((n, k, h, w)), np.zeros((n, h, w), int),
                                            weights)
    np.testing.assert_allclose(float(loss), math.log(k) * weights.sum() / (n * h * w), rtol=1e-14)


def test_upstream_gradient_scales(rng):
    logits, labels, weights = make(rng, 2, 3, 3, 4)
    _, cache = softmax_cross_entropy_forward(logits, labels, weights)
    np.testing.assert_allclose(softmax_cross_entropy_backward(2.5, cache),
                               2.5 * softmax_cross_entropy_backward(1.0, cache), rtol=1e-14)


def test_bad_input(rng):
    logits, labels, weights = make(rng, 1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2 for K = 3 classes "
                                         r"\(logits \(1, 3, 2, 2\)\), found values 0\.\.3"):
        softmax_cross_entropy_forward(logits, np.array([[[0, 3], [1, 2]]]), weights)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2 .* found values -1\.\.2"):
        softmax_cross_entropy_forward(logits, np.array([[[0, -1], [1, 2]]]), weights)
    with pytest.raises(ValueError, match=r"logits \(1, 3, 2, 2\) need labels and weights of shape "
                                         r"\(1, 2, 2\), got labels \(1, 2, 3\)"):
        softmax_cross_entropy_forward(logits, np.zeros((1, 2, 3), int), weights)
    with pytest.raises(ValueError, match=r"got labels \(1, 2, 2\), weights \(1, 2, 1\)"):
        softmax_cross_entropy_forward(logits, labels, weights[:, :, :1])
    with pytest.raises(ValueError, match=r"labels must be a 3-D array .*got shape \(1, 1, 2, 2\)"):
        softmax_cross_entropy_forward(logits, labels[:, None], weights)
    with pytest.raises(ValueError, match=r"logits must be a 4-D array .*got shape \(3, 2, 2\)"):
        softmax_cross_entropy_forward(logits[0], labels, weights)
    with pytest.raises(ValueError, match=r"labels must be integer class indices, got dtype "
                                         r"float64"):
        softmax_cross_entropy_forward(logits, labels.astype(float), weights)
