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

import contextlib
import functools
import importlib.util
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import mistakes as catalogue
from . import project
from .bundle import Bundle, build, load, save
from .checks import KINDS, OPS, public_checks
from .grader import Outcome, TestResult, _Context, _failure, grade_checks, planned_tests, request
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
    printed: dict = field(default_factory=dict)  # op -> what the student's code printed
    # while its public checks ran (capped; the hidden checks' output is never kept)

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


# --- the worker: student code in its own limited process --------------------------------------

MODULES = {"conv2d": "conv", "upconv2x2": "upconv", "maxpool2x2": "pool", "relu": "relu",
           "center_crop": "crop", "concat": "crop", "softmax_cross_entropy": "softmax",
           "dropout": "dropout", "conv2d_general": "conv_general", "batchnorm2d": "norm"}
# (the one file of the ops folder each op's worker imports)
OUTPUT_KEEP = 4096  # bytes of the student's printed output kept per op (the rest is counted)
MEMORY_MB = 3072  # the worker's address space
FILE_MB = 64  # the largest file the worker may write (its results are a few MB at most)
RESULT_BYTES = 64 << 20  # a result file larger than this (uncompressed) is not read
NPROC = 64  # processes (threads included) of user nobody, when the worker runs as nobody
MAX_STARTS = 4  # workers started per op and phase (a crash or a hang restarts it)
TIME_FACTOR = 100  # a timed check's backward may take TIME_FACTOR x the reference's time,
TIME_FLOOR_S = 2.0  # and at least this (hidden.py's TimedCheck carries both)


class Output:
    """The first OUTPUT_KEEP bytes a process prints; the rest counted, not kept."""

    def __init__(self):
        self.kept, self.dropped = bytearray(), 0
        self.lock = threading.Lock()

    def pump(self, stream) -> None:
        for chunk in iter(lambda: stream.read1(1 << 16), b""):
            with self.lock:
                room = max(0, OUTPUT_KEEP - len(self.kept))
                self.kept += chunk[:room]
                self.dropped += max(0, len(chunk) - room)
        stream.close()

    def text(self) -> str:
        with self.lock:
            s = self.kept.decode("utf-8", "replace")
            return s + (f"\n[... {self.dropped} more bytes not kept]" if self.dropped else "")


@functools.cache
def _unprivileged() -> tuple[dict, str]:
    """(Popen arguments that run the worker as `nobody`, a note) when the grader runs as
    root and nobody can run this Python with numpy and minunet; ({}, why not) otherwise."""
    if os.geteuid() != 0:
        return {}, "the worker runs as this user (run the grader as root to drop to nobody)"
    import pwd

    nobody = pwd.getpwnam("nobody")
    user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    try:
        probe = subprocess.run([sys.executable, "-s", "-c", "import numpy, minunet.backend"],
                               env=_env(Path("/")), cwd="/", capture_output=True, timeout=60,
                               **user)
        ok = probe.returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        return {}, (f"the worker runs as root: user nobody cannot run {sys.executable} with "
                    f"numpy and minunet (install them where every user can read them)")
    return user, "the worker runs as user nobody"


def _env(home: Path) -> dict:
    """The worker's whole environment: what Python needs, nothing of ours."""
    return {"PATH": os.defpath, "PYTHONPATH": str(project.installation_root()),
            "HOME": str(home), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}


class Remote:
    """Runs the calls of one op on the student's code in worker processes (worker.py).

    Each worker gets a fresh folder (the student's ops files, the request files),
    an empty environment and limits; it is started again after a crash or a hang,
    at most MAX_STARTS times, within the op's time budget."""

    def __init__(self, ops_dir: Path, op: str, budget_s: float):
        self.ops_dir, self.module = ops_dir, MODULES[op]
        self.deadline = time.monotonic() + budget_s
        self.budget_s = budget_s
        self.proc = None
        self.starts = 0
        self.n = 0
        self.output = Output()
        self.folders: list[Path] = []

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    def start(self) -> tuple[str, str] | None:
        """Start a worker; None when it is ready, else (diagnosis, detail) of its import."""
        self.starts += 1
        home = Path(tempfile.mkdtemp(prefix="minunet-worker-"))
        self.folders.append(home)
        shutil.copytree(self.ops_dir, home / "ops",
                        ignore=lambda d, names: [n for n in names if not n.endswith(".py")])
        user, _ = _unprivileged()
        if user:  # the worker owns its folder, and nothing else of ours
            for p in [home, *home.rglob("*")]:
                os.chown(p, user["user"], user["group"])
        r, w = os.pipe()
        cmd = [sys.executable, "-s", "-m", "minunet.coursework.worker", "--ops-dir",
               str(home / "ops"), "--module", self.module, "--reply-fd", str(w),
               "--cpu-s", f"{self.budget_s + 5:g}", "--memory-mb", str(MEMORY_MB),
               "--file-mb", str(FILE_MB)] + (["--nproc", str(NPROC)] if user else [])
        self.proc = subprocess.Popen(cmd, cwd=home, env=_env(home), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     pass_fds=(w,), start_new_session=True, **user)
        os.close(w)
        self.home, self.reply, self.pending = home, r, b""
        self.pump = threading.Thread(target=self.output.pump, args=(self.proc.stdout,),
                                     daemon=True)
        self.pump.start()
        line = self._readline(self._left())
        file = f"{self.module}.py"
        if line == "ready":
            return None
        if line == "import":
            info = self._load(home / "res-import.npz", {"info"}).info
            self.stop()
            diag, detail = _failure(Outcome("error", info))
            where = info.get("where", "").split(":")[0]
            blamed = where if where.endswith(".py") and (self.ops_dir / where).is_file() else file
            return ("refused" if diag == "refused" else "import_failed",
                    f"importing {blamed} failed: {detail}")
        if line is None:
            self.stop()
            return "import_failed", f"importing {file} did not finish within {self.budget_s:g} s"
        code = self.stop()
        return "import_failed", f"the process exited with code {code} while importing {file}"

    def _readline(self, timeout: float) -> str | None:
        """A line from the worker's reply pipe; "" at its end, None when timeout passes."""
        end = time.monotonic() + max(timeout, 0)
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.reply], [], [], max(end - time.monotonic(), 0))
            if not ready:
                return None
            chunk = os.read(self.reply, 4096)
            if not chunk:
                return ""
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode("ascii", "replace").strip()

    def stop(self) -> int | None:
        """Kill the worker (its whole process group); its exit code."""
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait()
        self.pump.join(timeout=2)  # the rest of what it printed (unless a child holds on)
        os.close(self.reply)
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self.proc = None
        return code

    def close(self) -> None:
        self.stop()
        for f in self.folders:
            shutil.rmtree(f, ignore_errors=True)

    def call(self, d, call: str, ref: bool = False, limit_s: float | None = None) -> Outcome:
        """One call of a check on the student's code, timed from here."""
        if self._left() <= 0:
            return Outcome("timeout", {"message": f"the op's {self.budget_s:g} s were used up"})
        if self.proc is None:
            if self.starts >= MAX_STARTS:
                return Outcome("crashed", {"message": f"the worker died {self.starts} times"})
            failure = self.start()
            if failure:
                return Outcome("crashed", {"message": failure[1]})
        self.n += 1
        meta, arrays = request(d, call, ref)
        with open(self.home / f"req-{self.n}.npz.part", "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(self.home / f"req-{self.n}.npz.part", self.home / f"req-{self.n}.npz")
        wait = self._left() if limit_s is None else min(limit_s, self._left())
        start = time.monotonic()
        try:
            self.proc.stdin.write(f"{self.n}\n".encode())
            self.proc.stdin.flush()
        except OSError:
            pass  # it died: the reply pipe says so
        line = self._readline(wait)
        seconds = time.monotonic() - start
        if line is None:
            self.stop()
            if limit_s is not None and wait == limit_s:  # the check's own limit, not the op's
                return Outcome("too_slow", {"message": f"did not finish within {limit_s:.2g} s"},
                               seconds=seconds)
            return Outcome("timeout", {"message": f"grading took longer than "
                                                  f"{self.budget_s:g} s"}, seconds=seconds)
        if line != str(self.n):
            code = self.stop()
            return Outcome("crashed", {"message": f"exit code {code}"}, seconds=seconds)
        names = {"info", "out", *(f"after.{k}" for k in d.arrays),
                 *(f"g.{k}" for k in range(len(d.wrt)))}
        o = self._load(self.home / f"res-{self.n}.npz", names)
        o.seconds = seconds
        return o

    def _load(self, path: Path, names: set) -> Outcome:
        """A result file: only the arrays asked for, plain numbers (no pickles), bounded."""
        try:
            with zipfile.ZipFile(path) as z:
                size = sum(i.file_size for i in z.infolist())
            if size > RESULT_BYTES:
                raise ValueError(f"{size} bytes")
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files if k in names}
            info = json.loads(str(arrays.pop("info")))
            if not isinstance(info, dict):
                raise ValueError("info is not a dict")
            info = {k: (v if isinstance(v, dict) else str(v)[:2000]) for k, v in info.items()
                    if k in ("status", "etype", "message", "where", "problem", "grads")}
            if not isinstance(info.get("grads", {}), dict):
                raise ValueError("grads is not a dict")
            for k, a in arrays.items():
                if a.dtype.kind not in "biuf":
                    raise ValueError(f"{k} holds {a.dtype}")
        except Exception as e:  # noqa: BLE001 -- whatever the worker wrote: not a result
            return Outcome("structure", {"problem": "structure",
                                         "message": f"no readable result ({e})"})
        status = info.get("status", "")
        return Outcome(status if status in ("ok", "error", "structure") else "structure",
                       info, arrays)


def _time_limits(bundle: Bundle, reference) -> tuple[dict, list[str]]:
    """The seconds each timed check's backward may take, and a note per check saying how
    the reference's time was found (timed here, or as stored when the bundle was made)."""
    limits, notes = {}, []
    for d in bundle.checks:
        if not d.time_factor:
            continue
        if reference is not None:
            from .bundle import _best_time

            t, how = _best_time(reference, d.kind, d.inputs(), d.upstream()), "timed here"
        else:
            t, how = d.ref_seconds, "as timed when the bundle was made"
        limits[d.name] = max(d.time_factor * t, d.time_floor)
        notes.append(f"timed check: the backward may take max({d.time_factor:g} x "
                     f"{t * 1e3:.3g} ms, {d.time_floor:g} s) = {limits[d.name]:.3g} s "
                     f"(the reference's forward + backward, {how})")
    return limits, notes


def _reference(hidden: Path | None):
    """The reference ops for timing, in this (trusted) process: the source checkout's, or the
    teacher's solutions beside the hidden bundle; None when neither is here."""
    here = project.installation_root()
    if project.is_source_checkout(here):
        from minunet import ops

        return ops
    sol = hidden.parent / "solutions" / "minunet" / "ops" if hidden else None
    if sol is None or not (sol / "__init__.py").is_file():
        return None
    spec = importlib.util.spec_from_file_location("minunet._reference_ops", sol / "__init__.py",
                                                  submodule_search_locations=[str(sol)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _grade_op(ops_dir: Path, op: str, bundle: Bundle, graded: list[str], timeout: float,
              ctx: _Context, start: int) -> tuple[list[TestResult], str]:
    """One op's tests on one bundle in its own worker(s); (results, what it printed)."""
    remote = Remote(ops_dir, op, timeout)
    try:
        failure = remote.start()
        if failure:
            results = planned_tests([bundle], set(graded), [op], start=start)
            for r in results:
                r.diagnosis, r.detail = failure
                ctx.failed.add(r.region)
        else:
            results = grade_checks(None, [bundle], set(graded), [op], start=start, run=remote,
                                   ctx=ctx)
    finally:
        remote.close()
    return results, remote.output.text()


def run(path: Path | None = None, hidden: Path | None = None, ops: list[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S, seed: int | None = None,
        jobs: int = DEFAULT_JOBS) -> Grading:
    """Grade the ops under `path` (default: this installation's project), `jobs` ops at a
    time, each in its own worker process: first every op's public checks, then (with a
    hidden bundle) every op's hidden checks, in new workers, so that no process that holds
    a hidden input runs while a public check's output is being shown."""
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
        public = load(bundle_file)
        graded, assignment_note = _assignment(hidden_bundle, root)
        notes = [note, assignment_note, _unprivileged()[1]]
        present = set(public.ops()) | set(hidden_bundle.ops() if hidden_bundle else ())
        chosen = [op for op in OPS if (not ops or op in ops) and op in present]
        contexts = {op: _Context(set(graded)) for op in chosen}
        phases = [(public, 1)]
        if hidden_bundle is not None:
            limits, timed = _time_limits(hidden_bundle, _reference(hidden))
            notes += timed
            for c in contexts.values():
                c.time_limits = limits
            phases.append((hidden_bundle, 1 + len(public.checks)))
        per_op: dict[str, list[TestResult]] = {op: [] for op in chosen}
        printed = {}
        for bundle, first in phases:
            with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(chosen)))) as pool:
                done = list(pool.map(lambda op, b=bundle, f=first: _grade_op(
                    ops_dir, op, b, graded, timeout, contexts[op], f), chosen))
            for op, (results, text) in zip(chosen, done, strict=True):
                per_op[op] += results
                if bundle is public and text:
                    printed[op] = text  # the hidden phase's output is never shown
        results = [r for op in chosen for r in per_op[op]]
    return Grading(shown, results, time.perf_counter() - start, public_seed,
                   hidden is not None, graded, notes, jobs, printed)


# --- the student's report -------------------------------------------------------------------


def _fmt_error(e: float) -> str:
    return "-" if e == float("inf") else f"{e:.2e}"


def _line(r: TestResult) -> str:
    text = f"[{r.diagnosis}] {r.hint}" if r.diagnosis else ""
    text += f"; {r.detail}" if r.detail and text else r.detail
    if r.uses:
        text += ("; " if text else "") + f"judged with {r.uses}"
    return text


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
        if not r.passed or r.uses:
            lines.append(f"    -> {_line(r)}")
    for op, text in g.printed.items():
        lines += ["", f"printed by your {op} code during its public checks:",
                  *("    | " + s for s in text.splitlines()[:40])]
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
        if not r.passed or r.uses:
            output += f"\ndiagnosis: {_line(r)}" if not r.passed else f"\n{_line(r)}"
    return {"name": name, "number": r.number, "score": r.points, "max_score": r.max_points,
            "status": "passed" if r.passed else "failed", "output": output,
            "tags": [r.op, r.region, "hidden" if r.hidden else "public"],
            "visibility": "after_due_date" if r.hidden else "visible"}


def results_json(g: Grading) -> dict:
    """Gradescope's results.json (https://gradescope-autograders.readthedocs.io/en/latest/
    specs/): one test per check and input; hidden ones with visibility after_due_date
    (Gradescope's 'hidden' would still count their points, unseen, forever). No top-level
    score: Gradescope then sums the tests' scores, and 'if test cases are hidden, students
    will not be able to see their total score' (the spec), so before the due date a student
    sees the public tests' scores and nothing that depends on a hidden check. The top-level
    output speaks of the public checks only."""
    got, top = g.score(hidden=False)
    output = f"public checks: {got:g} / {top:g} points"
    if all(r.passed for r in g.graded(hidden=False)):
        output += "; all public checks passed"
    if g.hidden:
        output += "; hidden checks are shown after the due date"
    for op, text in g.printed.items():
        output += f"\n\nprinted by your {op} code during its public checks:\n{text}"
    return {"execution_time": round(g.seconds, 1), "output": output,
            "visibility": "visible", "stdout_visibility": "hidden",
            "tests": [_test_entry(r) for r in g.results if r.graded]}


def failed_json(message: str, seconds: float = 0.0) -> dict:
    """The results.json written when grading itself could not run."""
    return {"score": 0.0, "execution_time": round(seconds, 1),
            "output": f"the grader could not run: {message}", "visibility": "visible",
            "stdout_visibility": "hidden", "tests": []}


def write_json(data: dict, path: Path) -> None:
    """Write results.json atomically: a temporary file beside it, then a rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_json(path: Path) -> None:
    """Remove a results.json left from before (so that only this grade's can be there)."""
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()
