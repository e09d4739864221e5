"""The grading subprocess: load a student's ops, grade one op, write the results as JSON.

    python -m minunet.coursework.worker --ops-dir DIR --op OP --graded R1,R2,... \\
        --out RESULTS.json BUNDLE [BUNDLE ...]

One process per op, started by grade.py with a timeout, so that code that
hangs, crashes or exits costs that op only. The student's folder is loaded as
the package `minunet.ops` (its relative imports then reach this installation's
backend), after an import guard is in place that refuses the fast ops, their
CPU/GPU twins and autodiff libraries: they compute the answers the exercises ask
for. Whatever the student's code prints is discarded (it could print a hidden
check's inputs).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import io
import json
import sys
from pathlib import Path

# Modules the student's ops may not import while being graded, and why.
REFUSED = {
    "minunet.fast": "the fast ops compute the same answers",
    "minunet.backend.cpu": "the CPU twins compute the same answers",
    "minunet.backend.gpu": "the GPU twins compute the same answers",
    "minunet.torch_ref": "a PyTorch reference computes the answers",
    "torch": "autodiff computes the gradients the exercise asks for",
    "jax": "autodiff computes the gradients the exercise asks for",
    "autograd": "autodiff computes the gradients the exercise asks for",
    "tensorflow": "autodiff computes the gradients the exercise asks for",
}


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


def load_ops(ops_dir: Path):
    """Import the folder ops_dir as the package minunet.ops and return it."""
    import minunet

    if "minunet.ops" in sys.modules:
        raise RuntimeError("minunet.ops was imported before the student's ops were loaded")
    init = ops_dir / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "minunet.ops", init, submodule_search_locations=[str(ops_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["minunet.ops"] = module
    minunet.ops = module
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minunet.coursework.worker",
                                description="Grade one op of a student's ops folder (internal).")
    p.add_argument("bundles", nargs="+", type=Path, help="bundle files, public first")
    p.add_argument("--ops-dir", type=Path, required=True, help="the student's minunet/ops folder")
    p.add_argument("--op", required=True, help="the op to grade")
    p.add_argument("--graded", default="", help="comma list of the assignment's regions")
    p.add_argument("--out", type=Path, required=True, help="where to write the results (JSON)")
    a = p.parse_args(argv)

    from .bundle import load
    from .grader import grade_checks, planned_tests

    bundles = [load(b) for b in a.bundles]
    graded = {r for r in a.graded.split(",") if r}
    sink = io.StringIO()
    guard()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            ns = load_ops(a.ops_dir)
        except BaseException as e:  # noqa: BLE001 -- a syntax error, an import refused, ...
            results = planned_tests(bundles, graded, [a.op])
            first = str(e).splitlines()[0] if str(e) else ""
            for r in results:
                r.diagnosis = "refused" if "refused while grading" in first else "raised"
                r.detail = f"importing the ops failed: {type(e).__name__}: {first}"
        else:
            results = grade_checks(ns, bundles, graded, [a.op])
    tmp = a.out.with_name(a.out.name + ".tmp")
    tmp.write_text(json.dumps([r.to_dict() for r in results]))
    tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
