"""The student copy is whole: its tutorials run once the exercises are done, and none shows
a solution, in the regions' words or in other words.

- test_the_copys_tutorial_runs: every tutorial of the copy runs as a script in fast mode
  (MINUNET_FAST=1, as tests/test_tutorials.py runs the source's) on a copy with the
  teacher's solutions put back, on the copy's own minunet (PYTHONPATH), not this checkout's.
- test_no_cell_of_the_copy_reproduces_a_region: every code cell of every tutorial in the
  copy (.py and .ipynb) is compared with the code of every solution region
  (tutorials.reproduces: matching token runs, names of sizes alike), not with a list of
  known cells.
- the detector's own tests: it finds the near-solutions the copy once showed (02's up-conv
  dx as one einsum, 08's col2im for one image, 10's relu_backward and max-pool windowing)
  and, in the project's tutorials, only those.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from coursework_helpers import ROOT

from minunet.coursework import make, tutorials
from minunet.coursework.regions import parse_dir, region_code

TIMEOUT_S = 300  # per tutorial: the copy runs the network on the plain ops (slower than fast)
IN_COPY = [p.name for p in sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
           if f"tutorials/{p.name}" not in make.LEFT_OUT]


def regions_code() -> dict[str, str]:
    """Every solution region's code, by id."""
    regions = parse_dir(ROOT / "minunet" / "ops")
    out = {}
    for path in sorted({r.path for r in regions}):
        out |= region_code(Path(path).read_text(), [r for r in regions if r.path == path])
    return out


def code_cells(path: Path) -> list[str]:
    """The code cells of a percent-format tutorial (.py) or a notebook (.ipynb)."""
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text())
        return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                for c in nb["cells"] if c["cell_type"] == "code"]
    parts = re.split(r"(?m)^(?=# %%)", path.read_text())
    return [p for p in parts if p.startswith("# %%") and not p.startswith("# %% [markdown]")]


def test_the_copy_holds_the_tutorials_that_can_run_there(made):
    student, _ = made
    have = sorted(p.name for p in (student / "tutorials").glob("[0-9][0-9]_*.py"))
    assert have == IN_COPY and len(have) >= 9
    assert sorted(p.name for p in (student / "tutorials").glob("[0-9][0-9]_*.ipynb")) == [
        n.replace(".py", ".ipynb") for n in IN_COPY]


@pytest.mark.slow
@pytest.mark.parametrize("name", IN_COPY)
def test_the_copys_tutorial_runs(name, solved):
    env = {k: v for k, v in os.environ.items() if k != "MINUNET_ISBI2012"}
    env.update(MINUNET_FAST="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(solved))  # the copy's minunet, not this checkout's
    code = ("import runpy, sys, minunet; assert minunet.__file__.startswith(sys.argv[1]), "
            f"minunet.__file__; runpy.run_path('tutorials/{name}', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, str(solved)], cwd=solved, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (f"{name} fails in the student copy (solutions restored)\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    assert proc.stdout.startswith("minunet ") and "mode: fast" in proc.stdout.splitlines()[0]


def test_no_cell_of_the_copy_reproduces_a_region(made):
    student, _ = made
    regions = regions_code()
    found, cells = [], 0
    for path in sorted((student / "tutorials").glob("[0-9][0-9]_*")):
        if path.suffix not in (".py", ".ipynb"):
            continue
        for k, cell in enumerate(code_cells(path)):
            cells += 1
            if tutorials.left_out_use(cell):
                found.append(f"{path.name} cell {k}: runs {tutorials.left_out_use(cell)}")
            found += [f"{path.name} cell {k}: like {rid}"
                      for rid in tutorials.reproduces(cell, regions)]
    assert cells > 100
    assert found == []


# --- the detector ------------------------------------------------------------------------------

# What the copy's tutorials showed before this test existed (verbatim), as a student saw it.
ONCE_SHOWN = {
    # seen through the 2x2 block reshape it shares with max-pool's windowing (an einsum is
    # no text of the up-conv's region, which uses matrix products)
    "02: the up-conv's dx as one einsum": ("maxpool2x2.forward", '''
def conv2x2_stride2(z, w):
    """The 2x2 stride-2 convolution with weight (Cin, Cout, 2, 2)."""
    N, O, H2, W2 = z.shape
    blocks = z.reshape(N, O, H2 // 2, 2, W2 // 2, 2)  # (N, O, y, i, x, j)
    return np.einsum("coij,noyixj->ncyx", w, blocks)
'''),
    "08: col2im for one image": ("conv2d.col2im", '''
c6 = dcols.reshape(C, k, k, Ho, Wo)  # (C, i, j, Ho, Wo)
contrib = np.zeros((k * k, C, H, H), np.float32)  # what each tap adds to each pixel (0 if none)
for i in range(k):
    for j in range(k):
        contrib[i * k + j, :, i : i + Ho, j : j + Wo] = c6[:, i, j]
'''),
    "10: relu_backward": ("relu.backward", '''
def my_relu_backward(dout, cache):
    return np.where(cache.out > 0, dout, 0.0)
'''),
    "10: max-pool windowing": ("maxpool2x2.forward", '''
win = x.reshape(1, 2, S // 2, 2, S // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(1, 2, S // 2,
                                                                              S // 2, 4)
'''),
}


@pytest.mark.parametrize("case", ONCE_SHOWN)
def test_the_detector_finds_what_the_copy_once_showed(case):
    region, code = ONCE_SHOWN[case]
    assert region in tutorials.reproduces(code, regions_code())


def test_in_the_project_tutorials_the_detector_finds_only_the_left_out_ones():
    """Over every code cell of every tutorial source: the cells it finds are in tutorials
    the copy leaves out (08 and 10 show col2im for one image, a relu backward, max-pool's
    windowing, on purpose), and it finds those."""
    regions = regions_code()
    found = {}
    for path in sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py")):
        for cell in code_cells(path):
            for rid in tutorials.reproduces(cell, regions):
                found.setdefault(path.name, set()).add(rid)
    assert set(found) == {"08_gpu_path.py", "10_wrong_gradients.py"}, found
    assert {"conv2d.col2im"} <= found["08_gpu_path.py"]
    assert {"relu.backward", "maxpool2x2.forward"} <= found["10_wrong_gradients.py"]
    assert not set(found) & set(IN_COPY)


def test_the_detector_ignores_names_and_comments_but_not_structure():
    regions = {"relu.backward": "return xp.where(cache.out > 0, dout, "
                                "xp.zeros((), dtype=dout.dtype))\n"}
    same = "# the mask\nreturn np.where(cache.out > 0, dout, np.zeros((), dtype=dout.dtype))"
    assert tutorials.reproduces(same, regions) == ["relu.backward"]
    other = "y = np.maximum(x, 0)\nprint(y.sum(), cache.out.shape)\n"
    assert tutorials.reproduces(other, regions) == []
    assert tutorials.code_tokens("N, Cout = x.shape  # c") == ["S", ",", "S", "=", "x", ".",
                                                              "shape"]
