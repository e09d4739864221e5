"""What the losses share: the stable sigmoid, the scalar-loss convention, input checks.

Every loss returns its value as a 0-d array of the prediction's dtype (as
`softmax_cross_entropy_forward` does) and its backward takes the scalar upstream
gradient dloss (1.0 for the loss itself). Targets are never differentiated: they
are the ground truth, so each backward returns the gradient of the prediction only.
"""

from __future__ import annotations

from ...backend.device import xp_of
from .._check import check_float, check_ndim


def sigmoid(z):
    """sigma(z) = 1 / (1 + exp(-z)), elementwise, without overflow: with e = exp(-|z|) <= 1,
    sigma(z) = 1 / (1 + e) for z >= 0 and e / (1 + e) for z < 0. Any shape; z's dtype."""
    xp = xp_of(z)
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def scalar(xp, value, dtype):
    """The loss as a 0-d array of `dtype` (the prediction's)."""
    return xp.asarray(value, dtype=dtype)


def is_host(a) -> bool:
    """True for a NumPy array: value checks (ranges) run on the host only, as the softmax
    loss's label check does; on the GPU they would need a device->host sync every step."""
    return type(a).__module__.split(".")[0] != "cupy"


def check_prediction_and_targets(op: str, pred_name: str, pred, targets,
                                 pred_in_unit: bool) -> None:
    """pred (N, C, H, W) float32/float64; targets of the same shape with values in [0, 1]
    (one-hot or soft labels; any float or integer dtype); pred in [0, 1] when pred_in_unit
    (probabilities, not logits)."""
    check_ndim(f"{op} {pred_name}", pred, 4, "N, C, H, W")
    check_float(f"{op} {pred_name}", pred)
    if getattr(targets, "shape", None) != pred.shape:
        shape = getattr(targets, "shape", type(targets).__name__)
        raise ValueError(f"{op}: targets must have the shape of the {pred_name} "
                         f"{pred.shape}, got {shape}")
    if targets.dtype.kind not in "fiub":
        raise ValueError(f"{op}: targets must be numbers in [0, 1], got dtype {targets.dtype}")
    if is_host(pred) and targets.size:
        _check_unit(op, "targets", targets)
        if pred_in_unit:
            _check_unit(op, pred_name, pred, hint="; apply sigmoid/softmax to logits first")


def _check_unit(op, name, a, hint=""):
    lo, hi = float(a.min()), float(a.max())
    if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
        raise ValueError(f"{op}: {name} must lie in [0, 1], found values {lo:g}..{hi:g}{hint}")
