"""The self-checks of the tutorials' exercises: each judges a learner's answer.

Every exercise cell of tutorials/ ends with

    report(check_relu_backward(relu_backward_mine))

A check returns a `Verdict`: "not attempted yet" while the learner's stub still raises
NotImplementedError (or the answer is still None), "right", or "wrong" with a message that
names the concept. `report` prints it and raises AssertionError for a wrong answer, so a
notebook run in CI with the stubs unfilled goes through, and a wrong answer stops the cell.

A code exercise (a backward, a level of the U-Net, a momentum step) is judged twice: by the
project's gradient checker (`minunet.nn.gradcheck.check_op`: the learner's backward against
central differences of the forward) and against the op itself. When it is wrong, the hint
comes from the coursework's catalogue of typical mistakes (`minunet.coursework.mistakes`):
the learner's result is compared with what each known wrong version of the same region
computes on the same inputs, as the grader does; when none matches, the value probes
(sign, a constant factor, right values in the wrong places: `minunet.coursework.probes`)
speak. `python -m minunet.coursework` is the graded version of the same work.

A typed answer (a number, a shape, a list) is compared at the precision the exercise asks
for (`check_number(answer, truth, decimals=6)`: a right answer typed to six decimals passes).

tests/test_tutorial_checks.py feeds every check a right answer and typical wrong ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from minunet import ops as reference
from minunet.coursework import mistakes as catalogue
from minunet.coursework import probes
from minunet.nn.gradcheck import THRESHOLD_FLOAT64, check_op, rel_error

RIGHT, WRONG, NOT_ATTEMPTED = "right", "wrong", "not attempted yet"
SAME_AS_OP = 1e-9  # relative error below which a result equals the op's (float64 rounding)
GRADED = "the graded version: python -m minunet.coursework"


@dataclass(frozen=True)
class Verdict:
    """What a self-check says about one answer."""

    exercise: str  # e.g. "02, exercise 1 (ReLU backward)"
    status: str  # RIGHT, WRONG or NOT_ATTEMPTED
    message: str = ""  # what was checked, or (wrong) what is wrong and the hint

    @property
    def ok(self) -> bool:
        return self.status == RIGHT

    def __str__(self) -> str:
        return f"{self.exercise}: {self.status}" + (f". {self.message}" if self.message else "")


def report(verdict: Verdict) -> None:
    """Print the verdict; a wrong answer raises AssertionError with the same message. Returns
    nothing, so that a notebook cell ending with it shows the verdict once."""
    print(verdict)
    if verdict.status == WRONG:
        raise AssertionError(str(verdict))


class _NotAttempted(Exception):
    pass


class _Raised(Exception):
    pass


def _call(fn, *args):
    """fn(*args); _NotAttempted while fn is None or raises NotImplementedError; _Raised for any
    other error (with its type and message)."""
    if fn is None:
        raise _NotAttempted
    try:
        return fn(*args)
    except NotImplementedError:
        raise _NotAttempted from None
    except Exception as e:  # the learner's code failed: say how, do not crash the check
        raise _Raised(f"your code raised {type(e).__name__}: {e}") from None


def _attempt(exercise: str, judge: Callable[[], Verdict], graded: bool = True) -> Verdict:
    """judge(), or the verdict for a stub not yet written (graded: the coursework grades the
    same work) or for code that raised."""
    try:
        return judge()
    except _NotAttempted:
        return Verdict(exercise, NOT_ATTEMPTED, "Write the code and rerun the cell"
                       + (f"; {GRADED}" if graded else ""))
    except _Raised as e:
        return Verdict(exercise, WRONG, str(e))


def _same(a, b, rtol: float = SAME_AS_OP) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all(np.isfinite(a))) and rel_error(a, b) <= rtol


def _value_hint(mine, ref) -> str:
    """The probes' hint for a result of the right shape: a sign, a constant factor, or right
    values in the wrong places ('' when none fits)."""
    a, r = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
    if a.shape != r.shape or not np.all(np.isfinite(a)):
        return ""
    rr = float(np.vdot(r, r))
    if rr > 0:
        c = float(np.vdot(a, r)) / rr
        if np.linalg.norm(a - c * r) <= 1e-9 * max(float(np.linalg.norm(a)), 1e-30):
            if abs(c + 1) < 1e-6:
                return catalogue.PROBES["sign"]
            if abs(c - 1) > 1e-6:
                return f"{catalogue.PROBES['constant_ratio']} (yours = {c:.4g} x the op's)"
    placed = probes.classify(a, r, 1e-9)
    return catalogue.PROBES[placed] if placed else ""


def catalogue_hint(region: str, mine, run_wrong: Callable) -> str:
    """The hint of the first catalogue mistake of `region` whose wrong version gives `mine`.

    run_wrong(ns) computes the result with the ops namespace ns (the reference ops with one
    mistake's functions swapped in). In a student copy the wrong versions are not there, and
    this returns ''.
    """
    mine = mine if isinstance(mine, tuple | list) else (mine,)
    for m in catalogue.for_region(region):
        if m.wrong is None or m.probe == "nondeterministic":
            continue
        with np.errstate(all="ignore"):
            wrong = run_wrong(catalogue.wrong_namespace(reference, m))
        wrong = wrong if isinstance(wrong, tuple | list) else (wrong,)
        if len(wrong) == len(mine) and all(
                w is not None and y is not None and np.shape(w) == np.shape(y)
                and _same(y, w, 1e-6) for w, y in zip(wrong, mine, strict=True)):
            return m.hint
    return ""


def _reference(fn, *args):
    """The op's result, or None where the op is not written (a student copy's stub)."""
    try:
        return fn(*args)
    except NotImplementedError:
        return None


def check_backward(exercise: str, region: str, forward: Callable, backward: Callable,
                   mine: Callable | None, inputs: dict, wrt: tuple, names: dict | None = None,
                   seed: int = 0, at_kinks: dict | None = None) -> Verdict:
    """Judge a learner's backward `mine(dout, cache)` of the op pair (forward, backward).

    The gradient check (central differences of `forward`, minunet.nn.gradcheck.check_op) and the
    op's own backward must both agree with it. `region` is the catalogue's region for hints
    ("relu.backward"); names maps forward/backward to their names in minunet.ops (for the
    catalogue's wrong versions, which may replace either). at_kinks: other inputs, on
    which the result is compared with the op only (central differences are wrong at a kink,
    e.g. a ReLU input of exactly 0).
    """
    names = names or {"forward": forward.__name__, "backward": backward.__name__}

    def judge() -> Verdict:
        rng = np.random.default_rng(seed)
        given = at_kinks or inputs
        out, cache = forward(*(np.copy(v) if isinstance(v, np.ndarray) else v
                               for v in given.values()))
        dout = (float(rng.standard_normal()) if np.ndim(out) == 0
                else rng.standard_normal(np.shape(out)))
        got = _call(mine, dout, cache)
        got_t = tuple(got) if isinstance(got, tuple | list) else (got,)
        if len(got_t) != len(wrt):
            return Verdict(exercise, WRONG, f"return {len(wrt)} gradient(s), "
                           f"d{', d'.join(wrt)}, in the order of the forward's inputs; "
                           f"yours returned {len(got_t)}")
        for name, g in zip(wrt, got_t, strict=True):
            if g is None or np.shape(g) != np.shape(given[name]):
                return Verdict(exercise, WRONG, f"d{name} must have the shape of {name}, "
                               f"{np.shape(given[name])}; yours has {np.shape(g)}: "
                               f"{catalogue.PROBES['shape']}")
        results = check_op(exercise, forward, lambda d, c: _call(mine, d, c), inputs, wrt,
                           np.random.default_rng(seed + 1))
        ref = _reference(backward, dout, cache)
        ref_t = tuple(ref) if isinstance(ref, tuple | list) else (ref,)
        worst = max(r.max_rel_error for r in results)
        if all(r.passed for r in results) and (ref is None or all(
                _same(g, r) for g, r in zip(got_t, ref_t, strict=True))):
            against = "" if ref is None else f" and equals minunet.ops.{names['backward']}"
            return Verdict(exercise, RIGHT, f"gradient check: max relative error {worst:.1e} "
                           f"(threshold {THRESHOLD_FLOAT64:g}){against}; {GRADED}")
        failed = [r for r in results if not r.passed] or results
        bad = failed[0]
        index = [int(i) for i in bad.worst_index]
        where = (f"d{bad.input} fails the gradient check (max relative error "
                 f"{bad.max_rel_error:.2g}; worst element {bad.input}{index}: "
                 f"yours {bad.analytic:.4g}, central differences {bad.numeric:.4g})")
        if all(r.passed for r in results):
            k = next(i for i, (g, r) in enumerate(zip(got_t, ref_t, strict=True))
                     if not _same(g, r))
            where = (f"passes the gradient check but d{wrt[k]} differs from the op's by up "
                     f"to {rel_error(got_t[k], ref_t[k]):.2g} (relative) on inputs with kinks")

        def run_wrong(ns):
            _, wcache = getattr(ns, names["forward"])(*given.values())
            return getattr(ns, names["backward"])(dout, wcache)

        hint = catalogue_hint(region, got_t if len(got_t) > 1 else got_t[0], run_wrong)
        if not hint and ref is not None:
            k = wrt.index(bad.input)
            hint = _value_hint(got_t[k], ref_t[k])
        return Verdict(exercise, WRONG, where + (f". Hint: {hint}" if hint else ""))

    return _attempt(exercise, judge)


# --- the code exercises ----------------------------------------------------------------------


def _image(rng, shape, away_from_zero=False):
    x = rng.standard_normal(shape)
    if away_from_zero:  # ReLU: no input within 0.1 of its kink
        x = np.sign(x) * (0.1 + np.abs(x))
    return x


def check_relu_backward(mine, seed: int = 0) -> Verdict:
    """02: relu_backward_mine(dout, cache) -> dx, with cache.out the forward's output."""
    x = _image(np.random.default_rng(seed), (2, 3, 4, 5), away_from_zero=True)
    zeros = x.copy()
    zeros[0, 0, 0, :3] = 0.0  # exact zeros: the derivative there is taken as 0
    return check_backward("ReLU backward", "relu.backward", reference.relu_forward,
                          reference.relu_backward, mine, {"x": x}, ("x",), seed=seed,
                          at_kinks={"x": zeros})


def check_maxpool_backward(mine, seed: int = 0) -> Verdict:
    """02: maxpool_backward_mine(dout, cache) -> dx, with cache.arg = 2i + j per window."""
    rng = np.random.default_rng(seed)
    x = (rng.permutation(2 * 3 * 6 * 8) * 0.1).reshape(2, 3, 6, 8)  # distinct: no ties
    return check_backward("max-pool backward", "maxpool2x2.backward",
                          reference.maxpool2x2_forward, reference.maxpool2x2_backward, mine,
                          {"x": x}, ("x",), seed=seed)


def check_conv_backward(mine, seed: int = 0) -> Verdict:
    """01: conv_backward_mine(dout, cache) -> (dx, dw, db) for conv2d_forward(x, w, b)."""
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((2, 3, 6, 7)), "w": rng.standard_normal((4, 3, 3, 3)),
              "b": rng.standard_normal(4)}
    return check_backward("convolution backward", "conv2d.backward", reference.conv2d_forward,
                          reference.conv2d_backward, mine, inputs, ("x", "w", "b"), seed=seed)


def check_softmax_backward(mine, seed: int = 0) -> Verdict:
    """03: softmax_backward_mine(dloss, cache) -> dlogits for softmax_cross_entropy_forward."""
    rng = np.random.default_rng(seed)
    inputs = {"logits": rng.standard_normal((2, 3, 4, 5)),
              "labels": rng.integers(0, 3, (2, 4, 5)),
              "weights": rng.uniform(0.5, 3.0, (2, 4, 5))}
    return check_backward("softmax cross-entropy backward", "softmax_cross_entropy.backward",
                          reference.softmax_cross_entropy_forward,
                          reference.softmax_cross_entropy_backward, mine, inputs, ("logits",),
                          seed=seed)


def check_dropout_backward(mine, seed: int = 0) -> Verdict:
    """00: dropout_backward_mine(dout, cache) -> dx, with cache.scale_mask (0 or 1/(1-p))."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 4, 4))
    mask = reference.dropout_mask(x.shape, 0.5, rng, x.dtype)
    return check_backward("dropout backward", "dropout.backward", reference.dropout_forward,
                          reference.dropout_backward, mine, {"x": x, "scale_mask": mask}, ("x",),
                          seed=seed)


# 04: one level of the contracting path, forward and backward


def level_reference_forward(x, w0, b0, w1, b1):
    """The reference of 04's exercise: conv3x3+ReLU, conv3x3+ReLU -> skip; 2x2 max-pool ->
    down. Returns (skip, down) and the three ops' caches."""
    h, c0 = reference.conv2d_forward(x, w0, b0, relu=True)
    skip, c1 = reference.conv2d_forward(h, w1, b1, relu=True)
    down, cp = reference.maxpool2x2_forward(skip)
    return (skip, down), (c0, c1, cp)


def level_reference_backward(dskip, ddown, cache):
    c0, c1, cp = cache
    dfeat = dskip + reference.maxpool2x2_backward(ddown, cp)
    dh, dw1, db1 = reference.conv2d_backward(dfeat, c1)
    dx, dw0, db0 = reference.conv2d_backward(dh, c0)
    return dx, dw0, db0, dw1, db1


def _level_inputs(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((1, 2, 12, 12)),
            "w0": rng.standard_normal((3, 2, 3, 3)) * 0.5, "b0": rng.uniform(0.2, 0.5, 3),
            "w1": rng.standard_normal((3, 3, 3, 3)) * 0.5, "b1": rng.uniform(0.2, 0.5, 3)}


def check_unet_level(forward_mine, backward_mine, seed: int = 0) -> Verdict:
    """04: level_forward(x, w0, b0, w1, b1) -> ((skip, down), cache) and
    level_backward(dskip, ddown, cache) -> (dx, dw0, db0, dw1, db1)."""
    exercise = "one level of the U-Net"
    inputs = _level_inputs(seed)
    wrt = tuple(inputs)

    def judge() -> Verdict:
        (skip, down), _ = level_reference_forward(*inputs.values())
        got = _call(forward_mine, *(v.copy() for v in inputs.values()))
        if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], tuple | list)
                and len(got[0]) == 2):
            return Verdict(exercise, WRONG, "level_forward returns ((skip, down), cache): "
                           f"{catalogue.PROBES['structure']}")
        (my_skip, my_down), my_cache = got
        if np.shape(my_skip) != skip.shape or np.shape(my_down) != down.shape:
            return Verdict(exercise, WRONG, f"skip must be {skip.shape} and down {down.shape}; "
                           f"yours are {np.shape(my_skip)} and {np.shape(my_down)}")
        if not (_same(my_skip, skip) and _same(my_down, down)):
            (lin, _), _ = _level_variant_forward(inputs, relu=False)
            hint = ("each 3x3 convolution of a level is followed by a ReLU (relu=True)"
                    if _same(my_skip, lin) else "the skip is the second convolution's output, "
                    "before the pool; down is its 2x2 max-pool")
            return Verdict(exercise, WRONG, f"the forward differs from the reference. Hint: "
                           f"{hint}")

        def pair_forward(*args):  # the two outputs as one vector, for check_op
            (s, d), c = level_reference_forward(*args)
            return np.concatenate([s.ravel(), d.ravel()]), c

        def pair_backward(dflat, cache):
            ds = dflat[: skip.size].reshape(skip.shape)
            dd = dflat[skip.size :].reshape(down.shape)
            return level_reference_backward(ds, dd, cache)

        def pair_mine(dflat, cache):  # the learner's backward, on the learner's cache
            ds = dflat[: skip.size].reshape(skip.shape)
            dd = dflat[skip.size :].reshape(down.shape)
            (_, _), c = _call(forward_mine, *(v.copy() for v in inputs.values()))
            del cache
            return backward_mine(ds, dd, c)

        verdict = check_backward(exercise, "", pair_forward, pair_backward, pair_mine, inputs,
                                 wrt, names={"forward": "", "backward": "the reference level"},
                                 seed=seed)
        if verdict.status != WRONG:
            return verdict
        rng = np.random.default_rng(seed + 7)
        ds, dd = rng.standard_normal(skip.shape), rng.standard_normal(down.shape)
        (_, _), cache = level_reference_forward(*inputs.values())
        mine_g = _call(backward_mine, ds, dd, my_cache)
        _, _, cp = cache
        for dfeat_wrong, hint in (
                (reference.maxpool2x2_backward(dd, cp),
                 "the level's output goes two ways, into the skip and into the pool: its "
                 "gradient is the sum of both (the skip's gradient is missing)"),
                (ds, "the level's output goes two ways, into the skip and into the pool: its "
                     "gradient is the sum of both (the pool's gradient is missing)")):
            wrong = _backward_from(dfeat_wrong, cache)
            if isinstance(mine_g, tuple | list) and len(mine_g) == 5 and all(
                    _same(a, b, 1e-6) for a, b in zip(mine_g, wrong, strict=True)):
                return Verdict(exercise, WRONG, f"{verdict.message.split('. Hint')[0]}. "
                               f"Hint: {hint}")
        return verdict

    return _attempt(exercise, judge)


def _level_variant_forward(inputs, relu):
    x, w0, b0, w1, b1 = inputs.values()
    h, _ = reference.conv2d_forward(x, w0, b0, relu=relu)
    skip, _ = reference.conv2d_forward(h, w1, b1, relu=relu)
    return (skip, reference.maxpool2x2_forward(skip)[0]), None


def _backward_from(dfeat, cache):
    c0, c1, _ = cache
    dh, dw1, db1 = reference.conv2d_backward(dfeat, c1)
    dx, dw0, db0 = reference.conv2d_backward(dh, c0)
    return dx, dw0, db0, dw1, db1


# 05: one step of momentum SGD, Caffe's convention


def check_momentum_step(mine, seed: int = 0) -> Verdict:
    """05: momentum_step(w, v, g, lr, m) -> (w, v), Caffe's v <- m v - lr g; w <- w + v,
    judged over 5 steps against minunet.nn.optim.MomentumSGD."""
    from minunet.nn.optim import MomentumSGD, SGDConfig

    exercise = "momentum SGD step"
    lr, m = 0.05, 0.9
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal((3, 4)) for _ in range(5)]
    w0 = rng.standard_normal((3, 4))

    def run(step):
        w, v, ws, vs = w0.copy(), np.zeros_like(w0), [], []
        for g in grads:
            w, v = step(w.copy(), v.copy(), g.copy(), lr, m)
            ws.append(np.asarray(w, np.float64))
            vs.append(np.asarray(v, np.float64))
        return ws, vs

    def judge() -> Verdict:
        params = {"w": w0.copy()}
        opt = MomentumSGD(params, SGDConfig(lr=lr, momentum=m, warmup=0))
        ref_w, ref_v = [], []
        for it, g in enumerate(grads):
            opt.step({"w": g.copy()}, it)
            ref_w.append(params["w"].copy())
            ref_v.append(opt.velocity["w"].copy())
        def step_mine(w, v, g, lr_, m_):
            got = _call(mine, w, v, g, lr_, m_)
            if not (isinstance(got, tuple | list) and len(got) == 2
                    and all(np.shape(a) == w.shape for a in got)):
                raise _Raised(f"momentum_step returns (w, v), two arrays shaped like w, "
                              f"{w.shape}; yours returned {type(got).__name__}")
            return got

        ws, vs = run(step_mine)
        if all(_same(a, b) for a, b in zip(ws, ref_w, strict=True)) and all(
                _same(a, b) for a, b in zip(vs, ref_v, strict=True)):
            return Verdict(exercise, RIGHT, "5 steps equal minunet.nn.optim.MomentumSGD's weights "
                           f"and velocities; {GRADED}")
        wrong_steps = {
            "the weights step along the new velocity: update v first, then add it to w":
                lambda w, v, g, lr_, m_: (w + v, m_ * v - lr_ * g),
            "momentum: the velocity keeps m times its old value (v <- m v - lr g)":
                lambda w, v, g, lr_, m_: (w - lr_ * g, -lr_ * g),
            "the direction: a step goes against the gradient (v <- m v - lr g)":
                lambda w, v, g, lr_, m_: (w + m_ * v + lr_ * g, m_ * v + lr_ * g),
            "Caffe's convention: the velocity holds the step itself, learning rate and sign "
            "included (v <- m v - lr g; w <- w + v), not the running sum of gradients":
                lambda w, v, g, lr_, m_: (w - lr_ * (m_ * v + g), m_ * v + g),
        }
        first = next(k for k in range(len(grads)) if not (_same(ws[k], ref_w[k])
                                                          and _same(vs[k], ref_v[k])))
        where = f"step {first + 1} of 5 differs from MomentumSGD"
        for hint, step in wrong_steps.items():
            wws, wvs = run(step)
            if all(_same(a, b, 1e-6) for a, b in zip(ws + vs, wws + wvs, strict=True)):
                return Verdict(exercise, WRONG, f"{where}. Hint: {hint}")
        hint = _value_hint(vs[first], ref_v[first])
        return Verdict(exercise, WRONG, where + (f". Hint: {hint}" if hint else ""))

    return _attempt(exercise, judge)


# --- typed answers ---------------------------------------------------------------------------


def check_number(exercise: str, answer, truth: float, decimals: int | None = None,
                 rel: float | None = None, concept: str = "") -> Verdict:
    """A number the learner typed: right when it equals truth to `decimals` decimals (half a
    unit of the last one), or to the relative precision `rel`. concept: what a wrong answer
    misses, named in the message."""
    if answer is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your answer and rerun the cell")
    try:
        values = np.asarray(answer, dtype=np.float64)
    except (TypeError, ValueError):
        return Verdict(exercise, WRONG, f"{answer!r} is not a number")
    truth_a = np.asarray(truth, dtype=np.float64)
    if values.shape != truth_a.shape:
        return Verdict(exercise, WRONG, f"the answer has {values.size} number(s), the exercise "
                       f"asks for {truth_a.size}")
    tol = 0.5 * 10.0 ** -decimals if decimals is not None else 0.0
    if rel is not None:
        tol = np.maximum(tol, rel * np.abs(truth_a))
    tol = tol + 1e-12 * np.abs(truth_a)  # the rounding of the truth itself
    if np.all(np.abs(values - truth_a) <= tol):
        precision = (f"to {decimals} decimals" if decimals is not None
                     else f"to a relative {rel:g}")
        return Verdict(exercise, RIGHT, f"equals the computed value {precision}")
    return Verdict(exercise, WRONG, "not the computed value" + (f". Hint: {concept}"
                                                                 if concept else ""))


def check_tanh_step_prediction(predicted, measured: float) -> Verdict:
    """00, exercise 1: the predicted error of the central difference of tanh at the step the
    learner chose; right within a factor of 3 of the measured error (an order of magnitude
    is what the error model predicts)."""
    exercise = "00, exercise 1 (the error at another step)"
    if predicted is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your prediction and rerun the cell")
    p = float(predicted)
    if p > 0 and measured / 3 <= p <= 3 * measured:
        return Verdict(exercise, RIGHT, f"within a factor of 3 of the measured {measured:.2e}")
    hint = ("truncation error scales as h^2: ten times smaller h, a hundred times smaller error, "
            "until the rounding error eps/h takes over") if p > 0 else "an error is > 0"
    return Verdict(exercise, WRONG, f"{p:.2e} is more than a factor of 3 from the measured "
                   f"{measured:.2e}. Hint: {hint}")


def check_all_four_maxpool(mine, seed: int = 0) -> Verdict:
    """00, exercise 2: a deliberately broken max-pool backward that gives each window's whole
    gradient to all four of its pixels; right when it is exactly that (and the gradient check
    then fails, with a numerical slope of 0 at the worst element)."""
    exercise = "00, exercise 2 (a broken max-pool backward)"

    def judge() -> Verdict:
        rng = np.random.default_rng(seed)
        x = (rng.permutation(2 * 4 * 4) * 0.1).reshape(1, 2, 4, 4)  # distinct values: no ties
        out, cache = reference.maxpool2x2_forward(x)
        dout = rng.standard_normal(out.shape)
        got = np.asarray(_call(mine, dout, cache))
        want = np.repeat(np.repeat(dout, 2, axis=2), 2, axis=3)
        if got.shape != x.shape:
            return Verdict(exercise, WRONG, f"dx must have the input's shape {x.shape}")
        if _same(got, want):
            res = check_op("maxpool (all four)", reference.maxpool2x2_forward, mine, {"x": x},
                           ("x",), rng)[0]
            assert not res.passed and res.numeric == 0.0  # what the exercise teaches
            return Verdict(exercise, RIGHT, f"broken as asked: the gradient check fails "
                           f"(relative error {res.max_rel_error:.2f}) and the numerical slope "
                           f"at the worst element is {res.numeric:g}")
        if _same(got, reference.maxpool2x2_backward(dout, cache)):
            return Verdict(exercise, WRONG, "this is the correct backward; the exercise asks "
                           "for the broken one that gives the gradient to all four pixels")
        if _same(got, want / 4):
            return Verdict(exercise, WRONG, "that spreads a quarter to each pixel (average "
                           "pooling); the exercise asks for the whole gradient at each of the "
                           "four")
        hint = _value_hint(got, want)
        return Verdict(exercise, WRONG, "not the window's gradient at all four of its pixels"
                       + (f". Hint: {hint}" if hint else ""))

    return _attempt(exercise, judge)


def check_shared_ties(mine, seed: int = 0) -> Verdict:
    """02, exercise 2: maxpool_backward_shared(dout, x) splits each window's gradient equally
    among all pixels equal to the window's maximum."""
    exercise = "02, exercise 2 (share the gradient among ties)"

    def judge() -> Verdict:
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 3, (2, 3, 6, 6)).astype(np.float64)  # many ties
        x[0, 0, :2, :2] = 2.0  # a window of four equal maxima
        dout = rng.standard_normal((2, 3, 3, 3))
        win = x.reshape(2, 3, 3, 2, 3, 2)  # (N, C, Ho, i, Wo, j)
        is_max = win == win.max(axis=(3, 5), keepdims=True)
        count = is_max.sum(axis=(3, 5), keepdims=True)
        want = (is_max * (dout[:, :, :, None, :, None] / count)).reshape(x.shape)
        got = np.asarray(_call(mine, dout.copy(), x.copy()))
        if got.shape != x.shape:
            return Verdict(exercise, WRONG, f"dx must have x's shape {x.shape}; yours "
                           f"{got.shape}")
        if _same(got, want):
            return Verdict(exercise, RIGHT, "every tied maximum gets an equal share, the "
                           "others 0, on an input full of ties")
        full = (is_max * dout[:, :, :, None, :, None]).reshape(x.shape)
        if _same(got, full):
            return Verdict(exercise, WRONG, "every tied maximum gets the window's whole "
                           "gradient: the shares must add up to it (divide by the number of "
                           "tied maxima)")
        sums_right = _same(got.reshape(win.shape).sum(axis=(3, 5)), dout)
        if sums_right:
            return Verdict(exercise, WRONG, "each window's total is right, but the gradient is "
                           "not split equally among all its tied maxima (one winner, the first "
                           "or the last, is the op's tie rule, not a share)")
        return Verdict(exercise, WRONG, "the windows' totals are not the upstream gradient: "
                       "a max-pool's backward routes each window's gradient, all of it, to its "
                       "maxima")

    return _attempt(exercise, judge)


def check_loss_by_weight_sum(mine, seed: int = 0) -> Verdict:
    """03, exercise 3: loss_by_weight_sum(logits, labels, weights), the weighted cross-entropy
    divided by the sum of the weights instead of the number of pixels, judged on several
    random inputs of different sizes (not only the tutorial's)."""
    exercise = "03, exercise 3 (the wrong normalisation)"

    def judge() -> Verdict:
        rng = np.random.default_rng(seed)
        for shape in ((1, 2, 3, 4), (2, 3, 5, 5), (3, 2, 2, 7)):
            n, k, h, w = shape
            logits = rng.standard_normal(shape) * 3
            labels = rng.integers(0, k, (n, h, w))
            weights = rng.uniform(0.0, 5.0, (n, h, w))
            loss = float(reference.softmax_cross_entropy_forward(logits, labels, weights)[0])
            want = loss * weights.size / weights.sum()
            got = float(_call(mine, logits.copy(), labels.copy(), weights.copy()))
            if abs(got - want) > 1e-9 * abs(want):
                if abs(got - loss) <= 1e-9 * abs(loss):
                    hint = "that is minunet's loss (a mean over pixels): divide by sum w instead"
                elif abs(got - want * weights.sum()) <= 1e-9 * abs(want * weights.sum()):
                    hint = ("the normaliser: the sum over pixels of w * (-log p) must be "
                            "divided by sum w")
                else:
                    hint = ("the loss is -sum_x w(x) log p_l(x)(x) over every pixel of every "
                            "image, divided by sum_x w(x); the softmax runs over the classes, "
                            "axis 1")
                return Verdict(exercise, WRONG, f"on inputs of shape {shape}: yours "
                               f"{got:.6g}, expected {want:.6g}. Hint: {hint}")
        return Verdict(exercise, RIGHT, "equals minunet's loss x N*H*W / sum w on three random "
                       "inputs of different shapes")

    return _attempt(exercise, judge)


def check_col2im_overwrite(mine, seed: int = 0) -> Verdict:
    """01, exercise 2: col2im_overwrite(cols, x_shape, k), col2im with '=' in place of '+='.
    Right when every pixel keeps exactly one copy (a column matrix of ones gives an image of
    ones) and, so, the dot-product test against im2col fails."""
    exercise = "01, exercise 2 (overwrite instead of add)"

    def judge() -> Verdict:
        rng = np.random.default_rng(seed)
        shape, k = (2, 3, 6, 5), 3
        n_cols = shape[0] * (shape[2] - k + 1) * (shape[3] - k + 1)
        ones = np.asarray(_call(mine, np.ones((shape[1] * k * k, n_cols)), shape, k))
        if ones.shape != shape:
            return Verdict(exercise, WRONG, f"the result must have x_shape {shape}")
        x, c = rng.standard_normal(shape), rng.standard_normal((shape[1] * k * k, n_cols))
        lhs = float(np.sum(reference.im2col(x, k) * c))
        gap = abs(lhs - float(np.sum(x * np.asarray(_call(mine, c, shape, k))))) / abs(lhs)
        if np.all(ones == 1) and gap > 1e-3:
            return Verdict(exercise, RIGHT, f"each pixel keeps one copy, and the dot-product "
                           f"test fails as it must (relative difference {gap:.2e})")
        if gap <= 1e-9:
            return Verdict(exercise, WRONG, "this is the adding col2im (it passes the "
                           "dot-product test); the exercise asks for '=' in place of '+='")
        if np.any(ones == 0):
            return Verdict(exercise, WRONG, "some pixels get nothing at all: "
                           + catalogue.PROBES["border"] + " (every offset (i, j) writes)")
        return Verdict(exercise, WRONG, "with '=' every pixel keeps exactly one copy: a "
                       "column matrix of ones must give an image of ones")

    return _attempt(exercise, judge)


# --- the typed answers of each tutorial: the truth is computed here, never in the cell ---------


def check_im2col_shape(answer) -> Verdict:
    """01, exercise 1: the shape of im2col(x, 3) for x of shape (2, 3, 10, 9)."""
    truth = reference.im2col(np.zeros((2, 3, 10, 9)), 3).shape
    return check_number("01, exercise 1 (the shape of the column matrix)", answer, truth,
                        decimals=0, concept="one row per (input channel, kernel row, kernel "
                                            "column), one column per output pixel of every image")


def check_coverage_5x5(answer) -> Verdict:
    """01, exercise 3: [inner, corner, sum] of the coverage map of a 5x5 kernel on 10x10."""
    k = 5
    cover = reference.col2im(np.ones((k * k, (10 - k + 1) ** 2)), (1, 1, 10, 10), k)[0, 0]
    return check_number("01, exercise 3 (coverage of a 5x5 kernel)", answer,
                        [cover[5, 5], cover[0, 0], cover.sum()], decimals=0,
                        concept="count the windows that hold the pixel; the sum counts each "
                                "window's k*k pixels once")


def check_tie_rule(answer) -> Verdict:
    """02, exercise 1: the arg-max (2i + j) of [[2, 5], [5, 1]] and of [[7, 7], [7, 9]]."""
    two = np.array([[[2, 5], [5, 1]], [[7, 7], [7, 9]]], float).reshape(1, 2, 2, 2)
    truth = reference.maxpool2x2_forward(two)[1].arg.ravel().tolist()
    return check_number("02, exercise 1 (the tie rule)", answer, truth, decimals=0,
                        concept="the FIRST maximum in the order (0,0), (0,1), (1,0), (1,1) wins; "
                                "the position is 2i + j")


def check_stamp(rows, cols) -> Verdict:
    """02, exercise 3: the non-zero output rows and columns of a 2x2 up-convolution of a 4x4
    input whose only non-zero pixel is at row 3, column 1."""
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 3, 1] = 1.0
    up = reference.upconv2x2_forward(x, np.ones((1, 1, 2, 2)), np.zeros(1))[0][0, 0]
    truth = [sorted(set(a.tolist())) for a in np.nonzero(up)]
    answer = None if rows is None else [list(rows), list(cols)]
    return check_number("02, exercise 3 (where a pixel stamps)", answer, truth, decimals=0,
                        concept="input pixel (y, x) paints the 2x2 block whose top-left corner "
                                "is (2y, 2x)")


def check_one_pixel_gradient(answer) -> Verdict:
    """03, exercise 1: dL/da for logits (1, 1, 1), label 0, weight 2 on one pixel; six decimals."""
    _, cache = reference.softmax_cross_entropy_forward(np.ones((1, 3, 1, 1)),
                                                       np.array([[[0]]]), np.full((1, 1, 1), 2.0))
    truth = reference.softmax_cross_entropy_backward(1.0, cache).ravel()
    return check_number("03, exercise 1 (the gradient of one pixel)", answer, truth,
                        decimals=6, concept="w(x) (p - y) / (N H W): p = 1/3 for every class, y "
                                            "the one-hot label, the weight 2, one pixel")


def check_border_gap(answer, sigma: float = 5.0) -> Verdict:
    """03, exercise 2: the gap d1 + d2 at which exp(-g^2 / 2 sigma^2) = 0.01; two decimals."""
    truth = sigma * np.sqrt(2 * np.log(100))
    return check_number("03, exercise 2 (the reach of the border term)", answer, truth,
                        decimals=2, concept="take the logarithm: g^2 / (2 sigma^2) = ln 100")


def check_depth3_sizes(smallest, margin) -> Verdict:
    """04, exercise 1: the smallest valid input side and the margin of a U-Net of depth 3."""
    from minunet.models import sizes

    truth = [sizes.valid_sizes(1, 200, depth=3)[0], sizes.size_margin(depth=3)]
    return check_number("04, exercise 1 (valid sizes at depth 3)",
                        None if smallest is None else [smallest, margin], truth, decimals=0,
                        concept="each level loses 4 pixels per side on the way down and 4 on the "
                                "way up, each 2x2 pool needs an even size")


def check_level_parameters(down0, upconv0) -> Verdict:
    """04, exercise 2: the parameters of the paper's down0 (1 -> 64 -> 64, 3x3) and up0.upconv
    (128 -> 64, 2x2), biases included."""
    truth = [(1 * 9 + 1) * 64 + (64 * 9 + 1) * 64, 128 * 64 * 4 + 64]
    return check_number("04, exercise 2 (parameters by hand)",
                        None if down0 is None else [down0, upconv0], truth, decimals=0,
                        concept="a conv has Cout * Cin * k * k weights and Cout biases")


def check_steady_step(answer) -> Verdict:
    """05, exercise 1: the steady step of momentum SGD, lr 1e-3, m = 0.9, gradient 1; the
    cell's measurement after 1000 steps is lr / (1 - m) to 1e-12, so 6 decimals."""
    from minunet.nn.optim import MomentumSGD, SGDConfig

    theta = {"w": np.zeros(1)}
    opt = MomentumSGD(theta, SGDConfig(lr=1e-3, momentum=0.9, warmup=0))
    for it in range(1000):
        before = theta["w"].copy()
        opt.step({"w": np.ones(1)}, it)
    truth = float(before[0] - theta["w"][0])
    return check_number("05, exercise 1 (momentum 0.9)", answer, truth, decimals=6,
                        concept="for a steady gradient the velocity settles where "
                                "v = m v - lr g")


def check_effect_size(answer, records: list[dict], key: str = "f1") -> Verdict:
    """05, exercise 3: how many pooled standard deviations (over the seeds, ddof = 1) separate
    the mean `key` of the runs with the weight map from those without; one decimal."""
    a = np.array([r[key] for r in records if r["weight_map"]], np.float64)
    b = np.array([r[key] for r in records if not r["weight_map"]], np.float64)
    pooled = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    truth = (a.mean() - b.mean()) / pooled
    return check_number("05, exercise 3 (the difference against the spread)", answer, truth,
                        decimals=1, concept="the difference of the two means divided by the "
                                            "pooled standard deviation sqrt((s1^2 + s2^2) / 2) "
                                            "of the seeds (ddof = 1)")


def check_sigmoid(forward_mine, backward_mine, seed: int = 0) -> Verdict:
    """00, exercise 3: sigmoid_forward(x) -> (out, cache) and sigmoid_backward(dout, cache)
    -> dx, the learner's own op pair, judged by the gradient checker on the pair itself."""
    exercise = "00, exercise 3 (the sigmoid)"

    def judge() -> Verdict:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((2, 3, 4, 4))
        s = 1.0 / (1.0 + np.exp(-x))
        got = _call(forward_mine, x.copy())
        if not (isinstance(got, tuple) and len(got) == 2):
            return Verdict(exercise, WRONG, "sigmoid_forward returns (out, cache)")
        if not _same(got[0], s):
            return Verdict(exercise, WRONG, "the forward is not 1 / (1 + exp(-x))")
        dout = rng.standard_normal(x.shape)
        dx = np.asarray(_call(backward_mine, dout, got[1]))
        res = check_op("sigmoid", lambda v: _call(forward_mine, v),
                       lambda d, c: _call(backward_mine, d, c), {"x": x}, ("x",),
                       np.random.default_rng(seed + 1))[0]
        if res.passed:
            return Verdict(exercise, RIGHT, f"gradient check: max relative error "
                           f"{res.max_rel_error:.1e} (threshold {THRESHOLD_FLOAT64:g})")
        hint = ""
        if _same(dx, dout * s, 1e-6):
            hint = "the derivative is s (1 - s), not s itself"
        elif _same(dx, dout * x * (1 - x), 1e-6):
            hint = "the derivative s (1 - s) is taken at the output s, not at the input x"
        elif _same(dx, s * (1 - s), 1e-6):
            hint = "the chain rule: the upstream gradient dout multiplies the derivative"
        return Verdict(exercise, WRONG, f"the gradient check fails (max relative error "
                       f"{res.max_rel_error:.2g})" + (f". Hint: {hint}" if hint else ""))

    return _attempt(exercise, judge)


# --- 04-10: the exercises that once changed a value and asserted --------------------------------


def check_broken_gradient(mine, loss_at: Callable, params: dict, grads: dict,
                          factor: float = 1.01, seed: int = 0) -> Verdict:
    """04, exercise 3: break_one_layer(grads) -> grads with ONE parameter's gradient scaled by
    1.01 (a 1 % bug in one layer); right when it is exactly that, and the directional check
    (5 directions, threshold 1e-6) then fails on at least one direction. The learner's
    function gets copies: the model's own gradients are never changed."""
    from minunet.nn.gradcheck import directional_check

    exercise = "04, exercise 3 (a broken gradient in a big network)"

    def judge() -> Verdict:
        got = _call(mine, {k: np.copy(v) for k, v in grads.items()})
        if not (isinstance(got, dict) and set(got) == set(grads) and all(
                np.shape(got[k]) == np.shape(grads[k]) for k in grads)):
            return Verdict(exercise, WRONG, "break_one_layer returns the gradient dict: the same "
                           "names, the same shapes")
        changed = [k for k in grads if not np.array_equal(got[k], grads[k])]
        if not changed:
            return Verdict(exercise, WRONG, "nothing is broken: the gradients are the model's "
                           "own (scale one parameter's gradient by 1.01)")
        if len(changed) > 1:
            return Verdict(exercise, WRONG, f"{len(changed)} parameters changed; the exercise "
                           "breaks ONE layer (one parameter's gradient), the bug a directional "
                           "check must find among all the others")
        k = changed[0]
        if not _same(got[k], factor * np.asarray(grads[k]), 1e-12):
            return Verdict(exercise, WRONG, f"{k} changed, but not by the factor {factor}: a "
                           "1 % bug multiplies the gradient by 1.01")
        res = directional_check(loss_at, params, got, n_dirs=5, rng=np.random.default_rng(seed))
        errors = ", ".join(f"{r.rel_error:.1e}" for r in res)
        if all(r.passed for r in res):  # not seen for any of 04's 46 tensors (tested)
            return Verdict(exercise, RIGHT, f"{k} x {factor}, as asked; but it passed every "
                           f"direction ({errors}): its share of the loss's slope along them is "
                           "too small to see")
        failed = sum(not r.passed for r in res)
        return Verdict(exercise, RIGHT, f"{k} x {factor}: {failed} of 5 directions fail the "
                       f"check (relative errors {errors}; threshold "
                       f"{res[0].threshold:g}): a 1 % bug in one of {len(grads)} parameter "
                       "tensors is far above float64 rounding")

    return _attempt(exercise, judge, graded=False)


def _flag_value(args: list, flag: str):
    return args[args.index(flag) + 1] if flag in args[:-1] else None


def check_resume(args, run, extra: int, train: Callable) -> Verdict:
    """05, exercise 2: the options that continue the run in `run` for another `extra`
    iterations (`args` for minunet.train.main). Judged before running (--resume from the run's
    last.npz, --iters the new total), then by running them with `train`: the checkpoint's
    iteration is the old one + extra, and metrics.csv keeps its rows and gains rows for the
    new validations only."""
    import csv
    from pathlib import Path

    from minunet.training.checkpoint import load_checkpoint

    exercise = "05, exercise 2 (resume once more)"
    if args is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write the options and rerun the cell")
    run = Path(run)
    args = [str(a) for a in args]
    before = load_checkpoint(run / "last.npz").iteration
    resume = _flag_value(args, "--resume")
    if resume is None:
        return Verdict(exercise, WRONG, "a run folder is never overwritten: continuing a run "
                       "takes --resume with its checkpoint")
    if Path(resume).resolve() != (run / "last.npz").resolve():
        return Verdict(exercise, WRONG, f"--resume {Path(resume).name}: a run continues from "
                       "where it stopped, RUN/last.npz (best.npz is the checkpoint the "
                       "validation chose, often an earlier iteration)")
    iters = _flag_value(args, "--iters")
    if iters is None or not iters.isdigit() or int(iters) != before + extra:
        return Verdict(exercise, WRONG, f"--iters {iters}: --iters is the run's total, the "
                       "iteration where it ends (the saved iteration + extra), not the number "
                       "of iterations to add")

    def rows():
        with open(run / "metrics.csv", newline="") as f:
            return list(csv.DictReader(f))

    def judge() -> Verdict:
        old = rows()
        _call(train, args)
        after = load_checkpoint(run / "last.npz").iteration
        new = rows()
        if after != before + extra:
            return Verdict(exercise, WRONG, f"the checkpoint holds iteration {after}, not "
                           f"{before} + {extra}")
        if new[: len(old)] != old or not all(int(r["iteration"]) > before
                                             for r in new[len(old):]):
            return Verdict(exercise, WRONG, "metrics.csv lost or repeated rows: a resumed run "
                           "is the same run")
        return Verdict(exercise, RIGHT, f"iteration {before} -> {after}; metrics.csv kept its "
                       f"{len(old)} rows and gained {len(new) - len(old)} (validations after "
                       f"iteration {before}): a resumed run is the same run")

    return _attempt(exercise, judge, graded=False)


def _prediction(exercise: str, answer, measured: float, factor: float, concept: str,
                what: str) -> Verdict:
    """A predicted positive number, right within `factor` of the measured one."""
    if answer is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your prediction and rerun the cell")
    try:
        p = float(answer)
    except (TypeError, ValueError):
        return Verdict(exercise, WRONG, f"{answer!r} is not a number")
    if p > 0 and measured / factor <= p <= measured * factor:
        return Verdict(exercise, RIGHT, f"within a factor of {factor:g} of the measured {what} "
                       f"{measured:.3g}")
    return Verdict(exercise, WRONG, f"{p:.3g} is more than a factor of {factor:g} from the "
                   f"measured {what}. Hint: {concept}")


def check_grid_factor(answer, steepest: Callable) -> Verdict:
    """06, exercise 1: the factor by which the steepest slope of the deformation grows from the
    paper's 3x3 grid to a 5x5 one (the same 10 px standard deviation); right within 25 %.
    steepest(grid) measures the largest |dD/dx| over the tutorial's draws."""
    exercise = "06, exercise 1 (the size of the grid)"
    if answer is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your prediction and rerun the cell")
    measured = steepest(5) / steepest(3)
    return _prediction(exercise, answer, measured, 1.25,
                       "the nodes' displacements keep their 10 px spread, but 5 nodes per side "
                       "lie half as far apart as 3: the same rise over half the run (the "
                       "number of nodes, 25 against 9, is not what sets a slope)",
                       "ratio")


def check_label_warp(mine, labels, coords) -> Verdict:
    """06, exercise 2: my_label_warp(labels, coords) -> the labels deformed by the map; right
    when it is the nearest-neighbour gather (order 0), whose values stay in the label set."""
    from minunet.data.augment import warp

    exercise = "06, exercise 2 (labels through the map)"

    def judge() -> Verdict:
        got = np.asarray(_call(mine, np.copy(labels), np.copy(coords)))
        want = warp(labels, coords, order=0)
        if got.shape != want.shape:
            return Verdict(exercise, WRONG, f"the result must have the tile's shape {want.shape}")
        label_set = set(np.unique(labels).tolist())
        outside = sorted(set(np.unique(got).tolist()) - label_set)
        if outside:
            over = any(v < min(label_set) or v > max(label_set) for v in outside)
            return Verdict(exercise, WRONG, f"{len(outside)} values are not labels (e.g. "
                           f"{outside[0]:.3g}): an interpolation mixes the classes at every "
                           "edge" + (", and the cubic spline overshoots beyond them" if over
                                     else "") + "; a label is a class: nearest neighbour, "
                           "order=0")
        if np.array_equal(got, want):
            return Verdict(exercise, RIGHT, "nearest neighbour (order 0): every value is a "
                           "label, and the labels follow the same map as the image")
        if np.array_equal(got, labels):
            return Verdict(exercise, WRONG, "the labels are not deformed: they must go through "
                           "the same map as the image")
        return Verdict(exercise, WRONG, "the values are labels, but not where the map sends "
                       "them: the nearest-neighbour gather (order=0) reads each output pixel's "
                       "label at its source point, rounded")

    return _attempt(exercise, judge, graded=False)


def check_push_holes(answer, push: Callable, image, disp, gains=(0.0, 0.5, 2.0)) -> Verdict:
    """06, exercise 3: for each gain, does pushing every source pixel to p + gain * D(p) leave
    output pixels with no value? answer: {gain: True/False}."""
    exercise = "06, exercise 3 (forward instead of backward)"
    if answer is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your predictions and rerun the cell")
    holes = {g: int(np.isnan(push(image, g * disp)).sum()) for g in gains}  # pushed once
    truth = {g: n > 0 for g, n in holes.items()}
    try:
        mine = {float(g): bool(v) for g, v in dict(answer).items()}
    except (TypeError, ValueError):
        return Verdict(exercise, WRONG, "answer with a dict {gain: True or False}")
    if set(mine) != set(truth):
        return Verdict(exercise, WRONG, f"predict for the gains {list(gains)}")
    counts = ", ".join(f"gain {g:g}: {n} holes" for g, n in holes.items())
    if mine == truth:
        return Verdict(exercise, RIGHT, f"{counts}; the pulled warp gives every pixel a value "
                       "at every gain")
    wrong = [g for g in gains if mine[g] != truth[g]]
    if not truth[wrong[0]]:
        hint = ("at gain 0 nothing moves: every pixel lands on itself, and a push leaves no "
                "hole")
    else:
        hint = ("where the displacement stretches the image, neighbouring source pixels land "
                "more than one pixel apart (and where it compresses, two on one): the pixels "
                "between them get nothing; a pull (warp) asks every output pixel where to read")
    return Verdict(exercise, WRONG, f"not at gain {wrong[0]:g}. Hint: {hint}")


def check_tile_plan(side, offsets, max_tile: int, padded: int, depth: int = 4) -> Verdict:
    """07, exercise 1: the tile side `predict` uses for --tile max_tile on a padded image of
    side `padded`, and the tiles' offsets along one axis."""
    from minunet.models.sizes import choose_tile, tile_offsets

    exercise = "07, exercise 1 (another tile size)"
    if side is None or offsets is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your answers and rerun the cell")
    t_side = choose_tile((padded, padded), depth, max_tile)[0]
    verdict = check_number(exercise, side, t_side, decimals=0,
                           concept="a tile must be a valid size (124 + 16b): an invalid one is "
                                   "rounded down to the largest valid size below it")
    if not verdict.ok:
        return verdict
    truth = tile_offsets(padded, t_side, depth)
    if list(offsets) == truth:
        return Verdict(exercise, RIGHT, f"tile {t_side}, offsets {truth}")
    return Verdict(exercise, WRONG, "the offsets: tiles start at 0, step, 2 step, ..., where the "
                   "step is the tile's output side (tile - 184) rounded down to a multiple of "
                   "16, and the last one ends flush with the padded side")


def check_grid_step(answer, depth: int, seed: int = 0) -> Verdict:
    """07, exercise 2: the multiple that tile offsets must be for a network of `depth` pools;
    right when it equals sizes.grid_step(depth), and the max-pool experiment agrees: a crop
    pooled `depth` times reproduces the whole image's pooling exactly at offsets that are
    multiples of it, and only there."""
    from minunet.models.sizes import grid_step

    exercise = "07, exercise 2 (depth and grid)"
    if answer is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your answer and rerun the cell")
    g_true = grid_step(depth)
    big = np.random.default_rng(seed).standard_normal((1, 1, 8 * g_true, 8 * g_true))

    def pool_n(a):
        for _ in range(depth):
            a = reference.maxpool2x2_forward(a)[0]
        return a

    whole = pool_n(big)
    exact = []
    for t in range(2 * g_true + 1):
        crop = pool_n(big[:, :, t : t + 4 * g_true, t : t + 4 * g_true])
        ref = whole[:, :, t // g_true : t // g_true + 4, t // g_true : t // g_true + 4]
        exact.append(bool(np.array_equal(crop, ref)))
    verdict = check_number(exercise, answer, g_true, decimals=0,
                           concept="each 2x2 pool halves the grid, so after D pools one pixel "
                                   "stands for 2^D input pixels: offsets must be multiples of "
                                   "2^D (the product of the pools' strides, not their sum)")
    if verdict.ok:
        shown = [t for t, e in enumerate(exact) if e]
        assert shown == list(range(0, 2 * g_true + 1, g_true))  # what the exercise teaches
        return Verdict(exercise, RIGHT, f"grid {g_true} at depth {depth}: pooled crops equal "
                       f"the whole image's at offsets {shown} of 0..{2 * g_true}, nowhere else")
    return verdict


def check_float32_bound(answer, tiled, single, off_grid: float = 1e-3) -> Verdict:
    """07, exercise 3: a bound on max |tiled - single| for the float32 network: right when the
    float32 maps stay under it and it is at least 10x below `off_grid`, the size of a real
    error (tiles off the pooling grid), so that it would still catch one."""
    exercise = "07, exercise 3 (float32)"
    if answer is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your bound and rerun the cell")
    try:
        b = float(answer)
    except (TypeError, ValueError):
        return Verdict(exercise, WRONG, f"{answer!r} is not a number")
    diff = float(np.abs(np.asarray(tiled, np.float64) - np.asarray(single, np.float64)).max())
    if diff <= b <= off_grid / 10:
        return Verdict(exercise, RIGHT, f"the float32 maps differ by {diff:.2e} <= {b:g}, and a "
                       f"tile off the grid (> {off_grid:g}) would still fail it")
    if b < diff:
        return Verdict(exercise, WRONG, f"{b:g} is below what float32 rounding gives here: "
                       "float32 rounds at about 6e-8 per operation (float64 at 1e-16), and the "
                       "errors of many layers add up")
    return Verdict(exercise, WRONG, f"{b:g} is so loose that it would pass a real error: a tile "
                   f"off the pooling grid differs by more than {off_grid:g}")


def check_source_offset(mine, seed: int = 0) -> Verdict:
    """08, exercise 1: my_source_offset(c, i, j, y0, H, W) -> the flat offset of x[c, y0 + i, j]
    in a (C, H, W) array, the start of grid row r = (c, i, j) of the im2col kernel; the kernel
    is simulated with it (every thread q of a row at once) and compared with the CPU twin for
    several kernel sizes and chunks of a non-square input."""
    from minunet import backend

    exercise = "08, exercise 1 (simulate the kernel)"

    def judge() -> Verdict:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((3, 13, 11)).astype(np.float32)  # (C, H, W), H != W
        C, H, W = x.shape
        flat = x.ravel()
        for ks, y0, y1 in ((3, 2, 9), (1, 0, 13), (5, 3, 7)):
            wo = W - ks + 1
            q = np.arange((y1 - y0) * wo)  # every thread of a grid row
            y, xx = q // wo, q % wo
            sim = np.empty((C * ks * ks, q.size), np.float32)
            for r in range(C * ks * ks):  # blockIdx.y
                c, i, j = r // (ks * ks), (r // ks) % ks, r % ks
                src = int(_call(mine, c, i, j, y0, H, W))
                idx = src + y * W + xx
                if idx.min() < 0 or idx.max() >= flat.size:
                    return Verdict(exercise, WRONG, f"offset {src} for (c, i, j) = {(c, i, j)}, "
                                   f"y0 = {y0} reads outside the array: a (C, H, W) array is "
                                   "row-major, x[c, y, x] at (c * H + y) * W + x")
                sim[r] = flat[idx]
            ref = backend.im2col(x, ks, y0, y1, np.empty_like(sim))
            if not np.array_equal(sim, ref):
                no_y0 = int(_call(mine, 1, 1, 1, 5, H, W)) == int(_call(mine, 1, 1, 1, 0, H, W))
                hint = ("the chunk starts at row y0: grid row (c, i, j) starts at x[c, y0 + i, j]"
                        if no_y0 else "a (C, H, W) array is row-major: a row is W long, a "
                        "channel H * W, so x[c, y, x] is at (c * H + y) * W + x")
                return Verdict(exercise, WRONG, f"k = {ks}, rows {y0}..{y1}: the simulated "
                               f"column matrix differs from the CPU twin. Hint: {hint}")
        return Verdict(exercise, RIGHT, "the simulated kernel equals the CPU twin bit for bit "
                       "for k = 3, 1, 5 and three chunks of a 13 x 11 input")

    return _attempt(exercise, judge, graded=False)


def check_reorder_fraction(answer, reordered, twin, within: float = 0.15) -> Verdict:
    """08, exercise 2: the fraction of float32 pixels whose sum changes when the taps are added
    in another order; right within `within` (absolute) of the measured fraction."""
    exercise = "08, exercise 2 (another order of additions)"
    if answer is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your prediction and rerun the cell")
    try:
        p = float(answer)
    except (TypeError, ValueError):
        return Verdict(exercise, WRONG, f"{answer!r} is not a number")
    reordered, twin = np.asarray(reordered), np.asarray(twin)
    frac = float((reordered != twin).mean())
    if abs(p - frac) <= within:
        return Verdict(exercise, RIGHT, f"{frac:.0%} of the pixels changed (within "
                       f"{within:.0%}), each by float32 rounding")
    hint = ("float addition is not associative: each sum rounds after every addition, and "
            "another order rounds differently in many pixels, by a unit of the last bit"
            if p < frac else "not every pixel: many sums still round to the same float32 "
            "value in another order, and pixels at the border get fewer taps")
    return Verdict(exercise, WRONG, f"{p:g} is not the fraction that changes. Hint: {hint}")


def check_scatter_speed(answer, t_scatter: float, t_gather: float) -> Verdict:
    """08, exercise 3: how many times slower np.add.at's scatter is than the gather twin,
    right within a factor of 10 of the measured ratio (an order of magnitude)."""
    exercise = "08, exercise 3 (a scatter on the CPU)"
    if answer is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your prediction and rerun the cell")
    return _prediction(exercise, answer, t_scatter / t_gather, 10.0,
                       "np.add.at handles its entries one at a time through an index array, "
                       "while the gather twin adds nine whole shifted slices (contiguous, "
                       "vectorised); a scatter is many times slower",
                       "ratio t_scatter / t_gather")


def check_smallest_gap(answer, gap_toy: Callable, truth, gaps=range(0, 6)) -> Verdict:
    """09, exercise 1: the smallest gap (px) in the membrane at which the merge score (Rand,
    thinned proposal) drops below 1. gap_toy(gap) -> the proposal with that gap."""
    from minunet.evaluation.metrics import isbi_scores, rand_scores, segments, thin_boundaries

    exercise = "09, exercise 1 (how wide must a gap be?)"
    if answer is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your answer and rerun the cell")
    truth_seg = segments(truth)
    rows = []
    for g in gaps:
        toy = gap_toy(g)
        r = isbi_scores(toy.astype(np.float64), truth)
        rows.append((g, rand_scores(truth_seg, thin_boundaries(toy)).merge, r.pixel_error,
                     r.v_rand))
    smallest = next(g for g, m, _, _ in rows if m < 1)
    verdict = check_number(exercise, answer, smallest, decimals=0,
                           concept="one missing membrane pixel joins the two cells into one "
                                   "4-connected component: the merge is total at any gap > 0 "
                                   "(and a gap of 0 is no gap: merge score exactly 1)")
    if not verdict.ok:
        return verdict
    table = "; ".join(f"gap {g}: merge {m:.3f}, pixel error {p:.4f}, V_rand {v:.3f}"
                      for g, m, p, v in rows)
    return Verdict(exercise, RIGHT, f"{table}. The pixel error stays tiny while V_rand falls")


def check_thinned_truth(answer, truth, cases: dict, names=("thick", "shifted")) -> Verdict:
    """09, exercise 2: for each named toy, does thinning the truth as well change the Rand
    F-score of its thinned proposal? answer: {name: True/False}."""
    from minunet.evaluation.metrics import rand_scores, segments, thin_boundaries

    exercise = "09, exercise 2 (thinning the truth too)"
    if answer is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your predictions and rerun the cell")
    truth_seg, truth_thin = segments(truth), thin_boundaries(truth)
    scores = {n: (rand_scores(truth_thin, thin_boundaries(cases[n])).fscore,
                  rand_scores(truth_seg, thin_boundaries(cases[n])).fscore) for n in names}
    truth_d = {n: abs(a - b) > 1e-12 for n, (a, b) in scores.items()}
    try:
        mine = {str(k): bool(v) for k, v in dict(answer).items()}
    except (TypeError, ValueError):
        return Verdict(exercise, WRONG, "answer with a dict {name: True or False}")
    if set(mine) != set(names):
        return Verdict(exercise, WRONG, f"predict for the toys {list(names)}")
    shown = "; ".join(f"{n}: truth thinned too {a:.4f}, challenge's way {b:.4f}"
                      for n, (a, b) in scores.items())
    if mine == truth_d:
        return Verdict(exercise, RIGHT, shown)
    n = next(n for n in names if mine[n] != truth_d[n])
    hint = ("thinning changes the truth only where its membranes are wider than a line: "
            "the pixels of the truth's membrane that the thinning gives to cells now count, and "
            "a proposal whose thinned membrane lies off the truth's middle line is scored on "
            "them" if truth_d[n] else "the proposal's membranes thin onto the truth's middle "
            "lines, and the pixels that the truth's thinning adds to cells are split the same "
            "way on both sides: nothing changes")
    return Verdict(exercise, WRONG, f"not for {n}. Hint: {hint}")


def check_rand_counts(mine, seed: int = 0) -> Verdict:
    """09, exercise 3: my_rand_counts(truth_seg, prop) -> (A, T, S), the pair counts of the
    foreground-restricted Rand F-score (F = 2A / (T + S), split = A / T, merge = A / S),
    compared with minunet.evaluation.metrics.rand_scores on several random toys."""
    from minunet.evaluation.metrics import rand_scores

    exercise = "09, exercise 3 (count the pairs)"

    def judge() -> Verdict:
        rng = np.random.default_rng(seed)
        for shape in ((12, 10), (20, 20), (9, 15)):
            truth = rng.integers(0, 5, shape)  # 0: membrane, 1..4: cells
            prop = rng.integers(0, 4, shape)
            ref = rand_scores(truth, prop)
            got = _call(mine, truth.copy(), prop.copy())
            try:
                a, t, s = (float(v) for v in got)
            except (TypeError, ValueError):
                return Verdict(exercise, WRONG, "my_rand_counts returns three numbers (A, T, S)")
            if min(a, t, s) <= 0:
                return Verdict(exercise, WRONG, "A, T and S are sums of squared counts: > 0")
            split_ok = abs(a / t - ref.split) <= 1e-12
            merge_ok = abs(a / s - ref.merge) <= 1e-12
            if split_ok and merge_ok:
                continue
            if split_ok:
                hint = ("S: the proposal's cells, counted over the truth's cell pixels, and "
                        "every proposed membrane pixel there a cell of its own (a singleton, "
                        "adding 1 to S)")
            elif merge_ok:
                hint = "T: the sum of squared sizes of the truth's cells (its cell pixels only)"
            else:
                hint = ("A = sum of n_ij^2 over the pairs (true cell, proposed cell), counted over "
                        "the truth's cell pixels only (foreground-restricted), plus 1 for each "
                        "proposed membrane pixel there (a singleton); the same pixels give T "
                        "and S")
            return Verdict(exercise, WRONG, f"on a {shape} toy: A/T (split) "
                           f"{'right' if split_ok else 'wrong'}, A/S (merge) "
                           f"{'right' if merge_ok else 'wrong'}. Hint: {hint}")
        return Verdict(exercise, RIGHT, "2A/(T+S), A/T and A/S equal rand_scores' F, split and "
                       "merge on three random toys")

    return _attempt(exercise, judge, graded=False)


CAUGHT_BY = ("gradient check", "forward", "gradient")  # 10, exercise 1


def check_mistake_caught(answer, found: dict) -> Verdict:
    """10, exercise 1: which comparisons catch a catalogue mistake: a subset of CAUGHT_BY (the
    gradient check fails, the forward differs from the reference, the gradient differs from
    the reference's). found: {name: bool} measured by the tutorial's cell."""
    exercise = "10, exercise 1 (a mistake from the catalogue)"
    if answer is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your prediction and rerun the cell")
    try:
        mine = {str(a) for a in answer}
    except TypeError:
        return Verdict(exercise, WRONG, f"answer with a set of names from {CAUGHT_BY}")
    if not mine <= set(CAUGHT_BY):
        return Verdict(exercise, WRONG, f"the names are {CAUGHT_BY}; yours {sorted(mine)}")
    truth = {k for k in CAUGHT_BY if found[k]}
    shown = ", ".join(f"{k}: {'catches it' if found[k] else 'does not'}" for k in CAUGHT_BY)
    if mine == truth:
        return Verdict(exercise, RIGHT, shown)
    if "forward" in mine ^ truth:
        hint = ("the forward differs only when the mistake is in the forward; a backward's "
                "mistake leaves the forward the reference's" if "forward" in mine else
                "this mistake changes what the forward computes: compare it with the reference")
    elif "gradient check" in mine ^ truth:
        hint = ("a gradient check compares a backward with its own forward: a mistake made in "
                "both consistently, or only at ties where the check cannot judge, passes it"
                if "gradient check" in mine else "a backward that disagrees with its own "
                "forward fails the gradient check")
    else:
        hint = ("a wrong backward gives another gradient than the reference's"
                if "gradient" in truth else "the gradient equals the reference's")
    return Verdict(exercise, WRONG, f"not what was measured. Hint: {hint}")


def check_own_relu_mistake(mine, expect_pass, seed: int = 0) -> Verdict:
    """10, exercise 2: the learner's own wrong ReLU backward and their prediction whether the
    gradient check on the usual inputs (|x| >= 0.1) passes it. Not attempted while
    expect_pass is None; a backward equal to the op's everywhere (kinks included) is not a
    mistake."""
    exercise = "10, exercise 2 (your own mistake)"
    if expect_pass is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write a wrong backward, set EXPECT_PASS and "
                       "rerun the cell")

    def judge() -> Verdict:
        rng = np.random.default_rng(seed)
        x = _image(rng, (2, 3, 5, 4), away_from_zero=True)
        near = rng.uniform(-0.1, 0.1, (2, 3, 5, 4))
        near[0, 0, 0, :2] = 0.0
        different = False
        for inp in (x, near):
            _, cache = reference.relu_forward(inp)
            dout = rng.standard_normal(inp.shape)
            got = _call(mine, dout, cache)
            different |= not _same(got, reference.relu_backward(dout, cache))
        if not different:
            return Verdict(exercise, WRONG, "this backward equals the op's on every input, kinks "
                           "included: write a wrong one")
        res = check_op("relu [mine]", reference.relu_forward, lambda d, c: _call(mine, d, c),
                       {"x": x}, ("x",), np.random.default_rng(seed + 1))[0]
        said = f"the gradient check {'passes' if res.passed else 'fails'} (max relative " \
               f"error {res.max_rel_error:.1e})"
        if bool(expect_pass) == res.passed:
            return Verdict(exercise, RIGHT, f"{said}, as you expected")
        hint = ("your backward differs from the right one only near the kink (|x| < 0.1), where "
                "the check's inputs never are: it cannot see the difference" if res.passed else
                "the check compares your backward with central differences of the forward on "
                "inputs of both signs: a gradient that differs where x < 0 or x > 0 is seen")
        return Verdict(exercise, WRONG, f"{said}, not as you expected. Hint: {hint}")

    return _attempt(exercise, judge, graded=False)


def check_wrong_steps(answer, passes: dict) -> Verdict:
    """10, exercise 3: the steps h at which the overwriting col2im passes the gradient check
    (a list, [] for none). passes: {h: passed} measured by the tutorial's cell."""
    exercise = "10, exercise 3 (the step does not save a wrong gradient)"
    if answer is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your prediction and rerun the cell")
    try:
        mine = {float(h) for h in answer}
    except (TypeError, ValueError):
        return Verdict(exercise, WRONG, "answer with a list of steps (or [] for none)")
    truth = {float(h) for h, p in passes.items() if p}
    shown = ", ".join(f"{h:g}: {'passes' if p else 'fails'}" for h, p in passes.items())
    if mine == truth:
        return Verdict(exercise, RIGHT, f"the overwriting col2im at each step: {shown}")
    return Verdict(exercise, WRONG, "not what was measured. Hint: the step only trades "
                   "truncation (h^2) against rounding (eps/h) for a RIGHT gradient; a wrong "
                   "formula (overlapping windows overwrite instead of add) is wrong by its own "
                   "amount, the same at every step")


# --- 12: the U-Net family ---------------------------------------------------------------------


def _unetpp_copy(model, **changes):
    """A new UNet++ with the weights of `model` and its config changed by `changes`."""
    from dataclasses import replace

    from minunet.models import registry

    copy = registry.build_model(replace(model.config, **changes))
    copy.load_state_dict(model.state_dict())
    return copy


def check_unetpp_fast(to_fast, model, x, levels=None) -> Verdict:
    """12, exercise 1: to_fast(model, L) -> a UNet++ whose inference (eval mode) is the fast
    mode pruned at L, with the weights of `model` (deep supervision, accurate mode). Right when,
    for every L, its eval-mode output equals the training-mode head L of the same weights
    (dropout off), to rounding. The message says what the check measured: the forward's time
    in accurate and in fast mode and how much the probabilities move."""
    import time

    from minunet.inference.tiles import softmax

    exercise = "12, exercise 1 (UNet++ in fast mode)"

    def judge() -> Verdict:
        depth = model.config.depth
        heads = _unetpp_copy(model, dropout=0.0).train().forward(x)  # Heads of depth logits
        accurate_model = _unetpp_copy(model, mode="accurate").eval()
        start = time.perf_counter()
        accurate = accurate_model.forward(x)
        t_accurate = time.perf_counter() - start
        p_accurate = softmax(accurate)
        measured = []
        for L in levels or range(1, depth + 1):
            mine = _call(to_fast, _unetpp_copy(model), L)
            if not hasattr(mine, "forward") or not hasattr(mine, "eval"):
                return Verdict(exercise, WRONG, f"to_fast must return a model; got "
                               f"{type(mine).__name__}")
            mine.eval()
            start = time.perf_counter()
            got = _call(mine.forward, x)
            seconds = time.perf_counter() - start
            if _same(got, heads[L - 1], 1e-6):
                measured.append(f"L={L}: {1e3 * seconds:.0f} ms, probabilities move by up to "
                                f"{float(np.abs(softmax(got) - p_accurate).max()):.3f}")
                continue
            where = f"prune={L}: the output is not head {L}'s (x^(0,{L}))"
            if _same(got, accurate, 1e-6):
                return Verdict(exercise, WRONG, f"{where}; it is the accurate mode's (the mean "
                               "of the heads). Hint: fast mode is mode='fast'; prune alone "
                               "changes nothing in accurate mode")
            other = [k + 1 for k in range(len(heads)) if _same(got, heads[k], 1e-6)]
            if other:
                hint = ("prune=0 means the full depth" if other[0] == depth else
                        "prune=L keeps the head on x^(0,L)")
                return Verdict(exercise, WRONG, f"{where}; it is head {other[0]}'s. Hint: "
                               f"{hint}")
            return Verdict(exercise, WRONG, f"{where} nor any head's of these weights. Hint: "
                           "keep the model's weights (a new model starts from new ones: "
                           "load_state_dict(model.state_dict()))")
        return Verdict(exercise, RIGHT, f"every pruned output equals its training-mode head. "
                       f"Accurate mode: {1e3 * t_accurate:.0f} ms; " + "; ".join(measured))

    return _attempt(exercise, judge, graded=False)


def check_xent_value(answer, logits, labels, weights) -> Verdict:
    """12, exercise 2: the U-Net's weighted cross-entropy on UNet 3+'s logits [0, z] (its config
    moved to loss='softmax_cross_entropy'); right when it equals the weighted binary
    cross-entropy of z = logits[:, 1] - logits[:, 0] against labels == 1, the mean over the
    pixels of w * (log(1 + e^z) - y z), to a relative 1e-5 (float32 logits)."""
    exercise = "12, exercise 2 (UNet 3+ with the U-Net's loss)"
    if answer is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Compute the loss and rerun the cell")
    try:
        value = float(np.asarray(answer, np.float64))
    except (TypeError, ValueError):
        return Verdict(exercise, WRONG, f"{answer!r} is not one number")
    z = np.asarray(logits, np.float64)[:, 1] - np.asarray(logits, np.float64)[:, 0]  # (N, H, W)
    y = (np.asarray(labels) == 1).astype(np.float64)
    w = np.asarray(weights, np.float64)
    per_pixel = np.logaddexp(0.0, z) - y * z  # -[y log sigma(z) + (1 - y) log(1 - sigma(z))]
    truth = float((w * per_pixel).mean())

    def near(v):
        return abs(value - v) <= 1e-5 * abs(v) + 1e-12

    if near(truth):
        return Verdict(exercise, RIGHT, "equals the weighted binary cross-entropy of "
                       "z = a_1 - a_0 to a relative 1e-5")
    if near(float(per_pixel.mean())):
        return Verdict(exercise, WRONG, "that is the binary cross-entropy without the weight "
                       "map. Hint: the U-Net's loss weighs every pixel by w(x)")
    if near(float((w * per_pixel).sum())) or near(float(per_pixel.sum())):
        return Verdict(exercise, WRONG, "that is a sum over the pixels. Hint: the loss is a "
                       "mean, 1 / (N H W) times the sum")
    if z.shape[-1] >= 176 and z.shape[-2] >= 176:
        from minunet.ops.loss import combined

        hybrid = float(combined.unet3p_loss_forward(z[:, None], y[:, None])[0])
        if near(hybrid):
            return Verdict(exercise, WRONG, "that is UNet 3+'s own hybrid loss (focal + "
                           "MS-SSIM + IoU). Hint: change the config's loss to "
                           "'softmax_cross_entropy' and build the model again")
    return Verdict(exercise, WRONG, "not the U-Net's weighted cross-entropy on these logits. "
                   "Hint: the model's loss_forward(logits, labels, weights) with "
                   "loss='softmax_cross_entropy'")


def check_stack_radius(answer, cls, config) -> Verdict:
    """12, exercise 3: the receptive radius of a small network (model class `cls`, its
    `config`) counted by hand; right when it equals minunet.nn.trace.receptive_radius."""
    from minunet.nn import trace

    exercise = "12, exercise 3 (a receptive radius by hand)"
    if answer is None:
        return Verdict(exercise, NOT_ATTEMPTED, "Write your count and rerun the cell")
    found = trace.reach(cls, config)
    if isinstance(answer, bool) or not isinstance(answer, int | np.integer):
        return Verdict(exercise, WRONG, f"a radius is a whole number of pixels; got {answer!r}")
    if int(answer) == found.radius:
        return Verdict(exercise, RIGHT, f"receptive_radius says {found.radius} px too")
    hint = ("a 3x3 convolution at half resolution reaches 2 input pixels, not 1; and an output "
            "pixel on the odd phase of the 2-px grid reads the half-resolution cell that starts "
            "one pixel to its left: the pool and the up-sampling add a pixel"
            if int(answer) < found.radius else
            "a padded k x k convolution reaches (k - 1) / 2 pixels of its own map on each side, "
            "and the pool and the up-sampling together add at most one input pixel")
    return Verdict(exercise, WRONG, f"{answer} px is not the radius. Hint: {hint}")
