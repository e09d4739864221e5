"""Tutorials in a student copy: cells that show an exercise's code are left out.

A cell reveals a solution when it holds a line of a handed-out region, a canary
token, or shows the source of an op (inspect.getsource, %psource, ??, reading a
file under minunet/ops, the wrong versions of mistakes.py). Such a cell is
replaced by a markdown cell saying so; in a notebook, the figures it drew are
kept in that cell as images. Both the percent-format .py source and its
generated .ipynb get the same cells, so they stay in sync.
"""

from __future__ import annotations

import json
import re

SHOWS_SOURCE = re.compile(r"getsource|getsourcelines|%psource|%pfile|%pycat|%load\b|\?\?|"
                          r"read_text\(|open\(|linecache|\bdis\.")
NAMES_OPS = re.compile(r"minunet\.ops|minunet/ops|\bops\.|from minunet import ops|"
                       r"mistakes|im2col|col2im|_forward\b|_backward\b")
NOTE = ("*Left out of the student copy: this cell showed the code of an exercise "
        "({what}). Write it yourself in `minunet/ops`; the figures it drew are kept.*")


def _norm(s: str) -> str:
    return " ".join(s.split())


def reveals(code: str, solution_lines: set[str], canaries: set[str]) -> str:
    """Why a cell's text gives a solution away ('' when it does not)."""
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
    return ""


def strip_percent(text: str, solution_lines: set[str], canaries: set[str]) -> tuple[str, int]:
    """A percent-format tutorial with revealing cells replaced; (text, cells replaced)."""
    parts = re.split(r"(?m)^(?=# %%)", text)
    out, n = [], 0
    for part in parts:
        if part.startswith("# %%") and reveals(part, solution_lines, canaries):
            why = reveals(part, solution_lines, canaries)
            out.append("# %% [markdown]\n# " + NOTE.format(what=why) + "\n\n")
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


def strip_notebook(text: str, solution_lines: set[str], canaries: set[str]) -> tuple[str, int]:
    """A notebook (JSON) with revealing cells replaced and revealing outputs dropped."""
    nb = json.loads(text)
    n = 0
    cells = []
    for cell in nb.get("cells", []):
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        outputs = cell.get("outputs", [])
        why = reveals(src, solution_lines, canaries)
        if why:
            body = "\n\n".join([NOTE.format(what=why), *_images(outputs)])
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
