"""Where things are: the installation, a project folder, its ops, its bundle and assignment.

    installation_root()      the folder that holds the running `minunet` package
    is_source_checkout(root) a checkout with solution regions and wrong versions
                             (what `make` and `autograder-zip` need)
    is_student_copy(root)    a copy made by `make` (it has data/assignment.json)
    find_ops(path)           the ops folder to grade under a project, an ops folder,
                             or a folder of loose submitted files
"""

from __future__ import annotations

import json
from pathlib import Path

OPS_FILES = ("__init__.py", "_check.py", "conv.py", "upconv.py", "pool.py", "relu.py",
             "crop.py", "softmax.py", "dropout.py")
FAMILY_FILES = ("conv_general.py", "norm.py")  # the family's exercises (submitted alone too)
DATA = Path("minunet") / "coursework" / "data"  # in a student copy: public.npz, assignment.json


def installation_root() -> Path:
    """The folder holding the running minunet package (a checkout, a copy or site-packages)."""
    import minunet

    return Path(minunet.__file__).resolve().parent.parent


def has_regions(root: Path) -> bool:
    """True when root/minunet/ops holds solution regions."""
    from .regions import BEGIN

    ops = Path(root) / "minunet" / "ops"
    return any(BEGIN in p.read_text(encoding="utf-8") for p in sorted(ops.glob("*.py")))


def is_source_checkout(root: Path) -> bool:
    """A source checkout: pyproject.toml, the ops with their solution regions."""
    root = Path(root)
    return (root / "pyproject.toml").is_file() and has_regions(root)


def is_student_copy(root: Path) -> bool:
    return (Path(root) / DATA / "assignment.json").is_file()


def assignment(root: Path) -> dict | None:
    """The assignment a student copy was made for (regions handed out), or None."""
    p = Path(root) / DATA / "assignment.json"
    return json.loads(p.read_text()) if p.is_file() else None


def public_bundle(root: Path) -> Path | None:
    p = Path(root) / DATA / "public.npz"
    return p if p.is_file() else None


IGNORED = {"__pycache__", "site-packages", "dist-packages", "node_modules", "venv", "env",
           "build", "dist"}  # folders of a submission that hold no file of the student's


def _ignored(p: Path, root: Path) -> bool:
    """p lies in a virtual environment (a folder with pyvenv.cfg), a cache, site-packages,
    a hidden folder (.venv, .git, .ipynb_checkpoints, ...) or a build folder under root."""
    rel = p.relative_to(root).parts[:-1]
    if any(part in IGNORED or part.startswith(".") for part in rel):
        return True
    return any((root.joinpath(*rel[: i + 1]) / "pyvenv.cfg").is_file() for i in range(len(rel)))


def find_ops(path: Path) -> tuple[Path, list[Path]]:
    """(a folder holding a complete ops package, or the folder of loose files; the loose
    files found) for a path given to `grade`.

    A project (PATH/minunet/ops) or a complete ops folder gives no loose files. A
    folder of submitted files (e.g. Gradescope's /autograder/submission, with conv.py,
    pool.py, ... anywhere below it) gives them as the second element; files in virtual
    environments, caches, site-packages and hidden folders are not the student's.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if (path / "minunet" / "ops" / "__init__.py").is_file():
        return path / "minunet" / "ops", []
    if path.is_dir() and all((path / f).is_file() for f in OPS_FILES):
        return path, []
    names = set(OPS_FILES + FAMILY_FILES) - {"__init__.py", "_check.py"}
    loose = sorted(p for p in (path.rglob("*.py") if path.is_dir() else [path])
                   if p.name in names and not _ignored(p, path))
    if not loose:
        raise ValueError(f"{path} holds neither a minunet project (minunet/ops/) nor any of "
                         f"the ops files ({', '.join(sorted(names))})")
    seen = {}
    for p in loose:
        if p.name in seen:
            raise ValueError(f"{path} holds {p.name} twice ({seen[p.name]} and {p}); submit "
                             f"one of each")
        seen[p.name] = p
    return path, loose
