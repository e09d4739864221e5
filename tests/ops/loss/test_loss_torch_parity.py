"""The losses against PyTorch in float64: values and gradients (skipped without torch).

BCE against torch.nn.functional.binary_cross_entropy_with_logits (with its `weight`); focal
against torchvision.ops.sigmoid_focal_loss's formula written out in torch (torchvision is not
needed); Dice and IoU against their formulas in torch; MS-SSIM against the published algorithm
written here with torch ops (conv2d with the Gaussian window, avg_pool2d, the ReLU as
pytorch_msssim applies it) and torch's autograd. Gradients compare normwise:
max |ours - torch| / max |torch|.
"""

from __future__ import annotations

import numpy as np
import pytest

from minunet.ops.loss import (
    MSSSIM_WEIGHTS,
    bce_with_logits_backward,
    bce_with_logits_forward,
    focal_backward,
    focal_forward,
    gaussian_window,
    msssim_backward,
    msssim_forward,
    soft_dice_backward,
    soft_dice_forward,
    soft_iou_backward,
    soft_iou_forward,
)

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_grad(fn, x, *args):
    """The loss fn(x, *args) and its gradient by autograd, both as NumPy float64."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    loss = fn(xt, *(torch.tensor(a) if isinstance(a, np.ndarray) else a for a in args))
    loss.backward()
    return loss.item(), xt.grad.numpy()


def assert_parity(ours, grad, theirs, theirs_grad, tol=1e-12):
    np.testing.assert_allclose(float(ours), theirs, rtol=tol, atol=tol)
    assert np.abs(grad - theirs_grad).max() <= tol * np.abs(theirs_grad).max()


@pytest.mark.parametrize("weighted", [False, True])
def test_bce_with_logits(rng, weighted):
    z = 3 * rng.standard_normal((2, 3, 5, 4))
    y = rng.random(z.shape)
    w = rng.uniform(0.0, 2.0, (2, 5, 4)) if weighted else None
    loss, cache = bce_with_logits_forward(z, y, w)

    def theirs(zt, yt, wt=None):
        return F.binary_cross_entropy_with_logits(
            zt, yt, weight=None if wt is None else wt[:, None])  # (N, 1, H, W) broadcasts

    assert_parity(loss, bce_with_logits_backward(1.0, cache),
                  *torch_grad(theirs, z, y, *([w] if weighted else [])))


def torchvision_focal(z, y, alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss(z, y, alpha, gamma, reduction="mean"), its body."""
    p = torch.sigmoid(z)
    ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss.mean()


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1, 0.5), (0.8, 1.0), (0.25, 0.0)])
@pytest.mark.parametrize("soft", [False, True])
def test_focal(rng, alpha, gamma, soft):
    z = 3 * rng.standard_normal((2, 2, 5, 4))
    y = rng.random(z.shape) if soft else (rng.random(z.shape) < 0.4).astype(float)
    loss, cache = focal_forward(z, y, None if alpha < 0 else alpha, gamma)
    assert_parity(loss, focal_backward(1.0, cache),
                  *torch_grad(lambda zt, yt: torchvision_focal(zt, yt, alpha, gamma), z, y))


@pytest.mark.parametrize("kind", ["dice", "iou"])
def test_dice_and_iou(rng, kind):
    p = rng.uniform(0.02, 0.98, (2, 3, 5, 4))
    y = (rng.random(p.shape) < 0.4).astype(float)
    s = 1.0

    def theirs(pt, yt):
        inter, ps, ys = (pt * yt).sum((2, 3)), pt.sum((2, 3)), yt.sum((2, 3))
        score = (2 * inter + s) / (ps + ys + s) if kind == "dice" else \
            (inter + s) / (ps + ys - inter + s)
        return 1 - score.mean()

    forward, backward = ((soft_dice_forward, soft_dice_backward) if kind == "dice"
                         else (soft_iou_forward, soft_iou_backward))
    loss, cache = forward(p, y, s)
    assert_parity(loss, backward(1.0, cache), *torch_grad(theirs, p, y))


def torch_msssim_loss(x, y, data_range=1.0, win=11, sigma=1.5, weights=MSSSIM_WEIGHTS):
    """1 - MS-SSIM, Wang, Simoncelli and Bovik 2003, in torch ops (pytorch_msssim's ReLU)."""
    C = x.shape[1]
    g = torch.tensor(gaussian_window(win, sigma), dtype=x.dtype)
    window = (g[:, None] * g[None, :]).expand(C, 1, win, win)  # depthwise 2-D Gaussian

    def G(a):
        return F.conv2d(a, window, groups=C)  # "valid": no padding

    C1, C2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for j in range(len(weights)):
        if j > 0:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        mx, my = G(x), G(y)
        vx, vy, cxy = G(x * x) - mx**2, G(y * y) - my**2, G(x * y) - mx * my
        cs = (2 * cxy + C2) / (vx + vy + C2)
        if j < len(weights) - 1:
            values.append(cs.mean((2, 3)))
        else:
            lum = (2 * mx * my + C1) / (mx**2 + my**2 + C1)
            values.append((lum * cs).mean((2, 3)))
    v = torch.relu(torch.stack(values))  # (M, N, C)
    beta = torch.tensor(weights, dtype=x.dtype)[:, None, None]
    return 1 - torch.prod(v**beta, dim=0).mean()


@pytest.mark.parametrize("shape, data_range", [((1, 1, 176, 180), 1.0), ((2, 3, 181, 177), 1.0),
                                               ((1, 2, 190, 200), 255.0)])
def test_msssim_published_setting(rng, shape, data_range):
    y = rng.random(shape)
    x = np.clip(y + 0.2 * rng.standard_normal(shape), 0, 1)
    x, y = data_range * x, data_range * y
    loss, cache = msssim_forward(x, y, data_range)
    assert (cache.values > 0).all()
    assert_parity(loss, msssim_backward(1.0, cache),
                  *torch_grad(lambda xt, yt: torch_msssim_loss(xt, yt, data_range), x, y),
                  tol=1e-11)


def test_msssim_clamped_scales_agree(rng):
    # some scales anti-correlated: both clamp them, so both give MS-SSIM 0 and no gradient
    x = rng.random((1, 1, 13, 12))
    y = 1.0 - x
    w3 = (0.3, 0.3, 0.4)
    loss, cache = msssim_forward(x, y, 1.0, 3, 1.5, w3)
    assert_parity(loss, msssim_backward(1.0, cache),
                  *torch_grad(lambda xt, yt: torch_msssim_loss(xt, yt, 1.0, 3, 1.5, w3), x, y))
