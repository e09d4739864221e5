"""Solution regions: the parts of minunet/ops that a student writes.

A region is a block of lines between two marker comments, the markers of
nbgrader and Otter, with one id `<op>.<part>` and one canary line:

    def scale_backward(dout, cache):
        \"\"\"dout: the output's shape. Returns dx (the same shape).\"\"\"
        # BEGIN SOLUTION scale.backward
        # canary: mu13-0123456789ab
        return dout * cache.factor
        # END SOLUTION

The canary is a token that appears nowhere else: a student copy in which it
turns up (in a source, a notebook, a cache or a wheel) gives a solution away.

    parse_text / parse_dir    find the regions; every problem (nesting, a missing
                              end, a duplicate id, no canary) with file and line
    stub_lines                the stub that replaces a region: same indentation,
                              raises NotImplementedError with the shapes to return,
                              taken from the enclosing function's docstring
    render                    a file with chosen regions stubbed, the others'
                              markers and canaries dropped
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
CANARY = "# canary:"
ID_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")  # <op>.<part>
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{8,}$")

# The part of a region says whether --part forward or --part backward hands it out.
FORWARD_PARTS = ("forward", "im2col")
BACKWARD_PARTS = ("backward", "col2im")


@dataclass(frozen=True)
class Region:
    """One solution region: lines begin..end (1-based, the marker lines included)."""

    id: str  # "<op>.<part>", e.g. "maxpool2x2.backward"
    path: str  # the file, as given to the parser
    begin: int  # line of "# BEGIN SOLUTION <id>"
    end: int  # line of "# END SOLUTION"
    indent: str  # the BEGIN line's indentation (the stub's)
    canary: str  # the token of its "# canary: <token>" line

    @property
    def op(self) -> str:
        return self.id.split(".")[0]

    @property
    def part(self) -> str:
        return self.id.split(".")[1]

    @property
    def direction(self) -> str:
        """'forward' or 'backward': which --part hands this region out."""
        return "forward" if self.part in FORWARD_PARTS else "backward"


@dataclass(frozen=True)
class Problem:
    """A malformed region, reported as 'path:line: message'."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class RegionError(ValueError):
    """Malformed solution regions; str() lists every problem, one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _marker(line: str) -> tuple[str, str] | None:
    """('begin' | 'end' | 'canary', rest of the line) for a marker line, else None."""
    s = line.strip()
    for kind, tag in (("begin", BEGIN), ("end", END), ("canary", CANARY)):
        if s == tag or s.startswith(tag + " "):
            return kind, s[len(tag):].strip()
    return None


def parse_text(text: str, path: str = "<text>") -> tuple[list[Region], list[Problem]]:
    """The regions of one file's text, and its problems (none when well formed)."""
    regions: list[Region] = []
    problems: list[Problem] = []
    open_: dict | None = None  # the region being read: id, begin, indent, canaries, body
    for n, line in enumerate(text.splitlines(), start=1):
        m = _marker(line)
        if m is None:
            if open_ is not None and line.strip():
                open_["body"] += 1
            continue
        kind, rest = m
        indent = line[: len(line) - len(line.lstrip())]
        if kind == "begin":
            if open_ is not None:
                problems.append(Problem(path, n, f"region {rest or '?'} begins inside region "
                                                 f"{open_['id']} (opened at line "
                                                 f"{open_['begin']}): regions do not nest"))
                continue
            if not ID_RE.match(rest):
                problems.append(Problem(path, n, f"'{BEGIN}' needs one id <op>.<part> "
                                                 f"(e.g. maxpool2x2.backward), got {rest!r}"))
            open_ = {"id": rest, "begin": n, "indent": indent, "canaries": [], "body": 0}
        elif kind == "end":
            if open_ is None:
                problems.append(Problem(path, n, f"'{END}' without a '{BEGIN}' before it"))
                continue
            if rest and rest != open_["id"]:
                problems.append(Problem(path, n, f"'{END} {rest}' closes region "
                                                 f"{open_['id']} (opened at line "
                                                 f"{open_['begin']})"))
            if indent != open_["indent"]:
                problems.append(Problem(path, n, f"'{END}' is indented differently from its "
                                                 f"'{BEGIN}' at line {open_['begin']}"))
            canaries = open_["canaries"]
            if len(canaries) != 1:
                problems.append(Problem(path, open_["begin"],
                                        f"region {open_['id']} needs exactly one "
                                        f"'{CANARY} <token>' line, found {len(canaries)}"))
            if open_["body"] == 0:
                problems.append(Problem(path, open_["begin"],
                                        f"region {open_['id']} holds no code"))
            regions.append(Region(open_["id"], path, open_["begin"], n, open_["indent"],
                                  canaries[0] if canaries else ""))
            open_ = None
        else:  # canary
            if open_ is None:
                problems.append(Problem(path, n, f"'{CANARY}' line outside a solution region"))
            elif not TOKEN_RE.match(rest):
                problems.append(Problem(path, n, f"canary token {rest!r} must be 8 or more "
                                                 f"letters, digits, '-' or '_'"))
            else:
                open_["canaries"].append(rest)
    if open_ is not None:
        problems.append(Problem(path, open_["begin"], f"region {open_['id']} has no "
                                                      f"'{END}' before the end of the file"))
    return regions, problems


def parse_files(paths: list[Path]) -> list[Region]:
    """The regions of several files, checked together (ids and canaries are unique).

    Raises RegionError listing every problem with its file and line.
    """
    regions: list[Region] = []
    problems: list[Problem] = []
    for p in paths:
        found, bad = parse_text(Path(p).read_text(encoding="utf-8"), str(p))
        regions += found
        problems += bad
    first: dict[str, Region] = {}
    token_of: dict[str, Region] = {}
    for r in regions:
        if r.id in first:
            f = first[r.id]
            problems.append(Problem(r.path, r.begin, f"duplicate region id {r.id} (also at "
                                                     f"{f.path}:{f.begin})"))
        first.setdefault(r.id, r)
        if r.canary and r.canary in token_of:
            f = token_of[r.canary]
            problems.append(Problem(r.path, r.begin, f"region {r.id} reuses the canary of "
                                                     f"{f.id} ({f.path}:{f.begin})"))
        token_of.setdefault(r.canary, r)
    if problems:
        raise RegionError(problems)
    return regions


def parse_dir(ops_dir: Path) -> list[Region]:
    """The regions of every *.py file in ops_dir (sorted by file name), checked."""
    return parse_files(sorted(Path(ops_dir).glob("*.py")))


# --- the stub -----------------------------------------------------------------------------


def _enclosing_function(tree: ast.AST, line: int):
    """The innermost function whose body holds `line`, or None."""
    best = None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.lineno < line <= (node.end_lineno or node.lineno):
                if best is None or node.lineno > best.lineno:
                    best = node
    return best


def _clause(text: str, start: int, stops: tuple[str, ...]) -> str:
    """text[start:] up to the first of `stops` outside parentheses (or the end)."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and any(text.startswith(s, i) for s in stops):
            return text[start:i].strip()
    return text[start:].rstrip(". ").strip()


def returns_of(docstring: str) -> str | None:
    """What a docstring says the function returns: 'Returns X.' or 'a -> X' (None if neither)."""
    text = " ".join(docstring.split())
    m = re.search(r"\bReturns?\b", text)
    if m:
        return _clause(text, m.end(), (". ", "; ")) if text[m.end():].strip() else None
    m = re.search(r"->", text)
    if m:
        return _clause(text, m.end(), (". ", ": ", "; "))
    return None


def _names_used_after(tree: ast.AST, fn, region: Region) -> list[str]:
    """Names assigned in the region that the function's code after it reads, in order."""
    assigned, used = [], []
    for node in ast.walk(fn):
        if isinstance(node, ast.Name):
            if region.begin < node.lineno < region.end and isinstance(node.ctx, ast.Store):
                assigned.append(node.id)
            elif node.lineno > region.end and isinstance(node.ctx, ast.Load):
                used.append((node.lineno, node.col_offset, node.id))
    return list(dict.fromkeys(n for _, _, n in sorted(used) if n in assigned))


def stub_message(text: str, region: Region) -> str:
    """The NotImplementedError message of a region's stub, from its function's docstring.

    Raises RegionError when the docstring states no return shapes, so a stub can
    never drift from the docstring it is taken from.
    """
    tree = ast.parse(text)
    fn = _enclosing_function(tree, region.begin)
    doc = ast.get_docstring(fn) if fn is not None else None
    returns = returns_of(doc) if doc else None
    if not returns:
        where = f"function {fn.name}" if fn is not None else "the module level"
        raise RegionError([Problem(region.path, region.begin,
                                   f"region {region.id}: the docstring of {where} states no "
                                   f"return shapes ('Returns ...' or '... -> ...'), which "
                                   f"the stub's message is taken from")])
    after = _names_used_after(tree, fn, region)
    if after:
        todo = (f"compute {', '.join(after)} for the code below, which returns "
                f"{returns}")
    else:
        todo = f"return {returns}"
    return f"{region.id} is not implemented yet: {todo}"


def stub_lines(text: str, region: Region) -> list[str]:
    """The lines that replace a region: a comment and a raise, at the region's indentation."""
    ind = region.indent
    msg = stub_message(text, region)
    width = max(40, 96 - len(ind) - 6)
    pieces = textwrap.wrap(msg, width=width, drop_whitespace=False) or [msg]
    out = [f"{ind}# TODO({region.id}): write this part (see the docstring and the module's)\n",
           f"{ind}raise NotImplementedError(\n"]
    out += [f"{ind}    {p!r}\n" for p in pieces]
    out.append(f"{ind})\n")
    return out


def withheld_lines(text: str, region: Region, shows: list[str]) -> list[str]:
    """The stub of a region that is not handed out but whose code would show one that is."""
    ind = region.indent
    msg = (f"{region.id} is not part of this assignment, but its code would show "
           f"{', '.join(shows)}, handed out here: write it too if you need it; "
           + stub_message(text, region).split(": ", 1)[1])
    width = max(40, 96 - len(ind) - 6)
    pieces = textwrap.wrap(msg, width=width, drop_whitespace=False) or [msg]
    return ([f"{ind}# TODO({region.id}): withheld, not graded (see the message)\n",
             f"{ind}raise NotImplementedError(\n"]
            + [f"{ind}    {p!r}\n" for p in pieces] + [f"{ind})\n"])


def render(text: str, regions: list[Region], stub_ids: set[str],
           withheld: dict[str, list[str]] | None = None) -> str:
    """The file with the regions in stub_ids stubbed, the regions in `withheld` (id -> the
    handed-out regions their code shows) stubbed as withheld, and every other region's
    marker and canary lines removed (their code kept). `regions`: this file's regions."""
    withheld = withheld or {}
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    by_begin = {r.begin: r for r in regions}
    n = 1
    while n <= len(lines):
        r = by_begin.get(n)
        if r is None:
            out.append(lines[n - 1])
            n += 1
            continue
        if r.id in stub_ids:
            out += stub_lines(text, r)
        elif r.id in withheld:
            out += withheld_lines(text, r, withheld[r.id])
        else:
            out += [ln for ln in lines[r.begin: r.end - 1] if _marker(ln) is None]
        n = r.end + 1
    return "".join(out)


def solution_lines(text: str, regions: list[Region], min_len: int = 20) -> set[str]:
    """The distinctive code lines of regions (stripped, >= min_len characters, no comments):
    what a tutorial cell or an output must not contain."""
    lines = text.splitlines()
    found = set()
    for r in regions:
        for ln in lines[r.begin: r.end - 1]:
            s = ln.split("  #")[0].strip()
            if len(s) >= min_len and not s.startswith("#") and not SHAPE_UNPACK.match(s):
                found.add(s)
    return found


# `N, C, H, W = x.shape`: a line every op of an NCHW tensor opens with, not a solution (it
# would leave out of a copy every family op that reads its input's shape)
SHAPE_UNPACK = re.compile(r"^[A-Za-z_][\w, ]*= [\w.]+\.shape$")


def region_code(text: str, regions: list[Region]) -> dict[str, str]:
    """The code of each region (its lines without markers and canary), by id."""
    lines = text.splitlines(keepends=True)
    return {r.id: "".join(ln for ln in lines[r.begin: r.end - 1] if _marker(ln) is None)
            for r in regions}
