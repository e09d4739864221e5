"""The catalogue of typical mistakes: known wrong versions of the ops, and their hints.

When a check fails, the grader compares the student's result with what each
wrong version computes on the same inputs (stored in the bundle as
"fingerprints"); the one that matches names the mistake. When none matches,
probes (constant ratio, sign, where the error lives, right values in the wrong
places: probes.py) give a hint instead; a Mistake with `probe=<id>` turns that
probe's hint, in its region, into its own.
A hint names the concept, never the fix.

    MISTAKES          every wrong version: a stable id, the region it stands in for,
                      the ops functions it replaces, a hint, and the wrong code itself
    PROBES            the hints the probes give, by id
    by_id(id)         one Mistake or probe hint
    wrong_namespace   an ops namespace with one mistake's functions swapped in

Every wrong version is a whole function with the signature of the op it
replaces, written the way a student plausibly writes it, on NumPy. They import
the reference ops lazily, so this module imports nothing of minunet.ops (the
grader loads a student's ops in their place). tests/coursework/test_mistakes.py
checks that each one fails at least one check and gets its own hint.

In a student copy this file holds the ids and hints only (`wrong` is None): the
wrong versions are one character away from the solutions.

To add a wrong version: write the function below, add a Mistake to MISTAKES
(id `<op>.<what>`, region, hint), and run
`python -m pytest tests/coursework/test_mistakes.py`; docs/TEACHERS.md has a worked example.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np


@dataclass(frozen=True)
class Mistake:
    """One known wrong version of (part of) an op."""

    id: str  # stable id, "<op>.<what>", e.g. "col2im.assign"
    region: str  # the solution region it stands in for, e.g. "conv2d.col2im"
    hint: str  # one sentence naming the concept (never the fix)
    wrong: dict[str, Callable] | None = field(default=None, compare=False)
    # the ops functions it replaces, by name (None in a student copy)
    probe: str = ""  # a probe that names this mistake when no stored output can
    # (a redrawn random mask differs on every call, so only the probe sees it)


def _ops():
    from minunet import ops  # the reference ops (imported late: see the module docstring)

    return ops


# --- conv2d: im2col and col2im ---------------------------------------------------------------


def im2col_row_order(x, k):
    N, C, H, W = x.shape
    Ho, Wo = H - k + 1, W - k + 1
    cols = np.empty((k, k, C, N, Ho, Wo), dtype=x.dtype)  # rows ordered (i, j, c)
    for i in range(k):
        for j in range(k):
            cols[i, j] = x[:, :, i : i + Ho, j : j + Wo].transpose(1, 0, 2, 3)
    return cols.reshape(C * k * k, N * Ho * Wo)


def im2col_flipped(x, k):
    N, C, H, W = x.shape
    Ho, Wo = H - k + 1, W - k + 1
    cols = np.empty((C, k, k, N, Ho, Wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):  # reads the window back to front: a flipped kernel
            a, b = k - 1 - i, k - 1 - j
            cols[:, i, j] = x[:, :, a : a + Ho, b : b + Wo].transpose(1, 0, 2, 3)
    return cols.reshape(C * k * k, N * Ho * Wo)


def im2col_offsets_swapped(x, k):
    N, C, H, W = x.shape
    Ho, Wo = H - k + 1, W - k + 1
    cols = np.empty((C, k, k, N, Ho, Wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):  # i used along the columns, j along the rows
            cols[:, i, j] = x[:, :, j : j + Ho, i : i + Wo].transpose(1, 0, 2, 3)
    return cols.reshape(C * k * k, N * Ho * Wo)


def im2col_reshape_for_transpose(x, k):
    N, C, H, W = x.shape
    Ho, Wo = H - k + 1, W - k + 1
    cols = np.empty((C, k, k, N, Ho, Wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):  # (N, C, Ho, Wo) reshaped, not transposed, to (C, N, Ho, Wo)
            cols[:, i, j] = x[:, :, i : i + Ho, j : j + Wo].reshape(C, N, Ho, Wo)
    return cols.reshape(C * k * k, N * Ho * Wo)


def _col2im(cols, x_shape, k, offsets, add=True, swap=False, transpose=True):
    N, C, H, W = x_shape
    Ho, Wo = H - k + 1, W - k + 1
    c6 = cols.reshape(C, k, k, N, Ho, Wo)
    dx = np.zeros((C, N, H, W), dtype=cols.dtype)
    for i in offsets:
        for j in offsets:
            a, b = (j, i) if swap else (i, j)
            if add:
                dx[:, :, a : a + Ho, b : b + Wo] += c6[:, i, j]
            else:
                dx[:, :, a : a + Ho, b : b + Wo] = c6[:, i, j]
    if not transpose:
        return dx.reshape(N, C, H, W)  # (C, N, H, W) read as (N, C, H, W)
    return np.ascontiguousarray(dx.transpose(1, 0, 2, 3))


def col2im_assign(cols, x_shape, k):
    return _col2im(cols, x_shape, k, range(k), add=False)


def col2im_missing_offset(cols, x_shape, k):
    return _col2im(cols, x_shape, k, range(k - 1))


def col2im_offsets_swapped(cols, x_shape, k):
    return _col2im(cols, x_shape, k, range(k), swap=True)


def col2im_reshape_for_transpose(cols, x_shape, k):
    return _col2im(cols, x_shape, k, range(k), transpose=False)


# --- conv2d forward and backward -------------------------------------------------------------


def _conv_forward(x, w, b, relu, flip=False, nchw=True, relu_first=False):
    ops = _ops()
    N, Cin, H, W = x.shape
    Cout, _, k, _ = w.shape
    Ho, Wo = H - k + 1, W - k + 1
    if flip:
        w = w[:, :, ::-1, ::-1]
    prod = w.reshape(Cout, Cin * k * k) @ ops.im2col(x, k)  # (Cout, N*Ho*Wo)
    if relu and relu_first:
        prod = np.maximum(prod, 0)
    out = prod + b[:, None]
    if nchw:
        out = np.ascontiguousarray(out.reshape(Cout, N, Ho, Wo).transpose(1, 0, 2, 3))
    else:
        out = out.reshape(N, Cout, Ho, Wo)  # the (Cout, N) axes read as (N, Cout)
    if relu and not relu_first:
        out = np.maximum(out, 0)
    return out, ops.Conv2dCache(x, w if not flip else w[:, :, ::-1, ::-1], out if relu else None)


def conv2d_flipped_kernel(x, w, b, relu=False):
    return _conv_forward(x, w, b, relu, flip=True)


def conv2d_batch_layout(x, w, b, relu=False):
    return _conv_forward(x, w, b, relu, nchw=False)


def conv2d_relu_before_bias(x, w, b, relu=False):
    return _conv_forward(x, w, b, relu, relu_first=True)


def _conv_backward(dout, cache, need_dx=True, mask="out", dw_t=False, db="sum"):
    ops = _ops()
    x, w, out = cache
    N, Cin, H, W = x.shape
    Cout, _, k, _ = w.shape
    Ho, Wo = H - k + 1, W - k + 1
    if out is not None and mask == "out":
        dout = np.where(out > 0, dout, 0).astype(dout.dtype)
    elif out is not None and mask == "dout":
        dout = np.where(dout > 0, dout, 0).astype(dout.dtype)
    D = dout.transpose(1, 0, 2, 3).reshape(Cout, N * Ho * Wo)
    cols = ops.im2col(x, k)
    W2 = w.reshape(Cout, Cin * k * k)
    dw = (cols @ D.T).reshape(w.shape) if dw_t else (D @ cols.T).reshape(w.shape)
    if db == "first":
        db_ = dout[0].sum(axis=(1, 2))
    elif db == "axis0":
        db_ = D.sum(axis=0)
    else:
        db_ = D.sum(axis=1)
    dx = ops.col2im(W2.T @ D, x.shape, k) if need_dx else None
    return dx, dw, db_


def conv2d_dw_transposed(dout, cache, need_dx=True):
    return _conv_backward(dout, cache, need_dx, dw_t=True)


def conv2d_db_first_image(dout, cache, need_dx=True):
    return _conv_backward(dout, cache, need_dx, db="first")


def conv2d_db_wrong_axes(dout, cache, need_dx=True):
    return _conv_backward(dout, cache, need_dx, db="axis0")


def conv2d_relu_mask_ignored(dout, cache, need_dx=True):
    return _conv_backward(dout, cache, need_dx, mask="none")


def conv2d_relu_mask_from_dout(dout, cache, need_dx=True):
    return _conv_backward(dout, cache, need_dx, mask="dout")


# --- upconv2x2 -------------------------------------------------------------------------------


def _upconv_forward(x, w, b, order=(3, 0, 4, 1, 5, 2), layout_ok=True):
    ops = _ops()
    N, Cin, H, W = x.shape
    Cout = w.shape[1]
    X = x.transpose(1, 0, 2, 3).reshape(Cin, N * H * W)
    W2 = w.reshape(Cin, Cout * 4).T if layout_ok else w.reshape(Cout * 4, Cin)
    cols = W2 @ X  # (Cout*4, N*H*W)
    out = cols.reshape(Cout, 2, 2, N, H, W).transpose(*order).reshape(N, Cout, 2 * H, 2 * W)
    return np.ascontiguousarray(out + b[None, :, None, None]), ops.Upconv2x2Cache(x, w)


def upconv2x2_blocks(x, w, b):
    return _upconv_forward(x, w, b, order=(3, 0, 1, 4, 2, 5))  # (N, Cout, i, H, j, W)


def upconv2x2_taps_swapped(x, w, b):
    return _upconv_forward(x, w, b, order=(3, 0, 4, 2, 5, 1))  # (N, Cout, H, j, W, i)


def upconv2x2_weight_layout(x, w, b):
    return _upconv_forward(x, w, b, layout_ok=False)


def _upconv_backward(dout, cache, gather=(1, 3, 5, 0, 2, 4), dw_t=False, db="sum"):
    x, w = cache
    N, Cin, H, W = x.shape
    Cout = w.shape[1]
    if gather == "blocks":
        D = dout.reshape(N, Cout, 2, H, 2, W).transpose(1, 2, 4, 0, 3, 5)
    else:
        D = dout.reshape(N, Cout, H, 2, W, 2).transpose(*gather)
    D = D.reshape(Cout * 4, N * H * W)
    X = x.transpose(1, 0, 2, 3).reshape(Cin, N * H * W)
    dX = w.reshape(Cin, Cout * 4) @ D
    dx = np.ascontiguousarray(dX.reshape(Cin, N, H, W).transpose(1, 0, 2, 3))
    dw = (D @ X.T).reshape(w.shape) if dw_t else (X @ D.T).reshape(w.shape)
    db_ = dout[:, :, ::2, ::2].sum(axis=(0, 2, 3)) if db == "one_tap" else dout.sum(axis=(0, 2, 3))
    return dx, dw, db_


def upconv2x2_dw_transposed(dout, cache):
    return _upconv_backward(dout, cache, dw_t=True)


def upconv2x2_db_one_tap(dout, cache):
    return _upconv_backward(dout, cache, db="one_tap")


def upconv2x2_backward_blocks(dout, cache):
    return _upconv_backward(dout, cache, gather="blocks")


def upconv2x2_backward_taps_swapped(dout, cache):
    return _upconv_backward(dout, cache, gather=(1, 5, 3, 0, 2, 4))  # (Cout, j, i, N, H, W)


# --- maxpool2x2 ------------------------------------------------------------------------------


def _windows(x):
    N, C, H, W = x.shape
    win = x.reshape(N, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    return win.reshape(N, C, H // 2, W // 2, 4)  # (N, C, Ho, Wo, 2i+j)


def maxpool2x2_window_rows(x):
    N, C, H, W = x.shape
    win = x.reshape(N, C, H // 2, W // 2, 4)  # four neighbours along a row, not a 2x2 window
    arg = np.argmax(win, axis=-1)
    out = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    return out, _ops().MaxPool2x2Cache(arg.astype(np.uint8))


def maxpool2x2_last_max(x):
    win = _windows(x)
    arg = 3 - np.argmax(win[..., ::-1], axis=-1)  # the LAST maximum wins a tie
    out = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    return out, _ops().MaxPool2x2Cache(arg.astype(np.uint8))


def maxpool2x2_ties_forward(x):
    win = _windows(x)
    is_max = win == win.max(axis=-1, keepdims=True)  # every maximum of a window
    bits = (is_max * (1 << np.arange(4))).sum(axis=-1)  # kept as bits 2i+j
    return win.max(axis=-1), _ops().MaxPool2x2Cache(bits.astype(np.uint8))


def maxpool2x2_ties_backward(dout, cache):
    N, C, Ho, Wo = dout.shape
    is_max = (cache.arg[..., None] >> np.arange(4)) & 1  # (N, C, Ho, Wo, 4)
    dwin = is_max * dout[..., None]  # the gradient goes to EVERY tied maximum
    dx = dwin.reshape(N, C, Ho, Wo, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    return dx.reshape(N, C, 2 * Ho, 2 * Wo).astype(dout.dtype)


def maxpool2x2_col_row(dout, cache):
    N, C, Ho, Wo = dout.shape
    a = cache.arg.astype(np.intp)
    i, j = a % 2, a // 2  # decoded as (col, row)
    dx = np.zeros((N, C, Ho, 2, Wo, 2), dtype=dout.dtype)
    n, c, y, xx = np.indices((N, C, Ho, Wo))
    dx[n, c, y, i, xx, j] = dout
    return dx.reshape(N, C, 2 * Ho, 2 * Wo)


def maxpool2x2_layout_not_restored(dout, cache):
    N, C, Ho, Wo = dout.shape
    dwin = np.zeros((N, C, Ho, Wo, 4), dtype=dout.dtype)
    np.put_along_axis(dwin, cache.arg[..., None].astype(np.intp), dout[..., None], axis=-1)
    return dwin.reshape(N, C, 2 * Ho, 2 * Wo)  # (Ho, Wo, i, j) read as (Ho, i, Wo, j)


def maxpool2x2_even_spread(dout, cache):
    spread = np.repeat(np.repeat(dout, 2, axis=2), 2, axis=3)
    return spread / 4  # as in average pooling


# --- relu ------------------------------------------------------------------------------------


def relu_mask_from_dout(dout, cache):
    return np.where(dout > 0, dout, 0).astype(dout.dtype)


def relu_mask_at_zero(dout, cache):
    return np.where(cache.out >= 0, dout, 0).astype(dout.dtype)  # out >= 0 holds everywhere


def relu_times_output(dout, cache):
    return dout * cache.out


# --- center_crop and concat -----------------------------------------------------------------


def center_crop_odd_margin_side(dout, cache):
    N, C, H, W = cache.in_shape
    h, w = dout.shape[2:]
    top, left = (H - h + 1) // 2, (W - w + 1) // 2  # the extra row/column above/left
    dx = np.zeros((N, C, H, W), dtype=dout.dtype)
    dx[:, :, top : top + h, left : left + w] = dout
    return dx


def center_crop_corner(dout, cache):
    N, C, H, W = cache.in_shape
    h, w = dout.shape[2:]
    dx = np.zeros((N, C, H, W), dtype=dout.dtype)
    dx[:, :, :h, :w] = dout  # at the top-left corner
    return dx


def concat_swapped(dout, cache):
    return dout[:, cache.ca :], dout[:, : cache.ca]


def concat_split_in_half(dout, cache):
    half = dout.shape[1] // 2
    return dout[:, :half], dout[:, half:]


# --- softmax_cross_entropy -------------------------------------------------------------------


def _xent_forward(logits, labels, weights, axis=1, stable=True, norm="mean", use_w=True):
    ops = _ops()
    weights = weights.astype(logits.dtype, copy=False)
    N, K, H, W = logits.shape
    z = logits - logits.max(axis=axis, keepdims=True) if stable else logits
    logp = z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
    logp_l = np.take_along_axis(logp, labels[:, None].astype(np.intp), axis=1)[:, 0]
    scale = {"mean": 1.0 / (N * H * W), "sum": 1.0, "classes": 1.0 / (N * K * H * W)}[norm]
    w = weights if use_w else np.ones_like(weights)
    loss = -(w * logp_l).sum() * scale
    return loss, ops.SoftmaxXentCache(np.exp(logp), labels, weights, scale)


def softmax_wrong_axis(logits, labels, weights):
    return _xent_forward(logits, labels, weights, axis=-1)


def softmax_no_max_subtraction(logits, labels, weights):
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _xent_forward(logits, labels, weights, stable=False)


def softmax_sum_not_mean(logits, labels, weights):
    return _xent_forward(logits, labels, weights, norm="sum")


def softmax_mean_over_classes(logits, labels, weights):
    return _xent_forward(logits, labels, weights, norm="classes")


def softmax_weights_left_out(logits, labels, weights):
    return _xent_forward(logits, labels, weights, use_w=False)


def _xent_backward(dloss, cache, scale=True, sign=1.0, use_dloss=True, use_w=True):
    probs, labels, weights, s = cache
    K = probs.shape[1]
    onehot = labels[:, None] == np.arange(K).reshape(1, K, 1, 1)
    factor = (float(dloss) if use_dloss else 1.0) * (s if scale else 1.0)
    w = weights[:, None] if use_w else 1.0
    return (sign * factor * w) * (probs - onehot)


def softmax_backward_no_scale(dloss, cache):
    return _xent_backward(dloss, cache, scale=False)


def softmax_backward_sign(dloss, cache):
    return _xent_backward(dloss, cache, sign=-1.0)


def softmax_backward_dloss_ignored(dloss, cache):
    return _xent_backward(dloss, cache, use_dloss=False)


def softmax_backward_weights_left_out(dloss, cache):
    return _xent_backward(dloss, cache, use_w=False)


# --- dropout ---------------------------------------------------------------------------------


def dropout_scale_forgotten(x, scale_mask):
    keep = (scale_mask != 0).astype(x.dtype)  # 0/1: the 1/(1-p) left out
    return x * keep, _ops().DropoutCache(keep)


def dropout_mask_redrawn(x, scale_mask):
    mask = _ops().dropout_mask(x.shape, 0.5, np.random.default_rng(), x.dtype)  # a new mask
    return x * mask, _ops().DropoutCache(mask)


def dropout_backward_scale_forgotten(dout, cache):
    return dout * (cache.scale_mask != 0)


def dropout_backward_mask_redrawn(dout, cache):
    return dout * _ops().dropout_mask(dout.shape, 0.5, np.random.default_rng(), dout.dtype)


# --- conv2d_general: the padded, strided im2col and col2im ------------------------------------


def _general_sizes(shape, k, stride, padding):
    N, C, H, W = shape
    return N, C, H, W, (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1


def im2col_general_padding_offset(x, k, stride=1, padding=0):
    N, C, H, W, Ho, Wo = _general_sizes(x.shape, k, stride, padding)
    p, s = padding, stride
    xpad = np.zeros((N, C, H + 2 * p, W + 2 * p), dtype=x.dtype)
    xpad[:, :, :H, :W] = x  # the image copied to the corner: the frame all on one side
    cols = np.empty((C, k, k, N, Ho, Wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            win = xpad[:, :, i : i + s * (Ho - 1) + 1 : s, j : j + s * (Wo - 1) + 1 : s]
            cols[:, i, j] = win.transpose(1, 0, 2, 3)
    return cols.reshape(C * k * k, N * Ho * Wo)


def _col2im_general(cols, x_shape, k, stride, padding, step=None, crop_at=None):
    N, C, H, W, Ho, Wo = _general_sizes(x_shape, k, stride, padding)
    p, s = padding, stride if step is None else step
    c6 = cols.reshape(C, k, k, N, Ho, Wo)
    dpad = np.zeros((C, N, H + 2 * p, W + 2 * p), dtype=cols.dtype)
    for i in range(k):
        for j in range(k):
            dpad[:, :, i : i + s * (Ho - 1) + 1 : s, j : j + s * (Wo - 1) + 1 : s] += c6[:, i, j]
    top = p if crop_at is None else crop_at
    return np.ascontiguousarray(dpad[:, :, top : top + H, top : top + W].transpose(1, 0, 2, 3))


def col2im_general_stride_ignored(cols, x_shape, k, stride=1, padding=0):
    return _col2im_general(cols, x_shape, k, stride, padding, step=1)  # windows side by side


def col2im_general_crop_offset(cols, x_shape, k, stride=1, padding=0):
    return _col2im_general(cols, x_shape, k, stride, padding, crop_at=0)  # the corner kept


# --- batchnorm2d -----------------------------------------------------------------------------


def _norm():
    from minunet.ops import norm  # the reference (imported late: see the module docstring)

    return norm


def _bn_forward(x, gamma, beta, running_mean, running_var, num_batches, training=True,
                momentum=0.1, eps=1e-5, ddof=0, running_ddof=1, batch_in_eval=False):
    N, C, H, W = x.shape
    axes = (0, 2, 3)
    if training or batch_in_eval:
        mu, var = x.mean(axis=axes), x.var(axis=axes, ddof=ddof)
    else:
        mu, var = running_mean, running_var
    if training:
        running_mean *= 1 - momentum
        running_mean += momentum * mu
        running_var *= 1 - momentum
        running_var += momentum * x.var(axis=axes, ddof=running_ddof)
        num_batches += 1
    inv_std = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    xhat = (x - mu[:, None, None]) * inv_std[:, None, None]
    out = gamma[:, None, None] * xhat + beta[:, None, None]
    return out, _norm().BatchNorm2dCache(xhat, gamma, inv_std, training)


def batchnorm2d_unbiased_variance(x, gamma, beta, running_mean, running_var, num_batches,
                                  training=True, momentum=0.1, eps=1e-5):
    return _bn_forward(x, gamma, beta, running_mean, running_var, num_batches, training,
                       momentum, eps, ddof=1)  # var = sum (x - mu)^2 / (M - 1)


def batchnorm2d_batch_stats_in_eval(x, gamma, beta, running_mean, running_var, num_batches,
                                    training=True, momentum=0.1, eps=1e-5):
    return _bn_forward(x, gamma, beta, running_mean, running_var, num_batches, training,
                       momentum, eps, batch_in_eval=True)


def batchnorm2d_running_var_biased(x, gamma, beta, running_mean, running_var, num_batches,
                                   training=True, momentum=0.1, eps=1e-5):
    return _bn_forward(x, gamma, beta, running_mean, running_var, num_batches, training,
                       momentum, eps, running_ddof=0)


def _bn_backward(dout, cache, paths=("mean", "var")):
    axes = (0, 2, 3)
    xhat, inv_std = cache.xhat, cache.inv_std[:, None, None]
    dgamma, dbeta = (dout * xhat).sum(axis=axes), dout.sum(axis=axes)
    g = cache.gamma[:, None, None] * dout
    dx = g
    if cache.training and "mean" in paths:
        dx = dx - g.mean(axis=axes, keepdims=True)
    if cache.training and "var" in paths:
        dx = dx - xhat * (g * xhat).mean(axis=axes, keepdims=True)
    return dx * inv_std, dgamma, dbeta


def batchnorm2d_backward_no_stat_paths(dout, cache):
    return _bn_backward(dout, cache, paths=())  # as if mu and var were constants


def batchnorm2d_backward_no_var_path(dout, cache):
    return _bn_backward(dout, cache, paths=("mean",))


# --- the catalogue ---------------------------------------------------------------------------

M = Mistake
MISTAKES: list[Mistake] = [
    M("im2col.row_order", "conv2d.im2col",
      "the row order of the column matrix must match the weight flattened as "
      "w.reshape(Cout, Cin*k*k): channel first, then the kernel row, then its column",
      {"im2col": im2col_row_order}),
    M("im2col.flipped_kernel", "conv2d.im2col",
      "the window is read back to front, which flips the kernel: the U-Net's 'convolution' "
      "is a cross-correlation (as torch's Conv2d)", {"im2col": im2col_flipped}),
    M("im2col.offsets_swapped", "conv2d.im2col",
      "the window offset (i, j): i moves down the rows, j along the columns",
      {"im2col": im2col_offsets_swapped}),
    M("im2col.reshape_for_transpose", "conv2d.im2col",
      "right values in the wrong order: a reshape where the axes need a transpose (a "
      "reshape keeps the memory order, so (N, C, ...) read as (C, N, ...) mixes images and "
      "channels)", {"im2col": im2col_reshape_for_transpose}, probe="wrong_order"),
    M("col2im.assign", "conv2d.col2im",
      "overlapping windows: a pixel copied into several columns must get the gradient of "
      "every copy (the adjoint of a copy is a sum)", {"col2im": col2im_assign}),
    M("col2im.missing_offset", "conv2d.col2im",
      "not every kernel offset sends its gradient back: the offsets (i, j) run over all of "
      "0..k-1", {"col2im": col2im_missing_offset}),
    M("col2im.offsets_swapped", "conv2d.col2im",
      "col2im must put each column entry back where im2col took it from: offset i moves "
      "down the rows, j along the columns", {"col2im": col2im_offsets_swapped}),
    M("col2im.reshape_for_transpose", "conv2d.col2im",
      "right values in the wrong order: a reshape where the axes need a transpose (the sums "
      "are laid out (C, N, H, W); a reshape to (N, C, H, W) keeps that memory order)",
      {"col2im": col2im_reshape_for_transpose}, probe="wrong_order"),
    M("conv2d.flipped_kernel", "conv2d.forward",
      "the kernel is flipped: the U-Net's 'convolution' is a cross-correlation (as torch's "
      "Conv2d)", {"conv2d_forward": conv2d_flipped_kernel}),
    M("conv2d.batch_layout", "conv2d.forward",
      "the product's rows are output channels and its columns run over (n, y, x): read as "
      "NCHW without a transpose, images and channels get mixed (right only for N = 1)",
      {"conv2d_forward": conv2d_batch_layout}),
    M("conv2d.relu_before_bias", "conv2d.forward",
      "the order of the layer: the ReLU acts on the biased pre-activation",
      {"conv2d_forward": conv2d_relu_before_bias}),
    M("conv2d.dw_transposed", "conv2d.backward",
      "the weight gradient's layout: a transposed product has the right number of entries "
      "but in the wrong order for (Cout, Cin, k, k)", {"conv2d_backward": conv2d_dw_transposed}),
    M("conv2d.db_first_image", "conv2d.backward",
      "the bias is shared by every image of the batch: its gradient gathers all of them",
      {"conv2d_backward": conv2d_db_first_image}),
    M("conv2d.db_wrong_axes", "conv2d.backward",
      "the bias gradient: one number per output channel, summed over images and pixels",
      {"conv2d_backward": conv2d_db_wrong_axes}),
    M("conv2d.relu_mask_ignored", "conv2d.backward",
      "the fused ReLU: the gradient passes only where the layer's output was positive",
      {"conv2d_backward": conv2d_relu_mask_ignored}),
    M("conv2d.relu_mask_from_dout", "conv2d.backward",
      "the ReLU's mask comes from the forward pass (where the output was positive), not "
      "from the sign of the upstream gradient", {"conv2d_backward": conv2d_relu_mask_from_dout}),
    M("upconv2x2.blocks", "upconv2x2.forward",
      "stride 2: the four taps of one input pixel fill its own 2x2 block of the output, "
      "interleaved, not four separate images side by side",
      {"upconv2x2_forward": upconv2x2_blocks}),
    M("upconv2x2.taps_swapped", "upconv2x2.forward",
      "tap (i, j) of the 2x2 kernel: i moves down the rows, j along the columns",
      {"upconv2x2_forward": upconv2x2_taps_swapped}),
    M("upconv2x2.weight_layout", "upconv2x2.forward",
      "the weight layout of a transposed convolution is (Cin, Cout, 2, 2), input channels "
      "first (as torch's ConvTranspose2d)", {"upconv2x2_forward": upconv2x2_weight_layout}),
    M("upconv2x2.dw_transposed", "upconv2x2.backward",
      "the weight gradient's layout: a transposed product has the right number of entries "
      "but in the wrong order for (Cin, Cout, 2, 2)",
      {"upconv2x2_backward": upconv2x2_dw_transposed}),
    M("upconv2x2.db_one_tap", "upconv2x2.backward",
      "the bias is added to all four output pixels of every 2x2 block",
      {"upconv2x2_backward": upconv2x2_db_one_tap}),
    M("upconv2x2.backward_blocks", "upconv2x2.backward",
      "the backward must read each 2x2 output block where the forward wrote it "
      "(interleaved: tap (i, j) of pixel (y, x) at (2y+i, 2x+j))",
      {"upconv2x2_backward": upconv2x2_backward_blocks}),
    M("upconv2x2.backward_taps_swapped", "upconv2x2.backward",
      "the backward swaps the two tap indices: tap (i, j) of pixel (y, x) sits at "
      "(2y+i, 2x+j), i down the rows, j along the columns, as in the forward",
      {"upconv2x2_backward": upconv2x2_backward_taps_swapped}, probe="taps_swapped"),
    M("maxpool2x2.window_rows", "maxpool2x2.forward",
      "a 2x2 window spans two rows and two columns",
      {"maxpool2x2_forward": maxpool2x2_window_rows}),
    M("maxpool2x2.last_max", "maxpool2x2.forward",
      "ties: the FIRST maximum in the order (0,0), (0,1), (1,0), (1,1) wins "
      "(docs/DESIGN.md, 'Max-pool ties')", {"maxpool2x2_forward": maxpool2x2_last_max}),
    M("maxpool2x2.all_ties", "maxpool2x2.backward",
      "ties: one window has one winner, and only the winner gets the window's gradient",
      {"maxpool2x2_forward": maxpool2x2_ties_forward,
       "maxpool2x2_backward": maxpool2x2_ties_backward}),
    M("maxpool2x2.col_row", "maxpool2x2.backward",
      "the arg-max code a = 2*i + j: the row i is a // 2, the column j is a % 2",
      {"maxpool2x2_backward": maxpool2x2_col_row}),
    M("maxpool2x2.layout_not_restored", "maxpool2x2.backward",
      "a result in the wrong layout: the window gradients are right but stay in the "
      "windows' layout (Ho, Wo, i, j); the image interleaves them as (Ho, i, Wo, j)",
      {"maxpool2x2_backward": maxpool2x2_layout_not_restored}, probe="window_layout"),
    M("maxpool2x2.even_spread", "maxpool2x2.backward",
      "max-pooling routes the whole gradient to the window's maximum (spreading it evenly "
      "is average pooling)", {"maxpool2x2_backward": maxpool2x2_even_spread}),
    M("relu.mask_from_dout", "relu.backward",
      "the ReLU's mask comes from the forward pass (where the output was positive), not "
      "from the sign of the upstream gradient", {"relu_backward": relu_mask_from_dout}),
    M("relu.times_output", "relu.backward",
      "the ReLU's derivative is 0 or 1, not the activation itself",
      {"relu_backward": relu_times_output}),
    M("relu.mask_at_zero", "relu.backward",
      "a mask that passes gradient at exactly 0: every input <= 0 gives an output of "
      "exactly 0, where the derivative is 0", {"relu_backward": relu_mask_at_zero},
      probe="passes_blocked"),
    M("center_crop.odd_margin_side", "center_crop.backward",
      "an odd margin: the crop keeps (H - h) // 2 rows above and the extra one below (the "
      "same for columns); the backward must put the gradient back there",
      {"center_crop_backward": center_crop_odd_margin_side}),
    M("center_crop.corner", "center_crop.backward",
      "the crop was taken from the centre: its gradient goes back to the centre",
      {"center_crop_backward": center_crop_corner}),
    M("concat.swapped", "concat.backward",
      "the order of the concatenation: the first input's channels come first",
      {"concat_backward": concat_swapped}),
    M("concat.split_in_half", "concat.backward",
      "the split point is the first input's channel count, not half of the channels",
      {"concat_backward": concat_split_in_half}),
    M("softmax_cross_entropy.wrong_axis", "softmax_cross_entropy.forward",
      "the softmax runs over the K classes of each pixel (axis 1 of NCHW)",
      {"softmax_cross_entropy_forward": softmax_wrong_axis}),
    M("softmax_cross_entropy.no_max_subtraction", "softmax_cross_entropy.forward",
      "numerical stability: exp of large logits overflows; the softmax is unchanged by "
      "shifting all logits of a pixel", {"softmax_cross_entropy_forward":
                                         softmax_no_max_subtraction}, probe="non_finite"),
    M("softmax_cross_entropy.sum_not_mean", "softmax_cross_entropy.forward",
      "the normaliser: the loss is a mean over the N*H*W pixels (docs/DESIGN.md, 'Loss')",
      {"softmax_cross_entropy_forward": softmax_sum_not_mean}),
    M("softmax_cross_entropy.mean_over_classes", "softmax_cross_entropy.forward",
      "the normaliser: the mean runs over the N*H*W pixels, not over the classes too",
      {"softmax_cross_entropy_forward": softmax_mean_over_classes}),
    M("softmax_cross_entropy.weights_left_out", "softmax_cross_entropy.forward",
      "the weight map: every pixel's loss is weighted by w(x) (w = 0 ignores a pixel)",
      {"softmax_cross_entropy_forward": softmax_weights_left_out}),
    M("softmax_cross_entropy.backward_no_scale", "softmax_cross_entropy.backward",
      "the gradient of a mean carries its normaliser 1/(N*H*W)",
      {"softmax_cross_entropy_backward": softmax_backward_no_scale}),
    M("softmax_cross_entropy.backward_sign", "softmax_cross_entropy.backward",
      "the direction of the gradient: raising the true class's logit lowers the loss",
      {"softmax_cross_entropy_backward": softmax_backward_sign}),
    M("softmax_cross_entropy.backward_dloss_ignored", "softmax_cross_entropy.backward",
      "the chain rule: the upstream gradient dloss scales the whole gradient",
      {"softmax_cross_entropy_backward": softmax_backward_dloss_ignored}),
    M("softmax_cross_entropy.backward_weights_left_out", "softmax_cross_entropy.backward",
      "the weight map: each pixel's gradient is scaled by its weight w(x)",
      {"softmax_cross_entropy_backward": softmax_backward_weights_left_out}),
    M("conv2d_general.im2col_padding_offset", "conv2d_general.im2col",
      "the padding frame lies on every side: the image sits p pixels in from the padded "
      "array's top-left corner, so window (y, x) of the output starts at (s*y - p, s*x - p) "
      "of the image", {"im2col_general": im2col_general_padding_offset}),
    M("conv2d_general.col2im_stride", "conv2d_general.col2im",
      "col2im must put each column entry back where im2col took it from: with stride s the "
      "windows of one offset start s pixels apart", {"col2im_general":
                                                     col2im_general_stride_ignored}),
    M("conv2d_general.col2im_crop_offset", "conv2d_general.col2im",
      "the padding frame lies on every side: the image's gradient is the padded gradient "
      "without p rows and columns at each edge (the top and left ones too)",
      {"col2im_general": col2im_general_crop_offset}),
    M("batchnorm2d.unbiased_variance", "batchnorm2d.forward",
      "the normalisation divides by the batch's own (biased) spread: the mean of the squared "
      "deviations over the M values; the unbiased M - 1 belongs to the running variance only",
      {"batchnorm2d_forward": batchnorm2d_unbiased_variance}),
    M("batchnorm2d.batch_stats_in_eval", "batchnorm2d.forward",
      "eval mode: the statistics are the running ones learnt in training, so that an image's "
      "output does not depend on the rest of its batch",
      {"batchnorm2d_forward": batchnorm2d_batch_stats_in_eval}),
    M("batchnorm2d.running_var_biased", "batchnorm2d.forward",
      "the running variance estimates the variance of the data: it is updated with the "
      "unbiased variance, M / (M - 1) times the batch's (PyTorch's convention)",
      {"batchnorm2d_forward": batchnorm2d_running_var_biased}),
    M("batchnorm2d.backward_no_stat_paths", "batchnorm2d.backward",
      "in training mode every output of a channel depends on every input of it through the "
      "batch mean and variance: the gradient flows along those paths too (eval mode alone "
      "has constant statistics)", {"batchnorm2d_backward": batchnorm2d_backward_no_stat_paths}),
    M("batchnorm2d.backward_no_var_path", "batchnorm2d.backward",
      "the batch variance depends on the inputs too: its path adds a term along xhat (the "
      "path through the mean alone is not the whole gradient)",
      {"batchnorm2d_backward": batchnorm2d_backward_no_var_path}),
    M("dropout.scale_forgotten", "dropout.forward",
      "inverted dropout: the kept units are scaled by 1/(1-p), as the mask already holds",
      {"dropout_forward": dropout_scale_forgotten}),
    M("dropout.mask_redrawn", "dropout.forward",
      "the mask is an input: a new random mask on every call makes the layer a different "
      "function each time", {"dropout_forward": dropout_mask_redrawn}, probe="nondeterministic"),
    M("dropout.backward_scale_forgotten", "dropout.backward",
      "inverted dropout: the backward scales by the same 1/(1-p) as the forward",
      {"dropout_backward": dropout_backward_scale_forgotten}),
    M("dropout.backward_mask_redrawn", "dropout.backward",
      "the backward must use the forward's mask (from the cache), not a new one",
      {"dropout_backward": dropout_backward_mask_redrawn}, probe="nondeterministic"),
]
del M

# The probes' hints, by id (a probe runs when no stored wrong version matches).
PROBES: dict[str, str] = {
    "not_implemented": "not implemented",
    "raised": "the code raised an error",
    "returned_none": "returned None: a return statement is missing",
    "structure": "returned the wrong kind of result (see the docstring: what it returns, "
                 "and in which order)",
    "shape": "the result has the wrong shape (see the docstring's shapes)",
    "dtype": "the result has the wrong dtype: an op returns its input's dtype (an array "
             "made without dtype= is float64)",
    "non_finite": "the result holds NaN or inf: an overflow, or a division by zero",
    "nondeterministic": "two calls with the same inputs gave different results",
    "mutates_input": "the forward changed its input in place (the network uses that array "
                     "again, e.g. in the skip connection)",
    "timeout": "did not finish in time (an endless loop, or a loop over every pixel)",
    "crashed": "the grading process died while running this op",
    "refused": "uses code the exercise must not use (the fast ops, their twins or an "
               "autodiff library)",
    "forward_first": "the forward of this check fails, so its gradient cannot be checked: "
                     "fix the forward first",
    "needs": "uses a part that fails its own check (named next): fix that part first",
    "sign": "the right size but the opposite sign: a minus sign in the chain rule",
    "constant_ratio": "off by a constant factor: a normaliser, a scale or the upstream "
                      "gradient",
    "first_image_only": "only the first image of the batch is right: the batch axis",
    "batch_mixing": "right for N = 1 but wrong for N > 1: the batch axis is mixed with "
                    "another axis (a reshape or transpose)",
    "border": "only the border rows or columns are wrong: the range of the window offsets "
              "or the margins",
    "channels": "only some channels are wrong: the channel layout or the split point",
    # the probes of probes.py: right values in the wrong places
    "taps_swapped": "the kernel taps (i, j) are swapped: i moves down the rows, j along "
                    "the columns",
    "window_layout": "a result in the wrong layout: each 2x2 window's values are right, "
                     "laid out as (Ho, Wo, i, j) where the image has (Ho, i, Wo, j)",
    "passes_blocked": "the gradient passes where it must be blocked (where the right one "
                      "is 0): a mask that lets too much through, e.g. at exactly 0",
    "wrong_order": "right values in the wrong order: a reshape where the axes need a "
                   "transpose (a reshape never moves a value)",
    "unknown": "no known mistake matches; the worst element shows where to look",
}


def by_id(mistake_id: str) -> Mistake:
    """The Mistake with this id (KeyError naming the known ids otherwise)."""
    for m in MISTAKES:
        if m.id == mistake_id:
            return m
    raise KeyError(f"no mistake {mistake_id!r}; known: {', '.join(m.id for m in MISTAKES)}")


def hint(diagnosis_id: str) -> str:
    """The hint of a mistake id or a probe id."""
    if diagnosis_id in PROBES:
        return PROBES[diagnosis_id]
    return by_id(diagnosis_id).hint


def for_region(region: str) -> list[Mistake]:
    """The mistakes of one solution region, in catalogue order."""
    return [m for m in MISTAKES if m.region == region]


def wrong_namespace(reference, mistake: Mistake) -> SimpleNamespace:
    """The reference ops (a module) as a namespace with the mistake's functions swapped in."""
    if mistake.wrong is None:
        raise ValueError(f"{mistake.id}: the wrong versions are not part of a student copy")
    from .checks import ops_functions  # (the family's ops live beside the package's exports)

    return SimpleNamespace(**{**ops_functions(reference), **mistake.wrong})
