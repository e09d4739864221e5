"""Attacks on the grader, each run as a submission: no marks gained, nothing hidden shown,
the right part blamed (issue 23: G1-G7, the hidden total, a print flood, import failures).

Every attack is a student's ops file that keeps the copy's stubs (or the solution of the
other parts) and adds the attack; the grader must give it what the stubs earn.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from coursework_helpers import ROOT
from test_grade_cli import check_results_json, grade

from minunet.coursework import project
from minunet.coursework.bundle import load


def submission(tmp: Path, base: Path, files: dict[str, str]) -> Path:
    """A copy of the project `base` with ops files replaced or prefixed: {name: code};
    code starting with '+' is put before the file's own code (after its __future__ import)."""
    dest = tmp / "sub"
    shutil.copytree(base, dest)
    for name, code in files.items():
        path = dest / "minunet" / "ops" / name
        if code.startswith("+"):
            head, sep, rest = path.read_text().partition("from __future__ import annotations\n")
            code = textwrap.dedent(code[1:])
            code = head + sep + code + rest if sep else code + head
        else:
            code = textwrap.dedent(code)
        path.write_text(code)
    return dest


def results_of(data: dict, tag: str) -> list[dict]:
    return [t for t in data["tests"] if tag in t["tags"]]


def graded(tmp: Path, copy: Path, *args) -> tuple[str, dict]:
    code, out, err = grade(copy, *args, "--json", tmp / "r.json")
    assert code in (0, 1), err
    return out, check_results_json(tmp / "r.json")


def test_g1_patching_the_grader_s_classes_changes_nothing(made, tmp_path):
    """relu.py patches TestResult (to_dict, __init__) when imported: the worker's copy of
    the grader is not the one that scores."""
    copy = submission(tmp_path, made[0], {"relu.py": """+
        import minunet.coursework.grader as g
        g.TestResult.to_dict = lambda self: {**self.__dict__, "passed": True, "points": 1.0}
        _init = g.TestResult.__init__
        def _passed(self, *a, **k):
            _init(self, *a, **k)
            self.passed, self.points = True, self.max_points
        g.TestResult.__init__ = _passed
        """})
    _, data = graded(tmp_path, copy, "--op", "relu")
    assert results_of(data, "relu") and data["score"] == 0
    assert all(t["status"] == "failed" and "[not_implemented]" in t["output"]
               for t in results_of(data, "relu.forward"))


def test_g2_an_atexit_handler_rewriting_the_worker_s_output_gains_nothing(made, tmp_path):
    """At exit, relu.py forges every result file it can think of: results as the old worker
    wrote them, and passing-looking result arrays."""
    copy = submission(tmp_path, made[0], {"relu.py": """+
        import atexit, glob, json, os
        import numpy as _np
        def _forge():
            for name in ["results-relu.json", "../results-relu.json", "results.json"]:
                try:
                    open(name, "w").write(json.dumps([{"passed": True, "points": 99}]))
                except OSError:
                    pass
            for i in range(1, 200):
                info = _np.array(json.dumps({"status": "ok", "grads": {}}))
                with open(f"res-{i}.npz", "wb") as f:
                    _np.savez(f, info=info, out=_np.zeros(3), **{"g.0": _np.zeros(3)})
        atexit.register(_forge)
        """})
    _, data = graded(tmp_path, copy, "--op", "relu")
    assert results_of(data, "relu") and data["score"] == 0


def test_g3_the_worker_sees_no_hidden_bundle_and_cannot_show_hidden_inputs(made, tmp_path):
    """relu.py looks for bundles in its argv, environment and folders, and prints what it
    finds and every input it is given; the hidden bundle's path is nowhere, its inputs
    never show (the hidden checks run in a later process whose output is never kept)."""
    _, teacher = made
    copy = submission(tmp_path, made[0], {"relu.py": """+
        import glob, os, sys
        print("ARGV", sys.argv, "ENV", sorted(os.environ.items()), "CWD", os.getcwd())
        for pattern in ["*.npz", "../*.npz", "../../*.npz", "/tmp/minunet-grade-*/*.npz"]:
            print("FOUND", pattern, glob.glob(pattern))
        """})
    relu = copy / "minunet" / "ops" / "relu.py"
    relu.write_text(relu.read_text() + textwrap.dedent("""
        _seen = []
        def relu_forward(x):
            _seen.append(x.ravel()[:5].tolist())
            print("SEEN", _seen)
            raise NotImplementedError("relu.forward")
        """))
    out, data = graded(tmp_path, copy, "--op", "relu", "--hidden", teacher / "hidden.npz")
    assert data["score"] == 0
    text = out + json.dumps(data)
    assert "ARGV" in text and "SEEN" in text  # its public output is shown...
    assert str(teacher) not in text and "hidden.npz" not in text.replace(
        "--hidden", "")  # ... and names no hidden bundle
    for d in load(teacher / "hidden.npz").checks:
        if d.op == "relu":  # ... and no hidden input
            for v in np.ravel(d.arrays["x"])[:5]:
                assert repr(float(v)) not in text
    hidden = [t for t in results_of(data, "relu") if "hidden" in t["tags"]]
    assert hidden and all(t["visibility"] == "after_due_date" for t in hidden)
    assert all("SEEN" not in t["output"] for t in hidden)


def test_g4_g5_patching_the_checker_or_numpy_in_the_student_process_changes_nothing(
        solved, tmp_path):
    """relu.py zeroes gradcheck.numerical_gradient (with a zero backward), dropout.py makes
    np.abs return zeros (with a zero forward and backward): the expected values are
    computed and compared in the trusted process."""
    copy = submission(tmp_path, solved, {})
    relu = copy / "minunet" / "ops" / "relu.py"
    relu.write_text(relu.read_text() + textwrap.dedent("""
        import numpy as _np
        import minunet.nn.gradcheck as _gc
        _gc.numerical_gradient = lambda f, x, df, h=1e-4: _np.zeros_like(x)
        def relu_backward(dout, cache):
            return _np.zeros_like(dout)
        """))
    drop = copy / "minunet" / "ops" / "dropout.py"
    drop.write_text(drop.read_text() + textwrap.dedent("""
        import numpy as _np
        _np.abs = lambda a, *args, **kw: _np.zeros_like(a)
        def dropout_forward(x, scale_mask):
            return _np.zeros_like(x), DropoutCache(scale_mask)
        def dropout_backward(dout, cache):
            return _np.zeros_like(dout)
        """))
    _, data = graded(tmp_path, copy, "--op", "relu,dropout")
    relu_bwd, relu_fwd = results_of(data, "relu.backward"), results_of(data, "relu.forward")
    assert relu_bwd and all(t["status"] == "failed" for t in relu_bwd)
    assert relu_fwd and all(t["status"] == "passed" for t in relu_fwd)
    dropout = results_of(data, "dropout")
    assert dropout and all(t["status"] == "failed" for t in dropout)


FD_BACKWARD = """
def conv2d_backward(dout, cache, need_dx=True):
    '''Central differences of my own forward: one forward per input entry and sign.'''
    x, w, out = cache
    b = _bias[-1]
    grads = []
    for a in (x, w, b):
        g = np.zeros_like(a)
        flat, gflat = a.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            keep = flat[i]
            flat[i] = keep + 1.0
            up = conv2d_forward(x, w, b, out is not None)[0]
            flat[i] = keep - 1.0
            down = conv2d_forward(x, w, b, out is not None)[0]
            flat[i] = keep
            gflat[i] = np.vdot(dout, up - down) / 2.0
        grads.append(g)
    return tuple(grads)


_bias = []
_forward = conv2d_forward


def conv2d_forward(x, w, b, relu=False):
    _bias.append(b)
    return _forward(x, w, b, relu)
"""


def test_g6_a_finite_difference_backward_fails_the_timed_check(made, solved, tmp_path):
    """conv.py computes its backward by central differences of its own forward (exact for
    a linear op with step 1, so the small checks without ReLU pass): the timed hidden
    check cannot finish within its limit, and says so without its values."""
    _, teacher = made
    copy = submission(tmp_path, solved, {})
    conv = copy / "minunet" / "ops" / "conv.py"
    conv.write_text(conv.read_text() + "\nimport numpy as np\n" + FD_BACKWARD)
    out, data = graded(tmp_path, copy, "--op", "conv2d", "--hidden", teacher / "hidden.npz")
    timed = [t for t in results_of(data, "conv2d.backward") if "[too_slow]" in t["output"]]
    assert len(timed) == 3 and all("hidden" in t["tags"] for t in timed)  # dx, dw, db
    assert len({t["number"].split(".")[0] for t in timed}) == 1  # of the timed check alone
    assert "timed check: the backward may take max(100 x" in out
    assert data["score"] < sum(t["max_score"] for t in data["tests"])


def test_g7_a_forged_results_json_and_a_killed_grader_leave_a_zero(made, tmp_path):
    """run_autograder (Gradescope's entry point) on a submission whose relu.py writes a
    forged results.json and kills the grader: the forgery is thrown away."""
    from minunet.coursework.autograder import RUN

    _, teacher = made
    ag = tmp_path / "autograder"
    (ag / "source").mkdir(parents=True)
    (ag / "submission").mkdir()
    shutil.copyfile(teacher / "hidden.npz", ag / "source" / "hidden.npz")
    results = ag / "results" / "results.json"
    (ag / "submission" / "relu.py").write_text(textwrap.dedent(f"""
        import json, os, signal
        open({str(results)!r}, "w").write(json.dumps({{"score": 135, "tests": []}}))
        os.kill(os.getppid(), signal.SIGKILL)
        """))
    (ag / "run_autograder").write_text(RUN)
    env = {**os.environ, "AUTOGRADER_ROOT": str(ag), "AUTOGRADER_PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT)}
    p = subprocess.run(["bash", str(ag / "run_autograder")], env=env, capture_output=True,
                       text=True, timeout=300)
    data = json.loads(results.read_text())
    assert data["score"] == 0 and data["tests"] == [], (p.stdout[-2000:], p.stderr[-2000:])
    assert "did not finish" in data["output"]


def test_the_hidden_total_is_not_shown_before_the_due_date(made, solved, tmp_path):
    """results.json has no top-level score (Gradescope sums the tests and hides the total
    while a test is hidden), its output speaks of public checks only, and every hidden
    test is after_due_date."""
    _, teacher = made
    copy = submission(tmp_path, solved, {})
    conv = copy / "minunet" / "ops" / "conv.py"
    conv.write_text(conv.read_text().replace("db = D.sum(axis=1)",
                                             "db = dout[0].sum(axis=(1, 2))"))
    _, data = graded(tmp_path, copy, "--op", "conv2d", "--hidden", teacher / "hidden.npz")
    raw = json.loads((tmp_path / "r.json").read_text())
    assert "score" not in raw and "hidden checks:" not in raw["output"]
    public_total = sum(t["score"] for t in raw["tests"] if "public" in t["tags"])
    assert raw["output"].startswith(f"public checks: {public_total:g} / ")
    hidden = [t for t in raw["tests"] if "hidden" in t["tags"]]
    assert hidden and {t["visibility"] for t in hidden} == {"after_due_date"}
    assert any(t["status"] == "failed" for t in hidden)


def test_a_print_flood_is_capped_and_counted(solved, tmp_path):
    """relu.py prints 400 MB when imported: the grader keeps 4 KB, counts the rest, its own
    memory stays bounded, and relu is still graded (and passes)."""
    copy = submission(tmp_path, solved, {"relu.py": """+
        import sys as _sys
        _line = "x" * (1 << 20)
        for _ in range(400):
            _sys.stdout.write(_line)
        """})
    # the peak of this process's own memory: VmHWM of /proc/self/status (ru_maxrss would also
    # count the parent's pages, which Linux carries over to a child across fork and exec: in
    # a long pytest run that alone is hundreds of MB)
    code = ("import json, re, sys\n"
            "from minunet.coursework import grade\n"
            f"g = grade.run({str(copy)!r}, ops=['relu'], timeout=60)\n"
            "status = open('/proc/self/status').read()\n"
            "peak = int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
            "print(json.dumps([peak, g.all_passed, g.printed.get('relu', '')[-80:]]))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, check=True)
    peak_kb, passed, tail = json.loads(p.stdout.strip().splitlines()[-1])
    assert passed
    assert f"[... {400 * (1 << 20) - 4096} more bytes not kept]" in tail
    assert peak_kb < 300_000, f"the grader's peak memory was {peak_kb / 1024:.0f} MB"


def test_import_failures_cost_only_their_own_file(solved, tmp_path):
    """A syntax error in pool.py, os._exit in dropout.py and a hang in relu.py when imported:
    each costs its own op, named by its file; the other ops pass."""
    copy = submission(tmp_path, solved, {
        "pool.py": "+def broken(:\n",
        "dropout.py": "+import os\nos._exit(7)\n",
        "relu.py": "+while True:\n    pass\n",
    })
    _, data = graded(tmp_path, copy, "--op", "maxpool2x2,dropout,relu,concat,center_crop",
                     "--timeout", "3")
    for op, said in (("maxpool2x2", "importing pool.py failed: SyntaxError"),
                     ("dropout", "exited with code 7 while importing dropout.py"),
                     ("relu", "importing relu.py did not finish within 3 s")):
        tests = results_of(data, op)
        assert tests and all(t["status"] == "failed" and "[import_failed]" in t["output"]
                             and said in t["output"] for t in tests), (op, tests[:1])
    for op in ("concat", "center_crop"):
        tests = [t for t in results_of(data, op) if t["max_score"]]
        assert tests and all(t["status"] == "passed" for t in tests), op


def test_an_im2col_bug_costs_im2col_s_points_only(solved, tmp_path):
    """im2col reads the window back to front: im2col's tests fail; the conv's forward and
    backward, right in themselves, pass with the reference im2col/col2im, and say so."""
    copy = submission(tmp_path, solved, {})
    conv = copy / "minunet" / "ops" / "conv.py"
    text = conv.read_text()
    old = "cols[:, i, j] = x[:, :, i : i + Ho, j : j + Wo]"
    assert old in text
    conv.write_text(text.replace(old, "cols[:, k - 1 - i, k - 1 - j] = "
                                      "x[:, :, i : i + Ho, j : j + Wo]"))
    out, data = graded(tmp_path, copy, "--op", "conv2d")
    im2col = [t for t in results_of(data, "conv2d.im2col") if t["name"].startswith("im2col")]
    assert im2col and all(t["status"] == "failed" for t in im2col)
    conv_tests = [t for t in data["tests"] if t["name"].startswith("conv2d")]
    assert conv_tests and all(t["status"] == "passed" for t in conv_tests)
    k3 = [t for t in conv_tests if "k=3" in t["name"]]  # (a flipped 1x1 window is right)
    assert k3 and all("judged with the reference im2col/col2im" in t["output"] for t in k3)
    assert "judged with the reference im2col/col2im" in out


def test_a_submitted_virtual_environment_is_not_the_student_s(tmp_path):
    """A submission holding a .venv (with an installed minunet) and caches: only the
    student's own files are found."""
    sub = tmp_path / "submission"
    for folder in ("hw1/minunet/ops", ".venv/lib/python3.11/site-packages/minunet/ops",
                   "venv2/lib/python3.11/site-packages/minunet/ops", "hw1/.ipynb_checkpoints"):
        (sub / folder).mkdir(parents=True)
        (sub / folder / "relu.py").write_text("")
    (sub / "venv2" / "pyvenv.cfg").write_text("")
    (sub / "hw1" / "minunet" / "ops" / "conv.py").write_text("")
    where, loose = project.find_ops(sub)
    assert where == sub
    assert loose == [sub / "hw1/minunet/ops/conv.py", sub / "hw1/minunet/ops/relu.py"]
