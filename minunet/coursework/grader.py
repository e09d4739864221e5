"""Grading one namespace of ops against a bundle: tests, errors and diagnoses.

For every check of a bundle, in order:

  1. the forward, against the stored expected output (shape, dtype, values, no
     change to its inputs, the same result twice);
  2. if the forward passed, each gradient of the backward, against central
     differences of the student's own forward (gradcheck.numerical_gradient), or
     against the stored gradient where it has a kink (ties in max-pooling);
     if the forward failed, every gradient test fails with "fix the forward first".

A failed test gets a diagnosis, the first of:

    a part it uses failed its own check     "needs" (e.g. conv2d uses im2col)
    raised / None / wrong structure         "not_implemented", "raised", ...
    different on a second call              the region's nondeterministic mistake
    matches a stored wrong version          that mistake's id (mistakes.py)
    shape, dtype, NaN/inf                   "shape", "dtype", "non_finite"
    value probes                            "sign", "constant_ratio", "first_image_only",
                                            "batch_mixing", "border", "channels", "unknown"

`grade_checks` runs in the process that holds the student's ops; `worker.py`
calls it in a subprocess per op, so that code that hangs or crashes costs one op.
"""

from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass, field

import numpy as np

from minunet import gradcheck

from . import mistakes as catalogue
from . import probes
from .bundle import Bundle, CheckData, quiet
from .checks import KINDS, call_backward, call_forward

FINGERPRINT_RTOL = 1e-6  # a result matches a wrong version within this relative (norm) error
RATIO_RTOL = 1e-6  # a result is a constant times the reference within this residual
PER_IMAGE = {"conv2d", "upconv2x2", "maxpool2x2", "relu", "center_crop", "concat", "dropout"}


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

    @property
    def hint(self) -> str:
        return catalogue.hint(self.diagnosis) if self.diagnosis else ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TestResult:
        return cls(**d)


@dataclass
class _Call:
    """The outcome of calling student code: a value, or the exception it raised."""

    value: object = None
    error: BaseException | None = None
    where: str = ""  # file:line of the innermost frame of the exception

    @property
    def failed(self) -> bool:
        return self.error is not None


def _call(fn, *args) -> _Call:
    try:
        with quiet():
            return _Call(fn(*args))
    except BaseException as e:  # noqa: BLE001 -- student code may raise anything, even SystemExit
        if isinstance(e, KeyboardInterrupt):
            raise
        tb = traceback.extract_tb(e.__traceback__)
        where = f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
        return _Call(error=e, where=where)


def _exception_diagnosis(c: _Call) -> tuple[str, str]:
    if isinstance(c.error, NotImplementedError):
        return "not_implemented", str(c.error)
    msg = str(c.error).splitlines()[0] if str(c.error) else ""
    if isinstance(c.error, ImportError) and "refused while grading" in msg:
        return "refused", msg
    return "raised", f"{type(c.error).__name__}: {msg}" + (f" (at {c.where})" if c.where else "")


def _dtype_ok(a, dtype: str) -> bool:
    dt = getattr(a, "dtype", None)
    if dt is None:  # a Python float is acceptable where float64 is expected
        return dtype == "float64" and isinstance(a, float | int)
    return np.dtype(dt) == np.dtype(dtype)


def _host(a) -> np.ndarray:
    from minunet import backend

    return np.asarray(backend.to_host(a), dtype=np.float64)


def _is_arraylike(a) -> bool:
    """A NumPy/CuPy array or scalar of real numbers, or a Python float or int."""
    if isinstance(a, float | int):
        return True
    kind = getattr(getattr(a, "dtype", None), "kind", None)
    return hasattr(a, "shape") and kind in ("f", "i", "u", "b")


def _kind_of(a) -> str:
    dt = getattr(a, "dtype", None)
    return type(a).__name__ + (f" of dtype {dt}" if dt is not None else "")


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
    try:
        a, b = _host(a), _host(b)
    except Exception:  # noqa: BLE001
        return True  # not arrays: other tests report it
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def _changed(before: dict, after: dict) -> bool:
    return any(isinstance(v, np.ndarray) and not np.array_equal(v, after[k], equal_nan=True)
               for k, v in before.items())


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


@dataclass
class _Context:
    """What one grading run knows across checks."""

    graded: set  # the regions of the assignment
    failed: set = field(default_factory=set)  # regions with a failed test so far


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


def _needs(d: CheckData, needs: tuple, ctx: _Context) -> str:
    bad = [r for r in needs if r in ctx.failed]
    return ", ".join(bad)


def _forward_test(ns, d: CheckData, ctx: _Context, number: str):
    """(TestResult, passed) of the forward of one check."""
    kind = KINDS[d.kind]
    expected = d.expected_out
    res = TestResult(number, d.name, d.op, kind.forward_region, "forward",
                     list(np.shape(expected)), float("inf"), d.forward_tol, False, 0.0,
                     d.points, d.hidden, kind.forward_region in ctx.graded)

    def fail(diagnosis, detail=""):
        res.diagnosis, res.detail = diagnosis, detail
        return res

    inputs = d.inputs()
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}
    c = _call(call_forward, ns, d.kind, inputs)
    if c.failed:
        return fail(*_exception_diagnosis(c))
    if d.kind == "im2col":
        out = c.value[0]
    elif not isinstance(c.value, tuple | list) or len(c.value) != 2:
        if c.value is None:
            return fail("returned_none", "returned None where (out, cache) was expected")
        return fail("structure", f"returned {type(c.value).__name__} where (out, cache) "
                                 f"was expected")
    else:
        out = c.value[0]
    if out is None:
        return fail("returned_none", "the output is None")
    if not _is_arraylike(out):
        return fail("structure", f"the output is a {_kind_of(out)}, not an array of real "
                                 f"numbers")
    needs = _needs(d, kind.forward_needs, ctx)
    again = _call(call_forward, ns, d.kind, d.inputs())
    nondeterministic = (not again.failed and isinstance(again.value, tuple | list)
                        and len(again.value) == 2 and not _same(again.value[0], out))
    shape = tuple(np.shape(out))
    if shape == tuple(expected.shape):
        res.error = _forward_error(out, expected)
    ok = (not nondeterministic and shape == tuple(expected.shape) and _dtype_ok(out, d.dtype)
          and res.error <= d.forward_tol and not _changed(before, inputs))
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
    if _changed(before, inputs):
        return fail("mutates_input", "an input array differs after the call")
    if shape != tuple(expected.shape):
        return fail("shape", f"the output has shape {shape}, expected {tuple(expected.shape)}")
    if not _dtype_ok(out, d.dtype):
        got = getattr(out, "dtype", type(out).__name__)
        return fail("dtype", f"the output is {got} for {d.dtype} inputs")
    if not np.all(np.isfinite(_host(out))):
        return fail(_mistake_for_probe(kind.forward_region, "non_finite"))
    _, detail = _worst(out, expected, 1e-30, "out")
    probe, extra = _probe_values(out, expected, d.forward_tol, d.kind in PER_IMAGE)
    if probe in ("unknown", "wrong_order") and d.kind in PER_IMAGE and \
            np.shape(expected)[0] > 1:
        probe = _batch_probe(ns, d) or probe
    return fail(_mistake_for_probe(kind.forward_region, probe),  # a region's own probe hint
                "; ".join(s for s in (extra, detail) if s))


def _batch_probe(ns, d: CheckData) -> str:
    """'batch_mixing' when the forward is right on the first image alone (N = 1)."""
    one = {k: (v[:1] if isinstance(v, np.ndarray) else v) for k, v in d.inputs().items()}
    c = _call(call_forward, ns, d.kind, one)
    if c.failed or not isinstance(c.value, tuple | list) or len(c.value) != 2:
        return ""
    try:
        ok = (tuple(np.shape(c.value[0])) == tuple(d.expected_out[:1].shape)
              and _forward_error(c.value[0], d.expected_out[:1]) <= d.forward_tol)
    except Exception:  # noqa: BLE001
        return ""
    return "batch_mixing" if ok else ""


def _gradients(ns, d: CheckData):
    """(_Call of the backward, its gradients as a tuple or None, a structure problem or '')."""
    fwd = _call(call_forward, ns, d.kind, d.inputs())
    if fwd.failed:
        return fwd, None, ""
    cache = fwd.value[1]
    c = _call(call_backward, ns, d.kind, d.upstream(), cache)
    if c.failed:
        return c, None, ""
    g = c.value
    n = len(d.wrt)
    if g is None:
        return c, None, "returned None where the gradient was expected"
    if n == 1:
        if isinstance(g, tuple | list):
            if len(g) != 1:
                return c, None, f"returned {len(g)} values where one gradient was expected"
            g = g[0]
        return c, (g,), ""
    if not isinstance(g, tuple | list) or len(g) != n:
        got = f"{len(g)} values" if isinstance(g, tuple | list) else type(g).__name__
        return c, None, (f"returned {got} where the {n} gradients "
                         f"(d{', d'.join(d.wrt)}) were expected")
    return c, tuple(g), ""


def _backward_tests(ns, d: CheckData, ctx: _Context, forward_ok: bool, first: int) -> list:
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
    c, grads, problem = _gradients(ns, d)
    if c.failed:
        diag, detail = _exception_diagnosis(c)
        for r in results:
            r.diagnosis, r.detail = diag, detail
        return results
    if grads is None:
        for r in results:
            r.diagnosis = "returned_none" if "None" in problem else "structure"
            r.detail = problem
        return results
    _, again, _ = _gradients(ns, d)
    needs = _needs(d, kind.backward_needs, ctx)
    for k, (r, name) in enumerate(zip(results, d.wrt, strict=True)):
        _gradient_test(ns, d, r, name, grads[k], again[k] if again else None, needs)
    return results


def _gradient_test(ns, d: CheckData, r: TestResult, name: str, g, g_again, needs: str):
    region = r.region

    def fail(diagnosis, detail=""):
        r.diagnosis, r.detail = diagnosis, detail

    if g is None:
        return fail("returned_none", f"no gradient for {name}")
    if not _is_arraylike(g):
        return fail("structure", f"d{name} is a {_kind_of(g)}, not an array of real numbers")
    x = d.arrays[name]
    if d.mode == "expected":
        ref = d.expected_grads[name]
    else:
        fresh = d.inputs()

        def f(v):
            args = dict(fresh)
            args[name] = v.copy()
            return call_forward(ns, d.kind, args)[0]

        c = _call(gradcheck.numerical_gradient, f, fresh[name], d.upstream(), d.step)
        if c.failed:  # the forward ran before, so this is rare (e.g. it fails on a copy)
            return fail(*_exception_diagnosis(c))
        ref = c.value
    ref = np.asarray(ref, dtype=np.float64)
    shape_ok = tuple(np.shape(g)) == tuple(x.shape)
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
        return fail("shape", f"d{name} has shape {tuple(np.shape(g))}, but {name} has shape "
                             f"{tuple(x.shape)}: a gradient has the shape of its input")
    if not dtype_ok:
        got = getattr(g, "dtype", type(g).__name__)
        return fail("dtype", f"d{name} is {got} for {d.dtype} inputs")
    if not np.all(np.isfinite(_host(g))):
        return fail(_mistake_for_probe(region, "non_finite"))
    batch_axis = name in ("x", "logits") or (d.op == "concat")
    probe, extra = _probe_values(g, ref, max(d.threshold, 1e-9), batch_axis)
    return fail(_mistake_for_probe(region, probe), "; ".join(s for s in (extra, detail) if s))


def grade_check(ns, d: CheckData, ctx: _Context, index: int) -> list[TestResult]:
    """The tests of one check: its forward, then the gradient of each input."""
    kind = KINDS[d.kind]
    graded_fwd = kind.forward_region in ctx.graded
    graded_bwd = kind.backward_region in ctx.graded
    if not (graded_fwd or graded_bwd):
        return []
    try:
        fwd = _forward_test(ns, d, ctx, f"{index}.1")
        out = [fwd]
        if graded_bwd:
            out += _backward_tests(ns, d, ctx, fwd.passed, 2)
            for r in out[1:]:
                r.number = f"{index}.{r.number}"
    except Exception as e:  # noqa: BLE001 -- a result the grader cannot read: fail, go on
        out = planned_tests([Bundle("", 0, [d])], ctx.graded, start=index)
        for r in out:
            r.diagnosis, r.detail = "structure", f"the grader could not read the result: {e}"
    for r in out:
        if not r.passed:
            ctx.failed.add(r.region)
    return out


def grade_checks(ns, bundles: list[Bundle], graded: set, ops: list[str] | None = None,
                 start: int = 1) -> list[TestResult]:
    """Grade the ops namespace `ns` on every check of the bundles (only those of `ops`).

    graded: the regions of the assignment (their tests earn points); tests of other
    regions are still run (a failure there explains later ones) but earn nothing.
    Check numbers continue across bundles from `start`.
    """
    ctx = _Context(set(graded))
    results = []
    index = start
    for b in bundles:
        for d in b.checks:
            if ops is None or d.op in ops:
                results += grade_check(ns, d, ctx, index)
            index += 1
    return results


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
