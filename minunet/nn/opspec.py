"""One spec per op: everything it takes to check an op's gradient, written once.

An `OpSpec` holds, for one op (a forward/backward pair of minunet/ops, or the fast door's twin):

    op, forward, backward, module   its name and functions (by name: each reader binds them
                                    to its own door: plain, fast, a student's copy)
    wrt                             the differentiable inputs, in the order the backward
                                    returns their gradients (an optional input a maker leaves
                                    out, a conv without bias, has none: `wrt_of`)
    thresholds                      max relative error in float64 and float32, and the
                                    float64 floor where a gradient's entries cancel or curve
    step_float64, relu_step         the float64 step of the command and the grader: the
                                    largest that keeps samples off the op's kinks (its input
                                    makers keep them at least that far)
    cases                           the gradcheck command's rows: (label, input maker)
    notes                           why a threshold or floor is what it is

`SPECS` is the registry of every op, the U-Net's and the family's, in the command's order. It is
read by the gradcheck command and its machinery (minunet/nn/gradcheck.py: op_checks, run_checks;
gradcheck_family.py picks the family's), the tests (tests/test_gradcheck*.py, tests/ops) and the
coursework's grader (minunet/coursework/checks.py: a Check names its kind's spec and draws with
the makers below; hidden.py only adds cases). Nothing else lists an op's wrt or thresholds.

The input makers, one per kind of input: `make(rng, dtype) -> dict of inputs in the forward's
argument order`, each keeping its op's samples off its kinks in one place (the ReLU's 0,
max-pool's ties, ReLU6's 0 and 6, SiLU's flat minimum). They draw from the generator only: a
check's inputs never depend on the code it checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# --- thresholds and steps (minunet/nn/gradcheck.py explains each number) --------------------

THRESHOLD_FLOAT64 = 1e-7  # max relative error of one op's gradient in float64
THRESHOLD_FLOAT32 = 2e-2  # ops that do arithmetic (conv, up-conv, softmax)
THRESHOLD_FLOAT32_EXACT = 1e-6  # ops that only copy, select or scale (relu, pool, crop, ...)
EXACT32 = THRESHOLD_FLOAT32_EXACT

STEP_FLOAT64 = 1e-4  # the gradcheck command's central-difference step in float64
STEP_FLOAT32 = 3e-2  # ... and in float32 (the grader's too)
FLOOR_FRACTION_FLOAT32 = 1e-2  # float32: rel_error floor = this * max |numerical gradient|

# The float64 steps of the gradcheck command and the grader (minunet/coursework) alike. A
# central difference errs by h^2 times the
# third derivative plus the rounding of the forward (~1e-16 |out| per element) over 2h. An op
# linear in each input has no curvature error, so a large step leaves only a tiny rounding
# error (with 1e-4 a correct conv can miss the 1e-7 threshold on a gradient entry that happens
# to be ~1e-5: its error is ~1e-11 absolute). A piecewise-linear op takes the largest step that
# never crosses a kink of its inputs; only smooth ops need the small STEP_FLOAT64.
STEP_LINEAR = 1.0  # conv (no ReLU), up-conv, im2col, crop, concat, dropout: exact but rounding
STEP_KINKED = 0.04  # relu (|x| >= 0.1) and max-pool (values 0.1 apart): no kink within 0.1
STEP_CONV_RELU = 0.01  # conv2d with its fused ReLU: inputs redrawn until no step reaches the kink
STEP_SMOOTH = STEP_FLOAT64  # softmax, BatchNorm, the losses: curved, so the small step


@dataclass(frozen=True)
class Case:
    """One row of the gradcheck command: its label and its input maker."""

    label: str  # e.g. "conv2d (k=3)"
    make: Callable  # (rng, dtype) -> dict of host inputs in the forward's argument order


@dataclass(frozen=True)
class OpSpec:
    """How to check one op's gradient (see the module docstring)."""

    op: str  # what --op selects and the grader's kinds name, e.g. "conv2d"
    forward: str  # the forward's name in the op module, e.g. "conv2d_forward"
    backward: str
    module: str  # its file in minunet/ops (and minunet/fast where a twin exists)
    wrt: tuple  # the differentiable inputs, in the order the backward returns them
    step_float64: float = STEP_LINEAR  # the float64 step of the command and the grader
    relu_step: float | None = None  # the step when the fused ReLU is on (conv2d)
    threshold_float64: float = THRESHOLD_FLOAT64
    threshold_float32: float = THRESHOLD_FLOAT32
    floor_float64: float = 0.0  # rel_error floor in float64 as a fraction of max |n|
    float32: bool = True  # False: no float32 row (a step of STEP_FLOAT32 is too coarse for it)
    family: bool = False  # an op of the U-Net family (minunet/nn/gradcheck_family.py)
    cases: tuple = ()  # the gradcheck command's rows (Case); none: graded only (im2col)
    notes: str = ""  # why a threshold, floor or step is what it is

    def wrt_of(self, make: Callable) -> tuple:
        """The differentiable inputs of a maker's draws: wrt less the optional inputs that the
        maker leaves out (`make.leaves_out`, e.g. a conv's bias)."""
        absent = getattr(make, "leaves_out", ())
        return tuple(n for n in self.wrt if n not in absent)

    def threshold(self, dtype) -> float:
        return self.threshold_float64 if np.dtype(dtype) == np.float64 else self.threshold_float32

    def floor(self, dtype) -> float:
        """rel_error's floor as a fraction of the largest numerical gradient entry."""
        return self.floor_float64 if np.dtype(dtype) == np.float64 else FLOOR_FRACTION_FLOAT32

    def step(self, dtype, relu: bool = False) -> float:
        """The central-difference step of the command and the grader (float32: STEP_FLOAT32)."""
        if np.dtype(dtype) != np.float64:
            return STEP_FLOAT32
        return self.relu_step if relu and self.relu_step is not None else self.step_float64


# --- the input makers, one per kind of input ---------------------------------------------------


def normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _leaves_out(make: Callable, *names: str) -> Callable:
    """Mark the optional inputs a maker leaves out (None): they have no gradient (wrt_of)."""
    make.leaves_out = names
    return make


def _valid_conv(x, w, b):
    """The pre-activations of a valid, stride-1 conv (N, Cout, H-k+1, W-k+1), in x's dtype:
    computed here, so that the inputs never depend on the conv they check."""
    k = w.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
    # windows: (N, Cin, Ho, Wo, k, k)
    return np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]


def conv_inputs(n, cin, cout, k, h, w, relu: bool = False):
    """x (n, cin, h, w), w (cout, cin, k, k), b (cout,), relu. With relu, redrawn until every
    pre-activation is far from the ReLU's kink at 0: a step of one input moves a
    pre-activation by at most step * max(|x|, |w|, 1), so every one must be twice that far.
    The step is the conv2d spec's (`OpSpec.step(dtype, relu=True)`), which the gradcheck
    command and the grader both take."""
    def make(rng, dtype):
        for _ in range(1000):
            inputs = {"x": normal(rng, (n, cin, h, w), dtype),
                      "w": normal(rng, (cout, cin, k, k), dtype),
                      "b": normal(rng, (cout,), dtype), "relu": relu}
            if not relu:
                return inputs
            z = _valid_conv(inputs["x"], inputs["w"], inputs["b"])
            reach = spec("conv2d").step(dtype, relu=True) * max(np.abs(inputs["x"]).max(),
                                                           np.abs(inputs["w"]).max(), 1.0)
            if np.abs(z).min() > 2 * reach:
                return inputs
        raise RuntimeError("found no conv2d inputs away from the ReLU kink")
    return make


def im2col_inputs(shape, k):
    def make(rng, dtype):
        return {"x": normal(rng, shape, dtype), "k": k}
    return make


def upconv_inputs(n, cin, cout, h, w):
    def make(rng, dtype):
        return {"x": normal(rng, (n, cin, h, w), dtype),
                "w": normal(rng, (cin, cout, 2, 2), dtype),
                "b": normal(rng, (cout,), dtype)}
    return make


def distinct_inputs(shape, **attrs):
    """Max-pool's inputs: distinct values 0.1 apart in random order, so no two in a window tie
    and no step below 0.05 (float32's 3e-2 included) changes a window's maximum; `attrs`
    (k, ceil_mode) follow x."""
    def make(rng, dtype):
        n = int(np.prod(shape))
        return {"x": ((rng.permutation(n) - n / 2) * 0.1).reshape(shape).astype(dtype),
                **attrs}
    return make


def tie_inputs(shape, levels=3):
    """Max-pool ON its kinks: values from a few levels, so most windows have tied maxima (the
    tie rule decides; the grader compares with the reference's gradient, not differences)."""
    def make(rng, dtype):
        return {"x": rng.integers(0, levels, shape).astype(dtype)}
    return make


def relu_inputs(shape):
    """|x| in [0.1, 1] with a random sign: far from the ReLU's kink at 0."""
    def make(rng, dtype):
        mag = rng.uniform(0.1, 1.0, shape)
        return {"x": (mag * rng.choice([-1.0, 1.0], shape)).astype(dtype)}
    return make


def crop_inputs(shape, size):
    def make(rng, dtype):
        return {"x": normal(rng, shape, dtype), "size": tuple(size)}
    return make


def concat_inputs(n, ca, cb, h, w):
    def make(rng, dtype):
        return {"a": normal(rng, (n, ca, h, w), dtype), "b": normal(rng, (n, cb, h, w), dtype)}
    return make


def softmax_inputs(n, k, h, w, offset=0.0, spread=1.0, label_dtype=np.int64):
    """Logits offset + spread * normal (n, k, h, w); labels; weights in [0.5, 2] with a
    quarter at 0 (ignored pixels)."""
    def make(rng, dtype):
        weights = rng.uniform(0.5, 2.0, (n, h, w))
        weights[rng.random((n, h, w)) < 0.25] = 0.0  # ignored pixels
        logits = offset + spread * rng.standard_normal((n, k, h, w))
        return {"logits": logits.astype(dtype),
                "labels": rng.integers(0, k, (n, h, w)).astype(label_dtype),
                "weights": weights.astype(dtype)}
    return make


def dropout_inputs(shape, p=0.5):
    """x and a fixed inverted-dropout mask (0, or 1/(1-p) with probability 1-p): drawn here,
    as `ops.dropout_mask` draws it, not by the op module under check."""
    def make(rng, dtype):
        keep = rng.random(shape) >= p
        return {"x": normal(rng, shape, dtype),
                "scale_mask": (keep * (1.0 / (1.0 - p))).astype(dtype)}
    return make


def conv_general_inputs(n, cin, cout, h, w, k, stride=1, padding=0, groups=1, bias=True):
    """x, w (Cout, Cin/groups, k, k), b (or None: then no gradient), stride, padding, groups."""
    def make(rng, dtype):
        return {"x": normal(rng, (n, cin, h, w), dtype),
                "w": normal(rng, (cout, cin // groups, k, k), dtype),
                "b": normal(rng, (cout,), dtype) if bias else None,
                "stride": stride, "padding": padding, "groups": groups}
    return make if bias else _leaves_out(make, "b")


def im2col_general_inputs(shape, k, stride=1, padding=0):
    def make(rng, dtype):
        return {"x": normal(rng, shape, dtype), "k": k, "stride": stride, "padding": padding}
    return make


def batchnorm_inputs(shape, training=True, num_batches=3):
    """x (not centred, not of unit spread: the normalisation must show), gamma in [0.5, 1.5],
    beta, running statistics away from 0 and 1 (so that eval mode differs from training mode
    and from no normalisation), num_batches (eval mode needs one or more)."""
    def make(rng, dtype):
        C = shape[1]
        return {"x": (normal(rng, shape, dtype) * 2 + 0.5).astype(dtype),
                "gamma": rng.uniform(0.5, 1.5, C).astype(dtype),
                "beta": normal(rng, (C,), dtype),
                "running_mean": (rng.standard_normal(C) * 0.5).astype(dtype),
                "running_var": rng.uniform(0.5, 2.0, C).astype(dtype),
                "num_batches": np.array([num_batches], np.int64), "training": training}
    return make


def upsample_inputs(factor=None, align_corners=False):
    """x (2, 2, 3, 4); with a factor, the bilinear up-sampling's factor and align_corners."""
    def make(rng, dtype):
        x = {"x": normal(rng, (2, 2, 3, 4), dtype)}
        return x if factor is None else {**x, "factor": factor, "align_corners": align_corners}
    return make


def relu6_inputs(rng, dtype):
    """|x| in [0.1, 5.9] with a random sign, about a fifth in [6.1, 8] above the cap: every x
    at least 0.1 from ReLU6's kinks at 0 and 6. (Adding 6.5 to a fifth, as this did before,
    put a negative x such as -0.5 on the cap: the check then failed a correct ReLU6 at 11 of
    60 seeds in float64, 9 in float32.)"""
    x = rng.uniform(0.1, 5.9, (2, 3, 4, 5)) * rng.choice([-1.0, 1.0], (2, 3, 4, 5))
    above = rng.random(x.shape) < 0.2
    x[above] = rng.uniform(6.1, 8.0, int(above.sum()))  # above ReLU6's cap, 0.1 from it
    return {"x": x.astype(dtype)}


def smooth_inputs(rng, dtype):
    """|x| <= 4, where sigmoid's slope is not tiny, and away from SiLU's minimum at
    x = -1.2785 (its slope is 0 there: a relative error of a ~0 entry says nothing)."""
    x = rng.uniform(-4.0, 4.0, (2, 3, 4, 5))
    near = np.abs(x + 1.2785) < 0.4
    x[near] = x[near] + np.copysign(0.8, x[near] + 1.2785)
    return {"x": x.astype(dtype)}


def add_inputs(rng, dtype):
    return {"a": normal(rng, (2, 3, 4, 4), dtype), "b": normal(rng, (2, 3, 4, 4), dtype)}


def scale_inputs(rng, dtype):
    return {"x": normal(rng, (2, 3, 4, 4), dtype), "s": normal(rng, (2, 3), dtype)}


def _logits_targets(rng, shape, dtype, soft):
    z = rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    label = rng.random(shape) < 0.4
    y = (np.where(label, rng.uniform(0.9, 0.95, shape), rng.uniform(0.05, 0.1, shape))
         if soft else label.astype(float))
    return z.astype(dtype), y.astype(dtype)


def bce_inputs(rng, dtype):
    z, y = _logits_targets(rng, (2, 2, 5, 4), dtype, soft=True)
    w = rng.uniform(0.5, 2.0, (2, 5, 4))
    w[rng.random(w.shape) < 0.25] = 0.0  # ignored pixels
    return {"logits": z, "targets": y, "weights": w.astype(dtype)}


def overlap_inputs(rng, dtype):
    p = rng.uniform(0.05, 0.95, (2, 3, 4, 3))
    y = (rng.random(p.shape) < 0.4).astype(float)
    y[0, 1] = 0.0  # a class absent from an image: the smoothing term's case
    return {"probs": p.astype(dtype), "targets": y.astype(dtype), "smooth": 1.0}


def focal_inputs(rng, dtype):
    z, y = _logits_targets(rng, (2, 2, 4, 3), dtype, soft=False)
    return {"logits": z, "targets": y, "alpha": 0.25, "gamma": 2.0}


THREE_SCALES = (0.3, 0.3, 0.4)  # MS-SSIM on small tiles: 3 scales, a 3x3 window


def msssim_inputs(rng, dtype):
    y = rng.random((2, 2, 13, 12))
    x = np.clip(y + 0.2 * rng.standard_normal(y.shape), 0.0, 1.0)
    return {"x": x.astype(dtype), "y": y.astype(dtype), "data_range": 1.0, "win_size": 3,
            "sigma": 1.5, "weights": THREE_SCALES}


def _binary_logits(rng, shape, dtype):
    y = (rng.random(shape) < 0.5).astype(float)
    z = (2 * y - 1) * rng.uniform(0.2, 1.5, shape) + 0.5 * rng.standard_normal(shape)
    return z.astype(dtype), y.astype(dtype)


def unetpp_inputs(rng, dtype):
    z, y = _binary_logits(rng, (2, 2, 4, 3), dtype)
    return {"logits": z, "targets": y, "smooth": 1.0}


def unet3p_inputs(rng, dtype):
    z, y = _binary_logits(rng, (1, 1, 13, 12), dtype)
    return {"logits": z, "targets": y, "alpha": 0.25, "gamma": 2.0, "smooth": 1.0,
            "win_size": 3, "sigma": 1.5, "weights": THREE_SCALES}


# --- the registry: one spec per op, in the gradcheck command's order ---------------------------

_CURVED = ("MS-SSIM is smooth but curved: at h = 1e-4 the central difference's own error is "
           "~1e-7, and its near-zero entries carry the loss's rounding over h; so a floor of 1 % "
           "of the largest entry and 1e-6 (a planted bug, the luminance term dropped, is off by "
           "> 1e-3), and no float32 row: float32's step (3e-2) is far too coarse for it")
# Some entries of BatchNorm's dx (the gradient minus two projections that nearly cancel it) and
# of a padded or depthwise conv's dx (a border pixel meets few weights) come out 1e-5 of the
# largest or less. Next to them the central difference's own error is not small: the rounding of
# x + h (~1e-16 |x| / h) and of the loss (~1e-16 |L| / h), and BatchNorm's curvature (h^2 times
# its third derivative). Over 40 seeds such entries reached relative errors of 1.4e-6 (BatchNorm,
# N = 1) and 1.3e-7 (conv) against the plain 1e-8 floor. A floor of a fraction of the largest
# entry compares them at the gradient's own scale; a wrong backward (a term through the mean or
# the variance left out, a tap off by one) is off by more than 1e-2 of it.
_CANCELS = ("entries 1e-5 of the largest or less carry the difference quotient's own error "
            "(measured over 40 seeds: 1.3e-7 for conv, 1.4e-6 for BatchNorm at N = 1): a floor "
            "of a fraction of the largest entry")


def _spec(op, module, wrt, *cases, forward=None, backward=None, **kw) -> OpSpec:
    return OpSpec(op, forward or f"{op}_forward", backward or f"{op}_backward", module,
                  tuple(wrt), cases=tuple(Case(label, make) for label, make in cases), **kw)


XWB, XGB = ("x", "w", "b"), ("x", "gamma", "beta")

_SPECS = [
    # the 2015 U-Net's ops (minunet/ops/__init__.py exports them; the fast door has them all)
    _spec("conv2d", "conv", XWB,
          ("conv2d (k=3)", conv_inputs(2, 3, 4, 3, 7, 6)),
          ("conv2d (k=1)", conv_inputs(2, 5, 2, 1, 4, 3)),
          ("conv2d (k=3, relu)", conv_inputs(2, 3, 4, 3, 6, 5, relu=True)),
          relu_step=STEP_CONV_RELU),
    _spec("upconv2x2", "upconv", XWB, ("upconv2x2", upconv_inputs(2, 3, 4, 3, 4))),
    _spec("maxpool2x2", "pool", ("x",), ("maxpool2x2", distinct_inputs((2, 3, 4, 6))),
          step_float64=STEP_KINKED, threshold_float32=EXACT32),
    _spec("relu", "relu", ("x",), ("relu", relu_inputs((2, 3, 5, 4))),
          step_float64=STEP_KINKED, threshold_float32=EXACT32),
    _spec("center_crop", "crop", ("x",),  # margins 4 and 5 (odd: one more below/right)
          ("center_crop", crop_inputs((2, 3, 9, 8), (5, 3))), threshold_float32=EXACT32),
    _spec("concat", "crop", ("a", "b"), ("concat", concat_inputs(2, 3, 2, 4, 5)),
          threshold_float32=EXACT32),
    _spec("softmax_cross_entropy", "softmax", ("logits",),
          ("softmax_cross_entropy", softmax_inputs(2, 3, 5, 4)), step_float64=STEP_SMOOTH),
    _spec("dropout", "dropout", ("x",), ("dropout", dropout_inputs((2, 3, 4, 5))),
          threshold_float32=EXACT32),
    # graded by the coursework only (conv2d's exercise): no row of the command
    _spec("im2col", "conv", ("x",), forward="im2col", backward="col2im",
          notes="col2im sums up to k*k entries: it rounds, so float32 takes THRESHOLD_FLOAT32"),

    # the U-Net family's ops and losses (issue 25): minunet/ops/<module>.py, the fast door's
    # twin at minunet/fast/<module>.py where one exists
    _spec("batchnorm2d", "norm", XGB,
          ("batchnorm2d (training)", batchnorm_inputs((2, 3, 4, 5))),
          ("batchnorm2d (training, N=1)", batchnorm_inputs((1, 2, 3, 4))),
          ("batchnorm2d (eval)", batchnorm_inputs((2, 3, 4, 5), False)),
          step_float64=STEP_SMOOTH, floor_float64=1e-3, family=True, notes=_CANCELS),
    _spec("conv2d_general", "conv_general", XWB,
          ("conv2d_general (k=3, same)", conv_general_inputs(2, 3, 4, 7, 6, 3, 1, "same", 1)),
          ("conv2d_general (k=3, s=2, p=1)", conv_general_inputs(1, 2, 3, 8, 7, 3, 2, 1, 1)),
          ("conv2d_general (depthwise k=3)", conv_general_inputs(2, 4, 4, 7, 9, 3, 1, 1, 4)),
          ("conv2d_general (depthwise k=5, s=2)",
           conv_general_inputs(1, 3, 3, 9, 9, 5, 2, 2, 3)),
          ("conv2d_general (k=1, no bias)",
           conv_general_inputs(2, 4, 6, 5, 5, 1, 1, 0, 1, bias=False)),
          floor_float64=1e-4, family=True, notes=_CANCELS),
    _spec("im2col_general", "conv_general", ("x",), forward="im2col_general",
          backward="col2im_general", family=True,
          notes="graded by the coursework only (conv2d_general's exercise)"),
    _spec("bilinear_upsample", "resample", ("x",),
          ("bilinear_upsample (x2)", upsample_inputs(2)),
          ("bilinear_upsample (x4, align_corners)", upsample_inputs(4, True)), family=True),
    _spec("nearest_upsample2", "resample", ("x",), ("nearest_upsample2", upsample_inputs()),
          family=True, notes="the backward sums 4 entries per input (like col2im), so it "
          "rounds: float32 takes THRESHOLD_FLOAT32 (with EXACT32 a correct op reached 1.7e-6 "
          "at 5 of 60 seeds)"),
    _spec("maxpool", "pool_general", ("x",),
          ("maxpool (k=4, ceil)", distinct_inputs((2, 2, 11, 9), k=4, ceil_mode=True)),
          ("maxpool (k=8, ceil)", distinct_inputs((2, 2, 11, 9), k=8, ceil_mode=True)),
          step_float64=STEP_KINKED, threshold_float32=EXACT32, family=True),
    _spec("global_avgpool", "pool_general", ("x",),
          ("global_avgpool", distinct_inputs((2, 2, 11, 9))), family=True),
    _spec("global_maxpool", "pool_general", ("x",),
          ("global_maxpool", distinct_inputs((2, 2, 11, 9))),
          step_float64=STEP_KINKED, threshold_float32=EXACT32, family=True),
    _spec("sigmoid", "activation", ("x",), ("sigmoid", smooth_inputs),
          step_float64=STEP_SMOOTH, family=True),
    _spec("relu6", "activation", ("x",), ("relu6", relu6_inputs),
          step_float64=STEP_KINKED, threshold_float32=EXACT32, family=True),
    _spec("silu", "activation", ("x",), ("silu", smooth_inputs),
          step_float64=STEP_SMOOTH, family=True),
    _spec("add", "elementwise", ("a", "b"), ("add", add_inputs), family=True),
    _spec("channel_scale", "elementwise", ("x", "s"), ("channel_scale", scale_inputs),
          family=True),
    _spec("bce_with_logits", "loss", ("logits",), ("bce_with_logits (weighted)", bce_inputs),
          step_float64=STEP_SMOOTH, family=True),
    _spec("soft_dice", "loss", ("probs",), ("soft_dice", overlap_inputs),
          step_float64=STEP_SMOOTH, family=True),
    _spec("soft_iou", "loss", ("probs",), ("soft_iou", overlap_inputs),
          step_float64=STEP_SMOOTH, family=True),
    _spec("focal", "loss", ("logits",), ("focal", focal_inputs),
          step_float64=STEP_SMOOTH, family=True),
    _spec("msssim", "loss", ("x",), ("msssim (3 scales)", msssim_inputs),
          step_float64=STEP_SMOOTH, threshold_float64=1e-6, floor_float64=1e-2, float32=False,
          family=True, notes=_CURVED),
    _spec("unetpp_loss", "loss", ("logits",), ("unetpp_loss (BCE + Dice)", unetpp_inputs),
          step_float64=STEP_SMOOTH, family=True),
    _spec("unet3p_loss", "loss", ("logits",),
          ("unet3p_loss (focal + MS-SSIM + IoU)", unet3p_inputs), step_float64=STEP_SMOOTH,
          threshold_float64=1e-6, floor_float64=1e-2, float32=False, family=True,
          notes=_CURVED),
]
SPECS: dict[str, OpSpec] = {s.op: s for s in _SPECS}  # op -> its spec, in the command's order
assert len(SPECS) == len(_SPECS), "one spec per op"


def spec(op: str) -> OpSpec:
    """The spec of an op (KeyError naming the known ones)."""
    if op not in SPECS:
        raise KeyError(f"no spec for op {op!r}; known: {', '.join(SPECS)}")
    return SPECS[op]


def checked_specs(family: bool = False) -> list[OpSpec]:
    """The specs with rows in the gradcheck command: the U-Net's, then (family) the family's."""
    return [s for s in SPECS.values() if s.cases and (family or not s.family)]
