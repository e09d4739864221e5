"""Solution regions: the parser's errors (with file and line), the checkout's regions, the stubs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from coursework_helpers import ROOT

from minunet.coursework import regions as R
from minunet.coursework.cli import main

OPS = ROOT / "minunet" / "ops"
EXPECTED = {
    "conv2d.im2col", "conv2d.col2im", "conv2d.forward", "conv2d.backward",
    "upconv2x2.forward", "upconv2x2.backward", "maxpool2x2.forward", "maxpool2x2.backward",
    "relu.forward", "relu.backward", "center_crop.backward", "concat.backward",
    "softmax_cross_entropy.forward", "softmax_cross_entropy.backward",
    "dropout.forward", "dropout.backward",
}


def _problems(text: str) -> list[str]:
    return [str(p) for p in R.parse_text(text, "f.py")[1]]


GOOD = ("def f(x):\n    # BEGIN SOLUTION a.b\n    # canary: abcdefgh1\n    y = x\n"
        "    # END SOLUTION\n")


def test_a_well_formed_region_parses():
    (r,), problems = R.parse_text(GOOD, "f.py")
    assert problems == []
    assert (r.id, r.begin, r.end, r.indent, r.canary) == ("a.b", 2, 5, "    ", "abcdefgh1")
    assert (r.op, r.part) == ("a", "b")


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("    # END SOLUTION\n", ""), "f.py:2: region a.b has no '# END SOLUTION'"),
    (GOOD.replace("    y = x\n", "    # BEGIN SOLUTION c.d\n"),
     "f.py:4: region c.d begins inside region a.b (opened at line 2): regions do not nest"),
    ("x = 1\n# END SOLUTION\n", "f.py:2: '# END SOLUTION' without a '# BEGIN SOLUTION'"),
    (GOOD.replace("a.b", "ab"), "f.py:2: '# BEGIN SOLUTION' needs one id <op>.<part>"),
    (GOOD.replace("    # canary: abcdefgh1\n", ""),
     "f.py:2: region a.b needs exactly one '# canary: <token>' line, found 0"),
    (GOOD.replace("    y = x\n", ""), "f.py:2: region a.b holds no code"),
    (GOOD.replace("    # END SOLUTION", "  # END SOLUTION"),
     "f.py:5: '# END SOLUTION' is indented differently from its '# BEGIN SOLUTION' at line 2"),
    ("# canary: abcdefgh1\n", "f.py:1: '# canary:' line outside a solution region"),
])
def test_malformed_regions_are_reported_with_file_and_line(text, expected):
    assert any(p.startswith(expected) for p in _problems(text)), _problems(text)


def test_duplicate_ids_and_canaries_across_files(tmp_path):
    (tmp_path / "a.py").write_text(GOOD)
    (tmp_path / "b.py").write_text("\n" + GOOD)
    with pytest.raises(R.RegionError) as e:
        R.parse_dir(tmp_path)
    text = str(e.value)
    assert f"{tmp_path / 'b.py'}:3: duplicate region id a.b (also at {tmp_path / 'a.py'}:2)" \
        in text
    assert "reuses the canary of a.b" in text


def test_the_regions_command_reports_problems(tmp_path, capsys):
    (tmp_path / "minunet" / "ops").mkdir(parents=True)
    (tmp_path / "minunet" / "ops" / "x.py").write_text(GOOD.replace("    # END SOLUTION\n", ""))
    assert main(["regions", "--source", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'minunet' / 'ops' / 'x.py'}:2: region a.b has no "
                   f"'# END SOLUTION' before the end of the file"]


def test_the_checkout_has_every_exercise_with_a_canary():
    found = R.parse_dir(OPS)
    assert EXPECTED <= {r.id for r in found}
    assert all(R.TOKEN_RE.match(r.canary) for r in found)


def test_without_stubs_rendering_only_drops_the_markers():
    """Marker and canary lines are comments: the code is unchanged (same syntax tree)."""
    regions = R.parse_dir(OPS)
    for path in sorted(OPS.glob("*.py")):
        text = path.read_text()
        mine = [r for r in regions if Path(r.path) == path]
        out = R.render(text, mine, set())
        assert ast.dump(ast.parse(out)) == ast.dump(ast.parse(text))
        assert "SOLUTION" not in out and "canary" not in out


def test_stub_messages_come_from_the_docstrings():
    regions = {r.id: r for r in R.parse_dir(OPS)}
    conv = (OPS / "conv.py").read_text()
    msg = R.stub_message(conv, regions["conv2d.backward"])
    assert msg.startswith("conv2d.backward is not implemented yet: compute dx, dw, db")
    assert "(dx (N, Cin, H, W), dw (Cout, Cin, k, k), db (Cout,))" in msg
    changed = conv.replace("db (Cout,)); dx is None", "db (Cout,) -- changed); dx is None")
    assert "db (Cout,) -- changed" in R.stub_message(changed, regions["conv2d.backward"])
    pool = (OPS / "pool.py").read_text()
    assert "return dx (N, C, H, W)" in R.stub_message(pool, regions["maxpool2x2.backward"])


def test_a_docstring_without_return_shapes_is_an_error():
    text = ('def f(x):\n    """No shapes here."""\n    # BEGIN SOLUTION a.b\n'
            '    # canary: abcdefgh1\n    return x\n    # END SOLUTION\n')
    (r,), _ = R.parse_text(text, "f.py")
    with pytest.raises(R.RegionError, match="f.py:3: region a.b: the docstring of function f "
                                            "states no return shapes"):
        R.stub_message(text, r)


def test_stubbed_ops_keep_signature_docstring_and_checks_and_raise(tmp_path):
    """Every op file with all its regions stubbed is valid Python that raises the stub's
    message, and still refuses bad input with the op's own check."""
    regions = R.parse_dir(OPS)
    dest = tmp_path / "minunet_stub" / "ops"
    dest.mkdir(parents=True)
    for path in sorted(OPS.glob("*.py")):
        mine = [r for r in regions if Path(r.path) == path]
        text = R.render(path.read_text(), mine, {r.id for r in mine})
        ast.parse(text)
        for r in mine:
            assert f"# TODO({r.id})" in text
        (dest / path.name).write_text(text)
    backend = ROOT / "minunet" / "backend"
    code = f"""
import importlib.util, sys, numpy as np
import minunet, minunet.backend
spec = importlib.util.spec_from_file_location("minunet.ops", r"{dest / '__init__.py'}",
                                              submodule_search_locations=[r"{dest}"])
ops = importlib.util.module_from_spec(spec); sys.modules["minunet.ops"] = ops
spec.loader.exec_module(ops)
assert minunet.backend.__file__.startswith(r"{backend}")
try:
    ops.conv2d_forward(np.zeros((1, 2, 3, 3)), np.zeros((1, 3, 3, 3)), np.zeros(1))
except ValueError as e:
    print("check:", e)
try:
    ops.maxpool2x2_backward(np.zeros((1, 1, 1, 1)), ops.MaxPool2x2Cache(np.zeros((1, 1, 1, 1))))
except NotImplementedError as e:
    print("stub:", e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout
    assert "check: conv2d channel mismatch" in out
    assert "stub: maxpool2x2.backward is not implemented yet: return dx (N, C, H, W)" in out
