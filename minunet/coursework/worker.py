"""The student's side of the grader: run one ops module's calls, return plain arrays.

    python -m minunet.coursework.worker --ops-dir DIR --module conv --reply-fd FD \\
        --cpu-s S --memory-mb M --file-mb F

This process is not trusted: it imports the student's code. It never sees an
expected value, a hidden bundle or the grader's results: grade.py (the trusted
process) starts it with an empty environment in its own temporary folder, gives
it the inputs of one call at a time and reads back only plain arrays. It

  1. limits itself before any student code runs (CPU seconds, address space,
     file size; as root grade.py has already made it an unprivileged user);
  2. imports the one module `minunet.ops.<module>` from the student's folder
     (the package's __init__ is not run, so another file's mistake costs nothing
     here), behind an import guard that refuses the fast ops and autodiff;
  3. answers "ready" on the reply pipe, then for every line "<i>" on stdin reads
     req-<i>.npz, makes the call (run_call), writes res-<i>.npz and answers "<i>".

A request holds the call ("forward", "forward_first", "backward"), the inputs and
dout; for conv2d it may hold the index map of the reference im2col, which then
stands in for the student's im2col and col2im during the call (so a conv is judged
on its own merit when the student's im2col fails its own check). A result holds
`info` (JSON text: status, exception type, message, file:line) and the arrays
`out`, `after.<input>` (the inputs after the call) and `g.<k>` (the gradients).
grade.py and grader.py load it with allow_pickle=False and check every shape and
dtype: whatever this process writes can only ever be a wrong answer.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import json
import os
import sys
import traceback
import types
from pathlib import Path

import numpy as np

from .checks import KINDS, call_backward, call_forward, function

# Modules the student's ops may not import while being graded, and why.
REFUSED = {
    "minunet.fast": "the fast ops compute the same answers",
    "minunet.backend.cpu": "the CPU twins compute the same answers",
    "minunet.backend.gpu": "the GPU twins compute the same answers",
    "minunet.exporters.torch_mirror": "a PyTorch reference computes the answers",
    "torch": "autodiff computes the gradients the exercise asks for",
    "jax": "autodiff computes the gradients the exercise asks for",
    "autograd": "autodiff computes the gradients the exercise asks for",
    "tensorflow": "autodiff computes the gradients the exercise asks for",
}
MESSAGE_CHARS = 2000  # an exception message is cut to this many characters
_MISSING = object()


class Refuse(importlib.abc.MetaPathFinder):
    """An import guard: importing a REFUSED module (or a submodule) raises ImportError."""

    def find_spec(self, name, path=None, target=None):
        for refused, why in REFUSED.items():
            if name == refused or name.startswith(refused + "."):
                raise ImportError(f"{name} is refused while grading ({why}); write the op "
                                  f"with NumPy")
        return None


def guard() -> None:
    """Refuse the REFUSED modules from now on (and forget any already imported)."""
    for name in list(sys.modules):
        if any(name == r or name.startswith(r + ".") for r in REFUSED):
            del sys.modules[name]
            parent, _, child = name.rpartition(".")
            if parent in sys.modules and hasattr(sys.modules[parent], child):
                delattr(sys.modules[parent], child)
    sys.meta_path.insert(0, Refuse())


def limit(cpu_s: float, memory_mb: int, file_mb: int, nproc: int = 0) -> None:
    """Hard limits on this process (an unprivileged process cannot raise them again).
    nproc counts every process of the user, so grade.py asks for it only as nobody."""
    import resource

    for what, value in ((resource.RLIMIT_CPU, int(cpu_s) + 1),
                        (resource.RLIMIT_AS, memory_mb << 20),
                        (resource.RLIMIT_FSIZE, file_mb << 20),
                        (resource.RLIMIT_NPROC, nproc)):
        if value > 0:
            resource.setrlimit(what, (value, value))


def load_module(ops_dir: Path, module: str):
    """Import ops_dir/<module>.py as minunet.ops.<module> (the package's __init__ not run)."""
    import minunet

    package = types.ModuleType("minunet.ops")
    package.__path__ = [str(ops_dir)]
    package.__package__ = "minunet.ops"
    sys.modules["minunet.ops"] = package
    minunet.ops = package
    return importlib.import_module(f"minunet.ops.{module}")


# --- one call -----------------------------------------------------------------------------


def strided(a: np.ndarray) -> np.ndarray:
    """The same values as a non-contiguous view: every other element of each row."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def inputs(meta: dict, arrays: dict) -> dict:
    """The forward's inputs in argument order (fresh copies; strided ones as views)."""
    out = {}
    for name in meta["order"]:
        if name in meta["params"]:
            v = meta["params"][name]
            out[name] = tuple(v) if isinstance(v, list) else v
            continue
        a = np.array(arrays["in." + name])
        if meta.get("first"):
            a = a[:1].copy()
        out[name] = strided(a) if name in meta["strided"] and a.ndim else a
    return out


def reference_im2col(idx: np.ndarray, x_shape: tuple):
    """im2col and col2im from the reference's index map for inputs of shape x_shape (an
    index -1 is a zero of the padding: it reads the zero appended to x, and its gradient is
    dropped). They take the arguments of im2col or of im2col_general alike."""
    size = int(np.prod(x_shape))

    def im2col(x, *_):
        if tuple(x.shape) != x_shape:
            raise ValueError(f"the reference im2col is given for x of shape {x_shape} only")
        flat = np.concatenate([np.ascontiguousarray(x).reshape(-1), np.zeros(1, x.dtype)])
        return flat[idx]

    def col2im(cols, shape, *_):
        if tuple(shape) != x_shape:
            raise ValueError(f"the reference col2im is given for x of shape {x_shape} only")
        dx = np.bincount(idx.reshape(-1) % (size + 1), weights=np.asarray(cols).reshape(-1),
                         minlength=size + 1)[:size]
        return dx.reshape(x_shape).astype(np.asarray(cols).dtype)

    return im2col, col2im


def _host(v):
    from minunet import backend

    return np.asarray(backend.to_host(v))


def _arraylike(a) -> bool:
    if isinstance(a, bool):
        return False
    if isinstance(a, float | int):
        return True
    kind = getattr(getattr(a, "dtype", None), "kind", None)
    return hasattr(a, "shape") and kind in ("f", "i", "u", "b")


def _array(a) -> np.ndarray:
    return np.asarray(float(a)) if isinstance(a, float | int) else _host(a)


def _kind_of(a) -> str:
    dt = getattr(a, "dtype", None)
    return type(a).__name__ + (f" of dtype {dt}" if dt is not None else "")


def _exception(e: BaseException) -> dict:
    tb = traceback.extract_tb(e.__traceback__)
    where = f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    if isinstance(e, SyntaxError) and e.filename:
        where = f"{e.filename.rsplit('/', 1)[-1]}:{e.lineno}"
    return {"status": "error", "etype": type(e).__name__,
            "message": str(e)[:MESSAGE_CHARS], "where": where}


def _grads(g, n: int) -> tuple[dict, dict]:
    """(info, arrays) of a backward's result for n gradients."""
    if g is None:
        return {"status": "structure", "problem": "returned_none",
                "message": "returned None where the gradient was expected"}, {}
    if n == 1 and isinstance(g, tuple | list):
        if len(g) != 1:
            return {"status": "structure", "problem": "structure",
                    "message": f"returned {len(g)} values where one gradient was expected"}, {}
        g = g[0]
    if n == 1:
        g = (g,)
    if not isinstance(g, tuple | list) or len(g) != n:
        got = f"{len(g)} values" if isinstance(g, tuple | list) else type(g).__name__
        return {"status": "structure", "problem": "structure",
                "message": f"returned {got} where {n} gradients were expected"}, {}
    arrays, kinds = {}, {}
    for k, v in enumerate(g):
        if v is None:
            kinds[str(k)] = "none"
        elif not _arraylike(v):
            kinds[str(k)] = f"a {_kind_of(v)}, not an array of real numbers"
        else:
            arrays[f"g.{k}"] = _array(v)
    return {"status": "ok", "grads": kinds}, arrays


def run_call(ns, meta: dict, arrays: dict) -> tuple[dict, dict]:
    """Make one call on the namespace of ops ns: (info, arrays) as described above.

    Also used in the trusted process on the reference ops and the catalogue's wrong
    versions (teacher code), so that both paths judge the same results."""
    kind, call = meta["kind"], meta["call"]
    args = inputs(meta, arrays)
    where, saved = {}, {}
    if "ref.idx" in arrays:  # the reference im2col/col2im stand in for the student's
        k = KINDS[kind]
        where = function(ns, k.forward_fn).__globals__
        saved = {n: where.get(n, _MISSING) for n in k.stand_ins}
        names = reference_im2col(np.asarray(arrays["ref.idx"]), tuple(np.shape(args["x"])))
        where.update(zip(k.stand_ins, names, strict=True))
    try:
        with np.errstate(all="ignore"):
            value = call_forward(ns, kind, args)
            if call == "backward":
                dout = float(arrays["dout"]) if meta["dout_scalar"] else np.array(arrays["dout"])
                value = call_backward(ns, kind, dout, value[1])
    except BaseException as e:  # noqa: BLE001 -- student code may raise anything, even SystemExit
        if isinstance(e, KeyboardInterrupt):
            raise
        return _exception(e), {}
    finally:
        for n, f in saved.items():
            if f is _MISSING:
                where.pop(n, None)
            else:
                where[n] = f
    if call == "backward":
        return _grads(value, meta["n_grads"])
    info, out = {"status": "ok"}, {}
    if not isinstance(value, tuple | list) or len(value) != 2:
        if value is None:
            return {"status": "structure", "problem": "returned_none",
                    "message": "returned None where (out, cache) was expected"}, {}
        return {"status": "structure", "problem": "structure",
                "message": f"returned {type(value).__name__} where (out, cache) was "
                           f"expected"}, {}
    if value[0] is None:
        return {"status": "structure", "problem": "returned_none",
                "message": "the output is None"}, {}
    if not _arraylike(value[0]):
        return {"status": "structure", "problem": "structure",
                "message": f"the output is a {_kind_of(value[0])}, not an array of real "
                           f"numbers"}, {}
    out["out"] = _array(value[0])
    for name, a in args.items():
        if isinstance(a, np.ndarray):
            out["after." + name] = np.array(a)
    return info, out




# --- the process --------------------------------------------------------------------------


def _save(path: Path, info: dict, arrays: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        np.savez(f, info=np.array(json.dumps(info)), **arrays)
    tmp.replace(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minunet.coursework.worker",
                                description="Run one ops module's calls for the grader "
                                            "(internal: started by grade.py).")
    p.add_argument("--ops-dir", type=Path, required=True, help="the student's ops folder")
    p.add_argument("--module", required=True, help="the module to import, e.g. conv")
    p.add_argument("--reply-fd", type=int, required=True, help="the pipe for replies")
    p.add_argument("--cpu-s", type=float, default=0, help="CPU seconds (0: no limit)")
    p.add_argument("--memory-mb", type=int, default=0, help="address space (0: no limit)")
    p.add_argument("--file-mb", type=int, default=0, help="largest file written (0: none)")
    p.add_argument("--nproc", type=int, default=0, help="processes of the user (0: none)")
    a = p.parse_args(argv)
    limit(a.cpu_s, a.memory_mb, a.file_mb, a.nproc)
    reply = os.fdopen(a.reply_fd, "w", buffering=1)
    exchange = Path.cwd()
    guard()
    try:
        ns = load_module(a.ops_dir, a.module)
    except BaseException as e:  # noqa: BLE001 -- a syntax error, an import refused, exit()...
        _save(exchange / "res-import.npz", _exception(e), {})
        reply.write("import\n")
        return 0
    reply.write("ready\n")
    for line in sys.stdin:
        i = line.strip()
        if not i.isdigit():
            continue
        with np.load(exchange / f"req-{i}.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
        info, out = run_call(ns, meta, arrays)
        _save(exchange / f"res-{i}.npz", info, out)
        reply.write(f"{i}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
