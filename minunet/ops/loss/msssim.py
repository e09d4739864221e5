"""Multi-scale structural similarity (Wang, Simoncelli and Bovik 2003, "Multiscale structural
similarity for image quality assessment"), as a loss: L = 1 - MS-SSIM. UNet 3+ (Huang et al.
2020) uses it in its hybrid loss to stress the boundaries of the segmentation.

The published algorithm, with the published numbers:

    window   Gaussian, 11 x 11, sigma 1.5, normalised to sum 1; "valid" filtering (no padding)
    scales   M = 5; between scales a 2x2 average-pool, stride 2 (an odd last row or column is
             dropped, as torch's avg_pool2d does; pytorch_msssim pads odd sizes instead)
    weights  beta_1..5 = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), alpha_5 = gamma_j = beta_j
    constants C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = the data range (1 for probabilities)

At scale j, with G the Gaussian filtering, over the images x and y:

    mu_x = G x, mu_y = G y,  v_x = G(x^2) - mu_x^2,  v_y = G(y^2) - mu_y^2,  c = G(xy) - mu_x mu_y
    cs_map = (2 c + C2) / (v_x + v_y + C2)                  contrast * structure (C3 = C2 / 2)
    l_map  = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)     luminance (the coarsest scale only)
    cs_j = mean(cs_map) for j < M,   s_M = mean(l_map * cs_map)  (the SSIM of the coarsest scale)

    MS-SSIM = s_M^beta_M * prod_{j<M} cs_j^beta_j       per image and channel
    L = 1 - mean over the N*C images and channels of MS-SSIM

Negative values: cs_j (and s_M) can be negative for anti-correlated images, and a negative
number has no real fractional power. We clamp them at 0 with a ReLU before the power, as
pytorch_msssim (VainF) does: v_j = max(cs_j, 0). The backward is consistent: the ReLU passes no
gradient where cs_j <= 0, and where any v_j = 0 the product is 0, so are all its gradients.

The backward, by hand. Outer part (the product rule on logs): for v_j > 0,

    dMS/dv_j = beta_j * MS / v_j,   dL/dMS = -1 / (N*C),   dmean(map)/dmap = 1 / (H_j' W_j')

Inner part, per scale, on the maps (D = dL/dcs_map; for the SSIM map of the coarsest scale
dL/dl_map = D_s * cs_map and D = D_s * l_map). cs_map = A / B with A = 2c + C2,
B = v_x + v_y + C2:

    dL/dc = 2 D / B,   dL/dv_x = -D cs_map / B
    l_map = (2 mu_x mu_y + C1) / Q, Q = mu_x^2 + mu_y^2 + C1:
    dl_map/dmu_x = 2 (mu_y - mu_x l_map) / Q

and from c = G(xy) - mu_x mu_y, v_x = G(x^2) - mu_x^2 the gradients of the filtered maps:
dL/dG(xy) = dL/dc, dL/dG(x^2) = dL/dv_x, dL/dmu_x = -mu_y dL/dc - 2 mu_x dL/dv_x (+ the
luminance term). The filtering is linear, so its adjoint G^T is the same Gaussian applied as a
"full" correlation (zero-padded by 10; the window is symmetric, so flipping it changes nothing):

    dL/dx_j = G^T(dL/dmu_x) + 2 x_j G^T(dL/dG(x^2)) + y_j G^T(dL/dG(xy))

The pooling is linear too: its adjoint spreads each gradient over its 2x2 block times 1/4.
Scales are visited coarsest first, each adding its own term to the gradient pooled back from
below. Only x (the prediction) is differentiated; y is the target.

Size: the coarsest scale must hold one window: min(H, W) >= 11 * 2^4 = 176 for the published
setting; smaller tiles raise a ValueError. win_size, sigma and the weights are parameters
(small settings make gradient checks cheap); the defaults are the published ones.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ...backend.device import xp_of
from .._check import check_float, check_ndim
from ._common import scalar

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # beta_1..beta_5, Wang et al. 2003
K1, K2 = 0.01, 0.03  # C1 = (K1 L)^2, C2 = (K2 L)^2


def gaussian_window(size: int = 11, sigma: float = 1.5) -> tuple[float, ...]:
    """The 1-D Gaussian taps g_i ~ exp(-(i - size//2)^2 / (2 sigma^2)), summing to 1. The 2-D
    window is the outer product g g^T, so filtering runs along H, then along W."""
    g = [math.exp(-((i - size // 2) ** 2) / (2 * sigma**2)) for i in range(size)]
    return tuple(v / sum(g) for v in g)


def filter_valid(a, g):
    """a: (..., H, W) -> (..., H-k+1, W-k+1): sum_{i,j} g_i g_j a[..., y+i, x+j]. The loop runs
    over the k taps, never over pixels."""
    k = len(g)
    Ho, Wo = a.shape[-2] - k + 1, a.shape[-1] - k + 1
    t = sum(g[i] * a[..., i:i + Ho, :] for i in range(k))  # (..., Ho, W)
    return sum(g[j] * t[..., j:j + Wo] for j in range(k))  # (..., Ho, Wo)


def filter_valid_adjoint(d, g, H: int, W: int):
    """The adjoint of filter_valid: d (..., Ho, Wo) -> (..., H, W), the full correlation
    out[..., y, x] = sum_{i,j} g_i g_j d[..., y-i, x-j] (zero outside d)."""
    xp = xp_of(d)
    k = len(g)
    Ho, Wo = d.shape[-2:]
    t = xp.zeros((*d.shape[:-1], W), dtype=d.dtype)  # (..., Ho, W)
    for j in range(k):
        t[..., j:j + Wo] += g[j] * d
    out = xp.zeros((*d.shape[:-2], H, W), dtype=d.dtype)  # (..., H, W)
    for i in range(k):
        out[..., i:i + Ho, :] += g[i] * t
    return out


def avgpool2(a):
    """a: (N, C, H, W) -> (N, C, H//2, W//2), the mean of each 2x2 block (odd tail dropped)."""
    N, C, H, W = a.shape
    H2, W2 = H // 2, W // 2
    blocks = a[:, :, :2 * H2, :2 * W2].reshape(N, C, H2, 2, W2, 2)  # (N, C, H2, 2, W2, 2)
    return blocks.mean(axis=(3, 5))


def avgpool2_adjoint(d, H: int, W: int):
    """d: (N, C, H//2, W//2) -> (N, C, H, W): each value / 4 on its 2x2 block, 0 on a dropped
    odd tail."""
    xp = xp_of(d)
    N, C, H2, W2 = d.shape
    out = xp.zeros((N, C, H, W), dtype=d.dtype)
    spread = xp.broadcast_to(d[:, :, :, None, :, None] / 4, (N, C, H2, 2, W2, 2))
    out[:, :, :2 * H2, :2 * W2] = spread.reshape(N, C, 2 * H2, 2 * W2)
    return out


class MsssimScale(NamedTuple):
    x: object  # (N, C, Hj, Wj) the prediction at this scale
    y: object  # (N, C, Hj, Wj) the target at this scale
    mu_x: object  # (N, C, Hj', Wj') Hj' = Hj - k + 1
    mu_y: object
    denom: object  # (N, C, Hj', Wj') B = v_x + v_y + C2
    cs_map: object  # (N, C, Hj', Wj')
    l_map: object  # (N, C, Hj', Wj') at the coarsest scale, else None
    l_denom: object  # (N, C, Hj', Wj') Q = mu_x^2 + mu_y^2 + C1 at the coarsest scale, else None


class MsssimCache(NamedTuple):
    scales: tuple  # M MsssimScale, finest first
    values: object  # (M, N, C) cs_1..cs_{M-1}, s_M before the ReLU
    msssim: object  # (N, C) MS-SSIM per image and channel
    weights: tuple  # beta_1..beta_M
    window: tuple  # the 1-D Gaussian taps


def msssim_forward(x, y, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
                   weights: tuple = MSSSIM_WEIGHTS):
    """x: (N, C, H, W) float prediction (e.g. probabilities); y: (N, C, H, W) target;
    data_range: L (1 for probabilities, 255 for 8-bit images);
    min(H, W) >= win_size * 2^(M-1), M = len(weights) (176 for the published setting).
    Returns loss = 1 - mean_{n,c} MS-SSIM (0-d array of x's dtype) and an MsssimCache."""
    check_msssim(x, y, data_range, win_size, sigma, weights)
    xp = xp_of(x, y)
    y = y.astype(x.dtype, copy=False)
    g = gaussian_window(win_size, sigma)
    C1, C2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    M = len(weights)
    scales, values = [], []
    for j in range(M):
        if j > 0:
            x, y = avgpool2(x), avgpool2(y)  # (N, C, Hj, Wj)
        stats = filter_valid(xp.stack([x, y, x * x, y * y, x * y]), g)  # (5, N, C, Hj', Wj')
        mu_x, mu_y, gxx, gyy, gxy = stats
        denom = (gxx - mu_x**2) + (gyy - mu_y**2) + C2  # B = v_x + v_y + C2
        cs_map = (2 * (gxy - mu_x * mu_y) + C2) / denom
        l_map = l_denom = None
        if j < M - 1:
            values.append(cs_map.mean(axis=(2, 3)))  # (N, C) cs_j
        else:
            l_denom = mu_x**2 + mu_y**2 + C1
            l_map = (2 * mu_x * mu_y + C1) / l_denom
            values.append((l_map * cs_map).mean(axis=(2, 3)))  # (N, C) s_M
        scales.append(MsssimScale(x, y, mu_x, mu_y, denom, cs_map, l_map, l_denom))
    values = xp.stack(values)  # (M, N, C)
    clamped = xp.maximum(values, 0)  # the ReLU (module docstring)
    ms = xp.ones_like(values[0])  # (N, C)
    for j in range(M):
        ms = ms * clamped[j] ** weights[j]
    loss = scalar(xp, 1.0 - ms.mean(), x.dtype)
    return loss, MsssimCache(tuple(scales), values, ms, tuple(weights), g)


def msssim_backward(dloss, cache):
    """dloss: scalar upstream gradient. Returns dx (N, C, H, W) (module docstring)."""
    xp = xp_of(cache.msssim)
    values, ms, weights, g = cache.values, cache.msssim, cache.weights, cache.window
    M = len(weights)
    dms = -float(dloss) / ms.size  # dL/dMS, the same for every image and channel
    positive = values > 0  # (M, N, C) where the ReLU passes
    safe = xp.where(positive, values, 1)
    dvalues = xp.where(positive, dms * ms / safe, 0)  # (M, N, C) without beta_j yet
    dx = None
    for j in reversed(range(M)):
        s = cache.scales[j]
        Hj, Wj = s.x.shape[2:]
        Ho, Wo = s.cs_map.shape[2:]
        D = (weights[j] * dvalues[j] / (Ho * Wo))[:, :, None, None]  # (N, C, 1, 1) dL/dmap
        dmu_x = 0.0
        if s.l_map is not None:  # the SSIM map l * cs: product rule
            dmu_x = (D * s.cs_map) * 2 * (s.mu_y - s.mu_x * s.l_map) / s.l_denom
            D = D * s.l_map  # (N, C, Ho, Wo) dL/dcs_map
        dc = 2 * D / s.denom  # dL/dc = dL/dG(xy)
        dvx = -D * s.cs_map / s.denom  # dL/dv_x = dL/dG(x^2)
        dmu_x = dmu_x - s.mu_y * dc - 2 * s.mu_x * dvx  # (N, C, Ho, Wo)
        shape = (s.x.shape[0], s.x.shape[1], Ho, Wo)
        back = filter_valid_adjoint(
            xp.stack([xp.broadcast_to(a, shape) for a in (dmu_x, dvx, dc)]), g, Hj, Wj)
        dxj = back[0] + 2 * s.x * back[1] + s.y * back[2]  # (N, C, Hj, Wj)
        if dx is not None:
            dxj += avgpool2_adjoint(dx, Hj, Wj)  # what the coarser scales sent back
        dx = dxj
    return dx


def check_msssim(x, y, data_range, win_size, sigma, weights) -> None:
    """x, y (N, C, H, W), x float; data_range > 0; win_size odd >= 1; sigma > 0; weights >= 1;
    tiles large enough for every scale."""
    check_ndim("msssim prediction x", x, 4, "N, C, H, W")
    check_float("msssim prediction x", x)
    if getattr(y, "shape", None) != x.shape:
        raise ValueError(f"msssim: the target y must have the shape of x {x.shape}, "
                         f"got {getattr(y, 'shape', type(y).__name__)}")
    if not (data_range > 0 and sigma > 0 and len(weights) >= 1
            and int(win_size) == win_size and win_size >= 1 and win_size % 2 == 1):
        raise ValueError(f"msssim needs data_range > 0, an odd win_size >= 1, sigma > 0 and at "
                         f"least one weight, got data_range={data_range}, win_size={win_size}, "
                         f"sigma={sigma}, {len(weights)} weights")
    M = len(weights)
    need = win_size * 2 ** (M - 1)
    H, W = x.shape[2:]
    if min(H, W) < need:
        raise ValueError(f"msssim: a {H}x{W} tile is too small for {M} scales with a "
                         f"{win_size}x{win_size} window: the coarsest scale (1/{2 ** (M - 1)}) "
                         f"must hold one window, so H and W must be >= {need}; use a larger tile")
