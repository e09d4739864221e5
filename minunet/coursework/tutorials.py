"""Tutorials in a student copy: cells that show an exercise's code are left out.

A cell reveals a solution when it holds a line of a handed-out region, a canary
token, shows the source of an op (inspect.getsource, %psource, ??, reading a
file under minunet/ops, the wrong versions of mistakes.py), or reproduces a
region in other words (`reproduces`: the same code up to the names of shapes,
e.g. a max-pool's 2x2 windowing or a col2im for one image). A cell that runs
what the copy leaves out (the fast ops, the twins, the kernels: USES_LEFT_OUT)
cannot run there. Such cells are replaced by a markdown cell saying why; in a
notebook, the figures they drew are kept in that cell as images. Both the
percent-format .py source and its generated .ipynb get the same cells, so they
stay in sync. A tutorial must therefore keep such cells apart: no later cell
may use what they define (tests/coursework/test_student_copy.py runs the copy's
tutorials with the solutions restored).
"""

from __future__ import annotations

import difflib
import io
import json
import re
import textwrap
import tokenize

SHOWS_SOURCE = re.compile(r"getsource|getsourcelines|%psource|%pfile|%pycat|%load\b|\?\?|"
                          r"read_text\(|open\(|linecache|\bdis\.")
NAMES_OPS = re.compile(r"minunet\.ops|minunet/ops|\bops\.|from minunet import ops|"
                       r"mistakes|im2col|col2im|_forward\b|_backward\b")
NOTE = ("*Left out of the student copy: this cell showed the code of an exercise "
        "({what}). Write it yourself in `minunet/ops`; the figures it drew are kept.*")
USES_LEFT_OUT = re.compile(r"minunet\.fast\b|from minunet import [^\n]*\bfast\b|"
                           r"kind=[\"']fast[\"']|backend\.(cpu|gpu|twins)\b|"
                           r"from minunet\.backend import [^\n]*\b(cpu|gpu|twins)\b|"
                           r"\bkernels/|kernel_dir\(|wrong_namespace")
LEFT_OUT_NOTE = ("*Left out of the student copy: this cell runs {what}, which the copy "
                 "leaves out (they compute the exercises' answers).*")

# A cell reproduces a region when matching runs of >= MIN_RUN tokens cover COVERAGE of the
# region's tokens, or one run is >= LONG_RUN tokens long (one distinctive expression, e.g.
# `.reshape(N, C, H // 2, 2, W // 2, 2)`). Set on the project's tutorials: unrelated cells
# reach at most 0.22 and 13 tokens; the near-solutions 0.48 (a relu backward), 0.65 (col2im
# for one image) and runs of 18 (a max-pool's windowing) and 19 (the up-conv's dx as one
# einsum, through the same 2x2 block reshape).
MIN_RUN, COVERAGE, LONG_RUN = 6, 0.3, 16
SHAPE_NAME = re.compile(r"[A-Z][A-Za-z0-9]{0,3}")  # N, C, H, W, Ho, Cout, H2: names of sizes
ARRAY_MODULES = {"np", "xp", "cp", "numpy", "cupy"}


def code_tokens(code: str) -> list[str]:
    """The tokens of code without comments, names of sizes as 'S', np/xp/cp as 'xp'."""
    lines = [ln for ln in textwrap.dedent(code).splitlines() if not ln.lstrip().startswith(
        ("#", "%", "!"))]
    out, prev = [], ""
    try:
        for t in tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline):
            s = t.string
            if t.type == tokenize.NAME and prev != ".":
                s = "xp" if s in ARRAY_MODULES else "S" if SHAPE_NAME.fullmatch(s) else s
            elif t.type not in (tokenize.NAME, tokenize.NUMBER, tokenize.STRING, tokenize.OP):
                continue
            out.append(s)
            prev = t.string
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass  # a cell with a syntax error: compare the tokens read so far
    return out


def reproduces(code: str, regions: dict[str, str]) -> list[str]:
    """The ids of the regions (id -> code) that a cell's code reproduces."""
    cell = code_tokens(code)
    found = []
    for rid, region in regions.items():
        ref = code_tokens(region)
        if not ref or not cell:
            continue
        runs = [b.size for b in difflib.SequenceMatcher(None, ref, cell, autojunk=False)
                .get_matching_blocks()]
        covered = sum(s for s in runs if s >= MIN_RUN) / len(ref)
        if covered >= COVERAGE or max(runs) >= LONG_RUN:
            found.append(rid)
    return found


def _norm(s: str) -> str:
    return " ".join(s.split())


def reveals(code: str, solution_lines: set[str], canaries: set[str],
            regions: dict[str, str] | None = None) -> str:
    """Why a cell's text gives a solution away ('' when it does not); regions: the code of
    the handed-out regions, by id (their look-alikes are found too)."""
    for token in canaries:
        if token in code:
            return "a canary token"
    norm = {_norm(s) for s in solution_lines}
    for line in code.splitlines():
        if _norm(line.lstrip("#").strip()) in norm and line.strip():
            return "a line of a solution"
    if SHOWS_SOURCE.search(code) and NAMES_OPS.search(code):
        names = sorted(set(re.findall(r"[\w.]*(?:im2col|col2im|_forward|_backward|mistakes)"
                                      r"[\w.]*", code)))
        return "the source of " + (", ".join(names) if names else "an op")
    same = reproduces(code, regions or {})
    if same:
        return "code like the solution of " + ", ".join(same)
    return ""


def left_out_use(code: str) -> str:
    """What a cell runs that the copy leaves out ('' when nothing)."""
    m = USES_LEFT_OUT.search(code)
    if not m:
        return ""
    if "fast" in m.group(0):
        return "the fast ops (minunet.fast)"
    if "wrong_namespace" in m.group(0):
        return "the catalogue's wrong versions"
    return "the CPU/GPU twins and kernels"


def _replacement(code: str, solution_lines, canaries, regions) -> str:
    """The note that replaces a cell ('' to keep it)."""
    why = reveals(code, solution_lines, canaries, regions)
    if why:
        return NOTE.format(what=why)
    uses = left_out_use(code)
    return LEFT_OUT_NOTE.format(what=uses) if uses else ""


def strip_percent(text: str, solution_lines: set[str], canaries: set[str],
                  regions: dict[str, str] | None = None) -> tuple[str, int]:
    """A percent-format tutorial with revealing cells replaced; (text, cells replaced)."""
    parts = re.split(r"(?m)^(?=# %%)", text)
    out, n = [], 0
    for part in parts:
        code = part.startswith("# %%") and not part.startswith("# %% [markdown]")
        note = _replacement(part, solution_lines, canaries, regions) if code else ""
        if part.startswith("# %% [markdown]") and reveals(part, solution_lines, canaries):
            note = NOTE.format(what=reveals(part, solution_lines, canaries))
        if note:
            out.append("# %% [markdown]\n# " + note + "\n\n")
            n += 1
        else:
            out.append(part)
    return "".join(out), n


def _text_of(output: dict) -> str:
    if "text" in output:
        t = output["text"]
        return "".join(t) if isinstance(t, list) else t
    data = output.get("data", {})
    t = data.get("text/plain", "")
    return "".join(t) if isinstance(t, list) else t


def _images(outputs: list) -> list[str]:
    out = []
    for o in outputs:
        png = o.get("data", {}).get("image/png")
        if png:
            png = "".join(png) if isinstance(png, list) else png
            out.append(f"![figure](data:image/png;base64,{png.strip()})")
    return out


def strip_notebook(text: str, solution_lines: set[str], canaries: set[str],
                   regions: dict[str, str] | None = None) -> tuple[str, int]:
    """A notebook (JSON) with revealing cells replaced and revealing outputs dropped."""
    nb = json.loads(text)
    n = 0
    cells = []
    for cell in nb.get("cells", []):
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        outputs = cell.get("outputs", [])
        if cell.get("cell_type") == "code":
            note = _replacement(src, solution_lines, canaries, regions)
        else:
            why = reveals(src, solution_lines, canaries)
            note = NOTE.format(what=why) if why else ""
        if note:
            body = "\n\n".join([note, *_images(outputs)])
            cells.append({"cell_type": "markdown", "id": cell.get("id", f"stripped-{n}"),
                          "metadata": {}, "source": body})
            n += 1
            continue
        if outputs:
            kept = [o for o in outputs if not reveals(_text_of(o), solution_lines, canaries)]
            if len(kept) != len(outputs):
                n += 1
                cell = {**cell, "outputs": kept}
        cells.append(cell)
    nb["cells"] = cells
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n", n
