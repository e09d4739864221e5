"""`python -m minunet.coursework make`: what the student copy holds, and what it must not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from coursework_helpers import ROOT

from minunet.coursework import make, tutorials
from minunet.coursework.regions import parse_dir, solution_lines


def run(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "minunet.coursework", *map(str, args)],
                       capture_output=True, text=True, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def canaries() -> set[str]:
    return {r.canary for r in parse_dir(ROOT / "minunet" / "ops")}


def search(folder: Path, tokens: set[str]) -> list[str]:
    """Every file under folder (and every member of a zip or wheel) holding a token."""
    hits = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        blobs = [(str(p), p.read_bytes())]
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                blobs += [(f"{p}:{n}", z.read(n)) for n in z.namelist()]
        hits += [f"{name}: {t}" for name, data in blobs for t in tokens if t.encode() in data]
    return hits


def test_the_copy_and_its_caches_hold_no_canary(made, tmp_path):
    student = tmp_path / "student"  # a copy of the copy: this test writes caches into it
    shutil.copytree(made[0], student)
    tokens = canaries()
    assert len(tokens) >= 16
    assert search(ROOT / "minunet" / "ops", tokens)  # the search finds them where they are
    # caches: import the copy's ops and grader (writes __pycache__, unless told not to)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import minunet.ops, minunet.coursework.grade"],
                   cwd=student, check=True, env=env)
    assert list((student / "minunet" / "ops").glob("__pycache__/*.pyc"))
    assert list((student / "tutorials").glob("*.py"))  # the tutorials, and their notebooks
    assert search(student, tokens) == []


def test_the_wheel_built_from_the_copy_holds_no_canary(made, tmp_path):
    pytest.importorskip("hatchling", reason="building the copy's wheel without a network "
                                            "needs hatchling (the dev extra)")
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheel_dir), str(made[0])], check=True, capture_output=True)
    (wheel,) = wheel_dir.glob("minunet-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert {"minunet/coursework/data/public.npz", "minunet/coursework/data/assignment.json",
            "minunet/ops/conv.py"} <= set(names)
    assert not [n for n in names if n.startswith(("minunet/fast/conv", "minunet/kernels"))]
    assert search(wheel_dir, canaries()) == []


def test_no_line_of_a_handed_out_solution_is_in_the_copy(made):
    """No distinctive line of a solution, except the few the project's given code shares
    (minunet/inference/tiles.py's softmax starts like the loss's)."""
    student, _ = made
    handed = set(json.loads((student / "minunet" / "coursework" / "data" /
                             "assignment.json").read_text())["regions"])
    regions = [r for r in parse_dir(ROOT / "minunet" / "ops") if r.id in handed]
    lines = set()
    for path in {r.path for r in regions}:
        lines |= solution_lines(Path(path).read_text(), [r for r in regions if r.path == path])
    given = "".join(p.read_text() for p in (student / "minunet").rglob("*.py")
                    if not {"ops", "coursework"} & set(p.relative_to(student).parts))
    shared = {s for s in lines if s in given}
    assert len(shared) <= 2, shared
    lines -= shared
    assert len(lines) > 30
    found = []
    for p in sorted(student.rglob("*")):
        if p.is_file() and p.suffix in (".py", ".ipynb", ".md", ".txt", ".json"):
            text = p.read_text(errors="replace")
            found += [f"{p.relative_to(student)}: {s}" for s in lines if s in text]
    assert found == []


def test_what_the_copy_leaves_out_and_replaces(made):
    student, _ = made
    present = {p.relative_to(student).as_posix() for p in student.rglob("*") if p.is_file()}
    assert not [p for p in present if p.startswith((".git/", "kernels/", "tests/ops/",
                                                    "tests/fast/", "tests/backend/",
                                                    "tests/coursework/", "docs/TEACHERS"))]
    assert not [p for p in present if "__pycache__" in p or p.endswith((".pyc", ".nbi", ".nbc"))]
    assert [p for p in present if p.startswith("minunet/fast/")] == ["minunet/fast/__init__.py"]
    assert "minunet/coursework/hidden.py" not in present
    assert {"ASSIGNMENT.md", "pyproject.toml", "README.md", "minunet/coursework/data/public.npz",
            "minunet/coursework/data/assignment.json", "tests/conftest.py"} <= present
    assert 'DEFAULT_OPS = "plain"' in (student / "minunet" / "nn" / "door.py").read_text()
    assert 'DEFAULT_OPS = "fast"' in (ROOT / "minunet" / "nn" / "door.py").read_text()
    assert "kernels" not in (student / "pyproject.toml").read_text().split("[tool.hatch.build"
                                                                             ".targets.sdist]")[0]
    mistakes = (student / "minunet" / "coursework" / "mistakes.py").read_text()
    assert "def col2im_assign" not in mistakes and "'col2im.assign'" in mistakes
    assert "import numpy" not in (student / "minunet" / "backend" / "cpu.py").read_text()
    assignment = json.loads((student / "minunet/coursework/data/assignment.json").read_text())
    assert len(assignment["regions"]) == 16 and assignment["part"] == "both"


def test_in_the_copy_the_fast_ops_and_twins_say_why_they_are_missing(made):
    student, _ = made
    code = """
import numpy as np
from minunet import backend
from minunet.coursework import mistakes
from minunet.models.unet import UNetConfig
assert UNetConfig().ops == "plain"
w, v, g = np.ones(3), np.zeros(3), np.ones(3)
backend.sgd_update(w, v, g, 0.1, 0.9, 0.0)
assert np.allclose(w, 0.9) and np.allclose(v, -0.1)
assert mistakes.by_id("col2im.assign").wrong is None
try:
    backend.im2col(np.zeros((1, 3, 3)), 3, 0, 1, np.zeros((9, 1)))
except AttributeError as e:
    print("twin:", e)
try:
    import minunet.fast
except ImportError as e:
    print("fast:", e)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=student, capture_output=True,
                         text=True, check=True).stdout
    assert "twin: minunet.backend.cpu.im2col is not part of the student copy" in out
    assert "fast: minunet.fast (the chunked, threaded ops) is not part of this student copy" \
        in out


def test_a_backward_only_assignment_of_one_op(tmp_path):
    code, out, err = run("make", tmp_path / "s", "--ops", "relu", "--part", "backward",
                         "--teacher", tmp_path / "t")
    assert code == 0, err
    assert "regions handed out (1): relu.backward" in out
    relu = (tmp_path / "s" / "minunet" / "ops" / "relu.py").read_text()
    assert "TODO(relu.backward)" in relu and "out = xp.maximum(x, 0)" in relu
    assert "SOLUTION" not in relu and "canary" not in relu
    assert "TODO(" not in (tmp_path / "s" / "minunet" / "ops" / "conv.py").read_text()
    assert json.loads((tmp_path / "t" / "assignment.json").read_text())["regions"] == \
        ["relu.backward"]
    assert (tmp_path / "t" / "hidden.npz").is_file()
    solution = (tmp_path / "t" / "solutions" / "minunet" / "ops" / "relu.py").read_text()
    assert "return xp.where(cache.out > 0" in solution
    assert "SOLUTION" not in solution and "canary" not in solution


@pytest.mark.parametrize("args, message", [
    (["--ops", "conv3d"], "unknown op(s) conv3d; the ops with exercises are conv2d"),
    (["--ops", "concat", "--part", "forward"], "selects no region"),
    (["--source", "."], "is not a minunet source checkout"),
])
def test_bad_make_options_get_one_line(tmp_path, args, message):
    code, out, err = run("make", tmp_path / "s", *args, cwd=tmp_path)
    assert code == 2 and err.startswith("error: ") and message in err
    assert err.strip().count("\n") == 0
    assert not (tmp_path / "s").exists()


def test_make_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "x").write_text("mine")
    code, _, err = run("make", tmp_path / "s")
    assert code == 2 and "already exists and is not empty" in err
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # nothing half-written beside it


def test_autograder_zip(tmp_path):
    code, out, err = run("autograder-zip", tmp_path / "ag.zip", "--ops", "relu,dropout")
    assert code == 0, err
    with zipfile.ZipFile(tmp_path / "ag.zip") as z:
        names = set(z.namelist())
        run_script = z.read("run_autograder").decode()
        mode = z.getinfo("run_autograder").external_attr >> 16
    assert {"setup.sh", "run_autograder", "README.txt", "hidden.npz",
            "solutions/minunet/ops/conv.py",
            "minunet-copy/pyproject.toml", "minunet-copy/minunet/coursework/data/public.npz"} \
        <= names
    assert mode & 0o111
    assert "A=${AUTOGRADER_ROOT:-/autograder}" in run_script
    assert '--hidden "$A/source/hidden.npz"' in run_script
    assert '--json "$A/results/results.json"' in run_script
    assert search(tmp_path, canaries()) == []


def test_tutorial_cells_that_show_a_solution_are_replaced():
    secret = {"dx[:, :, i : i + Ho, j : j + Wo] += c6[:, i, j]"}
    text = ("# %% [markdown]\n# # 01. Convolution\n\n# %%\nimport inspect\n\n"
            "# %%\nprint(inspect.getsource(minunet.ops.conv.col2im))\n\n"
            "# %%\nplt.imshow(im2col(x, 3))\n\n"
            "# %% [markdown]\n# ```\n#     dx[:, :, i : i + Ho, j : j + Wo] += c6[:, i, j]\n"
            "# ```\n")
    out, n = tutorials.strip_percent(text, secret, {"mu13-abc123456789"})
    assert n == 2
    assert "getsource" not in out and "+= c6" not in out
    assert "plt.imshow(im2col(x, 3))" in out and "# # 01. Convolution" in out
    assert "the source of minunet.ops.conv.col2im" in out
    nb = {"cells": [
        {"cell_type": "code", "id": "a", "metadata": {}, "execution_count": 1,
         "source": "print(inspect.getsource(minunet.ops.relu_backward))",
         "outputs": [{"output_type": "stream", "name": "stdout", "text": "def relu..."},
                     {"output_type": "display_data", "metadata": {},
                      "data": {"image/png": "iVBORw0KGgo=\n"}}]},
        {"cell_type": "code", "id": "b", "metadata": {}, "execution_count": 2,
         "source": "show()", "outputs": [{"output_type": "stream", "name": "stdout",
                                          "text": "# canary: mu13-abc123456789\n"}]},
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    out, n = tutorials.strip_notebook(json.dumps(nb), secret, {"mu13-abc123456789"})
    cells = json.loads(out)["cells"]
    assert n == 2 and cells[0]["cell_type"] == "markdown"
    assert "data:image/png;base64,iVBORw0KGgo=" in cells[0]["source"]  # the figure stays
    assert cells[1]["outputs"] == [] and cells[1]["source"] == "show()"


def test_the_copy_s_tutorials_keep_their_figures(made):
    student, _ = made
    made_at = (student / "ASSIGNMENT.md").stat().st_mtime  # tutorials are written meanwhile
    figures = {p.name for p in (ROOT / "tutorials" / "figures").glob("*.png")
               if p.stat().st_mtime < made_at}
    copied = {p.name for p in (student / "tutorials" / "figures").glob("*.png")}
    assert figures and figures <= copied
    for src in sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py")):
        if src.stat().st_mtime >= made_at or f"tutorials/{src.name}" in make.LEFT_OUT:
            continue
        copied = (student / "tutorials" / src.name).read_text()
        assert "getsource(minunet.ops" not in copied
        assert copied.count("# %%") == src.read_text().count("# %%")  # same cells, in sync


def test_make_source_root_refuses_a_student_copy(made):
    with pytest.raises(make.MakeError, match="already a student copy"):
        make.source_root(made[0])
