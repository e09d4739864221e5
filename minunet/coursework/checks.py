"""The graded checks: which op, which inputs, which regions, how strict.

A check runs one op on one set of inputs. It yields one test for the forward
(against the expected output stored in a bundle) and one test per
differentiable input (against central differences of the student's own
forward, or against the stored gradient where the gradient has a kink, as for
ties in max-pooling). Each test belongs to the solution region it grades.

    KINDS            how to call each kind of op on an ops namespace (adapters)
    Check            one check's definition: name, kind, input maker, tolerances
    public_checks()  the checks a student copy carries (the gradcheck CLI's inputs,
                     plus ties, large logits and float32)

The hidden checks are in hidden.py, which is never part of a student copy.
Inputs are drawn once, when a bundle is built (bundle.py), and stored in it:
grading never draws random numbers, so the same grade twice gives the same score.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from minunet.nn import gradcheck
from minunet.nn import opspec as spec
from minunet.nn.opspec import (  # noqa: F401  (the shared makers, named here for hidden.py)
    concat_inputs,
    conv_general_inputs,
    crop_inputs,
    distinct_inputs,
    normal,
    relu_inputs,
    softmax_inputs,
    upconv_inputs,
)

# --- the kinds of op: how to call their forward and backward on a namespace of ops -------------


@dataclass(frozen=True)
class Kind:
    """How to call one kind of op, and which solution regions its tests grade."""

    op: str  # the op as `make --ops` names it
    forward_fn: str  # the ops function called by the forward test
    backward_fn: str  # ... and by the gradient tests
    forward_region: str
    backward_region: str
    forward_needs: tuple = ()  # regions the forward calls (a failure there is named first)
    backward_needs: tuple = ()
    stand_ins: tuple = ()  # the (im2col, col2im) functions that the reference's index map
    # stands in for (worker.py) when the student's fail their own check


KINDS: dict[str, Kind] = {  # im2col/col2im are graded as a pair of their own, in the conv2d op
    "im2col": Kind("conv2d", "im2col", "col2im", "conv2d.im2col", "conv2d.col2im"),
    "conv2d": Kind("conv2d", "conv2d_forward", "conv2d_backward", "conv2d.forward",
                   "conv2d.backward", ("conv2d.im2col",), ("conv2d.im2col", "conv2d.col2im")),
    "upconv2x2": Kind("upconv2x2", "upconv2x2_forward", "upconv2x2_backward",
                      "upconv2x2.forward", "upconv2x2.backward"),
    "maxpool2x2": Kind("maxpool2x2", "maxpool2x2_forward", "maxpool2x2_backward",
                       "maxpool2x2.forward", "maxpool2x2.backward"),
    "relu": Kind("relu", "relu_forward", "relu_backward", "relu.forward", "relu.backward"),
    "center_crop": Kind("center_crop", "center_crop_forward", "center_crop_backward",
                        "center_crop.forward", "center_crop.backward"),
    "concat": Kind("concat", "concat_forward", "concat_backward", "concat.forward",
                   "concat.backward"),
    "softmax_cross_entropy": Kind("softmax_cross_entropy", "softmax_cross_entropy_forward",
                                  "softmax_cross_entropy_backward",
                                  "softmax_cross_entropy.forward",
                                  "softmax_cross_entropy.backward"),
    "dropout": Kind("dropout", "dropout_forward", "dropout_backward", "dropout.forward",
                    "dropout.backward"),
    # the U-Net family's ops (issue 25): handed out only when --ops names them
    "im2col_general": Kind("conv2d_general", "im2col_general", "col2im_general",
                           "conv2d_general.im2col", "conv2d_general.col2im"),
    "conv2d_general": Kind("conv2d_general", "conv2d_general_forward",
                           "conv2d_general_backward", "conv2d_general.forward",
                           "conv2d_general.backward", ("conv2d_general.im2col",),
                           ("conv2d_general.im2col", "conv2d_general.col2im"),
                           ("im2col_general", "col2im_general")),
    "batchnorm2d": Kind("batchnorm2d", "batchnorm2d_forward", "batchnorm2d_backward",
                        "batchnorm2d.forward", "batchnorm2d.backward"),
    # the running statistics after one training batch: a forward-only check whose output
    # is running_mean, running_var and num_batches in one vector (2C + 1,)
    "batchnorm2d_running": Kind("batchnorm2d", "batchnorm2d_forward", "batchnorm2d_backward",
                                "batchnorm2d.forward", "batchnorm2d.backward"),
}
KINDS["conv2d"] = Kind(*[getattr(KINDS["conv2d"], f) for f in (
    "op", "forward_fn", "backward_fn", "forward_region", "backward_region", "forward_needs",
    "backward_needs")], stand_ins=("im2col", "col2im"))

OPS = tuple(dict.fromkeys(k.op for k in KINDS.values()))  # the ops, in grading order
FAMILY_OPS = ("conv2d_general", "batchnorm2d")  # the family's exercises (ops/conv_general.py,
# ops/norm.py): `make` hands them out only when --ops names them
UNET_OPS = tuple(o for o in OPS if o not in FAMILY_OPS)  # the 2015 U-Net's: make's default
IM2COL_KINDS = ("im2col", "im2col_general")  # graded first: the convs need their result


FAMILY_MODULES = ("conv_general", "norm")  # the files of the family's exercises in minunet/ops


def function(ns, name: str):
    """An ops function from a namespace: a student's module (the worker), a namespace of
    wrong versions, or a package of ops (minunet.ops, the teacher's solutions), whose
    __init__ exports the U-Net's ops and whose FAMILY_MODULES hold the family's."""
    fn = getattr(ns, name, None)
    if fn is None and hasattr(ns, "__path__"):
        for mod in FAMILY_MODULES:
            fn = getattr(importlib.import_module(f"{ns.__name__}.{mod}"), name, None)
            if fn is not None:
                break
    if fn is None:
        raise AttributeError(f"the ops have no function {name}")
    return fn


def ops_functions(reference) -> dict:
    """Every function the checks call, by name, from a package or namespace of ops."""
    names = {n: getattr(reference, n) for n in getattr(reference, "__all__", ())}
    for k in KINDS.values():
        for n in (k.forward_fn, k.backward_fn, *k.stand_ins):
            if n not in names:
                names[n] = function(reference, n)
    return names


def call_forward(ns, kind: str, inputs: dict):
    """(out, cache) of the kind's forward on a namespace of ops; inputs in argument order."""
    k = KINDS[kind]
    fn = function(ns, k.forward_fn)
    if kind == "im2col":
        x = inputs["x"]
        return fn(x, inputs["k"]), (tuple(x.shape), inputs["k"])
    if kind == "im2col_general":
        x, rest = inputs["x"], (inputs["k"], inputs["stride"], inputs["padding"])
        return fn(x, *rest), (tuple(x.shape), *rest)
    if kind == "conv2d_general":  # the backward returns db only when there is a bias
        out, cache = fn(*inputs.values())
        return out, (cache, inputs["b"] is not None)
    if kind in ("batchnorm2d", "batchnorm2d_running"):
        # the forward updates its buffers in place: it gets copies, so that its inputs stay
        # as they were (the grader checks that), and the running check reads the copies
        args = dict(inputs)
        buffers = ("running_mean", "running_var", "num_batches")
        for name in buffers:
            args[name] = np.array(args[name])
        out, cache = fn(*args.values())
        if kind == "batchnorm2d_running":
            dtype = inputs["x"].dtype
            stats = [np.asarray(args[n]).reshape(-1).astype(dtype) for n in buffers]
            return np.concatenate(stats), None  # (2C + 1,)
        return out, cache
    return fn(*inputs.values())


def call_backward(ns, kind: str, dout, cache):
    """The kind's backward: one gradient, or a tuple in the order of the check's wrt."""
    if kind == "batchnorm2d_running":
        return ()  # a forward-only check
    fn = function(ns, KINDS[kind].backward_fn)
    if kind == "im2col":
        shape, k = cache
        return fn(dout, shape, k)
    if kind == "im2col_general":
        return fn(dout, *cache)
    if kind == "conv2d_general":
        cache, has_bias = cache
        grads = fn(dout, cache)
        if (not has_bias and isinstance(grads, tuple | list) and len(grads) == 3
                and grads[2] is None):
            return tuple(grads[:2])  # (dx, dw): no bias, no db
        return grads
    return fn(dout, cache)


# --- a check --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One graded check: a kind of op on inputs drawn by `make_inputs(rng, dtype)`."""

    name: str  # e.g. "conv2d (k=3)"; hidden checks are shown as "<op> hidden check <n>"
    kind: str  # a key of KINDS
    make_inputs: Callable  # (rng, dtype) -> dict of inputs in the forward's argument order
    wrt: tuple  # the differentiable inputs, in the order the backward returns them
    dtype: str = "float64"
    mode: str = "numerical"  # or "expected": gradients compared with the reference's, where
    # central differences cannot resolve them: at kinks (ties in max-pooling) and for
    # logits near 1e3 (the loss's rounding, ~1e-16 * |L|, over 2h swamps gradient
    # entries of ~1e-11; those checks are about overflow, the gradient is proved elsewhere)
    threshold: float = gradcheck.THRESHOLD_FLOAT64  # of the gradient tests
    strided: tuple = ()  # inputs handed over as non-contiguous views
    h: float | None = None  # the float64 central-difference step (default: by kind, STEPS)
    points: float = 1.0  # per test
    floor64: float = 0.0  # float64: the relative error's floor as a fraction of the largest
    # gradient entry (0: gradcheck's plain floor); see FLOOR_BATCHNORM

    @property
    def op(self) -> str:
        return KINDS[self.kind].op


FORWARD_TOL = {"float64": 1e-10, "float32": 1e-5}  # max |out - expected| / max |expected|


# Central-difference steps. Their error is h^2 times the third derivative plus the
# rounding of the forward (~1e-16 |out| per element) divided by 2h. Ops that are
# linear in each input have no curvature error at all, so a large step leaves only a
# tiny rounding error (with gradcheck's 1e-4 a correct conv can miss the 1e-7
# threshold on a gradient entry that happens to be ~1e-5: its error is ~1e-11
# absolute). Piecewise-linear ops take the largest step that never crosses a kink of
# their inputs; only the smooth softmax needs gradcheck's small step.
STEP_LINEAR = 1.0  # conv (no ReLU), up-conv, im2col, crop, concat, dropout: exact but rounding
STEP_KINKED = 0.04  # relu (|x| >= 0.1) and maxpool (values 0.1 apart): no kink within 0.1
STEP_CONV_RELU = 0.01  # conv2d with relu: inputs redrawn until no step reaches the kink
STEPS = {"softmax_cross_entropy": gradcheck.STEP_FLOAT64, "relu": STEP_KINKED,
         "maxpool2x2": STEP_KINKED, "batchnorm2d": gradcheck.STEP_FLOAT64}
# BatchNorm is smooth but not linear in x (mu and var depend on it): it takes gradcheck's
# small step. Some entries of its dx (the gradient minus two projections that nearly cancel
# it) come out 1e-5 of the largest or less, and next to them the central difference's own
# error (h^2 times the third derivative, the rounding over h) is not small. As in
# gradcheck_family's BatchNorm rows (their measurement over 40 seeds is written there), the
# training-mode checks compare at the gradient's own scale: a floor of 1e-3 of the largest
# entry. A backward without the paths through the mean or the variance is off by far more
# (tests/coursework/test_mistakes.py).
FLOOR_BATCHNORM = 1e-3


def step(kind: str, dtype: str, h: float | None = None) -> float:
    """The central-difference step of a check (float32: gradcheck's STEP_FLOAT32)."""
    if dtype != "float64":
        return gradcheck.STEP_FLOAT32
    return h if h is not None else STEPS.get(kind, STEP_LINEAR)


def floor_fraction(dtype: str, floor64: float = 0.0) -> float:
    return floor64 if dtype == "float64" else gradcheck.FLOOR_FRACTION_FLOAT32


# --- input makers ---------------------------------------------------------------------------


# normal, upconv, distinct (max-pool), relu, crop, concat and softmax inputs are the gradcheck
# command's own makers (minunet/nn/opspec.py): one spec per op, read by both


def image_inputs(shape):
    def make(rng, dtype):
        return {"x": normal(rng, shape, dtype)}
    return make


def im2col_inputs(shape, k):
    def make(rng, dtype):
        return {"x": normal(rng, shape, dtype), "k": k}
    return make


def conv_inputs(n, cin, cout, k, h, w, relu=False):
    """opspec.conv_inputs with the grader's step (STEP_CONV_RELU in float64) and the plain
    reference's pre-activations: x, w, b, relu, away from the ReLU's kink."""
    return spec.conv_inputs(n, cin, cout, k, h, w, relu,
                            reach_step=lambda dtype: step("conv2d", dtype, STEP_CONV_RELU))


def tie_inputs(shape, levels=3):
    """Values from a few levels: most windows have tied maxima (the tie rule decides)."""
    def make(rng, dtype):
        return {"x": rng.integers(0, levels, shape).astype(dtype)}
    return make


def dropout_inputs(shape, p=0.5):
    def make(rng, dtype):
        keep = rng.random(shape) >= p
        return {"x": normal(rng, shape, dtype),
                "scale_mask": (keep * (1.0 / (1.0 - p))).astype(dtype)}
    return make


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


# --- the public checks ----------------------------------------------------------------------

EXACT32 = gradcheck.THRESHOLD_FLOAT32_EXACT  # float32 thresholds of ops that only copy or select
ARITH32 = gradcheck.THRESHOLD_FLOAT32  # ... and of ops that do arithmetic


def public_checks() -> list[Check]:
    """The checks of a student copy: small shapes, N = 2, odd and even sizes, Cin != Cout,
    H != W; ties in pooling, logits near 1e3, and every op once in float32."""
    C = Check
    f64 = [
        C("im2col (k=3)", "im2col", im2col_inputs((2, 3, 6, 5), 3), ("x",)),
        C("conv2d (k=3)", "conv2d", conv_inputs(2, 3, 4, 3, 7, 6), ("x", "w", "b")),
        C("conv2d (k=1)", "conv2d", conv_inputs(2, 5, 2, 1, 4, 3), ("x", "w", "b")),
        C("conv2d (k=3, relu)", "conv2d", conv_inputs(2, 3, 4, 3, 6, 5, relu=True),
          ("x", "w", "b"), h=STEP_CONV_RELU),
        C("upconv2x2", "upconv2x2", upconv_inputs(2, 3, 4, 3, 4), ("x", "w", "b")),
        C("maxpool2x2", "maxpool2x2", distinct_inputs((2, 3, 4, 6)), ("x",)),
        C("maxpool2x2 (ties)", "maxpool2x2", tie_inputs((2, 2, 4, 6)), ("x",),
          mode="expected"),
        C("relu", "relu", relu_inputs((2, 3, 5, 4)), ("x",)),
        C("center_crop (odd margins)", "center_crop", crop_inputs((2, 3, 9, 8), (5, 3)),
          ("x",)),
        C("concat", "concat", concat_inputs(2, 3, 2, 4, 5), ("a", "b")),
        C("softmax_cross_entropy", "softmax_cross_entropy", softmax_inputs(2, 3, 5, 4),
          ("logits",)),
        C("softmax_cross_entropy (logits near 1e3)", "softmax_cross_entropy",
          softmax_inputs(2, 3, 4, 3, offset=1e3, spread=2.0), ("logits",), mode="expected"),
        C("dropout", "dropout", dropout_inputs((2, 3, 4, 5)), ("x",)),
    ]
    f32 = [
        C("im2col (k=3, float32)", "im2col", im2col_inputs((2, 2, 5, 4), 3), ("x",),
          "float32", threshold=ARITH32),  # col2im sums up to k*k entries: it rounds
        C("conv2d (k=3, float32)", "conv2d", conv_inputs(2, 2, 3, 3, 5, 4), ("x", "w", "b"),
          "float32", threshold=ARITH32),
        C("upconv2x2 (float32)", "upconv2x2", upconv_inputs(2, 2, 3, 2, 3), ("x", "w", "b"),
          "float32", threshold=ARITH32),
        C("maxpool2x2 (float32)", "maxpool2x2", distinct_inputs((2, 2, 4, 4)), ("x",),
          "float32", threshold=EXACT32),
        C("relu (float32)", "relu", relu_inputs((2, 2, 3, 4)), ("x",), "float32",
          threshold=EXACT32),
        C("center_crop (float32)", "center_crop", crop_inputs((2, 2, 6, 7), (3, 4)), ("x",),
          "float32", threshold=EXACT32),
        C("concat (float32)", "concat", concat_inputs(2, 2, 3, 3, 2), ("a", "b"), "float32",
          threshold=EXACT32),
        C("softmax_cross_entropy (float32)", "softmax_cross_entropy",
          softmax_inputs(2, 3, 3, 4), ("logits",), "float32", threshold=ARITH32),
        C("dropout (float32)", "dropout", dropout_inputs((2, 2, 3, 4)), ("x",), "float32",
          threshold=EXACT32),
    ]
    return f64 + f32 + family_public_checks()


def family_public_checks() -> list[Check]:
    """The public checks of the family's exercises (conv2d_general, batchnorm2d)."""
    C = Check
    xwb, xgb = ("x", "w", "b"), ("x", "gamma", "beta")
    bn = FLOOR_BATCHNORM
    return [
        C("im2col_general (k=3, p=1, s=2)", "im2col_general",
          im2col_general_inputs((2, 3, 7, 6), 3, 2, 1), ("x",)),
        C("im2col_general (k=3, p=1)", "im2col_general",
          im2col_general_inputs((2, 2, 5, 4), 3, 1, 1), ("x",)),
        C("im2col_general (k=2, s=2)", "im2col_general",
          im2col_general_inputs((2, 3, 6, 5), 2, 2, 0), ("x",)),
        C("conv2d_general (k=3, same)", "conv2d_general",
          conv_general_inputs(2, 3, 4, 7, 6, 3, 1, "same"), xwb),
        C("conv2d_general (k=3, s=2, p=1)", "conv2d_general",
          conv_general_inputs(2, 2, 3, 8, 7, 3, 2, 1), xwb),
        C("conv2d_general (depthwise k=3, p=1, no bias)", "conv2d_general",
          conv_general_inputs(2, 4, 4, 7, 9, 3, 1, 1, groups=4, bias=False), ("x", "w")),
        C("batchnorm2d (training)", "batchnorm2d", batchnorm_inputs((2, 3, 4, 5)), xgb,
          floor64=bn),
        C("batchnorm2d (training, N=1)", "batchnorm2d", batchnorm_inputs((1, 2, 3, 4)), xgb,
          floor64=bn),
        C("batchnorm2d (eval)", "batchnorm2d", batchnorm_inputs((2, 3, 4, 5), False), xgb),
        C("batchnorm2d (running statistics)", "batchnorm2d_running",
          batchnorm_inputs((2, 3, 4, 5), num_batches=0), ()),
        C("im2col_general (k=3, p=1, s=2, float32)", "im2col_general",
          im2col_general_inputs((2, 2, 5, 6), 3, 2, 1), ("x",), "float32", threshold=ARITH32),
        C("conv2d_general (k=3, s=2, p=1, float32)", "conv2d_general",
          conv_general_inputs(2, 2, 3, 6, 5, 3, 2, 1), xwb, "float32", threshold=ARITH32),
        C("batchnorm2d (training, float32)", "batchnorm2d", batchnorm_inputs((2, 2, 3, 4)),
          xgb, "float32", threshold=ARITH32),
    ]


def for_ops(checks: list[Check], ops) -> list[Check]:
    """The checks of an assignment's ops: all of the U-Net's when one of its ops is handed
    out (as before the family came: a conv check then still shows the ReLU's result), the
    family's only when handed out."""
    unet = any(o in UNET_OPS for o in ops)
    return [c for c in checks if c.op in ops or (unet and c.op in UNET_OPS)]
