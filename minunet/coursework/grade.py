"""`python -m minunet.coursework grade`: grade the ops of a project, op by op, in subprocesses.

    run(path, hidden=..., ops=..., timeout=...) -> Grading     the results of every test
    report(grading)                                            the student's table
    results_json(grading)                                      Gradescope's results.json

Each op is graded by `worker.py` in its own process with a timeout; an op whose
process hangs, crashes or exits gets failed tests saying so, and the others are
graded as usual. Expected arrays come from the public bundle of the copy
(minunet/coursework/data/public.npz) or, in the source checkout, are computed
from its own ops (which then grade themselves: only their gradients are really
checked). Hidden checks come from a teacher bundle (--hidden); their results
are shown by name and hint only, never with their inputs or values.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import mistakes as catalogue
from . import project
from .bundle import Bundle, build, load, save
from .checks import KINDS, OPS, public_checks
from .grader import TestResult, planned_tests
from .regions import parse_dir, render

DEFAULT_TIMEOUT_S = 60.0  # per op; a whole public grade takes a few seconds
DEFAULT_JOBS = min(2, os.cpu_count() or 1)  # ops graded at the same time


@dataclass
class Grading:
    """Everything one grade found."""

    path: str  # what was graded
    results: list[TestResult]
    seconds: float
    public_seed: int
    hidden: bool  # hidden checks were run
    graded_regions: list[str]
    notes: list[str] = field(default_factory=list)  # where the expected arrays came from, ...
    jobs: int = 1

    def graded(self, hidden: bool | None = None) -> list[TestResult]:
        return [r for r in self.results if r.graded and (hidden is None or r.hidden == hidden)]

    def score(self, hidden: bool | None = None) -> tuple[float, float]:
        tests = self.graded(hidden)
        return sum(r.points for r in tests), sum(r.max_points for r in tests)

    @property
    def all_passed(self) -> bool:
        return all(r.passed for r in self.graded())


def _all_regions() -> list[str]:
    return sorted({k.forward_region for k in KINDS.values()}
                  | {k.backward_region for k in KINDS.values()})


def _stubbed_ops(root: Path, dest: Path) -> None:
    """dest: the checkout's ops with every region stubbed (the base for loose files)."""
    ops = root / "minunet" / "ops"
    regions = parse_dir(ops)
    dest.mkdir(parents=True)
    for p in sorted(ops.glob("*.py")):
        mine = [r for r in regions if Path(r.path) == p]
        dest.joinpath(p.name).write_text(render(p.read_text(), mine, {r.id for r in mine}))


def _ops_folder(path: Path, tmp: Path) -> tuple[Path, Path | None]:
    """(the ops folder to grade, the project root it belongs to or None for loose files)."""
    ops_dir, loose = project.find_ops(path)
    if not loose:
        root = ops_dir.parent.parent if ops_dir.name == "ops" else None
        return ops_dir, root
    here = project.installation_root()
    base = tmp / "ops"
    if project.is_student_copy(here):
        shutil.copytree(here / "minunet" / "ops", base,
                        ignore=shutil.ignore_patterns("__pycache__"))
    elif project.is_source_checkout(here):
        _stubbed_ops(here, base)
    else:
        raise ValueError("grading loose ops files needs a student copy or the source checkout "
                         "to fill in the files not submitted")
    for p in loose:
        shutil.copyfile(p, base / p.name)
    return base, None


def _public_bundle(root: Path | None, seed: int | None, tmp: Path) -> tuple[Path, int, str]:
    """(bundle file, its seed, a note saying where it came from)."""
    here = project.installation_root()
    if seed is None:
        for where in (root, here):
            if where is not None and project.public_bundle(where):
                b = project.public_bundle(where)
                return b, load(b).seed, f"expected arrays: {b}"
    if not project.is_source_checkout(here) or catalogue.MISTAKES[0].wrong is None:
        raise ValueError("no public bundle (minunet/coursework/data/public.npz) was found, and "
                         "this installation is not a source checkout that could make one"
                         + ("; --seed needs the source checkout" if seed is not None else ""))
    seed = 0 if seed is None else seed
    out = tmp / "public.npz"
    save(build(public_checks(), seed), out)
    return out, seed, (f"expected arrays: computed from the ops of {here / 'minunet' / 'ops'} "
                       f"(seed {seed}); grading the source checkout checks its gradients, "
                       f"its forwards grade themselves")


def _assignment(hidden: Bundle | None, root: Path | None) -> tuple[list[str], str]:
    for source, a in (("the teacher bundle", hidden.assignment if hidden else None),
                      ("the copy", project.assignment(root) if root else None),
                      ("this installation", project.assignment(project.installation_root()))):
        if a:
            return list(a["regions"]), f"assignment from {source}: {len(a['regions'])} regions"
    return _all_regions(), "assignment: every region (no assignment.json)"


def _worker(ops_dir: Path, op: str, bundles: list[Path], graded: list[str], timeout: float,
            tmp: Path) -> tuple[list[dict] | None, str]:
    """Run worker.py for one op: (its results, '') or (None, 'timeout' | 'crashed: ...')."""
    out = tmp / f"results-{op}.json"
    env = dict(os.environ)
    grader_root = str(project.installation_root())
    env["PYTHONPATH"] = grader_root + (os.pathsep + env["PYTHONPATH"]
                                       if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "minunet.coursework.worker", "--ops-dir", str(ops_dir),
           "--op", op, "--graded", ",".join(graded), "--out", str(out), *map(str, bundles)]
    run_dir = tmp / f"cwd-{op}"  # not the student's folder: its minunet must not shadow ours
    run_dir.mkdir(exist_ok=True)
    try:
        proc = subprocess.run(cmd, cwd=run_dir, env=env, timeout=timeout,
                              capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return None, "timeout"
    if proc.returncode != 0 or not out.is_file():
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        return None, f"crashed: exit code {proc.returncode}" + (f" ({last})" if last else "")
    return json.loads(out.read_text()), ""


def run(path: Path | None = None, hidden: Path | None = None, ops: list[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S, seed: int | None = None,
        jobs: int = DEFAULT_JOBS) -> Grading:
    """Grade the ops under `path` (default: this installation's project), `jobs` ops at a
    time (each in its own process; the results do not depend on the order)."""
    start = time.perf_counter()
    shown = str(path) if path is not None else str(project.installation_root())
    path = Path(path).resolve() if path is not None else project.installation_root()
    hidden = Path(hidden).resolve() if hidden is not None else None
    hidden_bundle = load(hidden) if hidden is not None else None
    unknown = sorted(set(ops or ()) - set(OPS))
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(unknown)}; valid: {', '.join(OPS)}")
    with tempfile.TemporaryDirectory(prefix="minunet-grade-") as t:
        tmp = Path(t)
        ops_dir, root = _ops_folder(path, tmp)
        bundle_file, public_seed, note = _public_bundle(root, seed, tmp)
        bundles = [bundle_file] + ([Path(hidden)] if hidden is not None else [])
        loaded = [load(bundle_file)] + ([hidden_bundle] if hidden_bundle else [])
        graded, assignment_note = _assignment(hidden_bundle, root)
        results: list[TestResult] = []
        chosen = [op for op in OPS if not ops or op in ops]
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(chosen)))) as pool:
            done = list(pool.map(lambda op: _worker(ops_dir, op, bundles, graded, timeout, tmp),
                                 chosen))
        for op, (got, failure) in zip(chosen, done, strict=True):
            if got is not None:
                results += [TestResult.from_dict(d) for d in got]
                continue
            planned = planned_tests(loaded, set(graded), [op])
            for r in planned:
                r.diagnosis = "timeout" if failure == "timeout" else "crashed"
                r.detail = (f"grading {op} took longer than {timeout:g} s"
                            if failure == "timeout" else failure)
            results += planned
    return Grading(shown, results, time.perf_counter() - start, public_seed,
                   hidden is not None, graded, [note, assignment_note], jobs)


# --- the student's report -------------------------------------------------------------------


def _fmt_error(e: float) -> str:
    return "-" if e == float("inf") else f"{e:.2e}"


def _line(r: TestResult) -> str:
    text = f"[{r.diagnosis}] {r.hint}"
    return text + (f"; {r.detail}" if r.detail else "")


def _hidden_hint(r: TestResult) -> str:
    """A hidden test's hint; of its details only the regions it needs (never values)."""
    return r.hint + (f"; {r.detail}" if r.diagnosis == "needs" else "")


def report(g: Grading) -> str:
    """The public table (gradcheck's columns, points, diagnosis) and the summary."""
    public = [r for r in g.results if not r.hidden]
    header = ("check", "test", "shape", "max rel error", "threshold", "result", "points")
    rows = []
    for r in public:
        pts = f"{r.points:g}/{r.max_points:g}" if r.graded else "given"
        rows.append((r.check, r.input, str(tuple(r.shape)), _fmt_error(r.error),
                     f"{r.threshold:.0e}", "PASS" if r.passed else "FAIL", pts))
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(s.ljust(w) for s, w in zip(header, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for r, row in zip(public, rows, strict=True):
        lines.append("  ".join(s.ljust(w) for s, w in zip(row, widths, strict=True)).rstrip())
        if not r.passed:
            lines.append(f"    -> {_line(r)}")
    got, top = g.score(hidden=False)
    lines += ["", f"public checks: {got:g} / {top:g} points"]
    if g.hidden:
        hidden = g.graded(hidden=True)
        hg, ht = g.score(hidden=True)
        failed = [r for r in hidden if not r.passed]
        lines.append(f"hidden checks: {hg:g} / {ht:g} points ({len(hidden) - len(failed)} of "
                     f"{len(hidden)} tests passed)")
        for r in failed:  # never the check's name, inputs or values: its op, test and hint
            lines.append(f"    hidden check {r.number.split('.')[0]} ({r.op}), {r.input}: "
                         f"[{r.diagnosis}] {_hidden_hint(r)}")
        total, total_max = g.score()
        lines.append(f"score: {total:g} / {total_max:g}")
    if g.all_passed:
        lines.append("all checks passed" if g.hidden else
                     "all public checks passed; hidden checks run at submission")
    return "\n".join(lines)


def header(g: Grading) -> str:
    return "\n".join([f"minunet coursework grade: {g.path}", *g.notes,
                      f"graded in {g.seconds:.1f} s, one process per op, {g.jobs} at a time",
                      ""])


# --- Gradescope --------------------------------------------------------------------------------


def _test_entry(r: TestResult) -> dict:
    if r.hidden:  # its hint only: never the inputs, the values or the check's name
        name = f"hidden check {r.number.split('.')[0]} ({r.op}): {r.input}"
        output = "passed" if r.passed else f"{_hidden_hint(r)} [{r.diagnosis}]"
    else:
        name = f"{r.check}: {r.input}"
        error = "none (nothing to compare)" if r.error == float("inf") else f"{r.error:.2e}"
        output = f"max rel error {error} (threshold {r.threshold:.0e})"
        if not r.passed:
            output += f"\ndiagnosis: {_line(r)}"
    return {"name": name, "number": r.number, "score": r.points, "max_score": r.max_points,
            "status": "passed" if r.passed else "failed", "output": output,
            "tags": [r.op, r.region, "hidden" if r.hidden else "public"],
            "visibility": "after_due_date" if r.hidden else "visible"}


def results_json(g: Grading) -> dict:
    """Gradescope's results.json: one test per check and input, hidden ones after the due date
    (Gradescope's 'hidden' must carry no points, so 'after_due_date' is used)."""
    total, _ = g.score()
    got, top = g.score(hidden=False)
    output = f"public checks: {got:g} / {top:g} points"
    if g.all_passed:
        output += ("; all checks passed" if g.hidden else
                   "; all public checks passed; hidden checks run at submission")
    return {"score": total, "execution_time": round(g.seconds, 1), "output": output,
            "visibility": "visible", "stdout_visibility": "hidden",
            "tests": [_test_entry(r) for r in g.results if r.graded]}


def failed_json(message: str, seconds: float = 0.0) -> dict:
    """The results.json written when grading itself could not run."""
    return {"score": 0.0, "execution_time": round(seconds, 1),
            "output": f"the grader could not run: {message}", "visibility": "visible",
            "stdout_visibility": "hidden", "tests": []}


def write_json(data: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
