"""Gradient checking: compare every hand-written backward with central differences.

A backward pass is correct when its gradient matches the slope of the forward
pass. For an op y = f(x) and an upstream gradient dy (what the rest of the
network sends back), the gradient the backward must return is

    dx[i] = d/dx[i] <dy, f(x)>  ~=  <dy, f(x + h e_i) - f(x - h e_i)> / (2h)

(central differences; e_i is the i-th unit vector). The central difference has
two errors: ~h^2 times the third derivative from the curvature, and the rounding
of f (~eps * |f|) divided by 2h. Most U-Net ops are linear in each input (conv,
up-conv, crop, concat, dropout) or piecewise linear (ReLU, max-pool away from
kinks), so their curvature error is exactly 0 and only rounding is left, which a
larger step shrinks. So each op takes its own step (its spec in minunet/nn/opspec.py):
h = 1 for ops linear in each input, the largest step that stays off the kinks for
piecewise-linear ones (0.04 for ReLU and max-pool, 0.01 for a conv with its fused
ReLU), and h = 1e-4 in float64 (eps ~ 1e-16) for smooth ops such as the softmax,
whose curvature error (~1e-9) is then still below its rounding error.

We compare the analytic gradient a with the numerical one n element by element:

    rel_error(a, n) = max_i |a_i - n_i| / max(|a_i| + |n_i|, 1e-8)

(the 1e-8 floor keeps entries that are both ~0 from dividing by 0). A correct
single op in float64 typically reaches 1e-9 or better; a wrong one is off by
1e-1 or more, so THRESHOLD_FLOAT64 = 1e-7 separates them with a wide margin.

The inputs of each check avoid the points where an op has no derivative (its
"kinks"): max-pool gets distinct values (no ties), ReLU gets |x| >= 0.1.

What is here, from the bottom up:

    numerical_gradient(f, x, df, h)     central differences of <df, f(x)> for every x[i]
    rel_error(a, b)                     the relative error above
    check_op(...)                       one op: random dy, analytic vs numerical, per input
    directional_check(...)              big functions (the whole U-Net): a few random
                                        directions instead of every parameter
    op_checks(), run_checks(...)        the named check of every op: its spec
                                        (minunet/nn/opspec.py) bound to a door
    (python -m minunet.gradcheck, minunet/gradcheck.py, runs them from the command line)

This module imports only the backend, NumPy and the specs (minunet/nn/opspec.py, which
imports nothing of minunet) at the top: the ops are imported inside `op_checks`, so
the numerical machinery works for any function, including
the student copies of the ops made for the coursework.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from minunet import backend
from minunet.nn.opspec import (  # noqa: F401  (the steps and thresholds, named here too)
    FLOOR_FRACTION_FLOAT32,
    STEP_FLOAT32,
    STEP_FLOAT64,
    THRESHOLD_FLOAT32,
    THRESHOLD_FLOAT32_EXACT,
    THRESHOLD_FLOAT64,
    OpSpec,
    checked_specs,
)

# --- step sizes and thresholds (the numbers a student may want to change) ------------

# STEP_FLOAT64 = 1e-4: central-difference step h for smooth ops in float64; ops linear or
# piecewise linear in each input take their spec's larger step (see the docstring)
# THRESHOLD_FLOAT64 = 1e-7: max relative error of one op's gradient in float64. With
# h = 1e-4 for every op a correct conv with its fused ReLU missed it at 3 seeds of 41
# (worst 6.4e-7: a dx entry of ~1e-5, rounding ~1e-11 over 2h); with each spec's step no
# correct op failed over seeds 0-59 (docs/DESIGN.md, "Gradient checks").

# float32 keeps only ~7 significant digits (eps ~ 6e-8). The forward pass then
# rounds each output by ~1e-7 of its size, and that rounding divided by 2h is the
# error of a central difference; so float32 uses a much larger step. The error is
# then small next to the gradient as a whole but not next to an entry that happens
# to be tiny, so float32 also raises the 1e-8 floor of rel_error to a fraction of
# the largest numerical gradient entry. (Checked over 80 seeds: worst 4e-3 for
# softmax, ~5e-4 for conv.) Only the float64 check proves a gradient right; the
# float32 one catches errors in the float32 code path (a wrong cast, a gradient
# off by a few percent or more).
# STEP_FLOAT32 = 3e-2
# THRESHOLD_FLOAT32: ops that do arithmetic (conv, up-conv, softmax)
# THRESHOLD_FLOAT32_EXACT: ops that only copy, select or scale
# FLOOR_FRACTION_FLOAT32 = 1e-2: rel_error floor = this * max |numerical gradient|
# (all of them are defined in minunet/nn/opspec.py, beside the per-op thresholds of OpSpec)

# The whole network (directional_check): many ops in a row, each adding rounding,
# and thousands of ReLU / max-pool kinks that a step along d could cross, so a
# smaller default step than for one op with kink-free inputs.
STEP_DIRECTIONAL_FLOAT64 = 1e-6
THRESHOLD_DIRECTIONAL_FLOAT64 = 1e-6

REL_ERROR_FLOOR = 1e-8  # docs/DESIGN.md, "Gradient checks": relative error with a 1e-8 floor


# --- the numerical machinery (independent of the ops) ---------------------------------


def rel_error(a, b, floor: float = REL_ERROR_FLOOR) -> float:
    """max_i |a_i - b_i| / max(|a_i| + |b_i|, floor); a, b NumPy or CuPy arrays or scalars."""
    return float(_rel_error_map(a, b, floor).max(initial=0.0))


def _rel_error_map(a, b, floor: float = REL_ERROR_FLOOR) -> np.ndarray:
    """The element-wise relative error (host float64 array of the common shape)."""
    a = np.asarray(backend.to_host(a), dtype=np.float64)
    b = np.asarray(backend.to_host(b), dtype=np.float64)
    return np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), floor)


def numerical_gradient(f: Callable, x, df, h: float = STEP_FLOAT64):
    """Central-difference gradient of <df, f(x)> with respect to every element of x.

    f: a function of x returning an array (or a scalar) of any shape; df: an array
    of that shape (or a scalar), the upstream gradient. Returns an array of x's
    shape in float64, on x's device (NumPy or CuPy).

    x is changed in place during the call, one element at a time, and restored.
    Only the elements of f(x) that depend on x[i] change between f(x + h e_i) and
    f(x - h e_i); subtracting the two arrays before summing keeps the rounding
    error of all the other elements out of the result.
    """
    xp = backend.xp_of(x)
    grad = xp.zeros(x.shape, dtype=xp.float64)
    for i in np.ndindex(*x.shape):
        old = x[i].item()
        x[i] = old + h
        up = x[i].item()  # the value really stored (x + h rounded to x's dtype)
        f_plus = _float64_copy(xp, f(x))  # copy: f may return a view of x
        x[i] = old - h
        down = x[i].item()
        f_minus = _float64_copy(xp, f(x))
        x[i] = old
        # divide by the step really taken: in float32, x + h is not exactly x + h
        grad[i] = float(xp.sum((f_plus - f_minus) * df)) / (up - down)
    return grad


def _float64_copy(xp, a):
    return xp.asarray(a).astype(xp.float64, copy=True)


# --- one op ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GradCheckResult:
    """The check of one gradient: the backward's d<input> against central differences."""

    op: str  # the check's name, e.g. "conv2d (k=3)"
    input: str  # the forward input the gradient belongs to, e.g. "w"
    shape: tuple  # that input's shape
    max_rel_error: float  # max over its elements of rel_error (inf when there is no gradient)
    threshold: float  # passed means max_rel_error <= threshold
    passed: bool
    worst_index: tuple = ()  # the element with the largest relative error
    analytic: float = float("nan")  # the backward's value there
    numeric: float = float("nan")  # the central difference there
    note: str = ""  # what went wrong when there were no numbers to compare

    def explain(self) -> str:
        """One line saying where the gradient is worst (for a FAIL row)."""
        if self.note:
            return self.note
        where = f"d{self.input}[{', '.join(str(int(i)) for i in self.worst_index)}]"
        return (f"worst element {where}: backward gives {self.analytic:.6g}, "
                f"central difference gives {self.numeric:.6g}")


def _is_array(a) -> bool:
    return isinstance(a, np.ndarray) or backend.is_gpu_array(a)


def _copy_inputs(inputs: dict) -> dict:
    return {k: (v.copy() if _is_array(v) else v) for k, v in inputs.items()}


def random_upstream(out, rng: np.random.Generator, xp):
    """A random upstream gradient shaped like `out` (a Python float for a scalar out)."""
    if getattr(out, "ndim", 0) == 0:
        return float(rng.standard_normal())
    dout = rng.standard_normal(out.shape).astype(out.dtype)  # drawn on the host: reproducible
    return dout if xp is np else backend.to_device(dout)


def check_op(op: str, forward: Callable, backward: Callable, inputs: dict,
             wrt: Sequence[str], rng: np.random.Generator,
             threshold: float = THRESHOLD_FLOAT64,
             h: float = STEP_FLOAT64,
             floor_fraction: float = 0.0) -> list[GradCheckResult]:
    """Check the gradients of one op; one GradCheckResult per name in `wrt`.

    forward(*inputs.values()) -> (out, cache)     inputs in the forward's argument order
    backward(dout, cache)     -> gradients        one array, or a tuple in the order of wrt
    wrt: the differentiable inputs, in the order the backward returns their gradients
    rng: draws the upstream gradient dout (standard normal, or a scalar for a scalar out)
    h: the central-difference step
    floor_fraction: 0 for the plain rel_error (floor 1e-8); float32 raises the floor
        to floor_fraction * max |numerical gradient| (see FLOOR_FRACTION_FLOAT32)

    The analytic gradients come from one forward and one backward on copies of the
    inputs; the numerical ones from numerical_gradient on another copy, so neither
    can see the other's changes.
    """
    arrays = [v for v in inputs.values() if _is_array(v)]
    xp = backend.xp_of(*arrays)
    out, cache = forward(*_copy_inputs(inputs).values())
    dout = random_upstream(out, rng, xp)
    grads = backward(dout, cache)
    if not isinstance(grads, tuple | list):
        grads = (grads,)

    results = []
    for k, name in enumerate(wrt):
        x = inputs[name]
        shape = tuple(x.shape)

        def fail(note, name=name, shape=shape):
            return GradCheckResult(op, name, shape, float("inf"), threshold, False, note=note)

        if k >= len(grads) or grads[k] is None:
            results.append(fail(f"the backward returned no gradient for {name} "
                                f"(expected {len(wrt)} gradients: d{', d'.join(wrt)})"))
            continue
        g = grads[k]
        if tuple(g.shape) != shape:
            results.append(fail(f"d{name} has shape {tuple(g.shape)}, but {name} has shape "
                                f"{shape}: a gradient has the shape of its input"))
            continue

        fresh = _copy_inputs(inputs)

        def f(v, name=name, fresh=fresh):
            return forward(*(v if key == name else val for key, val in fresh.items()))[0]

        num = numerical_gradient(f, fresh[name], dout, h)
        num_max = float(np.abs(backend.to_host(num)).max(initial=0.0))
        err = _rel_error_map(g, num, max(REL_ERROR_FLOOR, floor_fraction * num_max))
        worst = np.unravel_index(int(np.argmax(err)), err.shape) if err.size else ()
        max_err = float(err[worst]) if err.size else 0.0
        results.append(GradCheckResult(
            op, name, shape, max_err, threshold, max_err <= threshold, tuple(worst),
            float(backend.to_host(g)[worst]) if err.size else float("nan"),
            float(backend.to_host(num)[worst]) if err.size else float("nan"),
        ))
    return results


def check_spec(op: str, forward: Callable, backward: Callable, inputs: dict,
               rng: np.random.Generator, name: str | None = None) -> list[GradCheckResult]:
    """check_op with what the op's spec (minunet/nn/opspec.py) says: its differentiable inputs
    (those of `inputs` that are given: a conv without bias has no db), the threshold and floor
    of the inputs' dtype, its step. For tests that check an op on inputs of their own
    (tests/ops): they list no wrt, threshold or step of their own, and keep their inputs as
    far from the op's kinks as the spec's makers do (its step never crosses one)."""
    from minunet.nn.opspec import spec

    s = spec(op)
    wrt = tuple(n for n in s.wrt if inputs.get(n) is not None)
    dtype = next(v.dtype for k, v in inputs.items() if k in wrt)
    h = s.step(dtype, relu=bool(inputs.get("relu", False)))
    return check_op(name or op, forward, backward, inputs, wrt, rng,
                    threshold=s.threshold(dtype), h=h,
                    floor_fraction=s.floor(dtype))


# --- a big function: random directions --------------------------------------------------


@dataclass(frozen=True)
class DirectionalResult:
    """One random direction d: the slope of the loss along d, two ways."""

    direction: int  # 0, 1, ... (which random direction)
    analytic: float  # <grad, d>, summed over all parameters
    numeric: float  # (L(p + h d) - L(p - h d)) / (2h)
    rel_error: float  # |analytic - numeric| / max(|analytic| + |numeric|, 1e-8)
    threshold: float
    passed: bool


def directional_check(f_loss: Callable[[dict], float], params: dict, grads: dict,
                      n_dirs: int = 5, rng: np.random.Generator | None = None,
                      h: float = STEP_DIRECTIONAL_FLOAT64,
                      threshold: float = THRESHOLD_DIRECTIONAL_FLOAT64
                      ) -> list[DirectionalResult]:
    """Check the gradient of a big scalar function along `n_dirs` random directions.

    f_loss(params) -> the loss (a float or 0-d array) for a dict of parameter arrays;
    it must not change the arrays it is given. grads: the analytic gradient, a dict
    with the same keys and shapes (e.g. from the model's backward at `params`).

    Checking every one of the U-Net's millions of parameters by central differences
    would take millions of forward passes; a random unit direction d (one array per
    parameter, normalised over all of them together) costs two:

        analytic = sum_k <grads[k], d[k]>
        numeric  = (f_loss(params + h d) - f_loss(params - h d)) / (2h)

    A wrong gradient anywhere shows up along almost every random direction.
    """
    if set(grads) != set(params):
        missing, extra = sorted(set(params) - set(grads)), sorted(set(grads) - set(params))
        raise ValueError(f"directional_check: grads must have the keys of params; "
                         f"missing {missing}, unexpected {extra}")
    for k, p in params.items():
        if tuple(grads[k].shape) != tuple(p.shape):
            raise ValueError(f"directional_check: grads[{k!r}] has shape "
                             f"{tuple(grads[k].shape)}, params[{k!r}] {tuple(p.shape)}")
    rng = np.random.default_rng(0) if rng is None else rng

    results = []
    for t in range(n_dirs):
        d = {k: rng.standard_normal(p.shape) for k, p in params.items()}  # host float64
        norm = np.sqrt(sum(float(np.sum(v * v)) for v in d.values()))
        d = {k: v / norm for k, v in d.items()}  # one unit vector over all parameters
        d = {k: (v if not backend.is_gpu_array(params[k]) else backend.to_device(v))
             for k, v in d.items()}

        analytic = sum(float(backend.xp_of(g).sum(g.astype(d[k].dtype) * d[k]))
                       for k, g in grads.items())
        plus = {k: (p + h * d[k]).astype(p.dtype) for k, p in params.items()}
        minus = {k: (p - h * d[k]).astype(p.dtype) for k, p in params.items()}
        numeric = (float(f_loss(plus)) - float(f_loss(minus))) / (2 * h)

        err = abs(analytic - numeric) / max(abs(analytic) + abs(numeric), REL_ERROR_FLOOR)
        results.append(DirectionalResult(t, analytic, numeric, err, threshold,
                                         err <= threshold))
    return results


# --- the named checks: every op's spec (minunet/nn/opspec.py) bound to a door ----------------


@dataclass(frozen=True)
class OpCheck:
    """One row of the command: a case of an op's spec, its forward and backward taken from a
    door (plain or fast). Its wrt and thresholds are the spec's."""

    spec: OpSpec
    name: str  # the row label, e.g. "conv2d (k=3)"
    make_inputs: Callable  # (rng, dtype) -> dict of host inputs in the forward's order
    forward: Callable
    backward: Callable

    @property
    def op(self) -> str:  # what --op selects (one op can have several rows)
        return self.spec.op

    @property
    def wrt(self) -> tuple:
        return self.spec.wrt_of(self.make_inputs)

    @property
    def threshold_float64(self) -> float:
        return self.spec.threshold_float64

    @property
    def threshold_float32(self) -> float:
        return self.spec.threshold_float32

    @property
    def floor_float64(self) -> float:
        return self.spec.floor_float64

    @property
    def float32(self) -> bool:
        return self.spec.float32


def family_checks(kind: str = "plain") -> list[OpCheck]:
    """The OpCheck of every family op and loss, on the plain or the fast door."""
    return [c for c in op_checks(kind, family=True) if c.spec.family]


def op_checks(kind: str = "plain", family: bool = False) -> list[OpCheck]:
    """The gradient check of every U-Net op (the cases of its spec: small float shapes, N = 2,
    odd and even sizes); with family=True also those of the U-Net family's ops and losses.

    kind: "plain" checks the lesson's ops (minunet/ops), "fast" the fast ones (minunet/fast;
    a family op without a fast twin is checked on its plain op, the fast door's too).
    """
    from minunet.nn.gradcheck_family import door_module  # imported here: the machinery
    from minunet.nn.layers import op_module  # above needs no ops

    ops = op_module(kind)
    checks = []
    for s in checked_specs(family):
        where = door_module(s.module, kind) if s.family else ops
        forward, backward = getattr(where, s.forward), getattr(where, s.backward)
        checks += [OpCheck(s, c.label, c.make, forward, backward) for c in s.cases]
    return checks


def op_names(family: bool = False) -> list[str]:
    """The names --op accepts, in table order (with family=True, the family's too)."""
    return list(dict.fromkeys(c.op for c in op_checks(family=family)))


def run_checks(ops: Sequence[str] | None = None, dtype: str = "float64",
               device: str = "cpu", seed: int = 0, kind: str = "plain",
               family: bool = False) -> list[GradCheckResult]:
    """Run the named checks of `ops` (all when None) in `dtype` on `device` ('cpu'/'cuda'),
    on the plain ops (kind="plain", minunet/ops) or the fast ones (kind="fast", minunet/fast);
    family=True adds the U-Net family's ops and losses. A check without a float32 row
    (its spec's float32 False) is left out of a float32 run.

    Every check draws from its own generator, seeded by (seed, its position in the
    list), so checking one op gives the same numbers as checking all of them.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    checks = op_checks(kind, family)
    if ops is not None:
        unknown = sorted(set(ops) - {c.op for c in checks})
        if unknown:
            raise ValueError(f"unknown op(s) {', '.join(unknown)}; valid ops: "
                             f"{', '.join(op_names(family))}")
    results = []
    for position, c in enumerate(checks):
        if (ops is not None and c.op not in ops) or (dtype == np.float32 and not c.float32):
            continue
        rng = np.random.default_rng([seed, position])
        inputs = c.make_inputs(rng, dtype)
        if device == "cuda":
            inputs = {k: (backend.to_device(v) if _is_array(v) else v)
                      for k, v in inputs.items()}
        h = c.spec.step(dtype, relu=bool(inputs.get("relu", False)))  # the op's own step
        results += check_op(c.name, c.forward, c.backward, inputs, c.wrt, rng,
                            threshold=c.spec.threshold(dtype), h=h,
                            floor_fraction=c.spec.floor(dtype))
    return results


# --- the report ------------------------------------------------------------------------------


def format_table(results: Sequence[GradCheckResult]) -> str:
    """One row per op and input; a FAIL row is followed by where its gradient is worst."""
    header = ("op", "input", "shape", "max rel error", "threshold", "result")
    rows = [(r.op, r.input, str(r.shape), f"{r.max_rel_error:.2e}", f"{r.threshold:.0e}",
             "PASS" if r.passed else "FAIL") for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(s.ljust(w) for s, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r, row in zip(results, rows, strict=True):
        lines.append("  ".join(s.ljust(w) for s, w in zip(row, widths, strict=True)).rstrip())
        if not r.passed:
            lines.append(f"    -> d{r.input} of {r.op} is wrong: {r.explain()}")
    return "\n".join(lines)


def summary_line(results: Sequence[GradCheckResult]) -> str:
    """'all N gradients PASS' or 'k of N gradients FAIL: ...', with the worst error."""
    n = len(results)
    if n == 0:
        return "summary: no gradients checked"
    worst = max(results, key=lambda r: r.max_rel_error)
    worst_text = (f"worst: {worst.op} d{worst.input} {worst.max_rel_error:.2e} "
                  f"(threshold {worst.threshold:.0e})")
    failed = [r for r in results if not r.passed]
    if not failed:
        return f"summary: all {n} gradients PASS; {worst_text}"
    names = ", ".join(f"{r.op} d{r.input}" for r in failed)
    return f"summary: {len(failed)} of {n} gradients FAIL ({names}); {worst_text}"




# --- a whole network: any model of the registry ---------------------------------------------


@dataclass
class ModelCheckResult:
    """The whole network's gradient along one random direction of all its parameters."""

    direction: int
    analytic: float
    numeric: float
    rel_error: float
    step: float  # the h that stayed inside one linear piece
    passed: bool


def model_gradcheck(model, x, labels, weights, dropout_key: int | None = None, n_dirs: int = 4,
                    h: float = 1e-5, threshold: float = THRESHOLD_DIRECTIONAL_FLOAT64,
                    seed: int = 0) -> list[ModelCheckResult]:
    """Check a whole network's backward (float64) along `n_dirs` random unit directions d of
    all its parameters: <grad L, d> against (L(p + h d) - L(p - h d)) / 2h, with L the model's
    own loss. Kinks are found by the network's own forward (minunet/nn/trace.py,
    KinkRecorder): a step is kept only when both sides lie in the piece of the unmoved
    parameters (same ReLU signs, same pool winners), else h shrinks fourfold (up to six
    times). Works for every model of the registry: nothing here knows its layers."""
    from minunet.nn.trace import KinkRecorder

    if np.dtype(model.config.dtype) != np.float64:
        raise ValueError("model_gradcheck needs a float64 model (UNetConfig(dtype='float64'))")
    real_ops = model.ops
    rec = KinkRecorder(real_ops)
    model.ops = rec
    model.build(rec)  # the same layers, on the recording namespace
    try:
        def loss_and_piece():
            rec.reset()
            logits = model.forward(x, dropout_key=dropout_key)
            loss = float(model.loss_forward(logits, labels, weights)[0])
            model.release_caches()
            return loss, rec.digest()

        logits = model.forward(x, dropout_key=dropout_key)
        loss, cache = model.loss_forward(logits, labels, weights)
        model.zero_grad()
        model.backward(model.loss_backward(cache))
        grads = {k: backend.to_host(g).copy() for k, g in model.grads.items()}
        base = {k: v.copy() for k, v in model.params.items()}
        _, piece = loss_and_piece()
        rng = np.random.default_rng(seed)
        results = []
        for t in range(n_dirs):
            d = {k: rng.standard_normal(v.shape) for k, v in base.items()}
            norm = np.sqrt(sum(float((v * v).sum()) for v in d.values()))
            analytic = sum(float((grads[k] * d[k]).sum()) for k in grads) / norm
            step, numeric = h, None
            for _ in range(6):
                sides = []
                for s in (step, -step):
                    for k in model.params:
                        model.params[k] = base[k] + backend.xp_of(base[k]).asarray(
                            s * d[k] / norm)
                    sides.append(loss_and_piece())
                if sides[0][1] == piece and sides[1][1] == piece:
                    numeric = (sides[0][0] - sides[1][0]) / (2 * step)
                    break
                step /= 4
            for k in model.params:
                model.params[k] = base[k]
            if numeric is None:
                raise AssertionError(f"direction {t}: every step crossed a ReLU/max-pool kink")
            err = abs(analytic - numeric) / max(abs(analytic) + abs(numeric), REL_ERROR_FLOOR)
            results.append(ModelCheckResult(t, analytic, numeric, err, step, err <= threshold))
        return results
    finally:
        model.ops = real_ops
        model.build(real_ops)
