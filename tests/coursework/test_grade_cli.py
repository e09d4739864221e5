"""`python -m minunet.coursework grade`: subprocesses, results.json, hidden checks, bad code."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from coursework_helpers import OPS_FILE, make_copy, plant

from minunet.coursework.bundle import load
from minunet.coursework.checks import UNET_OPS

STATUSES, VISIBILITIES = {"passed", "failed"}, {"visible", "hidden", "after_due_date",
                                                "after_published"}


def grade(*args, cwd=None):
    """Run the grade CLI; (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "minunet.coursework", "grade", *map(str, args)],
                       capture_output=True, text=True, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def check_results_json(path: Path) -> dict:
    """A valid Gradescope results.json (https://gradescope-autograders.readthedocs.io/en/
    latest/specs/): its keys, types and values; no top-level score where there are tests
    (Gradescope sums them, and hides the total while a test is hidden), so data["score"]
    is set here to that sum."""
    data = json.loads(path.read_text())
    assert ("score" in data) == (not data["tests"]) and isinstance(data["output"], str)
    assert isinstance(data["execution_time"], float | int) and data["execution_time"] >= 0
    assert data["visibility"] in VISIBILITIES and data["stdout_visibility"] in VISIBILITIES
    for t in data["tests"]:
        assert set(t) == {"name", "number", "score", "max_score", "status", "output", "tags",
                          "visibility"}
        assert t["status"] in STATUSES and t["visibility"] in VISIBILITIES
        assert 0 <= t["score"] <= t["max_score"] and isinstance(t["tags"], list)
        assert (t["score"] == t["max_score"]) == (t["status"] == "passed")
        assert not (t["visibility"] == "hidden" and t["max_score"])  # hidden: no points
    data.setdefault("score", sum(t["score"] for t in data["tests"]))
    return data


def test_the_stubbed_copy_gets_zero_and_not_implemented_per_op(made, tmp_path):
    student, _ = made
    code, out, err = grade(student.name, "--json", tmp_path / "r.json", cwd=student.parent)
    assert code == 1 and err == ""
    data = check_results_json(tmp_path / "r.json")
    assert data["score"] == 0 and len(data["tests"]) > 40
    for op in UNET_OPS:  # the default assignment (the family's: test_family.py)
        tests = [t for t in data["tests"] if op in t["tags"]]
        assert tests and all(t["status"] == "failed" for t in tests)
        assert any("[not_implemented] not implemented" in t["output"] for t in tests), op
    assert "public checks: 0 / " in out


def test_the_solutions_pass_public_and_hidden_checks(solved, made, tmp_path):
    _, teacher = made
    code, out, _ = grade(solved)
    assert code == 0
    assert out.rstrip().endswith("all public checks passed; hidden checks run at submission")
    code, out, _ = grade(solved, "--hidden", teacher / "hidden.npz", "--json", tmp_path / "r.json")
    assert code == 0 and "hidden checks: " in out and "\nall checks passed\n" in out
    data = check_results_json(tmp_path / "r.json")
    assert data["score"] == sum(t["max_score"] for t in data["tests"]) > 100
    hidden = [t for t in data["tests"] if t["visibility"] == "after_due_date"]
    assert hidden and all("hidden" in t["tags"] for t in hidden)


def plant_from_solution(copy: Path, file: str, old: str, new: str) -> None:
    path = copy / "minunet" / "ops" / file
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.slow  # 5-12 s on a 2-core CPU
def test_hidden_checks_show_no_inputs_or_values_and_grading_is_deterministic(made, solved,
                                                                            tmp_path):
    """A failing hidden check shows its op, input and hint: not its name, inputs or values.
    The same grade twice gives the same results."""
    _, teacher = made
    shutil.copytree(solved, tmp_path / "s")
    plant_from_solution(tmp_path / "s", "conv.py", "db = D.sum(axis=1)",
                        "db = dout[0].sum(axis=(1, 2))")
    runs = []
    for n in (1, 2):
        code, out, _ = grade(tmp_path / "s", "--hidden", teacher / "hidden.npz", "--json",
                             tmp_path / f"{n}.json")
        assert code == 1
        runs.append(check_results_json(tmp_path / f"{n}.json"))
    data = runs[0]
    assert {**runs[0], "execution_time": 0} == {**runs[1], "execution_time": 0}
    assert 0 < data["score"] < sum(t["max_score"] for t in data["tests"])
    hidden = load(teacher / "hidden.npz")
    public_names = {c.name for c in load(teacher / "public.npz").checks}
    text = out + json.dumps(data)
    for d in hidden.checks:
        assert d.name in public_names or d.name not in text
        for a in [*d.arrays.values(), d.expected_out]:
            for v in np.ravel(a)[:5]:
                s = f"{float(v):.6g}"
                if len(s.strip("-")) >= 6:  # a value with digits enough to be recognised
                    assert not re.search(rf"(?<![\d.]){re.escape(s)}(?!\d)", text), s
    failed_hidden = [t for t in data["tests"] if "hidden" in t["tags"] and
                     t["status"] == "failed"]
    assert failed_hidden and all(t["output"].startswith("the bias is shared by every image")
                                 for t in failed_hidden)
    assert all("worst element" not in t["output"] for t in failed_hidden)
    assert "[conv2d.db_first_image]" in out


@pytest.mark.slow  # 5-12 s on a 2-core CPU
def test_raising_hanging_none_wrong_shape_dtype_and_crashing_code(tmp_path):
    """Each op's misbehaviour becomes failed tests with its message; the JSON is valid."""
    copy = tmp_path / "s"
    make_copy(copy, ops=["relu", "maxpool2x2", "dropout", "concat", "center_crop",
                         "softmax_cross_entropy"], part="backward")
    plant(copy, "relu.backward", 'raise ValueError("boom")')
    plant(copy, "maxpool2x2.backward", "while True:\n    pass")
    plant(copy, "dropout.backward", "return None")
    plant(copy, "concat.backward", "return dout, dout")
    plant(copy, "center_crop.backward", "dx = xp.zeros((N, C, H, W))  # float64 for float32\n"
                                        "dx[:, :, cache.top : cache.top + h, "
                                        "cache.left : cache.left + w] = dout\nreturn dx")
    plant(copy, "softmax_cross_entropy.backward", "import os\nos._exit(3)")
    code, out, err = grade(copy, "--timeout", "4", "--json", tmp_path / "r.json")
    assert code == 1 and err == ""
    data = check_results_json(tmp_path / "r.json")

    def outputs(op):
        return [t["output"] for t in data["tests"] if op in t["tags"]]

    assert all("[raised] the code raised an error; ValueError: boom (at relu.py:" in o
               for o in outputs("relu"))
    hung = outputs("maxpool2x2.backward")  # after the op's 4 s, nothing of it runs
    assert hung and "[timeout]" in hung[0] and "took longer than 4 s" in hung[0]
    assert all("[timeout]" in o or "[forward_first]" in o for o in hung)
    assert all("[returned_none]" in o for o in outputs("dropout"))
    assert all("[shape]" in o and "a gradient has the shape of its input" in o
               for o in outputs("concat"))
    crop = outputs("center_crop")
    assert sum("[dtype]" in o and "float64 for float32 inputs" in o for o in crop) == 1
    assert sum(o.startswith("max rel error") and "diagnosis" not in o for o in crop) == 1
    died = outputs("softmax_cross_entropy.backward")
    assert died and all("[crashed]" in o for o in died) and "exit code 3" in died[0]


def test_a_refused_import_and_a_syntax_error(made, solved, tmp_path):
    """The fast ops are refused while grading; a syntax error fails every test of the op."""
    refused, broken = tmp_path / "refused", tmp_path / "broken"
    shutil.copytree(solved, refused)
    shutil.copytree(made[0], broken)
    plant_from_solution(refused, "relu.py", "return xp.where(cache.out > 0",
                        "from minunet.fast import relu_backward\n"
                        "    return relu_backward(dout, cache)\n    return xp.where(cache.out > 0")
    (broken / "minunet" / "ops" / OPS_FILE["dropout"]).write_text("def broken(:\n")
    for copy, op, expected in ((refused, "relu", "minunet.fast is refused while grading"),
                               (broken, "dropout", "importing dropout.py failed: SyntaxError")):
        grade(copy, "--op", op, "--json", tmp_path / f"{op}.json")
        data = check_results_json(tmp_path / f"{op}.json")
        outputs = [t["output"] for t in data["tests"] if f"{op}.backward" in t["tags"]]
        assert outputs and all(expected in o for o in outputs), outputs


def test_loose_files_are_graded_on_the_copy_s_stubs(made, tmp_path):
    """A Gradescope submission: only some ops files; the others keep their stubs."""
    _, teacher = made
    sub = tmp_path / "submission" / "mine"
    sub.mkdir(parents=True)
    shutil.copyfile(teacher / "solutions" / "minunet" / "ops" / "relu.py", sub / "relu.py")
    code, out, _ = grade(tmp_path / "submission", "--op", "relu,dropout", "--hidden",
                         teacher / "hidden.npz", "--json", tmp_path / "r.json")
    data = check_results_json(tmp_path / "r.json")
    relu = [t for t in data["tests"] if "relu" in t["tags"]]
    assert relu and all(t["status"] == "passed" for t in relu)
    dropout = [t for t in data["tests"] if "dropout.forward" in t["tags"]]
    assert dropout and all("[not_implemented]" in t["output"] for t in dropout)
    assert not [t for t in data["tests"] if "dropout" in t["tags"] and t["status"] == "passed"]


def test_bad_input_gets_one_line_and_still_a_results_json(tmp_path):
    code, out, err = grade(tmp_path / "nothing-here", "--json", tmp_path / "r.json")
    assert code == 2 and err.strip().count("\n") == 0
    assert err.startswith("error: ") and "does not exist" in err
    assert check_results_json(tmp_path / "r.json")["output"].startswith("the grader could not run")
    code, _, err = grade(tmp_path, "--hidden", tmp_path / "r.json")
    assert code == 2 and "is not a minunet coursework bundle" in err


def test_grading_the_source_checkout_with_a_seed(tmp_path):
    """In the checkout the expected arrays come from its own ops, for any seed."""
    code, out, _ = grade("--op", "relu,concat", "--seed", "7", cwd=tmp_path)
    assert code == 0 and "(seed 7)" in out
    assert "all public checks passed" in out
