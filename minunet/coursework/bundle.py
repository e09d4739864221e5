"""Bundles: the inputs, expected outputs and wrong versions' outputs of a set of checks.

A bundle is everything the grader needs besides the student's code, computed
once from the reference ops (a source checkout) and stored in one .npz file
(read with allow_pickle=False):

    for every check       its inputs, the upstream gradient dout, the expected
                          forward output, the expected gradients (central differences
                          of the reference forward, or the reference's gradient where
                          there is a kink: ties in max-pooling), for a conv the index
                          map of the reference im2col (a stand-in when the student's
                          fails), and the "fingerprints": what each known wrong
                          version (mistakes.py) returns on these inputs
    a timed check         (hidden.TimedCheck) its time rule and the reference's time
    meta                  JSON: the checks' names, kinds, dtypes, tolerances, points,
                          visibility, the seed, and the assignment it was made for

A student copy carries the public bundle (minunet/coursework/data/public.npz);
the teacher bundle holds the hidden one. The grader never draws a random number,
and only the trusted process reads a bundle: the worker gets one call's inputs.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minunet.nn import gradcheck

from . import mistakes as catalogue
from .checks import (
    FORWARD_TOL,
    KINDS,
    Check,
    call_backward,
    call_forward,
    function,
)

FORMAT = 2  # bumped when the layout below changes


@dataclass
class CheckData:
    """One check of a bundle, ready to grade."""

    name: str  # shown to students for a public check
    kind: str  # a key of checks.KINDS
    dtype: str
    mode: str  # "numerical" or "expected"
    threshold: float  # of the gradient tests
    step: float  # central-difference step
    floor_fraction: float  # rel error floor = this * max |numerical gradient| (its spec's)
    forward_tol: float  # max |out - expected| / max |expected|
    wrt: tuple
    strided: tuple
    points: float
    hidden: bool
    order: tuple  # the forward's argument names, in order
    arrays: dict  # input name -> array
    params: dict  # input name -> int, bool or tuple (not an array)
    dout: object  # array, or a float for a scalar output
    expected_out: np.ndarray
    expected_grads: dict = field(default_factory=dict)  # name -> array
    fingerprints: dict = field(default_factory=dict)  # mistake id -> {"out": a, "x": a, ...}
    im2col_idx: np.ndarray | None = None  # conv2d: the reference im2col of arange(x.size)
    time_factor: float = 0.0  # a timed check: its backward may take time_factor x the
    time_floor: float = 0.0  # reference's time, and at least time_floor seconds
    ref_seconds: float = 0.0  # the reference forward + backward, where the bundle was made

    @property
    def op(self) -> str:
        return KINDS[self.kind].op

    def inputs(self) -> dict:
        """Fresh copies of the inputs, in argument order; strided ones as non-contiguous views."""
        out = {}
        for name in self.order:
            if name in self.params:
                out[name] = self.params[name]
                continue
            a = self.arrays[name].copy()
            if name in self.strided and a.ndim:
                big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
                big[..., ::2] = a
                a = big[..., ::2]  # same values, every other element of each row
            out[name] = a
        return out

    def upstream(self):
        """A fresh copy of dout (a float for a scalar output)."""
        return self.dout if isinstance(self.dout, float) else self.dout.copy()


@dataclass
class Bundle:
    kind: str  # "public" or "hidden"
    seed: int
    checks: list[CheckData]
    assignment: dict | None = None  # the regions handed out (see make.py), when known

    def ops(self) -> list[str]:
        return list(dict.fromkeys(c.op for c in self.checks))


@contextlib.contextmanager
def quiet():
    """Silence NumPy floating-point warnings and all warnings: wrong versions and student
    code may overflow, and grading must report that, not raise on it."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _as_array(v) -> np.ndarray:
    return np.asarray(v)


def _differs(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return True
    with quiet():
        return not np.array_equal(a, b, equal_nan=True)


def _grads_tuple(grads, n: int) -> tuple:
    if n == 1 and not isinstance(grads, tuple | list):
        return (grads,)
    return tuple(grads)


def build(checks: list[Check], seed: int, hidden: bool = False, reference=None,
          assignment: dict | None = None) -> Bundle:
    """Draw every check's inputs (generator seeded by (seed, position)) and compute the
    expected results with the reference ops, and the outputs of every applicable
    wrong version in the catalogue.

    reference: the ops module (default minunet.ops of this checkout, the solutions).
    """
    if reference is None:
        from minunet import ops as reference
    datas = []
    for position, c in enumerate(checks):
        rng = np.random.default_rng([seed, position])
        inputs = c.make_inputs(rng, np.dtype(c.dtype))
        kind = KINDS[c.kind]
        params = {k: (tuple(v) if isinstance(v, list | tuple) else v)
                  for k, v in inputs.items() if not isinstance(v, np.ndarray)}
        arrays = {k: v for k, v in inputs.items() if isinstance(v, np.ndarray)}
        start = time.perf_counter()
        out, cache = call_forward(reference, c.kind, dict(inputs))
        dout = gradcheck.random_upstream(out, rng, np)
        grads = _grads_tuple(call_backward(reference, c.kind, dout, cache), len(c.wrt))
        seconds = time.perf_counter() - start
        timed = getattr(c, "time_factor", 0.0)
        d = CheckData(
            name=c.name, kind=c.kind, dtype=c.dtype, mode=c.mode, threshold=c.threshold,
            step=c.step(inputs), floor_fraction=c.floor_fraction,
            forward_tol=FORWARD_TOL[c.dtype], wrt=tuple(c.wrt), strided=tuple(c.strided),
            points=c.points, hidden=hidden, order=tuple(inputs), arrays=arrays, params=params,
            dout=dout, expected_out=_as_array(out),
            time_factor=timed, time_floor=getattr(c, "time_floor", 0.0),
            ref_seconds=_best_time(reference, c.kind, inputs, dout) if timed else seconds,
        )
        if c.mode == "expected":
            d.expected_grads = {n: np.asarray(g) for n, g in zip(c.wrt, grads, strict=True)}
        else:
            d.expected_grads = _numerical(reference, d)
        if kind.stand_ins and not timed:  # (a timed check's map would be megabytes)
            d.im2col_idx = _index_map(reference, c.kind, d.arrays["x"], out, inputs)
        used = {kind.forward_fn, kind.backward_fn}
        for m in catalogue.MISTAKES:
            if (m.wrong is None or not used & set(m.wrong) or m.probe == "nondeterministic"
                    or timed):
                continue
            fp = _fingerprint(reference, m, d, out, grads)
            if fp:
                d.fingerprints[m.id] = fp
        datas.append(d)
    return Bundle("hidden" if hidden else "public", seed, datas, assignment)


def _index_map(reference, kind: str, x, out, inputs: dict) -> np.ndarray:
    """The reference im2col of the entries' indices: cols = x.ravel()[map]; -1 where a
    column entry is padding (worker.reference_im2col reads a zero there)."""
    ids = np.arange(1, x.size + 1, dtype=np.float64).reshape(x.shape)  # 0 is the padding
    if kind == "conv2d_general":
        k = inputs["w"].shape[-1]
        p = k // 2 if inputs["padding"] == "same" else inputs["padding"]
        cols = function(reference, "im2col_general")(ids, k, inputs["stride"], p)
    else:
        cols = function(reference, "im2col")(ids, x.shape[2] - out.shape[2] + 1)
    return np.asarray(cols, dtype=np.int64) - 1


def _numerical(reference, d: CheckData) -> dict:
    """Central differences of the reference forward, per differentiable input (gradcheck's
    numerical_gradient with the check's step): what a gradient is compared with."""
    grads = {}
    for name in d.wrt:
        fresh = d.inputs()

        def f(v, name=name, fresh=fresh):
            args = dict(fresh)
            args[name] = v.copy()
            return call_forward(reference, d.kind, args)[0]

        with quiet():
            grads[name] = np.asarray(gradcheck.numerical_gradient(
                f, fresh[name], d.upstream(), d.step), dtype=np.float64)
    return grads


def _best_time(reference, kind: str, inputs: dict, dout, repeat: int = 5) -> float:
    """The best of `repeat` timings of the reference forward + backward."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        _, cache = call_forward(reference, kind, dict(inputs))
        call_backward(reference, kind, dout, cache)
        best = min(best, time.perf_counter() - start)
    return best


def _fingerprint(reference, m, d: CheckData, out, grads) -> dict:
    """What the wrong version returns where it differs from the reference ({} if nowhere)."""
    ns = catalogue.wrong_namespace(reference, m)
    fp = {}
    with quiet():
        try:
            wout, wcache = call_forward(ns, d.kind, d.inputs())
        except Exception:  # a wrong version may fail on some inputs: nothing to match there
            return {}
        if _differs(wout, out):
            fp["out"] = np.asarray(wout)
        try:
            wgrads = _grads_tuple(call_backward(ns, d.kind, d.upstream(), wcache), len(d.wrt))
        except Exception:
            return fp
        for name, wg, g in zip(d.wrt, wgrads, grads, strict=False):
            if wg is not None and _differs(wg, g):
                fp[name] = np.asarray(wg)
    return fp


# --- the file -----------------------------------------------------------------------------


def save(bundle: Bundle, path: Path) -> None:
    """Write the bundle to one .npz (no pickles), atomically."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    metas = []
    for i, d in enumerate(bundle.checks):
        p = f"c{i}."
        for name, a in d.arrays.items():
            arrays[p + "in." + name] = a
        arrays[p + "dout"] = np.asarray(d.dout)
        arrays[p + "out"] = d.expected_out
        for name, g in d.expected_grads.items():
            arrays[p + "grad." + name] = g
        for mid, fp in d.fingerprints.items():
            for what, a in fp.items():
                arrays[f"{p}fp.{mid}.{what}"] = a
        if d.im2col_idx is not None:
            arrays[p + "im2col_idx"] = d.im2col_idx.astype(np.int32)
        metas.append({
            "name": d.name, "kind": d.kind, "dtype": d.dtype, "mode": d.mode,
            "threshold": d.threshold, "step": d.step, "floor_fraction": d.floor_fraction,
            "forward_tol": d.forward_tol, "wrt": list(d.wrt), "strided": list(d.strided),
            "points": d.points, "hidden": d.hidden, "order": list(d.order),
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.params.items()},
            "dout_is_scalar": isinstance(d.dout, float),
            "fingerprints": {mid: sorted(fp) for mid, fp in d.fingerprints.items()},
            "time_factor": d.time_factor, "time_floor": d.time_floor,
            "ref_seconds": d.ref_seconds,
        })
    meta = {"format": FORMAT, "kind": bundle.kind, "seed": bundle.seed,
            "assignment": bundle.assignment, "checks": metas}
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    tmp.replace(path)


def load(path: Path) -> Bundle:
    """Read a bundle written by save(); a clear ValueError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no bundle at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
        meta = json.loads(str(files["meta"]))
    except Exception as e:  # noqa: BLE001 -- any unreadable file gets the same message
        raise ValueError(f"{path} is not a minunet coursework bundle ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is a bundle of format {meta.get('format')}, this grader "
                         f"reads format {FORMAT}: make it again with this version")
    checks = []
    for i, m in enumerate(meta["checks"]):
        p = f"c{i}."
        params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in m["params"].items()}
        arrays = {n: files[p + "in." + n] for n in m["order"] if n not in params}
        dout = files[p + "dout"]
        checks.append(CheckData(
            name=m["name"], kind=m["kind"], dtype=m["dtype"], mode=m["mode"],
            threshold=m["threshold"], step=m["step"], floor_fraction=m["floor_fraction"],
            forward_tol=m["forward_tol"], wrt=tuple(m["wrt"]), strided=tuple(m["strided"]),
            points=m["points"], hidden=m["hidden"], order=tuple(m["order"]), arrays=arrays,
            params=params, dout=float(dout) if m["dout_is_scalar"] else dout,
            expected_out=files[p + "out"],
            expected_grads={n: files[p + "grad." + n] for n in m["wrt"]
                            if p + "grad." + n in files},
            fingerprints={mid: {w: files[f"{p}fp.{mid}.{w}"] for w in whats}
                          for mid, whats in m["fingerprints"].items()},
            im2col_idx=(files[p + "im2col_idx"].astype(np.int64)
                        if p + "im2col_idx" in files else None),
            time_factor=m["time_factor"], time_floor=m["time_floor"],
            ref_seconds=m["ref_seconds"],
        ))
    return Bundle(meta["kind"], meta["seed"], checks, meta.get("assignment"))
