"""maxpool (k = 2, 4, 8, ceil_mode), global average and global max pooling (plain ops): forward
and backward vs loops with the first-maximum tie rule, float64 gradient checks away from ties,
PyTorch parity where torch is installed, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from minunet import backend
from minunet.nn import gradcheck
from minunet.ops.pool_general import (
    global_avgpool_backward,
    global_avgpool_forward,
    global_maxpool_backward,
    global_maxpool_forward,
    maxpool_backward,
    maxpool_forward,
)


def maxpool_brute(x, dout, k, ceil_mode):
    """Loops: each window's max (row-major, first maximum wins) and its gradient."""
    N, C, H, W = x.shape
    Ho = -(-H // k) if ceil_mode else H // k
    Wo = -(-W // k) if ceil_mode else W // k
    out, dx = np.zeros((N, C, Ho, Wo)), np.zeros(x.shape)
    for n in range(N):
        for c in range(C):
            for y in range(Ho):
                for xx in range(Wo):
                    best = None
                    for i in range(k * y, min(k * y + k, H)):
                        for j in range(k * xx, min(k * xx + k, W)):
                            if best is None or x[n, c, i, j] > x[n, c, best[0], best[1]]:
                                best = (i, j)
                    out[n, c, y, xx] = x[n, c, best[0], best[1]]
                    dx[n, c, best[0], best[1]] += dout[n, c, y, xx]
    return out, dx


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("shape", [(2, 2, 16, 16), (1, 3, 13, 19)])
def test_maxpool_matches_loops_with_ties(xp, rng, k, ceil_mode, shape):
    x = rng.integers(0, 4, shape).astype(np.float64)  # many ties: the rule is exercised
    out, cache = maxpool_forward(xp.asarray(x), k, ceil_mode)
    dout = rng.standard_normal(out.shape)
    dx = maxpool_backward(xp.asarray(dout), cache)
    want_out, want_dx = maxpool_brute(x, dout, k, ceil_mode)
    np.testing.assert_array_equal(backend.to_host(out), want_out)
    np.testing.assert_array_equal(backend.to_host(dx), want_dx)


def test_global_pools_match_loops(xp, rng):
    x = rng.integers(0, 5, (2, 3, 4, 5)).astype(np.float64)
    d = rng.standard_normal((2, 3, 1, 1))
    avg, ca = global_avgpool_forward(xp.asarray(x))
    mx, cm = global_maxpool_forward(xp.asarray(x))
    np.testing.assert_allclose(backend.to_host(avg), x.mean(axis=(2, 3), keepdims=True),
                               rtol=1e-15)
    np.testing.assert_array_equal(backend.to_host(mx), x.max(axis=(2, 3), keepdims=True))
    dmax = backend.to_host(global_maxpool_backward(xp.asarray(d), cm))
    for n in range(2):
        for c in range(3):
            first = np.argmax(x[n, c].ravel())  # the first maximum, row-major
            want = np.zeros(20)
            want[first] = d[n, c, 0, 0]
            np.testing.assert_array_equal(dmax[n, c].ravel(), want)
    np.testing.assert_allclose(backend.to_host(global_avgpool_backward(xp.asarray(d), ca)),
                               np.broadcast_to(d / 20, x.shape), rtol=1e-15)


@pytest.mark.parametrize("k, ceil_mode", [(2, False), (4, True), (8, True)])
def test_gradient_checks_float64(xp, rng, k, ceil_mode):
    # distinct values 0.1 apart, as the spec's maker draws them: its step (0.04) never
    # changes a window's maximum
    x = xp.asarray(rng.permutation(2 * 2 * 11 * 9).reshape(2, 2, 11, 9) * 0.1)
    checks = [("maxpool", lambda x: maxpool_forward(x, k, ceil_mode), maxpool_backward),
              ("global_avgpool", global_avgpool_forward, global_avgpool_backward),
              ("global_maxpool", global_maxpool_forward, global_maxpool_backward)]
    for name, fwd, bwd in checks:
        for r in gradcheck.check_spec(name, fwd, bwd, {"x": x}, rng):
            assert r.passed, r


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_maxpool_matches_pytorch(rng, k, ceil_mode):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 13, 18))
    out, cache = maxpool_forward(x, k, ceil_mode)
    d = rng.standard_normal(out.shape)
    tx = torch.tensor(x, requires_grad=True)
    tout = torch.nn.functional.max_pool2d(tx, k, k, ceil_mode=ceil_mode)
    tout.backward(torch.tensor(d))
    np.testing.assert_array_equal(out, tout.detach().numpy())
    np.testing.assert_allclose(maxpool_backward(d, cache), tx.grad.numpy(), rtol=0, atol=0)


def test_bad_input_is_one_clear_error(rng):
    x = rng.standard_normal((1, 1, 5, 5))
    with pytest.raises(ValueError, match="leaves no whole window; use ceil_mode=True"):
        maxpool_forward(x, 8)
    assert maxpool_forward(x, 8, ceil_mode=True)[0].shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="window k must be an integer >= 1"):
        maxpool_forward(x, 0)
