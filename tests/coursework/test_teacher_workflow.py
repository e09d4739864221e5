"""End to end, as a teacher would: make, install in a fresh venv, grade, solve, grade, train.

The fresh virtual environment gets the dependencies of this one through a .pth
file (no network) and the copy as an editable install (pip with the build
backend already here, or, without hatchling, the .pth file an editable install
writes).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def sh(*cmd, cwd=None, check=True):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd)
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p


def fresh_venv(where: Path, project: Path) -> Path:
    """A new virtual environment with this one's packages and `project` installed editable."""
    sh(sys.executable, "-m", "venv", "--without-pip", where)
    py = where / "bin" / "python"
    purelib = Path(sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                   .stdout.strip())
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "zz_dependencies.pth").write_text("\n".join(deps) + "\n")  # after the project's
    if importlib.util.find_spec("hatchling") and importlib.util.find_spec("editables"):
        sh(py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", project)
    else:
        (purelib / "_minunet_copy.pth").write_text(f"{project}\n")
    return py


def grade(py, *args, cwd):
    p = sh(py, "-m", "minunet.coursework", "grade", *args, cwd=cwd, check=False)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode, p.stdout


@pytest.mark.slow  # 5-12 s on a 2-core CPU
def test_make_install_grade_solve_grade_train(tmp_path):
    student, teacher = tmp_path / "student", tmp_path / "teacher"
    out = sh(sys.executable, "-m", "minunet.coursework", "make", student, "--teacher",
             teacher).stdout
    assert "no canary token in the copy" in out
    py = fresh_venv(tmp_path / "venv", student)
    where = sh(py, "-c", "import minunet; print(minunet.__file__)", cwd=tmp_path).stdout
    assert where.strip() == str(student / "minunet" / "__init__.py")

    # 1. the copy as handed out: every test fails, "not implemented"
    code, out = grade(py, "--json", tmp_path / "r0.json", cwd=student)
    r0 = json.loads((tmp_path / "r0.json").read_text())
    # no top-level "score": Gradescope then totals the tests, and hides the total while hidden
    # tests are hidden (docs/TEACHERS.md)
    assert "score" not in r0
    assert code == 1 and sum(t["score"] for t in r0["tests"]) == 0
    assert all(t["status"] == "failed" for t in r0["tests"])

    # 2. a Gradescope submission of one file, graded on the installed copy's stubs
    (tmp_path / "submission").mkdir()
    shutil.copyfile(teacher / "solutions/minunet/ops/relu.py", tmp_path / "submission/relu.py")
    grade(py, tmp_path / "submission", "--op", "relu,dropout", "--json", tmp_path / "rs.json",
          cwd=tmp_path)
    rs = json.loads((tmp_path / "rs.json").read_text())["tests"]
    assert {t["status"] for t in rs if "relu" in t["tags"]} == {"passed"}
    assert {t["status"] for t in rs if "dropout" in t["tags"]} == {"failed"}

    # 3. the solutions put back: every public and hidden test passes
    for f in (teacher / "solutions" / "minunet" / "ops").glob("*.py"):
        shutil.copyfile(f, student / "minunet" / "ops" / f.name)
    code, out = grade(py, "--hidden", teacher / "hidden.npz", "--json", tmp_path / "r1.json",
                      cwd=student)
    r1 = json.loads((tmp_path / "r1.json").read_text())
    assert code == 0 and "all checks passed" in out
    assert sum(t["score"] for t in r1["tests"]) == sum(t["max_score"] for t in r1["tests"]) > 100

    # 4. a typical mistake planted: caught and named
    conv = student / "minunet" / "ops" / "conv.py"
    conv.write_text(conv.read_text().replace("dx[:, :, i : i + Ho, j : j + Wo] += c6[:, i, j]",
                                             "dx[:, :, i : i + Ho, j : j + Wo] = c6[:, i, j]"))
    code, out = grade(py, "--op", "conv2d", cwd=student)
    assert code == 1 and "[col2im.assign] overlapping windows" in out
    shutil.copyfile(teacher / "solutions" / "minunet" / "ops" / "conv.py", conv)

    # 5. the student's ops train the network
    run = tmp_path / "run"
    out = sh(py, "-m", "minunet.train", "--preset", "tiny", "--iters", "2", "--out", run,
             cwd=student).stdout
    assert "done: 2 iterations" in out
    config = json.loads((run / "config.json").read_text())
    assert json.dumps(config).count('"ops": "plain"') >= 1
    assert (run / "last.npz").is_file()
