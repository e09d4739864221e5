"""The graded checks: which op, which inputs, which regions.

A check runs one op on one set of inputs. It yields one test for the forward
(against the expected output stored in a bundle) and one test per
differentiable input (against central differences of the student's own
forward, or against the stored gradient where the gradient has a kink, as for
ties in max-pooling). Each test belongs to the solution region it grades.

    KINDS            how to call each kind of op on an ops namespace (adapters), and the
                     op spec it grades (minunet/nn/opspec.py)
    Check            one check: name, kind, input maker, dtype, mode; its differentiable
                     inputs, thresholds and step come from its kind's spec, never from here
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

from minunet.nn import opspec
from minunet.nn.opspec import (  # noqa: F401  (the shared makers, named here for hidden.py)
    STEP_CONV_RELU,
    OpSpec,
    batchnorm_inputs,
    concat_inputs,
    conv_general_inputs,
    conv_inputs,
    crop_inputs,
    distinct_inputs,
    dropout_inputs,
    im2col_general_inputs,
    im2col_inputs,
    normal,
    relu_inputs,
    softmax_inputs,
    tie_inputs,
    upconv_inputs,
)

# --- the kinds of op: how to call their forward and backward on a namespace of ops -------------


@dataclass(frozen=True)
class Kind:
    """How to call one kind of op, which op spec it grades, and which solution regions."""

    op: str  # the op as `make --ops` names it (the exercise)
    spec: str  # the op spec (opspec.SPECS) whose functions, wrt and thresholds it takes
    forward_region: str
    backward_region: str
    forward_needs: tuple = ()  # regions the forward calls (a failure there is named first)
    backward_needs: tuple = ()
    stand_ins: tuple = ()  # the (im2col, col2im) functions that the reference's index map
    # stands in for (worker.py) when the student's fail their own check
    forward_only: bool = False  # no gradient tests (the running statistics' check)

    @property
    def op_spec(self) -> OpSpec:
        return opspec.spec(self.spec)

    @property
    def forward_fn(self) -> str:  # the ops function called by the forward test
        return self.op_spec.forward

    @property
    def backward_fn(self) -> str:  # ... and by the gradient tests
        return self.op_spec.backward


KINDS: dict[str, Kind] = {  # im2col/col2im are graded as a pair of their own, in the conv2d op
    "im2col": Kind("conv2d", "im2col", "conv2d.im2col", "conv2d.col2im"),
    "conv2d": Kind("conv2d", "conv2d", "conv2d.forward", "conv2d.backward", ("conv2d.im2col",),
                   ("conv2d.im2col", "conv2d.col2im"), ("im2col", "col2im")),
    "upconv2x2": Kind("upconv2x2", "upconv2x2", "upconv2x2.forward", "upconv2x2.backward"),
    "maxpool2x2": Kind("maxpool2x2", "maxpool2x2", "maxpool2x2.forward", "maxpool2x2.backward"),
    "relu": Kind("relu", "relu", "relu.forward", "relu.backward"),
    "center_crop": Kind("center_crop", "center_crop", "center_crop.forward",
                        "center_crop.backward"),
    "concat": Kind("concat", "concat", "concat.forward", "concat.backward"),
    "softmax_cross_entropy": Kind("softmax_cross_entropy", "softmax_cross_entropy",
                                  "softmax_cross_entropy.forward",
                                  "softmax_cross_entropy.backward"),
    "dropout": Kind("dropout", "dropout", "dropout.forward", "dropout.backward"),
    # the U-Net family's ops (issue 25): handed out only when --ops names them
    "im2col_general": Kind("conv2d_general", "im2col_general", "conv2d_general.im2col",
                           "conv2d_general.col2im"),
    "conv2d_general": Kind("conv2d_general", "conv2d_general", "conv2d_general.forward",
                           "conv2d_general.backward", ("conv2d_general.im2col",),
                           ("conv2d_general.im2col", "conv2d_general.col2im"),
                           ("im2col_general", "col2im_general")),
    "batchnorm2d": Kind("batchnorm2d", "batchnorm2d", "batchnorm2d.forward",
                        "batchnorm2d.backward"),
    # the running statistics after one training batch: a forward-only check whose output
    # is running_mean, running_var and num_batches in one vector (2C + 1,)
    "batchnorm2d_running": Kind("batchnorm2d", "batchnorm2d", "batchnorm2d.forward",
                                "batchnorm2d.backward", forward_only=True),
}

OPS = tuple(dict.fromkeys(k.op for k in KINDS.values()))  # the ops, in grading order
FAMILY_OPS = ("conv2d_general", "batchnorm2d")  # the family's exercises (ops/conv_general.py,
# ops/norm.py): `make` hands them out only when --ops names them
UNET_OPS = tuple(o for o in OPS if o not in FAMILY_OPS)  # the 2015 U-Net's: make's default
IM2COL_KINDS = ("im2col", "im2col_general")  # graded first: the convs need their result


# the files of the family's exercises in minunet/ops (conv_general, norm), from their specs
FAMILY_MODULES = tuple(dict.fromkeys(k.op_spec.module for k in KINDS.values()
                                     if k.op_spec.family))


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
    if KINDS[kind].forward_only:
        return ()  # the running statistics' check
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
    """One graded check: a kind of op on inputs drawn by `make_inputs(rng, dtype)`. What is
    differentiable, how strict and which step: its kind's op spec (minunet/nn/opspec.py)."""

    name: str  # e.g. "conv2d (k=3)"; hidden checks are shown as "<op> hidden check <n>"
    kind: str  # a key of KINDS
    make_inputs: Callable  # (rng, dtype) -> dict of inputs in the forward's argument order
    dtype: str = "float64"
    mode: str = "numerical"  # or "expected": gradients compared with the reference's, where
    # central differences cannot resolve them: at kinks (ties in max-pooling) and for
    # logits near 1e3 (the loss's rounding, ~1e-16 * |L|, over 2h swamps gradient
    # entries of ~1e-11; those checks are about overflow, the gradient is proved elsewhere)
    strided: tuple = ()  # inputs handed over as non-contiguous views
    points: float = 1.0  # per test

    @property
    def op(self) -> str:
        return KINDS[self.kind].op

    @property
    def spec(self) -> OpSpec:
        return KINDS[self.kind].op_spec

    @property
    def wrt(self) -> tuple:
        """The differentiable inputs, in the order the backward returns them."""
        if KINDS[self.kind].forward_only:
            return ()
        return self.spec.wrt_of(self.make_inputs)

    @property
    def threshold(self) -> float:  # of the gradient tests
        return self.spec.threshold(self.dtype)

    @property
    def floor_fraction(self) -> float:  # the relative error's floor, a fraction of max |n|
        return self.spec.floor(self.dtype)

    def step(self, inputs: dict) -> float:
        """The central-difference step for these inputs (conv2d's fused ReLU takes the
        spec's relu_step: its inputs were drawn to keep that far from the kink)."""
        return self.spec.step(self.dtype, relu=bool(inputs.get("relu", False)))


FORWARD_TOL = {"float64": 1e-10, "float32": 1e-5}  # max |out - expected| / max |expected|


# --- input makers ---------------------------------------------------------------------------


# Every maker is opspec's (minunet/nn/opspec.py: one per kind of input, shared with the gradcheck
# command, which takes the same steps).


# --- the public checks ----------------------------------------------------------------------


def public_checks() -> list[Check]:
    """The checks of a student copy: small shapes, N = 2, odd and even sizes, Cin != Cout,
    H != W; ties in pooling, logits near 1e3, and every op once in float32."""
    C = Check
    f64 = [
        C("im2col (k=3)", "im2col", im2col_inputs((2, 3, 6, 5), 3)),
        C("conv2d (k=3)", "conv2d", conv_inputs(2, 3, 4, 3, 7, 6)),
        C("conv2d (k=1)", "conv2d", conv_inputs(2, 5, 2, 1, 4, 3)),
        C("conv2d (k=3, relu)", "conv2d", conv_inputs(2, 3, 4, 3, 6, 5, relu=True)),
        C("upconv2x2", "upconv2x2", upconv_inputs(2, 3, 4, 3, 4)),
        C("maxpool2x2", "maxpool2x2", distinct_inputs((2, 3, 4, 6))),
        C("maxpool2x2 (ties)", "maxpool2x2", tie_inputs((2, 2, 4, 6)), mode="expected"),
        C("relu", "relu", relu_inputs((2, 3, 5, 4))),
        C("center_crop (odd margins)", "center_crop", crop_inputs((2, 3, 9, 8), (5, 3))),
        C("concat", "concat", concat_inputs(2, 3, 2, 4, 5)),
        C("softmax_cross_entropy", "softmax_cross_entropy", softmax_inputs(2, 3, 5, 4)),
        C("softmax_cross_entropy (logits near 1e3)", "softmax_cross_entropy",
          softmax_inputs(2, 3, 4, 3, offset=1e3, spread=2.0), mode="expected"),
        C("dropout", "dropout", dropout_inputs((2, 3, 4, 5))),
    ]
    f32 = [
        C("im2col (k=3, float32)", "im2col", im2col_inputs((2, 2, 5, 4), 3), "float32"),
        C("conv2d (k=3, float32)", "conv2d", conv_inputs(2, 2, 3, 3, 5, 4), "float32"),
        C("upconv2x2 (float32)", "upconv2x2", upconv_inputs(2, 2, 3, 2, 3), "float32"),
        C("maxpool2x2 (float32)", "maxpool2x2", distinct_inputs((2, 2, 4, 4)), "float32"),
        C("relu (float32)", "relu", relu_inputs((2, 2, 3, 4)), "float32"),
        C("center_crop (float32)", "center_crop", crop_inputs((2, 2, 6, 7), (3, 4)),
          "float32"),
        C("concat (float32)", "concat", concat_inputs(2, 2, 3, 3, 2), "float32"),
        C("softmax_cross_entropy (float32)", "softmax_cross_entropy",
          softmax_inputs(2, 3, 3, 4), "float32"),
        C("dropout (float32)", "dropout", dropout_inputs((2, 2, 3, 4)), "float32"),
    ]
    return f64 + f32 + family_public_checks()


def family_public_checks() -> list[Check]:
    """The public checks of the family's exercises (conv2d_general, batchnorm2d)."""
    C = Check
    return [
        C("im2col_general (k=3, p=1, s=2)", "im2col_general",
          im2col_general_inputs((2, 3, 7, 6), 3, 2, 1)),
        C("im2col_general (k=3, p=1)", "im2col_general",
          im2col_general_inputs((2, 2, 5, 4), 3, 1, 1)),
        C("im2col_general (k=2, s=2)", "im2col_general",
          im2col_general_inputs((2, 3, 6, 5), 2, 2, 0)),
        C("conv2d_general (k=3, same)", "conv2d_general",
          conv_general_inputs(2, 3, 4, 7, 6, 3, 1, "same")),
        C("conv2d_general (k=3, s=2, p=1)", "conv2d_general",
          conv_general_inputs(2, 2, 3, 8, 7, 3, 2, 1)),
        C("conv2d_general (depthwise k=3, p=1, no bias)", "conv2d_general",
          conv_general_inputs(2, 4, 4, 7, 9, 3, 1, 1, groups=4, bias=False)),
        C("batchnorm2d (training)", "batchnorm2d", batchnorm_inputs((2, 3, 4, 5))),
        C("batchnorm2d (training, N=1)", "batchnorm2d", batchnorm_inputs((1, 2, 3, 4))),
        C("batchnorm2d (eval)", "batchnorm2d", batchnorm_inputs((2, 3, 4, 5), False)),
        C("batchnorm2d (running statistics)", "batchnorm2d_running",
          batchnorm_inputs((2, 3, 4, 5), num_batches=0)),
        C("im2col_general (k=3, p=1, s=2, float32)", "im2col_general",
          im2col_general_inputs((2, 2, 5, 6), 3, 2, 1), "float32"),
        C("conv2d_general (k=3, s=2, p=1, float32)", "conv2d_general",
          conv_general_inputs(2, 2, 3, 6, 5, 3, 2, 1), "float32"),
        C("batchnorm2d (training, float32)", "batchnorm2d", batchnorm_inputs((2, 2, 3, 4)),
          "float32"),
    ]


def for_ops(checks: list[Check], ops) -> list[Check]:
    """The checks of an assignment's ops: all of the U-Net's when one of its ops is handed
    out (as before the family came: a conv check then still shows the ReLU's result), the
    family's only when handed out."""
    unet = any(o in UNET_OPS for o in ops)
    return [c for c in checks if c.op in ops or (unet and c.op in UNET_OPS)]
