"""What it takes to check one op, in one place: `OpCheck` (its functions, how to make inputs
away from its kinks, which inputs are differentiable, its thresholds) and the thresholds
themselves. minunet/nn/gradcheck.py (the U-Net's ops, and the numerical machinery that explains
these numbers) and minunet/nn/gradcheck_family.py (the family's) make the OpChecks; the
gradcheck command, the tests and the coursework's grader read them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
