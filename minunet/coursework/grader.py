"""Judging the results of student code: tests, errors and diagnoses (the trusted side).

Nothing here runs student code. A runner makes each call: grade.py's Remote in a
worker process (worker.py) that sees only the call's inputs and hands back plain
arrays; InProcess on trusted ops (the reference, the catalogue's wrong versions).
Everything expected stays here. For every check of a bundle, in order:

  1. the forward, against the stored expected output (shape, dtype, values, no
     change to its inputs, the same result twice);
  2. if the forward passed, each gradient of the backward, against the gradient
     stored in the bundle: central differences of the reference forward
     (gradcheck.numerical_gradient, computed when the bundle was made), or the
     reference's own gradient where there is a kink (ties in max-pooling); a
     timed check's backward must also finish within its time limit (grade.py);
     if the forward failed, every gradient test fails with "fix the forward first".

A failed test gets a diagnosis, the first of:

    a part it uses failed its own check     "needs" (e.g. conv2d uses im2col; the
                                            conv is then judged again with the
                                            reference im2col/col2im standing in)
    raised / None / wrong structure         "not_implemented", "raised", ...
    too slow, hung, died                    "too_slow", "timeout", "crashed"
    different on a second call              the region's nondeterministic mistake
    matches a stored wrong version          that mistake's id (mistakes.py)
    shape, dtype, NaN/inf                   "shape", "dtype", "non_finite"
    value probes                            "sign", "constant_ratio", "first_image_only",
                                            "batch_mixing", "border", "channels", "unknown"
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from minunet.nn import gradcheck

from . import mistakes as catalogue
from . import probes
from .bundle import Bundle, CheckData, quiet
from .checks import IM2COL_KINDS, KINDS
from .worker import run_call

FINGERPRINT_RTOL = 1e-6  # a result matches a wrong version within this relative (norm) error
RATIO_RTOL = 1e-6  # a result is a constant times the reference within this residual
PER_IMAGE = {"conv2d", "upconv2x2", "maxpool2x2", "relu", "center_crop", "concat", "dropout",
             "conv2d_general"}


@dataclass
class TestResult:
    """One graded test: the forward of a check, or the gradient of one input."""

    number: str  # "3.2": check 3, test 2
    check: str  # the check's name (shown for public checks only)
    op: str
    region: str  # the solution region it grades, e.g. "conv2d.backward"
    input: str  # "forward", or the input whose gradient is tested ("x", "w", ...)
    shape: list  # the expected shape
    error: float  # max relative error (inf when there was nothing to compare)
    threshold: float
    passed: bool
    points: float  # earned
    max_points: float
    hidden: bool
    graded: bool = True  # False: a region not in the assignment (given code)
    diagnosis: str = ""  # a mistake id or a probe id ("" when passed)
    detail: str = ""  # worst element, the exception, the factor (public checks only)
    uses: str = ""  # a stand-in it was judged with (the reference im2col/col2im), or ""

    @property
    def hint(self) -> str:
        if not self.diagnosis:
            return ""
        return GRADER_HINTS.get(self.diagnosis) or catalogue.hint(self.diagnosis)


@dataclass
class Outcome:
    """What one call of student code gave back: plain arrays, or why there are none.

    status: "ok", "error" (it raised), "structure" (None or the wrong kind of result),
    "timeout", "crashed", "too_slow" (the last three from the trusted side)."""

    status: str
    info: dict = field(default_factory=dict)  # etype, message, where, problem, grads
    arrays: dict = field(default_factory=dict)  # out, after.<input>, g.<k>
    seconds: float = 0.0  # as the trusted side measured it

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class InProcess:
    """Runs the calls on a namespace of trusted ops in this process (the reference, the
    catalogue's wrong versions); grade.py's Remote runs student code in a worker."""

    def __init__(self, ns):
        self.ns = ns

    def call(self, d: CheckData, call: str, ref: bool = False,
             limit_s: float | None = None) -> Outcome:
        meta, arrays = request(d, call, ref)
        start = time.perf_counter()
        with quiet():
            info, out = run_call(self.ns, meta, arrays)
        return Outcome(info.get("status", "ok"), info, out, time.perf_counter() - start)


def request(d: CheckData, call: str, ref: bool = False) -> tuple[dict, dict]:
    """(meta, arrays) of one call of a check: only its inputs and dout, nothing expected."""
    meta = {"kind": d.kind, "call": "backward" if call == "backward" else "forward",
            "first": call == "forward_first", "order": list(d.order),
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.params.items()},
            "strided": list(d.strided), "dout_scalar": isinstance(d.dout, float),
            "n_grads": len(d.wrt)}
    arrays = {"in." + k: v for k, v in d.arrays.items()}
    if call == "backward":
        arrays["dout"] = np.asarray(d.dout)
    if ref and d.im2col_idx is not None:
        arrays["ref.idx"] = d.im2col_idx
    return meta, arrays


def _failure(o: Outcome) -> tuple[str, str]:
    """(diagnosis, detail) of a call that gave no result."""
    info = o.info
    if o.status in ("timeout", "crashed", "too_slow"):
        return o.status, info.get("message", "")
    if o.status == "structure":
        return info.get("problem", "structure"), info.get("message", "")
    etype, msg = info.get("etype", "Exception"), info.get("message", "")
    msg = msg.splitlines()[0] if msg else ""
    if etype == "NotImplementedError":
        return "not_implemented", msg
    if etype in ("ImportError", "ModuleNotFoundError") and "refused while grading" in msg:
        return "refused", msg
    where = info.get("where", "")
    return "raised", f"{etype}: {msg}" + (f" (at {where})" if where else "")


def _dtype_ok(a: np.ndarray, dtype: str) -> bool:
    return np.dtype(a.dtype) == np.dtype(dtype)


def _host(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _forward_error(out, expected) -> float:
    """max |out - expected| / max |expected| (inf when out holds NaN or inf)."""
    a, e = _host(out), np.asarray(expected, dtype=np.float64)
    with quiet():
        if not np.all(np.isfinite(a)):
            return float("inf")
        scale = max(float(np.abs(e).max(initial=0.0)), 1e-30)
        return float(np.abs(a - e).max(initial=0.0)) / scale


def _matches(a, b) -> bool:
    """a equals b (a wrong version's stored result) up to rounding: same shape, NaN where b is."""
    a, b = _host(a), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    with quiet():
        fa, fb = np.isfinite(a), np.isfinite(b)
        if not np.array_equal(fa, fb) or not np.array_equal(a[~fa], b[~fb], equal_nan=True):
            return False
        diff = float(np.linalg.norm(a[fa] - b[fb]))
        return diff <= FINGERPRINT_RTOL * max(float(np.linalg.norm(b[fb])), 1e-30)


def _same(a, b) -> bool:
    """Two results of the same call are equal (deterministic code): exact, NaN == NaN."""
    a, b = _host(a), _host(b)
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def _changed(d: CheckData, o: Outcome) -> bool:
    """An input differs after the forward (the worker hands back the inputs it called with)."""
    for name, v in d.arrays.items():
        after = o.arrays.get("after." + name)
        if after is None or after.shape != v.shape or not np.array_equal(
                np.asarray(v, dtype=np.float64), _host(after), equal_nan=True):
            return True
    return False


def _worst(a, r, floor: float, name: str) -> tuple[float, str]:
    """Max relative error (gradcheck's) and 'worst element dx[i, j]: yours A, expected B'."""
    a, r = _host(a), np.asarray(r, dtype=np.float64)
    with quiet():
        err = np.abs(a - r) / np.maximum(np.abs(a) + np.abs(r), floor)
        err = np.where(np.isnan(err), np.inf, err)
    if err.size == 0:
        return 0.0, ""
    idx = np.unravel_index(int(np.argmax(err)), err.shape)
    where = f"{name}[{', '.join(str(int(i)) for i in idx)}]" if idx else name
    return float(err[idx]), (f"worst element {where}: yours {a[idx]:.6g}, "
                             f"expected {r[idx]:.6g}")


# --- value probes ---------------------------------------------------------------------------


def _probe_values(a, r, tol: float, batch_axis: bool) -> tuple[str, str]:
    """What the difference between a result `a` and the reference `r` looks like."""
    a, r = _host(a), np.asarray(r, dtype=np.float64)
    with quiet():
        rr = float(np.vdot(r, r))
        if rr > 0:
            c = float(np.vdot(a, r)) / rr
            resid = float(np.linalg.norm(a - c * r))
            if resid <= RATIO_RTOL * max(float(np.linalg.norm(a)), 1e-30) and abs(c - 1) > 1e-6:
                if abs(c + 1) <= 1e-6:
                    return "sign", ""
                return "constant_ratio", f"yours = {c:.6g} x expected"
        scale = max(float(np.abs(r).max(initial=0.0)), 1e-30)
        bad = np.abs(a - r) > tol * scale
    if batch_axis and a.ndim >= 2 and a.shape[0] > 1 and not bad[0].any():
        return "first_image_only", ""
    placed = probes.classify(a, r, tol)  # right values in the wrong places (probes.py)
    if placed:
        return placed, ""
    if a.ndim == 4 and bad.any():
        H, W = a.shape[2:]
        inner = bad[:, :, 1 : H - 1, 1 : W - 1] if H > 2 and W > 2 else bad
        if H > 2 and W > 2 and not inner.any():
            return "border", ""
        per_channel = bad.any(axis=(0, 2, 3))
        if a.shape[1] > 1 and not per_channel.all():
            return "channels", (f"wrong channels: "
                                f"{', '.join(str(i) for i in np.flatnonzero(per_channel))}")
    return "unknown", ""


# --- one check ------------------------------------------------------------------------------



REFERENCE_DEPS = "the reference im2col/col2im (yours fail their own check)"
GRADER_HINTS = {  # diagnoses only the trusted side can make (the others are the catalogue's)
    "too_slow": "took far longer than the reference backward: a backward computes the "
                "gradient in about the time of a forward, not with one forward per input "
                "entry (finite differences are the check, not the answer)",
    "import_failed": "the file could not be imported (named next), so none of its ops ran",
}


@dataclass
class _Context:
    """What one grading run knows across checks."""

    graded: set  # the regions of the assignment
    failed: set = field(default_factory=set)  # regions with a failed test so far
    time_limits: dict = field(default_factory=dict)  # check name -> seconds of its backward


def _mistake_for_probe(region: str, probe: str) -> str:
    for m in catalogue.for_region(region):
        if m.probe == probe:
            return m.id
    return probe


def _fingerprint_match(d: CheckData, what: str, value, region: str,
                       forward_region: str = "") -> str:
    """The first catalogue mistake of `region` whose stored `what` equals value; then, for a
    gradient, one of the forward's region whose forward output is right on these inputs
    (the forward passed, so only such a mistake can be the cause: e.g. the tie rule)."""
    for regions, silent_forward in (((region,), False), ((forward_region,), True)):
        for m in catalogue.MISTAKES:
            fp = d.fingerprints.get(m.id)
            if (fp and what in fp and m.region in regions and not (silent_forward and "out" in fp)
                    and _matches(value, fp[what])):
                return m.id
    return ""


def _needs(needs: tuple, ctx: _Context) -> str:
    return ", ".join(r for r in needs if r in ctx.failed)


def _forward_test(run, d: CheckData, ctx: _Context, number: str, ref: bool) -> TestResult:
    """The forward of one check (ref: with the reference im2col/col2im)."""
    kind = KINDS[d.kind]
    expected = d.expected_out
    res = TestResult(number, d.name, d.op, kind.forward_region, "forward",
                     list(np.shape(expected)), float("inf"), d.forward_tol, False, 0.0,
                     d.points, d.hidden, kind.forward_region in ctx.graded)

    def fail(diagnosis, detail=""):
        res.diagnosis, res.detail = diagnosis, detail
        return res

    o = run.call(d, "forward", ref)
    if not o.ok:
        return fail(*_failure(o))
    out = o.arrays["out"]
    needs = "" if ref else _needs(kind.forward_needs, ctx)
    again = run.call(d, "forward", ref)
    nondeterministic = again.ok and not _same(again.arrays["out"], out)
    shape = tuple(out.shape)
    if shape == tuple(expected.shape):
        res.error = _forward_error(out, expected)
    changed = _changed(d, o)
    ok = (not nondeterministic and shape == tuple(expected.shape) and _dtype_ok(out, d.dtype)
          and res.error <= d.forward_tol and not changed)
    if ok:
        res.passed, res.points, res.diagnosis = True, d.points, ""
        return res
    if needs:
        return fail("needs", needs)
    if nondeterministic:
        return fail(_mistake_for_probe(kind.forward_region, "nondeterministic"))
    match = _fingerprint_match(d, "out", out, kind.forward_region)
    if match:
        return fail(match, _worst(out, expected, 1e-30, "out")[1] if shape == tuple(
            expected.shape) else "")
    if changed:
        return fail("mutates_input", "an input array differs after the call")
    if shape != tuple(expected.shape):
        return fail("shape", f"the output has shape {shape}, expected {tuple(expected.shape)}")
    if not _dtype_ok(out, d.dtype):
        return fail("dtype", f"the output is {out.dtype} for {d.dtype} inputs")
    if not np.all(np.isfinite(_host(out))):
        return fail(_mistake_for_probe(kind.forward_region, "non_finite"))
    _, detail = _worst(out, expected, 1e-30, "out")
    probe, extra = _probe_values(out, expected, d.forward_tol, d.kind in PER_IMAGE)
    if probe in ("unknown", "wrong_order") and d.kind in PER_IMAGE and \
            np.shape(expected)[0] > 1 and not ref:
        probe = _batch_probe(run, d) or probe
    return fail(_mistake_for_probe(kind.forward_region, probe),  # a region's own probe hint
                "; ".join(s for s in (extra, detail) if s))


def _batch_probe(run, d: CheckData) -> str:
    """'batch_mixing' when the forward is right on the first image alone (N = 1)."""
    o = run.call(d, "forward_first")
    if not o.ok:
        return ""
    out = o.arrays["out"]
    ok = (tuple(out.shape) == tuple(d.expected_out[:1].shape)
          and _forward_error(out, d.expected_out[:1]) <= d.forward_tol)
    return "batch_mixing" if ok else ""


def _backward_tests(run, d: CheckData, ctx: _Context, forward_ok: bool, first: int,
                    ref: bool) -> list:
    kind = KINDS[d.kind]
    region = kind.backward_region
    results = []
    for k, name in enumerate(d.wrt):
        shape = list(d.arrays[name].shape)
        results.append(TestResult(f"{first + k}", d.name, d.op, region, name, shape,
                                  float("inf"), d.threshold, False, 0.0, d.points, d.hidden,
                                  region in ctx.graded))
    if not forward_ok:
        for r in results:
            r.diagnosis = "forward_first"
        return results
    limit = ctx.time_limits.get(d.name)
    c = run.call(d, "backward", ref, limit)
    if c.ok and limit is not None and c.seconds > limit:
        c = Outcome("too_slow", {"message": f"took {c.seconds:.2g} s, more than {limit:.2g} s"})
    if not c.ok:
        diag, detail = _failure(c)
        for r in results:
            r.diagnosis, r.detail = diag, detail
        return results
    again = run.call(d, "backward", ref)
    needs = "" if ref else _needs(kind.backward_needs, ctx)
    for k, r in enumerate(results):
        _gradient_test(d, r, k, c, again, needs)
    return results


def _gradient_test(d: CheckData, r: TestResult, k: int, c: Outcome, again: Outcome,
                   needs: str):
    region, name = r.region, r.input

    def fail(diagnosis, detail=""):
        r.diagnosis, r.detail = diagnosis, detail

    problem = c.info.get("grads", {}).get(str(k), "")
    if problem == "none" or (not problem and f"g.{k}" not in c.arrays):
        return fail("returned_none", f"no gradient for {name}")
    if problem:
        return fail("structure", f"d{name} is {problem}")
    g = c.arrays[f"g.{k}"]
    g_again = again.arrays.get(f"g.{k}") if again.ok else None
    x = d.arrays[name]
    ref = np.asarray(d.expected_grads[name], dtype=np.float64)
    shape_ok = tuple(g.shape) == tuple(x.shape)
    dtype_ok = _dtype_ok(g, d.dtype)
    nondeterministic = g_again is not None and not _same(g, g_again)
    floor = max(gradcheck.REL_ERROR_FLOOR,
                d.floor_fraction * float(np.abs(ref).max(initial=0.0)))
    detail = ""
    if shape_ok:
        r.error, detail = _worst(g, ref, floor, f"d{name}")
    if shape_ok and dtype_ok and not nondeterministic and r.error <= d.threshold:
        r.passed, r.points = True, d.points
        return None
    if needs:
        return fail("needs", needs)
    if nondeterministic:
        return fail(_mistake_for_probe(region, "nondeterministic"))
    forward_region = KINDS[d.kind].forward_region
    match = _fingerprint_match(d, name, g, region, forward_region)
    if match:
        return fail(match, detail)
    if not shape_ok:
        return fail("shape", f"d{name} has shape {tuple(g.shape)}, but {name} has shape "
                             f"{tuple(x.shape)}: a gradient has the shape of its input")
    if not dtype_ok:
        return fail("dtype", f"d{name} is {g.dtype} for {d.dtype} inputs")
    if not np.all(np.isfinite(_host(g))):
        return fail(_mistake_for_probe(region, "non_finite"))
    batch_axis = name in ("x", "logits") or (d.op == "concat")
    probe, extra = _probe_values(g, ref, max(d.threshold, 1e-9), batch_axis)
    return fail(_mistake_for_probe(region, probe), "; ".join(s for s in (extra, detail) if s))


def _tests(run, d: CheckData, ctx: _Context, index: int, ref: bool) -> list[TestResult]:
    kind = KINDS[d.kind]
    fwd = _forward_test(run, d, ctx, f"{index}.1", ref)
    out = [fwd]
    if kind.backward_region in ctx.graded and d.wrt:  # (a forward-only check has no wrt)
        out += _backward_tests(run, d, ctx, fwd.passed, 2, ref)
        for r in out[1:]:
            r.number = f"{index}.{r.number}"
    return out


def grade_check(run, d: CheckData, ctx: _Context, index: int) -> list[TestResult]:
    """The tests of one check: its forward, then the gradient of each input.

    A conv2d test that fails while im2col or col2im fails its own check is judged
    again with the reference im2col/col2im standing in (`uses` says so): an im2col
    bug costs im2col's points, and the conv is judged on its own merit."""
    kind = KINDS[d.kind]
    if not (kind.forward_region in ctx.graded or kind.backward_region in ctx.graded):
        return []
    try:
        out = _tests(run, d, ctx, index, ref=False)
        if d.im2col_idx is not None and any(r.diagnosis == "needs" for r in out):
            again = _tests(run, d, ctx, index, ref=True)
            whole = out[0].diagnosis == "needs"  # its backward was then not even run
            for i, (mine, theirs) in enumerate(zip(out, again, strict=True)):
                if whole or mine.diagnosis == "needs":
                    theirs.uses = REFERENCE_DEPS
                    out[i] = theirs
    except Exception as e:  # noqa: BLE001 -- a result the grader cannot read: fail, go on
        out = planned_tests([Bundle("", 0, [d])], ctx.graded, start=index)
        for r in out:
            r.diagnosis, r.detail = "structure", f"the grader could not read the result: {e}"
    for r in out:
        if not r.passed:
            ctx.failed.add(r.region)
    return out


def grade_checks(ns, bundles: list[Bundle], graded: set, ops: list[str] | None = None,
                 start: int = 1, run=None, ctx: _Context | None = None) -> list[TestResult]:
    """Grade the ops of the bundles' checks (only those of `ops`).

    ns: a namespace of trusted ops run in this process (the reference, a wrong version);
    or run: a runner of student code (grade.py's Remote), with ns None.
    graded: the regions of the assignment (their tests earn points); tests of other
    regions are still run (a failure there explains later ones) but earn nothing.
    Check numbers continue across bundles from `start`; im2col's checks go first (the
    conv's tests need to know whether it passed), results come in check order.
    """
    run = run if run is not None else InProcess(ns)
    ctx = ctx if ctx is not None else _Context(set(graded))
    todo, index = [], start
    for b in bundles:
        for d in b.checks:
            if ops is None or d.op in ops:
                todo.append((index, d))
            index += 1
    results = {}
    for index, d in sorted(todo, key=lambda t: (t[1].kind not in IM2COL_KINDS, t[0])):
        results[index] = grade_check(run, d, ctx, index)
    return [r for i in sorted(results) for r in results[i]]


def planned_tests(bundles: list[Bundle], graded: set, ops: list[str] | None = None,
                  start: int = 1) -> list[TestResult]:
    """The tests grade_checks would report, all failed (for an op whose grading died)."""
    out = []
    index = start
    for b in bundles:
        for d in b.checks:
            if ops is None or d.op in ops:
                kind = KINDS[d.kind]
                graded_bwd = kind.backward_region in graded
                graded_fwd = kind.forward_region in graded
                if not (graded_fwd or graded_bwd):
                    index += 1
                    continue
                out.append(TestResult(f"{index}.1", d.name, d.op, kind.forward_region,
                                      "forward", list(d.expected_out.shape), float("inf"),
                                      d.forward_tol, False, 0.0, d.points, d.hidden,
                                      graded_fwd))
                if graded_bwd:
                    for k, name in enumerate(d.wrt):
                        out.append(TestResult(f"{index}.{k + 2}", d.name, d.op,
                                              kind.backward_region, name,
                                              list(d.arrays[name].shape), float("inf"),
                                              d.threshold, False, 0.0, d.points, d.hidden,
                                              graded_bwd))
            index += 1
    return out
