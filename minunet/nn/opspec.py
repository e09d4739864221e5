"""What it takes to check one op, in one place: `OpCheck` (its functions, how to make inputs
away from its kinks, which inputs are differentiable, its thresholds) and the thresholds
themselves. minunet/nn/gradcheck.py (the U-Net's ops, and the numerical machinery that explains
these numbers) and minunet/nn/gradcheck_family.py (the family's) make the OpChecks; the
gradcheck command, the tests and the coursework's grader read them, and draw their inputs
with the makers below (one per kind of input, each keeping its op off its kinks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

THRESHOLD_FLOAT64 = 1e-7  # max relative error of one op's gradient in float64
THRESHOLD_FLOAT32 = 2e-2  # ops that do arithmetic (conv, up-conv, softmax)
THRESHOLD_FLOAT32_EXACT = 1e-6  # ops that only copy, select or scale (relu, pool, crop, ...)


@dataclass(frozen=True)
class OpCheck:
    """How to check one op: its functions, how to make its inputs, and its thresholds."""

    name: str  # the row label, e.g. "conv2d (k=3)"
    op: str  # what --op selects, e.g. "conv2d" (one op can have several checks)
    forward: Callable
    backward: Callable
    make_inputs: Callable  # (rng, dtype) -> dict of host inputs in the forward's order
    wrt: tuple  # the differentiable inputs, in the order the backward returns them
    threshold_float64: float = THRESHOLD_FLOAT64
    threshold_float32: float = THRESHOLD_FLOAT32
    floor_float64: float = 0.0  # rel_error floor in float64 as a fraction of max |n| (curved ops)
    float32: bool = True  # False: no float32 row (a step of STEP_FLOAT32 is too coarse for it)


# --- the input makers, one per kind of input, shared by every check ----------------------------
#
# The gradcheck command (minunet/nn/gradcheck.py, gradcheck_family.py), the tests and the
# coursework's grader (minunet/coursework/checks.py, hidden.py) draw their inputs with these:
# each maker is `make(rng, dtype) -> dict of inputs in the forward's argument order`, and
# each keeps its op's samples off its kinks in one place (the ReLU's 0, max-pool's ties).


def normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def conv_inputs(n, cin, cout, k, h, w, relu: bool = False, reach_step=None, conv=None):
    """x (n, cin, h, w), w (cout, cin, k, k), b (cout,), relu. With relu, redrawn until every
    pre-activation is far from the ReLU's kink at 0: a step of one input moves a
    pre-activation by at most step * max(|x|, |w|, 1), so every one must be twice that far.
    `reach_step(dtype)` is the check's step, `conv` the forward that computes the
    pre-activations (default: minunet.ops, the reference)."""
    def make(rng, dtype):
        for _ in range(1000):
            inputs = {"x": normal(rng, (n, cin, h, w), dtype),
                      "w": normal(rng, (cout, cin, k, k), dtype),
                      "b": normal(rng, (cout,), dtype), "relu": relu}
            if not relu:
                return inputs
            if conv is None:
                from minunet.ops import conv2d_forward as forward  # the plain reference
            else:
                forward = conv
            z, _ = forward(inputs["x"], inputs["w"], inputs["b"])
            reach = reach_step(np.dtype(dtype).name) * max(np.abs(inputs["x"]).max(),
                                                           np.abs(inputs["w"]).max(), 1.0)
            if np.abs(z).min() > 2 * reach:
                return inputs
        raise RuntimeError("found no conv2d inputs away from the ReLU kink")
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


def conv_general_inputs(n, cin, cout, h, w, k, stride=1, padding=0, groups=1, bias=True):
    """x, w (Cout, Cin/groups, k, k), b (or None), stride, padding, groups."""
    def make(rng, dtype):
        return {"x": normal(rng, (n, cin, h, w), dtype),
                "w": normal(rng, (cout, cin // groups, k, k), dtype),
                "b": normal(rng, (cout,), dtype) if bias else None,
                "stride": stride, "padding": padding, "groups": groups}
    return make
