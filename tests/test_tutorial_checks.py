"""Every self-check of the tutorials tells right from wrong (minunet/tutorial_checks.py).

Each check gets a right answer (written here, never printed in a tutorial), at least two
typical wrong ones, and the unfilled stub; the right one must pass, each wrong one must fail
with a message that names the concept, the stub must say "not attempted yet".

The right answers are written differently from the lesson's ops where that is short (loops,
masks by multiplication), and the fast door's backward (minunet.fast), an independent
implementation, passes too. This file holds answers: a student copy leaves it out
(coursework/make.py leaves out the tests that use the fast ops).
"""

from __future__ import annotations

import numpy as np
import pytest

import minunet.fast
from minunet import ops
from minunet import tutorial_checks as tc
from minunet.coursework import mistakes


def stub(*args):
    raise NotImplementedError


def _right(v):
    assert v.status == tc.RIGHT, str(v)


def _wrong(v, *words):
    assert v.status == tc.WRONG, str(v)
    text = str(v).lower()
    for w in words:
        assert w.lower() in text, f"{w!r} not in: {v}"
    with pytest.raises(AssertionError):
        tc.report(v)


def _not_attempted(v):
    assert v.status == tc.NOT_ATTEMPTED, str(v)
    assert "not attempted yet" in str(v)
    tc.report(v)  # prints, does not raise


def _wrong_version(mistake_id):
    return next(iter(mistakes.by_id(mistake_id).wrong.values()))


# --- ReLU (02) -------------------------------------------------------------------------------


def relu_right(dout, cache):
    return dout * (cache.out > 0)


def test_relu_backward():
    _right(tc.check_relu_backward(relu_right))
    _right(tc.check_relu_backward(minunet.fast.relu_backward))
    _not_attempted(tc.check_relu_backward(stub))
    _wrong(tc.check_relu_backward(lambda d, c: d), "gradient check", "mask")
    _wrong(tc.check_relu_backward(lambda d, c: d * c.out), "derivative is 0 or 1")
    _wrong(tc.check_relu_backward(lambda d, c: np.where(d > 0, d, 0.0)), "upstream gradient")
    _wrong(tc.check_relu_backward(lambda d, c: d * (c.out >= 0)), "exactly 0")


# --- max-pool (02) ---------------------------------------------------------------------------


def maxpool_right(dout, cache):
    N, C, Ho, Wo = dout.shape
    dx = np.zeros((N, C, 2 * Ho, 2 * Wo))
    for n, c, y, x in np.ndindex(N, C, Ho, Wo):
        a = int(cache.arg[n, c, y, x])
        dx[n, c, 2 * y + a // 2, 2 * x + a % 2] = dout[n, c, y, x]
    return dx


def test_maxpool_backward():
    _right(tc.check_maxpool_backward(maxpool_right))
    _not_attempted(tc.check_maxpool_backward(stub))
    _wrong(tc.check_maxpool_backward(_wrong_version("maxpool2x2.even_spread")), "average")
    _wrong(tc.check_maxpool_backward(_wrong_version("maxpool2x2.col_row")), "row i is a // 2")
    _wrong(tc.check_maxpool_backward(_wrong_version("maxpool2x2.layout_not_restored")),
           "layout")


# --- convolution (01) ------------------------------------------------------------------------


def conv_right(dout, cache):
    x, w, _ = cache
    k = w.shape[2]
    Ho, Wo = dout.shape[2:]
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for i in range(k):
        for j in range(k):
            patch = x[:, :, i : i + Ho, j : j + Wo]  # (N, Cin, Ho, Wo)
            dw[:, :, i, j] = np.einsum("nohw,nchw->oc", dout, patch)
            dx[:, :, i : i + Ho, j : j + Wo] += np.einsum("nohw,oc->nchw", dout, w[:, :, i, j])
    return dx, dw, dout.sum(axis=(0, 2, 3))


def test_conv_backward():
    _right(tc.check_conv_backward(conv_right))
    _right(tc.check_conv_backward(
        lambda d, c: minunet.fast.conv2d_backward(d, c)))
    _not_attempted(tc.check_conv_backward(stub))
    _wrong(tc.check_conv_backward(_wrong_version("conv2d.dw_transposed")), "layout")
    _wrong(tc.check_conv_backward(_wrong_version("conv2d.db_first_image")), "every image")

    def no_add(dout, cache):  # col2im with '=': overlapping windows overwrite each other
        dx, dw, db = conv_right(dout, cache)
        x, w, _ = cache
        Ho, Wo = dout.shape[2:]
        dx = np.zeros_like(x)
        for i in range(3):
            for j in range(3):
                dx[:, :, i : i + Ho, j : j + Wo] = np.einsum("nohw,oc->nchw", dout, w[:, :, i, j])
        return dx, dw, db

    _wrong(tc.check_conv_backward(no_add), "dx fails the gradient check")
    _wrong(tc.check_conv_backward(lambda d, c: conv_right(d, c)[:2]), "3 gradient")


# --- softmax cross-entropy (03) --------------------------------------------------------------


def softmax_right(dloss, cache):
    probs, labels, weights, scale = cache
    grad = probs.copy()
    for k in range(probs.shape[1]):
        grad[:, k] -= labels == k
    return dloss * scale * weights[:, None] * grad


def test_softmax_backward():
    _right(tc.check_softmax_backward(softmax_right))
    _not_attempted(tc.check_softmax_backward(stub))
    _wrong(tc.check_softmax_backward(_wrong_version("softmax_cross_entropy.backward_sign")),
           "raising the true class")
    _wrong(tc.check_softmax_backward(_wrong_version("softmax_cross_entropy.backward_no_scale")),
           "normaliser")
    _wrong(tc.check_softmax_backward(
        _wrong_version("softmax_cross_entropy.backward_weights_left_out")), "weight map")


# --- dropout (00) ----------------------------------------------------------------------------


def test_dropout_backward():
    _right(tc.check_dropout_backward(lambda d, c: np.multiply(c.scale_mask, d)))
    _not_attempted(tc.check_dropout_backward(stub))
    _wrong(tc.check_dropout_backward(lambda d, c: d * (c.scale_mask != 0)), "1/(1-p)")
    _wrong(tc.check_dropout_backward(lambda d, c: d), "dx fails the gradient check")


# --- one level of the U-Net (04) -------------------------------------------------------------


def level_forward_right(x, w0, b0, w1, b1):
    h, c0 = ops.conv2d_forward(x, w0, b0, relu=True)
    s, c1 = ops.conv2d_forward(h, w1, b1, relu=True)
    d, cp = ops.maxpool2x2_forward(s)
    return (s, d), (c0, c1, cp)


def level_backward_right(dskip, ddown, cache):
    c0, c1, cp = cache
    g = ops.maxpool2x2_backward(ddown, cp)
    g = g + dskip
    dh, dw1, db1 = ops.conv2d_backward(g, c1)
    dx, dw0, db0 = ops.conv2d_backward(dh, c0)
    return dx, dw0, db0, dw1, db1


def test_unet_level():
    _right(tc.check_unet_level(level_forward_right, level_backward_right))
    _not_attempted(tc.check_unet_level(stub, stub))
    _not_attempted(tc.check_unet_level(level_forward_right, stub))

    def no_skip(dskip, ddown, cache):
        return level_backward_right(np.zeros_like(dskip), ddown, cache)

    def no_pool(dskip, ddown, cache):
        return level_backward_right(dskip, np.zeros_like(ddown), cache)

    def linear_forward(x, w0, b0, w1, b1):
        h, c0 = ops.conv2d_forward(x, w0, b0)
        s, c1 = ops.conv2d_forward(h, w1, b1)
        d, cp = ops.maxpool2x2_forward(s)
        return (s, d), (c0, c1, cp)

    _wrong(tc.check_unet_level(level_forward_right, no_skip), "skip's gradient is missing")
    _wrong(tc.check_unet_level(level_forward_right, no_pool), "pool's gradient is missing")
    _wrong(tc.check_unet_level(linear_forward, level_backward_right), "relu")


# --- momentum SGD (05) -----------------------------------------------------------------------


def momentum_right(w, v, g, lr, m):
    v = m * v - lr * g
    return w + v, v


def test_momentum_step():
    _right(tc.check_momentum_step(momentum_right))
    _not_attempted(tc.check_momentum_step(stub))
    _wrong(tc.check_momentum_step(lambda w, v, g, lr, m: (w - lr * (m * v + g), m * v + g)),
           "caffe's convention")
    _wrong(tc.check_momentum_step(lambda w, v, g, lr, m: (w - lr * g, -lr * g)), "momentum")
    _wrong(tc.check_momentum_step(lambda w, v, g, lr, m: (w + v, m * v - lr * g)),
           "update v first")
    _wrong(tc.check_momentum_step(lambda w, v, g, lr, m: w), "returns (w, v)")


# --- typed answers and the other exercises ---------------------------------------------------


def test_check_number_compares_at_the_precision_asked():
    truth = [-4 / 3, 2 / 3, 2 / 3]  # 03's exercise 1: 2 * (1/3 - 1, 1/3, 1/3)
    _right(tc.check_number("x", [round(t, 6) for t in truth], truth, decimals=6))
    _right(tc.check_number("x", truth, truth, decimals=6))
    _wrong(tc.check_number("x", [round(t, 4) for t in truth], truth, decimals=6,
                           concept="the weight"), "the weight")
    _wrong(tc.check_number("x", [1, 2], truth, decimals=6), "asks for 3")
    _wrong(tc.check_number("x", "abc", 1.0, decimals=2), "not a number")
    assert tc.check_number("x", None, 1.0).status == tc.NOT_ATTEMPTED
    _right(tc.check_number("x", 3.03, 3.0349, decimals=2))
    _wrong(tc.check_number("x", 3.03, 3.0361, decimals=2))


def test_tanh_step_prediction():
    _right(tc.check_tanh_step_prediction(2e-7, 2.5e-7))
    _wrong(tc.check_tanh_step_prediction(2.5e-5, 2.5e-7), "h^2")  # the old step's error
    _wrong(tc.check_tanh_step_prediction(2.5e-6, 2.5e-7), "h^2")  # a factor 10, not 100
    _wrong(tc.check_tanh_step_prediction(-1, 2.5e-7), "> 0")
    assert tc.check_tanh_step_prediction(None, 1.0).status == tc.NOT_ATTEMPTED


def test_all_four_maxpool():
    _right(tc.check_all_four_maxpool(
        lambda d, c: np.repeat(np.repeat(d, 2, axis=2), 2, axis=3)))
    _not_attempted(tc.check_all_four_maxpool(stub))
    _wrong(tc.check_all_four_maxpool(ops.maxpool2x2_backward), "correct backward")
    _wrong(tc.check_all_four_maxpool(_wrong_version("maxpool2x2.even_spread")), "average")


def _shared_right(dout, x):
    N, C, H, W = x.shape
    dx = np.zeros_like(x)
    for n, c, y, xx in np.ndindex(N, C, H // 2, W // 2):
        win = x[n, c, 2 * y : 2 * y + 2, 2 * xx : 2 * xx + 2]
        top = win == win.max()
        dx[n, c, 2 * y : 2 * y + 2, 2 * xx : 2 * xx + 2] = top * dout[n, c, y, xx] / top.sum()
    return dx


def _last_tie(dout, x):  # the whole gradient to the LAST tied maximum: the old check took it
    N, C, H, W = x.shape
    dx = np.zeros_like(x)
    for n, c, y, xx in np.ndindex(N, C, H // 2, W // 2):
        win = x[n, c, 2 * y : 2 * y + 2, 2 * xx : 2 * xx + 2].ravel()
        a = 3 - int(np.argmax(win[::-1]))
        dx[n, c, 2 * y + a // 2, 2 * xx + a % 2] = dout[n, c, y, xx]
    return dx


def test_shared_ties():
    _right(tc.check_shared_ties(_shared_right))
    _not_attempted(tc.check_shared_ties(stub))
    _wrong(tc.check_shared_ties(_last_tie), "split equally")
    _wrong(tc.check_shared_ties(lambda d, x: ops.maxpool2x2_backward(
        d, ops.maxpool2x2_forward(x)[1])), "split equally")
    def every_tie(d, x):  # each tied maximum gets the whole gradient
        return (_shared_right(np.ones_like(d), x) > 0) * np.repeat(np.repeat(d, 2, 2), 2, 3)

    _wrong(tc.check_shared_ties(every_tie), "whole gradient")


def _weight_sum_right(logits, labels, weights):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    picked = np.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
    return -(weights * picked).sum() / weights.sum()


def test_loss_by_weight_sum():
    _right(tc.check_loss_by_weight_sum(_weight_sum_right))
    _not_attempted(tc.check_loss_by_weight_sum(stub))
    _wrong(tc.check_loss_by_weight_sum(
        lambda a, y, w: ops.softmax_cross_entropy_forward(a, y, w)[0]), "mean over pixels")

    def only_first_image(logits, labels, weights):
        return _weight_sum_right(logits[:1], labels[:1], weights[:1])

    _wrong(tc.check_loss_by_weight_sum(only_first_image), "every image")
    _wrong(tc.check_loss_by_weight_sum(
        lambda a, y, w: _weight_sum_right(a, y, w) * w.sum()), "normaliser")  # no division


def test_report_prints_and_raises_only_for_a_wrong_answer(capsys):
    tc.report(tc.Verdict("e", tc.RIGHT, "fine"))
    tc.report(tc.Verdict("e", tc.NOT_ATTEMPTED))
    with pytest.raises(AssertionError, match="hint"):
        tc.report(tc.Verdict("e", tc.WRONG, "hint"))
    assert capsys.readouterr().out.count("e: ") == 3


def _col2im_loops(cols, x_shape, k, add):
    N, C, H, W = x_shape
    Ho, Wo = H - k + 1, W - k + 1
    dx = np.zeros(x_shape)
    for n, c, i, j, y, x in np.ndindex(N, C, k, k, Ho, Wo):
        v = cols[(c * k + i) * k + j, (n * Ho + y) * Wo + x]
        dx[n, c, y + i, x + j] = dx[n, c, y + i, x + j] + v if add else v
    return dx


def test_col2im_overwrite():
    _right(tc.check_col2im_overwrite(lambda c, s, k: _col2im_loops(c, s, k, add=False)))
    _not_attempted(tc.check_col2im_overwrite(stub))
    _wrong(tc.check_col2im_overwrite(ops.col2im), "adding col2im")
    _wrong(tc.check_col2im_overwrite(lambda c, s, k: _col2im_loops(c, s, k, add=True)),
           "adding col2im")
    _wrong(tc.check_col2im_overwrite(_wrong_version("col2im.missing_offset")), "offset")


TYPED = [  # (check, right answer, [typical wrong answers], a word of the concept)
    (tc.check_im2col_shape, ((27, 112),), [((27, 90),), ((9, 112),)], "one row per"),
    (tc.check_coverage_5x5, ([25, 1, 900],), [([9, 1, 900],), ([25, 1, 2500],)], "windows"),
    (tc.check_tie_rule, ([1, 3],), [([2, 3],), ([1, 0],)], "first maximum"),
    (tc.check_stamp, ([6, 7], [2, 3]), [([3, 4], [1, 2]), ([6, 7], [3, 4])], "(2y, 2x)"),
    (tc.check_one_pixel_gradient, ([-1.333333, 0.666667, 0.666667],),
     [([-2 / 3, 1 / 3, 1 / 3],), ([1.333333, -0.666667, -0.666667],),
      ([-1.3333, 0.6667, 0.6667],)], "weight 2"),
    (tc.check_border_gap, (15.17,), [(15.0,), (10.73,)], "logarithm"),
    (tc.check_depth3_sizes, (92, 88), [(76, 88), (92, 92)], "even size"),
    (tc.check_level_parameters, (37568, 32832), [(37440, 32768), (37568, 32768)], "cin"),
    (tc.check_steady_step, (0.01,), [(0.1,), (0.001,)], "velocity settles"),
]


@pytest.mark.parametrize("check, right, wrongs, concept", TYPED,
                         ids=[c[0].__name__ for c in TYPED])
def test_typed_answers(check, right, wrongs, concept):
    _right(check(*right))
    for wrong in wrongs:
        _wrong(check(*wrong), concept)
    _not_attempted(check(*[None] * len(right)))


def test_effect_size():
    records = [{"weight_map": True, "f1": v} for v in (0.70, 0.72, 0.74)] + [
        {"weight_map": False, "f1": v} for v in (0.50, 0.55, 0.60)]
    # means 0.72 and 0.55; sample std 0.02 and 0.05; pooled sqrt((0.0004 + 0.0025) / 2)
    _right(tc.check_effect_size(4.5, records))
    _wrong(tc.check_effect_size(0.2, records), "pooled standard deviation")  # not divided
    _wrong(tc.check_effect_size(3.4, records), "pooled")  # divided by the larger std only
    _not_attempted(tc.check_effect_size(None, records))


def _sigmoid_forward(x):
    s = np.exp(-np.logaddexp(0.0, -x))
    return s, s


def test_sigmoid():
    _right(tc.check_sigmoid(_sigmoid_forward, lambda d, s: d * s * (1 - s)))
    _not_attempted(tc.check_sigmoid(stub, stub))
    _not_attempted(tc.check_sigmoid(_sigmoid_forward, stub))
    _wrong(tc.check_sigmoid(_sigmoid_forward, lambda d, s: d * s), "not s itself")
    _wrong(tc.check_sigmoid(lambda x: (1 / (1 + np.exp(-x)), x),
                            lambda d, x: d * x * (1 - x)), "not at the input")
    _wrong(tc.check_sigmoid(_sigmoid_forward, lambda d, s: s * (1 - s)), "chain rule")
    _wrong(tc.check_sigmoid(lambda x: (np.tanh(x), x), lambda d, x: d), "forward")


# --- 04, exercise 3: a broken gradient in a big network --------------------------------------


@pytest.fixture(scope="module")
def small_unet():
    """04's small float64 U-Net (base 2, input 188), its loss and its gradients."""
    from minunet.models.unet import UNetConfig, build_model

    rng = np.random.default_rng(0)
    model = build_model(UNetConfig(base=2, dtype="float64"), seed=3)
    x = rng.standard_normal((1, 1, 188, 188))
    labels = rng.integers(0, 2, (1, 4, 4))
    weights = rng.random((1, 4, 4)) + 0.5

    def loss_at(params):
        saved, model.params = model.params, params
        try:
            return float(ops.softmax_cross_entropy_forward(model.forward(x, dropout_key=11), labels,
                                                    weights)[0])
        finally:
            model.params = saved

    _, cache = ops.softmax_cross_entropy_forward(model.forward(x, dropout_key=11), labels,
                                             weights)
    model.zero_grad()
    model.backward(ops.softmax_cross_entropy_backward(1.0, cache))
    return loss_at, model.params, {k: v.copy() for k, v in model.grads.items()}


def _scaled(name, factor):
    def brk(grads):
        grads[name] = grads[name] * factor
        return grads
    return brk


def test_broken_gradient(small_unet):
    loss_at, params, grads = small_unet
    kept = {k: v.copy() for k, v in grads.items()}
    _right(tc.check_broken_gradient(_scaled("up1.conv0.weight", 1.01), *small_unet))
    for name in grads:  # every one of the 46 tensors, biases included, is caught
        v = tc.check_broken_gradient(_scaled(name, 1.01), *small_unet)
        _right(v)
        assert "directions fail" in str(v), str(v)
    _not_attempted(tc.check_broken_gradient(stub, *small_unet))
    _wrong(tc.check_broken_gradient(lambda g: g, *small_unet), "nothing is broken")
    _wrong(tc.check_broken_gradient(lambda g: {k: v * 1.01 for k, v in g.items()},
                                    *small_unet), "one layer")
    _wrong(tc.check_broken_gradient(_scaled("up1.conv0.weight", 1.1), *small_unet), "1 %")
    assert all(np.array_equal(grads[k], kept[k]) for k in grads)  # the model's grads untouched


# --- 05, exercise 2: resume once more --------------------------------------------------------


def test_resume(tmp_path):
    import contextlib
    import io

    import minunet.train
    from minunet.training.checkpoint import load_checkpoint

    run = tmp_path / "run"
    settings = ["--preset", "tiny", "--base", "2", "--data", "synthetic:n=4,size=200",
                "--device", "cpu", "--seed", "0", "--val-every", "2", "--schedule",
                "constant", "--lr", "0.001"]

    def train(args):
        with contextlib.redirect_stdout(io.StringIO()):
            assert minunet.train.main(args) == 0

    train([*settings, "--iters", "2", "--out", str(run)])
    last = str(run / "last.npz")
    _not_attempted(tc.check_resume(None, run, 2, train))
    _wrong(tc.check_resume([*settings, "--iters", "4", "--out", str(run)], run, 2, train),
           "never overwritten")
    _wrong(tc.check_resume(["--resume", str(run / "best.npz"), "--iters", "4"], run, 2, train),
           "where it stopped")
    _wrong(tc.check_resume(["--resume", last, "--iters", "2"], run, 2, train), "total")
    _right(tc.check_resume(["--resume", last, "--iters", "4"], run, 2, train))
    assert load_checkpoint(run / "last.npz").iteration == 4


# --- 06: the grid, the labels, push against pull ---------------------------------------------


def _steepest(grid, side=121, n_draws=20):
    from minunet.data.augment import AugmentConfig, draw_transform, elastic_displacement

    r = np.random.default_rng(1)
    c = AugmentConfig(elastic_grid=grid, rotate=False, flip=False)
    return max(np.abs(np.gradient(elastic_displacement(draw_transform(r, c).coarse,
                                                       (side, side)), axis=(1, 2))).max()
               for _ in range(n_draws))


def test_grid_factor():
    _right(tc.check_grid_factor(2, _steepest))
    _not_attempted(tc.check_grid_factor(None, _steepest))
    _wrong(tc.check_grid_factor(1, _steepest), "half as far apart")
    _wrong(tc.check_grid_factor(0.5, _steepest), "half as far apart")
    _wrong(tc.check_grid_factor(25 / 9, _steepest), "number of nodes")


def _deformation(side=64, seed=2):
    from minunet.data.augment import AugmentConfig, coordinate_map, draw_transform

    rng = np.random.default_rng(seed)
    t = draw_transform(rng, AugmentConfig(rotate=False, flip=False))
    centre = ((side - 1) / 2, (side - 1) / 2)
    coords = coordinate_map((side, side), centre, t)
    return rng, coords, coords - coordinate_map((side, side), centre, None)


def test_label_warp():
    from minunet.data.augment import warp

    rng, coords, _ = _deformation()
    labels = (rng.random((8, 8)) < 0.5).repeat(8, 0).repeat(8, 1).astype(np.int64)

    def gather(lab, c):
        iy = np.clip(np.rint(c[0]).astype(int), 0, lab.shape[0] - 1)
        ix = np.clip(np.rint(c[1]).astype(int), 0, lab.shape[1] - 1)
        return lab[iy, ix]

    inside = np.clip(coords, 0, 63)  # no mirrored reads: a plain gather is warp's order 0
    _right(tc.check_label_warp(gather, labels, inside))
    _right(tc.check_label_warp(lambda lab, c: warp(lab, c, order=0), labels, coords))
    _not_attempted(tc.check_label_warp(stub, labels, coords))
    _wrong(tc.check_label_warp(lambda lab, c: warp(lab, c, order=1), labels, coords),
           "nearest neighbour")
    _wrong(tc.check_label_warp(lambda lab, c: warp(lab, c, order=3), labels, coords),
           "overshoots")
    _wrong(tc.check_label_warp(lambda lab, c: lab, labels, coords), "same map")


def _push(img, disp):  # 06's forward warp
    out = np.full(img.shape, np.nan, np.float32)
    h, w = img.shape
    py, px = np.mgrid[0:h, 0:w]
    ty, tx = np.rint(py + disp[0]).astype(int), np.rint(px + disp[1]).astype(int)
    ok = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
    out[ty[ok], tx[ok]] = img[py[ok], px[ok]]
    return out


def test_push_holes():
    rng, _, disp = _deformation(side=128)
    image = rng.random((128, 128)).astype(np.float32)
    args = (_push, image, disp)
    _right(tc.check_push_holes({0: False, 0.5: True, 2: True}, *args))
    _not_attempted(tc.check_push_holes(None, *args))
    _wrong(tc.check_push_holes({0: False, 0.5: False, 2: False}, *args), "pull")
    _wrong(tc.check_push_holes({0: True, 0.5: True, 2: True}, *args), "nothing moves")


# --- 07: tile plan, grid, float32 ------------------------------------------------------------


def test_tile_plan():
    _right(tc.check_tile_plan(300, [0, 112, 224, 336, 400], 310, 700))
    _right(tc.check_tile_plan(700, [0], 800, 700))  # one tile covers the whole axis
    _not_attempted(tc.check_tile_plan(None, None, 310, 700))
    _wrong(tc.check_tile_plan(310, [0, 112, 224, 336, 390], 310, 700), "rounded down")
    _wrong(tc.check_tile_plan(300, [0, 116, 232, 348, 400], 310, 700), "multiple of 16")
    _wrong(tc.check_tile_plan(300, [0, 300, 400], 310, 700), "output side")


def test_grid_step():
    _right(tc.check_grid_step(8, 3))
    _right(tc.check_grid_step(4, 2))
    _not_attempted(tc.check_grid_step(None, 3))
    _wrong(tc.check_grid_step(16, 3), "2^d")
    _wrong(tc.check_grid_step(6, 3), "not their sum")


def test_float32_bound():
    rng = np.random.default_rng(0)
    single = rng.random((2, 50, 50)).astype(np.float32)
    tiled = single + (rng.standard_normal(single.shape) * 1e-6).astype(np.float32)
    _right(tc.check_float32_bound(1e-5, tiled, single))
    _not_attempted(tc.check_float32_bound(None, tiled, single))
    _wrong(tc.check_float32_bound(1e-12, tiled, single), "float32 rounds")
    _wrong(tc.check_float32_bound(1e-2, tiled, single), "would pass a real error")


# --- 08: the kernel's offset, the order of additions, the scatter ----------------------------


def test_source_offset():
    _right(tc.check_source_offset(lambda c, i, j, y0, H, W: (c * H + y0 + i) * W + j))
    _right(tc.check_source_offset(lambda c, i, j, y0, H, W: c * H * W + (y0 + i) * W + j))
    _not_attempted(tc.check_source_offset(stub))
    _wrong(tc.check_source_offset(lambda c, i, j, y0, H, W: (c * H + i) * W + j), "row y0")
    _wrong(tc.check_source_offset(lambda c, i, j, y0, H, W: (c * W + y0 + i) * H + j),
           "row-major")


def test_reorder_fraction():
    rng = np.random.default_rng(0)
    contrib = rng.standard_normal((9, 4, 20, 20)).astype(np.float32)
    fixed = np.zeros(contrib.shape[1:], np.float32)
    for t in range(9):
        fixed += contrib[t]
    reverse = np.zeros_like(fixed)
    for t in reversed(range(9)):
        reverse += contrib[t]
    _right(tc.check_reorder_fraction(0.5, reverse, fixed))
    _not_attempted(tc.check_reorder_fraction(None, reverse, fixed))
    _wrong(tc.check_reorder_fraction(0, reverse, fixed), "not associative")
    _wrong(tc.check_reorder_fraction(1, reverse, fixed), "not every pixel")


def test_scatter_speed():
    measured = (60.8e-3, 0.22e-3)  # 08's notebook: 276 times slower
    _right(tc.check_scatter_speed(100, *measured))
    _not_attempted(tc.check_scatter_speed(None, *measured))
    _wrong(tc.check_scatter_speed(1, *measured), "one at a time")
    _wrong(tc.check_scatter_speed(0.5, *measured), "one at a time")
    _wrong(tc.check_scatter_speed(3, *measured), "one at a time")


# --- 09: the gap, thinning the truth, counting the pairs -------------------------------------


def _grid_truth(width, n=48):
    cell = np.ones((n, n), bool)
    for c in (n // 3, 2 * n // 3):
        cell[c - width // 2 : c - width // 2 + width, :] = False
        cell[:, c - width // 2 : c - width // 2 + width] = False
    cell[[0, -1], :] = cell[:, [0, -1]] = False
    return cell


def _gap_toy(gap, n=48):
    toy = _grid_truth(3, n)
    toy[n // 3 - 1 : n // 3 + 2, n // 6 : n // 6 + gap] = True
    return toy


def test_smallest_gap():
    truth = _grid_truth(3)
    _right(tc.check_smallest_gap(1, _gap_toy, truth))
    _not_attempted(tc.check_smallest_gap(None, _gap_toy, truth))
    _wrong(tc.check_smallest_gap(2, _gap_toy, truth), "one missing membrane pixel")
    _wrong(tc.check_smallest_gap(0, _gap_toy, truth), "4-connected")


def test_thinned_truth():
    truth = _grid_truth(3)
    cases = {"thick": _grid_truth(7), "shifted": np.roll(truth, 1, axis=0)}
    _right(tc.check_thinned_truth({"thick": False, "shifted": True}, truth, cases))
    _not_attempted(tc.check_thinned_truth(None, truth, cases))
    _wrong(tc.check_thinned_truth({"thick": False, "shifted": False}, truth, cases),
           "off the truth's middle line")
    _wrong(tc.check_thinned_truth({"thick": True, "shifted": True}, truth, cases),
           "middle lines")


def _rand_counts(truth_seg, prop, singletons=True, foreground=True):
    fg = truth_seg > 0 if foreground else np.ones(truth_seg.shape, bool)
    ti, pj = truth_seg[fg], prop[fg]
    n0 = int((pj == 0).sum()) if singletons else 0
    keep = pj > 0
    nij = np.unique(np.stack([ti[keep], pj[keep]]), axis=1, return_counts=True)[1]
    a = float((nij.astype(np.float64) ** 2).sum()) + n0
    t = float((np.unique(ti, return_counts=True)[1].astype(np.float64) ** 2).sum())
    s = float((np.unique(pj[keep], return_counts=True)[1].astype(np.float64) ** 2).sum()) + n0
    return a, t, s


def test_rand_counts():
    _right(tc.check_rand_counts(_rand_counts))
    _not_attempted(tc.check_rand_counts(stub))
    _wrong(tc.check_rand_counts(lambda t, p: _rand_counts(t, p, singletons=False)), "singleton")
    _wrong(tc.check_rand_counts(lambda t, p: _rand_counts(t, p, foreground=False)),
           "cell pixels")
    _wrong(tc.check_rand_counts(lambda t, p: _rand_counts(t, p)[:2]), "three numbers")


# --- 10: the catalogue, your own mistake, the step -------------------------------------------


def test_mistake_caught():
    backward_only = {"gradient check": True, "forward": False, "gradient": True}
    consistent = {"gradient check": False, "forward": True, "gradient": True}
    _right(tc.check_mistake_caught({"gradient check", "gradient"}, backward_only))
    _right(tc.check_mistake_caught(["forward", "gradient"], consistent))
    _not_attempted(tc.check_mistake_caught(None, backward_only))
    _wrong(tc.check_mistake_caught({"gradient"}, backward_only), "own forward")
    _wrong(tc.check_mistake_caught(set(tc.CAUGHT_BY), backward_only), "backward's mistake")
    _wrong(tc.check_mistake_caught({"gradient check", "forward", "gradient"}, consistent),
           "consistently")
    _wrong(tc.check_mistake_caught({"the check"}, consistent), "the names are")


def test_own_relu_mistake():
    def ge(d, c):
        return np.where(c.out >= 0, d, 0.0)

    def small_kink(d, c):
        return np.where(c.out > 0.05, d, 0.0)

    _right(tc.check_own_relu_mistake(ge, False))
    _right(tc.check_own_relu_mistake(small_kink, True))
    _right(tc.check_own_relu_mistake(lambda d, c: np.where(d > 0, d, 0.0), False))
    _not_attempted(tc.check_own_relu_mistake(relu_right, None))
    _wrong(tc.check_own_relu_mistake(ge, True), "central differences")
    _wrong(tc.check_own_relu_mistake(lambda d, c: np.where(d > 0, d, 0.0), True),
           "central differences")
    _wrong(tc.check_own_relu_mistake(small_kink, False), "near the kink")
    _wrong(tc.check_own_relu_mistake(relu_right, True), "write a wrong one")


def test_wrong_steps():
    measured = {1e-2: False, 1e-4: False, 1e-6: False, 1e-9: False}
    _right(tc.check_wrong_steps([], measured))
    _not_attempted(tc.check_wrong_steps(None, measured))
    _wrong(tc.check_wrong_steps([1e-6], measured), "a wrong formula")
    _wrong(tc.check_wrong_steps([1e-4, 1e-6, 1e-9], measured), "truncation")


# --- 12: the U-Net family ----------------------------------------------------------------------


def _unetpp_and_input():
    from minunet.models import registry

    model = registry.build_model(registry.config_for("unetpp", {"base": 2, "depth": 3}),
                                 seed=2).eval()
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    return model, x


def _fast_copy(model, **changes):
    from dataclasses import replace

    from minunet.models import registry

    copy = registry.build_model(replace(model.config, **changes), seed=9)
    copy.load_state_dict(model.state_dict())
    return copy


def test_unetpp_fast():
    from dataclasses import replace

    from minunet.models import registry

    model, x = _unetpp_and_input()

    def in_place(m, L):  # the config is read at every forward: changing it in place works too
        m.config = replace(m.config, mode="fast", prune=L)
        return m

    _right(tc.check_unetpp_fast(lambda m, L: _fast_copy(m, mode="fast", prune=L), model, x))
    _right(tc.check_unetpp_fast(in_place, model, x))
    _not_attempted(tc.check_unetpp_fast(stub, model, x))
    _wrong(tc.check_unetpp_fast(lambda m, L: m, model, x), "accurate mode")
    _wrong(tc.check_unetpp_fast(lambda m, L: _fast_copy(m, prune=L), model, x), "mode='fast'")
    _wrong(tc.check_unetpp_fast(lambda m, L: _fast_copy(m, mode="fast", prune=0), model, x),
           "prune=0 means the full depth")
    _wrong(tc.check_unetpp_fast(lambda m, L: _fast_copy(m, mode="fast", prune=min(L + 1, 3)),
                                model, x), "x^(0,L)")
    _wrong(tc.check_unetpp_fast(lambda m, L: registry.build_model(
        replace(m.config, mode="fast", prune=L), seed=5), model, x), "load_state_dict")
    _wrong(tc.check_unetpp_fast(lambda m, L: _fast_copy(
        m, mode="fast", prune=L, deep_supervision=False), model, x), "raised")
    _wrong(tc.check_unetpp_fast(lambda m, L: m.forward, model, x), "must return a model")


def _xent_inputs(side=176):
    from minunet.models import registry

    rng = np.random.default_rng(3)
    model = registry.build_model(registry.config_for("unet3p", {"base": 2}), seed=3)
    x = rng.standard_normal((1, 1, side, side)).astype(np.float32)
    model.forward(x, dropout_key=0)  # BatchNorm's running statistics
    model.eval()
    labels = rng.integers(0, 2, (1, side, side))
    weights = rng.uniform(0.5, 3.0, (1, side, side)).astype(np.float32)
    return model, model.forward(x), labels, weights


def test_xent_value():
    from dataclasses import replace

    from minunet.models import registry

    model, logits, labels, weights = _xent_inputs()
    xent = registry.build_model(replace(model.config, loss="softmax_cross_entropy"))
    right = float(xent.loss_forward(logits, labels, weights)[0])
    _right(tc.check_xent_value(right, logits, labels, weights))
    _right(tc.check_xent_value(np.float32(right), logits, labels, weights))
    _not_attempted(tc.check_xent_value(None, logits, labels, weights))
    hybrid = float(model.loss_forward(logits, labels, weights)[0])
    _wrong(tc.check_xent_value(hybrid, logits, labels, weights), "hybrid")
    plain = float(xent.loss_forward(logits, labels, np.ones_like(weights))[0])
    _wrong(tc.check_xent_value(plain, logits, labels, weights), "weight map")
    _wrong(tc.check_xent_value(right * labels.size, logits, labels, weights), "mean")
    _wrong(tc.check_xent_value(right * 1.01, logits, labels, weights), "loss_forward")
    _wrong(tc.check_xent_value([right, right], logits, labels, weights), "not one number")
    _right(tc.check_xent_value(xent.loss_forward(logits, labels, weights)[0], logits, labels,
                               weights))  # the 0-d array loss_forward returns


def test_stack_radius():
    from minunet.models import registry
    from minunet.nn.trace import receptive_radius

    cls = registry.get("unet-bn")
    cfg = registry.config_for("unet-bn", {"depth": 1, "base": 2})
    r = receptive_radius(cls, cfg)  # 8: a hand count that ignores the grid's phases says 9
    _right(tc.check_stack_radius(r, cls, cfg))
    _right(tc.check_stack_radius(np.int64(r), cls, cfg))
    _not_attempted(tc.check_stack_radius(None, cls, cfg))
    _wrong(tc.check_stack_radius(r - 1, cls, cfg), "half resolution")
    _wrong(tc.check_stack_radius(r + 1, cls, cfg), "(k - 1) / 2")
    _wrong(tc.check_stack_radius(float(r), cls, cfg), "whole number")
