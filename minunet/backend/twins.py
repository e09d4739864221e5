"""The twin dispatchers: one signature per hot loop, the CPU or GPU twin chosen by array type.

Each hot loop of the fast ops has two implementations with one signature and
one memory layout:

    CPU twin (Numba, NumPy slices)   minunet/backend/cpu.py
    GPU twin (CUDA)                  kernels/*.cu, launched by minunet/backend/gpu.py

and a dispatcher below that picks the twin from its first array argument
(`_twin`, the one place that choice is made) and documents the contract both
twins keep. The fast ops (minunet/fast) call these; the plain ops (minunet/ops)
never do. The tests compare the twins with each other and with brute-force
loops (tests/backend/).

Numba and CuPy are imported only when a twin is first called: cpu.py on the
first NumPy call, gpu.py (and CuPy) on the first CuPy call.
"""

from __future__ import annotations

from .device import is_gpu_array

__all__ = [
    "im2col", "col2im", "maxpool2x2_forward", "maxpool2x2_backward", "softmax_xent_forward",
    "softmax_xent_backward", "sgd_update", "sgd_update_many", "bias_relu_forward",
    "bias_relu_rows", "relu_backward", "upconv_scatter", "upconv_gather",
    "bn_stats_partials", "bn_grad_partials", "bn_normalize", "bn_backward_dx",
    "bilinear_forward", "bilinear_adjoint",
    "depthwise_forward", "depthwise_backward_dx", "depthwise_dw_partials",
    "im2col_padded", "col2im_padded",
]


def _twin(a):
    """The module of twins for array `a`: gpu for a CuPy array, cpu otherwise."""
    if is_gpu_array(a):
        from . import gpu

        return gpu
    from . import cpu

    return cpu


# --- convolution: im2col and its adjoint -------------------------------------------------


def im2col(x, k: int, y0: int, y1: int, out):
    """Columns of a valid k x k convolution for output rows y0..y1-1 of one image.

    x: (C, H, W) contiguous; out: (C*k*k, (y1-y0)*Wo) with Wo = W-k+1, filled as
    out[(c*k + i)*k + j, (y-y0)*Wo + xx] = x[c, y+i, xx+j]. Returns out.
    """
    return _twin(x).im2col(x, k, y0, y1, out)


def col2im(cols, k: int, y0: int, y1: int, dx):
    """Adjoint of im2col: add the column gradients back into dx (C, H, W) in place.

    cols: (C*k*k, (y1-y0)*Wo). Gather form: each input pixel sums the column
    entries that were copied from it (deterministic, no atomics). Returns dx.
    """
    return _twin(cols).col2im(cols, k, y0, y1, dx)


# --- ReLU: the conv epilogue and the backward ---------------------------------------------


def bias_relu_forward(x, b):
    """The conv epilogue, fused: x = max(x + b[c], 0) IN PLACE for x (N, C, H, W), b (C,)."""
    return _twin(x).bias_relu_forward(x, b)


def bias_relu_rows(o2, b, relu: bool):
    """The conv epilogue on one row chunk: o2 += b[:, None], then max(o2, 0) if relu, IN PLACE.

    o2: (C, L) with contiguous rows at any row stride (a chunk of output rows of (C, H*W)
    planes, where the chunk's GEMM wrote it); b (C,). Same numbers as bias_relu_forward
    (or a plain bias add) on those pixels. Returns o2.
    """
    return _twin(o2).bias_relu_rows(o2, b, relu)


def relu_backward(dout, out, dx=None):
    """dx = dout where out > 0, else 0 (out is the ReLU's output; any shape).

    dx: a contiguous array of the same shape to write into (a workspace), or None
    for a new array. Returns dx.
    """
    return _twin(dout).relu_backward(dout, out, dx)


# --- 2x2 up-convolution: the rearrangements around its GEMM -------------------------------


def upconv_scatter(cols, b):
    """cols (N, Cout, 2, 2, H, W), b (Cout,) -> out (N, Cout, 2H, 2W):
    out[n, o, 2y+i, 2x+j] = cols[n, o, i, j, y, x] + b[o]."""
    return _twin(cols).upconv_scatter(cols, b)


def upconv_gather(dout):
    """The inverse rearrangement: dout (N, Cout, 2H, 2W) -> dcols (N, Cout, 2, 2, H, W)."""
    return _twin(dout).upconv_gather(dout)


# --- 2x2 max-pooling -----------------------------------------------------------------------


def maxpool2x2_forward(x):
    """(N, C, H, W) -> out (N, C, H/2, W/2), arg (N, C, H/2, W/2) uint8 in 0..3.

    arg = 2*i + j of the FIRST maximum in window order (0,0), (0,1), (1,0), (1,1).
    """
    return _twin(x).maxpool2x2_forward(x)


def maxpool2x2_backward(dout, arg):
    """(N, C, H/2, W/2) upstream gradient and arg-max -> dx (N, C, H, W)."""
    return _twin(dout).maxpool2x2_backward(dout, arg)


# --- softmax + weighted cross-entropy ------------------------------------------------------


def softmax_xent_forward(logits, labels, weights):
    """Fused softmax + weighted cross-entropy; returns (loss_sum, probs).

    logits (N, K, H, W); labels (N, H, W) int; weights (N, H, W).
    loss_sum = sum_x w(x) * -log p_{l(x)}(x) (a 0-d array); probs (N, K, H, W).
    """
    return _twin(logits).softmax_xent_forward(logits, labels, weights)


def softmax_xent_backward(probs, labels, weights, scale):
    """dlogits = scale * w(x) * (probs - onehot(labels)), (N, K, H, W)."""
    return _twin(probs).softmax_xent_backward(probs, labels, weights, scale)


# --- momentum SGD ----------------------------------------------------------------------------


def sgd_update(w, v, g, lr: float, momentum: float, weight_decay: float) -> None:
    """One momentum-SGD step in place, Caffe convention (Jia et al. 2014):

        v <- momentum * v - lr * (g + weight_decay * w);   w <- w + v

    w, v, g: contiguous arrays of one shape and dtype (one pass over memory).
    """
    _twin(w).sgd_update(w, v, g, lr, momentum, weight_decay)


def sgd_update_many(ws, vs, gs, lr: float, momentum: float, weight_decay: float) -> None:
    """`sgd_update` over lists of arrays (every parameter of a model); one launch on the GPU."""
    if ws:
        _twin(ws[0]).sgd_update_many(ws, vs, gs, lr, momentum, weight_decay)


# --- BatchNorm: per-channel sums in one pass, fused epilogues (kernels/batchnorm.cu) -------


def bn_stats_partials(x):
    """x (N, C, H, W) -> part (N, C, nq, 2) float64, nq = ceil(H*W / 2048): for work item q
    of plane (n, c), (sum v, sum v*v) with v = x - x[0, c, 0, 0] (the channel's first value).

    Summed over n and q, they give the mean and the biased variance of each channel in one
    pass over x (the shift avoids the cancellation of E[x^2] - E[x]^2). Each work item is
    summed in a fixed order (kernels/batchnorm.cu): the twins agree bit for bit.
    """
    return _twin(x).bn_stats_partials(x)


def bn_grad_partials(dout, xhat):
    """dout, xhat (N, C, H, W) -> part (N, C, nq, 2) float64: (sum dout, sum dout*xhat) per
    work item, as bn_stats_partials; summed over n and q: dbeta and dgamma."""
    return _twin(dout).bn_grad_partials(dout, xhat)


def bn_normalize(x, mean, inv_std, gamma, beta):
    """x (N, C, H, W), the rest (C,) -> (xhat, out): xhat = (x - mean) * inv_std,
    out = gamma * xhat + beta, per channel, in one pass."""
    return _twin(x).bn_normalize(x, mean, inv_std, gamma, beta)


def bn_backward_dx(dout, xhat, k, m1, m2):
    """dout, xhat (N, C, H, W), k, m1, m2 (C,) -> dx = k * ((dout - m1) - xhat * m2)."""
    return _twin(dout).bn_backward_dx(dout, xhat, k, m1, m2)


# --- bilinear up-sampling by an integer factor, and its adjoint (kernels/resample.cu) ------


def bilinear_forward(x, factor: int, align_corners: bool):
    """x (N, C, H, W) -> out (N, C, f*H, f*W), bilinear, both corner modes: the taps of
    minunet/ops/resample.py's interpolation_matrix, columns first then rows."""
    return _twin(x).bilinear_forward(x, factor, align_corners)


def bilinear_adjoint(src, a):
    """The adjoint along one axis as a gather: src (P, So, Q), a (So, S) the axis' interpolation
    matrix -> dst (P, S, Q), dst[p, i, q] = sum_o a[o, i] * src[p, o, q] over the band of o
    that can reach i, o ascending (deterministic, no atomics)."""
    return _twin(src).bilinear_adjoint(src, a)


# --- depthwise convolution, padded and strided (kernels/depthwise.cu) ------------------------


def depthwise_forward(x, w, b, stride: int, padding: int):
    """x (N, C, H, W), w (Co, 1, k, k) with Co = m*C, b (Co,) -> out (N, Co, Ho, Wo):
    out[n, o, y, x] = sum_{i,j} w[o, 0, i, j] * xpad[n, o // m, s*y + i, s*x + j] + b[o]
    (xpad: x with `padding` zeros around), each pixel's taps added in (i, j) order."""
    return _twin(x).depthwise_forward(x, w, b, stride, padding)


def depthwise_backward_dx(dout, w, x_shape, stride: int, padding: int):
    """The adjoint of depthwise_forward in x, as a gather (each input pixel sums the terms of
    the output pixels that read it, in (r, i, j) order): dout (N, Co, Ho, Wo) -> dx x_shape."""
    return _twin(dout).depthwise_backward_dx(dout, w, x_shape, stride, padding)


def depthwise_dw_partials(dout, x, k: int, stride: int, padding: int):
    """dout (N, Co, Ho, Wo), x (N, C, H, W) -> (N, Co, k*k + 1) float64: per image and output
    channel, sum over pixels of dout * x at each tap (i*k + j), then sum dout (the bias);
    summed over n: dw and db."""
    return _twin(dout).depthwise_dw_partials(dout, x, k, stride, padding)


def im2col_padded(x, k: int, stride: int, padding: int, y0: int, y1: int, out):
    """Columns of a k x k convolution with zero padding and stride, output rows y0..y1-1 of one
    image. x: (C, H, W) contiguous; out: (C*k*k, (y1-y0)*Wo), Wo = (W + 2p - k)//s + 1, filled
    as out[(c*k + i)*k + j, (y-y0)*Wo + xx] = x[c, s*y + i - p, s*xx + j - p], 0 outside x.
    With stride 1 and padding 0 it is im2col. Returns out."""
    return _twin(x).im2col_padded(x, k, stride, padding, y0, y1, out)


def col2im_padded(cols, k: int, stride: int, padding: int, y0: int, y1: int, dx):
    """Adjoint of im2col_padded: add the column gradients back into dx (C, H, W) in place, as a
    gather (each pixel sums its own entries in (i, j) order; the padding's entries had no
    pixel). Touches only the input rows s*y0 - p .. s*(y1-1) - p + k - 1. Returns dx."""
    return _twin(cols).col2im_padded(cols, k, stride, padding, y0, y1, dx)
