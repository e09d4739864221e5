"""`python -m minunet.coursework make`: the student copy and the teacher bundle.

The student copy is the whole project, installable, with the chosen solution
regions of minunet/ops replaced by stubs, and nothing that gives them away:

    left out            .git, caches, the fast ops (minunet/fast) and their CPU/GPU
                        twins and kernels (they compute the same answers), tests that
                        hold reference answers, the wrong versions of mistakes.py, the
                        hidden checks, the teachers' guide
    replaced            minunet/fast (an ImportError that says why), backend/cpu.py and
                        gpu.py (the SGD update only, in plain array code), mistakes.py
                        (ids and hints only)
    changed             the network runs on the plain ops by default (the copy's own
                        minunet/nn/door.py), pyproject.toml ships no kernels; tutorial cells
                        that show an exercise's code (or code like it) or run the
                        fast ops are replaced by a note (tutorials.py); tutorials
                        08 (the twins and kernels) and 10 (the wrong versions) are
                        left out
    added               minunet/coursework/data/public.npz (the public checks'
                        inputs and expected arrays), data/assignment.json, ASSIGNMENT.md

Everything is written to a temporary folder beside OUTDIR and renamed at the
end, after a last search of the copy for every canary token: nothing
half-written is left on disk.

The teacher bundle (--teacher DIR) holds hidden.npz (the hidden checks),
public.npz, assignment.json and solutions/minunet/ops/ (the solutions without
their markers, to restore a copy).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import mistakes as catalogue
from . import project, tutorials
from .bundle import build, save
from .checks import FAMILY_OPS, OPS, UNET_OPS, for_ops, public_checks
from .regions import Region, parse_dir, region_code, render, solution_lines

PARTS = ("forward", "backward", "both")


class MakeError(ValueError):
    """Something the teacher must fix; str() is one line (or one line per problem)."""


# Paths (relative, '/'-separated) left out of a student copy, with the reason shown.
LEFT_OUT = {
    ".git": "version history",
    ".github": "the project's CI runs tests the copy does not have",
    "kernels": "the CUDA twins compute the answers",
    "minunet/fast": "the fast ops compute the answers (replaced by an ImportError)",
    "minunet/backend/cpu.py": "the Numba twins compute the answers (replaced: SGD only)",
    "minunet/backend/gpu.py": "the CUDA launchers (replaced: SGD only)",
    "minunet/coursework/hidden.py": "the hidden checks",
    "minunet/coursework/mistakes.py": "the wrong versions (replaced: ids and hints only)",
    "minunet/coursework/data": "replaced by this assignment's",
    "docs/TEACHERS.md": "the teachers' guide",
    "tests/ops": "reference answers (brute-force loops)",
    "tests/fast": "the fast ops",
    "tests/backend": "the twins and kernels",
    "tests/coursework": "the grader's tests (wrong versions, canaries)",
    "tests/family": "the U-Net family's networks, built on ops that are exercises here or left "
                    "out (the registry imports a network when first asked for)",
    "tests/test_tutorials.py": "the copy's tutorials run once the exercises are done",
    "tests/test_tutorial_checks.py": "the right answers of the tutorials' exercises",
    "tutorials/08_gpu_path.py": "reads the fast path's twins and CUDA kernels",
    "tutorials/08_gpu_path.ipynb": "reads the fast path's twins and CUDA kernels",
    "tutorials/10_wrong_gradients.py": "runs the catalogue's wrong versions (one character "
                                       "from the solutions)",
    "tutorials/10_wrong_gradients.ipynb": "runs the catalogue's wrong versions (one character "
                                          "from the solutions)",
    # 11 walks through the BatchNorm backward and the padded im2col: a near-solution of the
    # family's exercises where they are handed out, and stubbed ops where they are withheld
    "tutorials/11_normalisation_padding_stride.py": "walks through the family's exercises "
                                                    "(BatchNorm's backward, padded im2col)",
    "tutorials/11_normalisation_padding_stride.ipynb": "walks through the family's exercises "
                                                       "(BatchNorm's backward, padded im2col)",
    # 12 builds the family's networks, on BatchNorm and the padded/strided/grouped conv: ops
    # that a copy hands out as exercises or leaves out (as tests/family)
    "tutorials/12_unet_family.py": "builds the U-Net family's networks on ops the copy hands "
                                   "out or leaves out",
    "tutorials/12_unet_family.ipynb": "builds the U-Net family's networks on ops the copy "
                                      "hands out or leaves out",
}
JUNK_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", ".ipynb_checkpoints",
             ".venv", "venv", "build", "dist", "runs", ".device_data", ".mypy_cache"}
JUNK_SUFFIXES = (".pyc", ".pyo", ".nbi", ".nbc", ".so", ".egg-info")
# A test file that names the fast ops or the twins cannot pass in a copy without them.
TEST_NAMES_FAST = re.compile(r"minunet\.fast|from minunet import [^\n]*\bfast\b|[\"']fast[\"']"
                             r"|backend\.(cpu|gpu|twins)\b|from minunet\.backend import "
                             r"[^\n]*\b(cpu|gpu|twins)\b|\bkernels/")
FORCE_INCLUDE = re.compile(r'\[tool\.hatch\.build\.targets\.wheel\.force-include\]\n'
                           r'"kernels" = "minunet/kernels"\n\n?')


@dataclass
class Plan:
    """What `make` hands out."""

    regions: list[Region]  # the regions stubbed
    ops: list[str]
    part: str
    seed: int
    hidden_seed: int

    def assignment(self) -> dict:
        return {"regions": sorted(r.id for r in self.regions), "ops": self.ops,
                "part": self.part, "seed": self.seed}


@dataclass
class Summary:
    written: int = 0
    stubbed: list[str] = field(default_factory=list)
    left_out: dict = field(default_factory=dict)  # path -> reason
    withheld: dict = field(default_factory=dict)  # region id -> the handed-out ids it shows
    tutorial_cells: int = 0


def source_root(source: Path | None = None) -> Path:
    """The source checkout to copy from (MakeError when there is none)."""
    root = Path(source).resolve() if source else project.installation_root()
    checkout = (root / "pyproject.toml").is_file() and (root / "minunet" / "ops").is_dir()
    if not checkout and source is not None:
        raise MakeError(f"{root} is not a minunet source checkout (it needs pyproject.toml and "
                        f"minunet/ops/)")
    if not checkout:
        raise MakeError(
            f"`make` needs a source checkout of minunet (with pyproject.toml, tests/ and "
            f"tutorials/), but minunet is installed at {root}, which looks like an installed "
            f"wheel; clone the repository, `pip install -e .` there, and run it from that "
            f"checkout (or pass --source CHECKOUT)")
    if not project.has_regions(root):
        raise MakeError(f"{root / 'minunet' / 'ops'} holds no solution regions: this is "
                        f"already a student copy; make assignments from the source checkout")
    if catalogue.MISTAKES[0].wrong is None and source is None:
        raise MakeError("this installation's mistakes.py holds no wrong versions (a student "
                        "copy?); make assignments from the source checkout")
    return root


def plan(root: Path, ops: list[str] | None, part: str, seed: int, hidden_seed: int) -> Plan:
    if part not in PARTS:
        raise MakeError(f"--part must be one of {', '.join(PARTS)}, got {part!r}")
    regions = parse_dir(root / "minunet" / "ops")
    known = list(dict.fromkeys(r.op for r in regions))
    chosen = [o for o in known if o in UNET_OPS] if not ops else ops  # the default: the U-Net
    unknown = [o for o in chosen if o not in known]
    if unknown:
        raise MakeError(f"unknown op(s) {', '.join(unknown)}; the ops with exercises are "
                        f"{', '.join(known)}")
    picked = [r for r in regions if r.op in chosen and (part == "both" or r.direction == part)]
    parts = ("im2col", "col2im", "forward", "backward")
    picked.sort(key=lambda r: (OPS.index(r.op) if r.op in OPS else len(OPS), parts.index(r.part)
                               if r.part in parts else len(parts)))
    if not picked:
        raise MakeError(f"--ops {','.join(chosen)} --part {part} selects no region "
                        f"(e.g. center_crop and concat have backward exercises only)")
    return Plan(picked, [o for o in OPS if o in chosen], part, seed, hidden_seed)


# --- the files of the copy --------------------------------------------------------------------


def _git_files(root: Path) -> list[str] | None:
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return sorted({p for p in out.stdout.decode().split("\0") if p and (root / p).is_file()})


def _walk_files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in JUNK_DIRS and d != ".git"
                             and not d.endswith(".egg-info"))
        for f in sorted(filenames):
            out.append(Path(dirpath, f).relative_to(root).as_posix())
    return out


def source_files(root: Path, exclude: list[Path] = ()) -> list[str]:
    """The checkout's files (git's view when it is a repository: no ignored files), minus junk."""
    files = _git_files(root)
    if files is None:
        files = _walk_files(root)
    skip = [Path(e).resolve() for e in exclude]
    keep = []
    for rel in files:
        parts = rel.split("/")
        if any(p in JUNK_DIRS for p in parts[:-1]) or rel.endswith(JUNK_SUFFIXES):
            continue
        full = (root / rel).resolve()
        if any(full == s or s in full.parents for s in skip):
            continue
        keep.append(rel)
    return keep


def _left_out(rel: str) -> str:
    for prefix, why in LEFT_OUT.items():
        if rel == prefix or rel.startswith(prefix + "/"):
            return why
    return ""


def _student_mistakes(root: Path) -> str:
    """mistakes.py for a student copy: the Mistake class, ids, hints and probes; no code."""
    path = root / "minunet" / "coursework" / "mistakes.py"
    text = path.read_text()
    tree = ast.parse(text)
    keep = []
    for node in tree.body:
        name = getattr(node, "name", None) or (
            node.targets[0].id if isinstance(node, ast.Assign) and isinstance(
                node.targets[0], ast.Name) else
            node.target.id if isinstance(node, ast.AnnAssign) else None)
        if name in ("Mistake", "PROBES", "by_id", "hint", "for_region", "wrong_namespace"):
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            keep.append("".join(text.splitlines(keepends=True)[first - 1: node.end_lineno]))
    entries = "\n".join(
        f"    Mistake({m.id!r}, {m.region!r},\n            {m.hint!r}"
        + (f", probe={m.probe!r}" if m.probe else "") + ")," for m in catalogue.MISTAKES)
    return (
        '"""The catalogue of typical mistakes (student copy): ids and hints.\n\n'
        "The wrong versions themselves are left out of the student copy (they are one\n"
        "character away from the solutions); the grader recognises them by their outputs,\n"
        'stored in minunet/coursework/data/public.npz.\n"""\n\n'
        "from __future__ import annotations\n\n"
        "from collections.abc import Callable\n"
        "from dataclasses import dataclass, field\n"
        "from types import SimpleNamespace\n\n\n"
        + keep[0] + "\n\nMISTAKES: list[Mistake] = [\n" + entries + "\n]\n\n"
        + "\n\n".join(keep[1:]))


def _student_cpu() -> str:
    """backend/cpu.py (and gpu.py) of a student copy: the momentum-SGD update that
    minunet/nn/optim.py needs, taken from its plain form there (nn/optim.py, sgd_update)."""
    import inspect

    from minunet.nn import optim

    return ('''"""CPU twins: not part of the student copy.

The fast ops' Numba twins compute the answers of the exercises, so this copy
leaves them out. Only the momentum-SGD update that minunet/nn/optim.py needs is
here, in plain array code (NumPy here; the same code runs on CuPy in gpu.py).
"""

from __future__ import annotations


''' + inspect.getsource(optim.sgd_update) + '''

def sgd_update_many(ws, vs, gs, lr, momentum, weight_decay):
    """sgd_update over lists of arrays."""
    for w, v, g in zip(ws, vs, gs, strict=True):
        sgd_update(w, v, g, lr, momentum, weight_decay)


def __getattr__(name):
    raise AttributeError(f"minunet.backend.{__name__.rsplit('.', 1)[-1]}.{name} is not part of "
                         f"the student copy (the twins compute the exercises' answers): write "
                         f"the op in minunet/ops")
''')


STUDENT_DOOR = '''"""The door the network runs on by default: the student copy has only the plain
ops
(minunet/ops, yours), so "plain" (the teacher's copy runs on "fast").
"""

DEFAULT_OPS = "plain"
'''

STUDENT_FAST = '''"""The fast ops: left out of the student copy (they compute the answers)."""

raise ImportError(
    "minunet.fast (the chunked, threaded ops) is not part of this student copy: they compute "
    "the answers of the exercises. The network runs on your own ops in minunet/ops "
    "(UNetConfig(ops='plain'), `python -m minunet.train --ops plain`, the default here)"
)
'''


def _pyproject(text: str) -> str:
    new, n = FORCE_INCLUDE.subn("", text)
    if n != 1:
        raise MakeError('pyproject.toml: expected the wheel\'s force-include of "kernels" '
                        "(the copy ships no kernels), found none; update "
                        "minunet/coursework/make.py")
    return new


def _assignment_md(p: Plan, rendered: dict[str, str], withheld: dict | None = None) -> str:
    rows = []
    for r in p.regions:
        rel = "minunet/ops/" + Path(r.path).name
        line = next(n for n, s in enumerate(rendered[rel].splitlines(), 1)
                    if f"TODO({r.id})" in s)
        rows.append(f"| `{r.id}` | `{rel}:{line}` |")
    extra = ""
    if withheld:
        extra = ("\nAlso stubbed, not graded (their written code would show a part above): "
                 + ", ".join(f"`{w}`" for w in sorted(withheld)) + ". Write them too if "
                 "you need them (the U-Net needs conv2d's parts to train).\n")
    return f"""# Assignment: the forward and backward passes of a U-Net

Write the parts of the U-Net's operations listed below, in `minunet/ops/`. Each is
marked `TODO(<part>)` and raises `NotImplementedError` until you write it; the
docstrings say what each function takes and returns, with shapes, and each file's
module docstring gives the math.

| part | where |
|---|---|
{chr(10).join(rows)}
{extra}
Check your work as you go:

    python -m minunet.gradcheck                 # every op's backward against central differences
    python -m minunet.coursework grade          # the public checks, with points and a diagnosis

When every part is done, your ops train the whole network:

    python -m minunet.train --preset tiny       # 20 iterations of a small U-Net

The tutorials in `tutorials/` walk through the ideas (00 gradient checking, 01
convolution, 02 pooling, ReLU, up-convolution, crop and concat, 03 softmax and the
loss, 04 the U-Net). Hidden checks (other shapes and seeds) run when you submit.
"""


def _canary_hits(folder: Path, tokens: set[str]) -> list[str]:
    hits = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            hits += [f"{p.relative_to(folder)}: {t}" for t in tokens if t.encode() in data]
    return hits


def _fresh(outdir: Path) -> Path:
    outdir = Path(outdir)
    if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):
        raise MakeError(f"{outdir} already exists and is not empty; choose a new folder")
    tmp = outdir.parent / f".{outdir.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _finish(tmp: Path, outdir: Path) -> None:
    if outdir.exists():
        outdir.rmdir()  # empty (checked by _fresh)
    tmp.rename(outdir)


def withheld_regions(regions: list[Region], stub_ids: set[str],
                     code: dict[str, str]) -> dict[str, list[str]]:
    """The regions, not handed out, whose code shows a handed-out one of the other group
    (the U-Net's ops and the family's): conv_general's im2col when conv2d.im2col is handed
    out, and the other way round. They are stubbed too, so that the copy keeps no written
    twin of an exercise (tutorials.reproduces: the same code up to the names of sizes).
    Within a group the exercises were chosen not to show each other."""
    out = {}
    for r in regions:
        if r.id in stub_ids:
            continue
        family = r.op in FAMILY_OPS
        others = {i: code[i] for i in sorted(stub_ids)
                  if (i.split(".")[0] in FAMILY_OPS) != family}
        shown = tutorials.reproduces(code[r.id], others)
        if shown:
            out[r.id] = shown
    return out


def write_copy(root: Path, p: Plan, outdir: Path) -> Summary:
    """Write the student copy of checkout `root` for plan `p` to outdir."""
    outdir = Path(outdir).resolve()
    regions = parse_dir(root / "minunet" / "ops")
    stub_ids = {r.id for r in p.regions}
    tokens = {r.canary for r in regions}
    stubbed = [r for r in regions if r.id in stub_ids]
    lines_by_file = {}
    for r in stubbed:
        lines_by_file.setdefault(r.path, []).append(r)
    secret_lines, secret_code = set(), {}
    for path, rs in lines_by_file.items():
        text = Path(path).read_text()
        secret_lines |= solution_lines(text, rs)
        secret_code |= region_code(text, rs)
    all_code = {}
    for path in {r.path for r in regions}:
        all_code |= region_code(Path(path).read_text(), [r for r in regions if r.path == path])
    withheld = withheld_regions(regions, stub_ids, all_code)
    summary = Summary(stubbed=sorted(stub_ids), withheld=withheld)
    tmp = _fresh(outdir)
    try:
        rendered: dict[str, str] = {}
        for rel in source_files(root, exclude=[outdir, tmp]):
            why = _left_out(rel)
            if why:
                key = next(k for k in LEFT_OUT if rel == k or rel.startswith(k + "/"))
                summary.left_out[key] = why
                continue
            src = root / rel
            dest = tmp / rel
            if rel.startswith("minunet/ops/") and rel.endswith(".py"):
                mine = [r for r in regions if Path(r.path).resolve() == src.resolve()]
                text = src.read_text()
                shows = "" if mine else tutorials.reveals(text, secret_lines, tokens,
                                                          secret_code)
                if shows:  # a family op that generalises a handed-out part (conv_general's
                    # im2col, pool_general's windows): the U-Net does not need it
                    summary.left_out[rel] = (f"an op of the U-Net family that holds {shows} "
                                             "handed out here")
                    continue
                text = render(text, mine, stub_ids, withheld)
                rendered[rel] = text
            elif rel == "pyproject.toml":
                text = _pyproject(src.read_text())
            elif rel.startswith("tests/") and rel.endswith(".py") and TEST_NAMES_FAST.search(
                    src.read_text(encoding="utf-8", errors="replace")):
                summary.left_out[rel] = "uses the fast ops or the twins"
                continue
            elif rel.startswith("tutorials/") and rel.endswith((".py", ".ipynb")):
                strip = tutorials.strip_notebook if rel.endswith(".ipynb") else \
                    tutorials.strip_percent
                text, n = strip(src.read_text(), secret_lines, tokens, secret_code)
                summary.tutorial_cells += n
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
                summary.written += 1
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
            summary.written += 1
        extra = {
            "minunet/fast/__init__.py": STUDENT_FAST,
            "minunet/nn/door.py": STUDENT_DOOR,
            "minunet/backend/cpu.py": _student_cpu(),
            "minunet/backend/gpu.py": _student_cpu(),
            "minunet/coursework/mistakes.py": _student_mistakes(root),
            "minunet/coursework/data/assignment.json": json.dumps(p.assignment(), indent=2),
            "ASSIGNMENT.md": _assignment_md(p, rendered, withheld),
        }
        for rel, text in extra.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
            summary.written += 1
        save(build(for_ops(public_checks(), p.ops), p.seed, assignment=p.assignment()),
             tmp / project.DATA / "public.npz")
        summary.written += 1
        hits = _canary_hits(tmp, tokens)
        if hits:
            raise MakeError("the copy would give solutions away (canary found): "
                            + "; ".join(hits[:5]))
        _finish(tmp, outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def write_teacher(root: Path, p: Plan, outdir: Path) -> list[str]:
    """Write the teacher bundle; returns the files written (relative)."""
    from .hidden import hidden_checks

    outdir = Path(outdir).resolve()
    tmp = _fresh(outdir)
    try:
        regions = parse_dir(root / "minunet" / "ops")
        sol = tmp / "solutions" / "minunet" / "ops"
        sol.mkdir(parents=True)
        for f in sorted((root / "minunet" / "ops").glob("*.py")):
            mine = [r for r in regions if Path(r.path).resolve() == f.resolve()]
            (sol / f.name).write_text(render(f.read_text(), mine, set()))
        save(build(for_ops(hidden_checks(), p.ops), p.hidden_seed, hidden=True,
                   assignment=p.assignment()), tmp / "hidden.npz")
        save(build(for_ops(public_checks(), p.ops), p.seed, assignment=p.assignment()),
             tmp / "public.npz")
        (tmp / "assignment.json").write_text(json.dumps(p.assignment(), indent=2))
        (tmp / "README.md").write_text(TEACHER_README)
        files = sorted(q.relative_to(tmp).as_posix() for q in tmp.rglob("*") if q.is_file())
        _finish(tmp, outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


TEACHER_README = """# Teacher bundle (keep it away from students)

    hidden.npz          the hidden checks: inputs, expected arrays, wrong versions' outputs
    public.npz          the public checks (the same as in the student copy)
    assignment.json     the regions handed out
    solutions/          minunet/ops with the solutions (markers removed)

Grade a student's copy with the hidden checks too (results.json for Gradescope):

    python -m minunet.coursework grade STUDENT_COPY --hidden hidden.npz --json results.json

Restore the solutions in a copy (to check the copy itself):

    cp solutions/minunet/ops/*.py STUDENT_COPY/minunet/ops/

docs/TEACHERS.md in the source checkout explains the rest.
"""
