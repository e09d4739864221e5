"""Regenerate the tutorials' notebooks: each NN_topic.py -> NN_topic.ipynb, executed, with outputs.

    python tutorials/make_notebooks.py              every tutorial, in order
    python tutorials/make_notebooks.py 03 05        only these (a number, a name or a path)

The percent-format .py file is the source of truth. For each one this script

1. reads it with jupytext (the cells of the notebook are exactly the cells of the file),
2. executes it top to bottom in a fresh Python kernel with nbclient, at full size
   (MINUNET_FAST is removed from the kernel's environment), with tutorials/ as the
   working directory and MINUNET_WRITE_FIGURES=1, so that T.figure writes into
   tutorials/figures/ (no other run writes there),
3. removes what belongs to this machine from the outputs (the repository's, the home
   and the temporary folder's absolute paths; the user name) and the per-cell timing,
4. checks the result (outputs present, no error, nothing machine-specific left,
   under MAX_BYTES) and only then writes NN_topic.ipynb next to the source.

A cell that raises stops the tutorial: its notebook is not written (the old one stays),
the error is printed and the script exits with status 1 after trying the others.
MINUNET_ISBI2012, when set, reaches the kernel, so the ISBI cells run with real data;
the published notebooks are made without it unless the person making them sets it.

Needs the dev extra (jupytext, nbclient, nbformat, ipykernel): pip install -e ".[dev]".
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent  # tutorials/
ROOT = HERE.parent  # the repository
MAX_BYTES = 3 * 1024 * 1024  # each notebook stays under 3 MB (figures at modest dpi)
CELL_TIMEOUT_S = 3600  # per cell; the longest full-mode cell (training) takes minutes
KERNEL = "python3"  # the ipykernel of the Python that runs this script


def tutorial_sources() -> list[Path]:
    """Every tutorial source, in order: tutorials/NN_topic.py."""
    return sorted(HERE.glob("[0-9][0-9]_*.py"))


def select(names: list[str]) -> list[Path]:
    """The sources named by number ('03'), stem ('03_softmax'), file name or path."""
    sources = tutorial_sources()
    if not names:
        return sources
    chosen = []
    for name in names:
        stem = Path(name).name.removesuffix(".py").removesuffix(".ipynb")
        hits = [p for p in sources if p.stem == stem or p.stem.split("_")[0] == stem]
        if not hits:
            known = ", ".join(p.stem for p in sources)
            raise SystemExit(f"error: no tutorial {name!r} in {HERE.name}/; known: {known}")
        chosen += [p for p in hits if p not in chosen]
    return chosen


def _replacements() -> list[tuple[str, str]]:
    """(machine-specific text, what to put instead), longest first."""
    pairs = []
    for path, label in ((HERE, "."), (ROOT, ".."), (Path(tempfile.gettempdir()), "<tmp>"),
                        (Path.home(), "~")):
        for variant in {str(path), str(path.resolve())}:
            if len(variant) > 1:
                pairs.append((variant, label))
    return sorted(pairs, key=lambda p: -len(p[0]))


def scrub(text: str) -> str:
    """Replace absolute paths of this machine (and a user name inside a path)."""
    for old, new in _replacements():
        text = text.replace(old, new)
    user = getpass.getuser()
    if len(user) >= 2:  # a user name that shows up as a folder: /home/<user>/...
        text = re.sub(rf"(?<=[/\\]){re.escape(user)}(?=[/\\])", "<user>", text)
    return text


def _scrub_outputs(nb) -> None:
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # per-cell timestamps: noise in every diff
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = scrub(out["text"])
            if "traceback" in out:
                out["traceback"] = [scrub(line) for line in out["traceback"]]
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") or mime in ("application/json",):
                    out["data"][mime] = scrub(value) if isinstance(value, str) else value


def problems(nb, size: int) -> list[str]:
    """What would make the notebook unfit to publish (tests/test_tutorials.py checks the same)."""
    found = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not any(c.get("outputs") for c in code):
        found.append("no outputs")
    counts = [c.get("execution_count") for c in code]
    if counts != list(range(1, len(code) + 1)):
        found.append(f"execution counts {counts} are not 1..{len(code)}")
    if any(o.get("output_type") == "error" for c in code for o in c.get("outputs", [])):
        found.append("an error output")
    if size > MAX_BYTES:
        found.append(f"{size / 2**20:.2f} MB, over the {MAX_BYTES / 2**20:.0f} MB cap")
    return found


def make(source: Path) -> float:
    """Execute one tutorial into its notebook; returns the seconds it took."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    nb = jupytext.read(source)
    nb.metadata.pop("jupytext", None)  # the .py file is the source; no pairing metadata
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(HERE)}},
                            record_timing=False)
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    nb.metadata.get("language_info", {}).pop("pygments_lexer", None)
    _scrub_outputs(nb)
    text = nbformat.writes(nb) + "\n"
    bad = problems(nb, len(text.encode()))
    if bad:
        raise RuntimeError(f"{source.name}: not written: {'; '.join(bad)}")
    target = source.with_suffix(".ipynb")
    tmp = target.with_suffix(".ipynb.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)  # never a half-written notebook
    print(f"{target.name}: {seconds:.0f} s, {len(text.encode()) / 2**20:.2f} MB", flush=True)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tutorials/make_notebooks.py",
        description="Execute tutorials/NN_topic.py at full size in a fresh kernel and write "
                    "NN_topic.ipynb with its outputs.")
    parser.add_argument("names", nargs="*",
                        help="tutorials to make (01, 01_convolution, or a path); default: all")
    args = parser.parse_args(argv)
    sources = select(args.names)

    os.environ.pop("MINUNET_FAST", None)  # the published notebooks run at full size
    os.environ.pop("MPLBACKEND", None)  # let the kernel use its inline backend (figures)
    os.environ["MINUNET_WRITE_FIGURES"] = "1"  # regeneration writes tutorials/figures/
    failed = []
    times = {}
    for source in sources:
        print(f"executing {source.name} ...", flush=True)
        try:
            times[source.stem] = make(source)
        except Exception as e:  # a failing cell: report it, keep the old notebook, go on
            print(f"FAILED {source.name}: {type(e).__name__}: {scrub(str(e))}", file=sys.stderr)
            failed.append(source.name)
    if times:
        print("\nfull-mode times (notebook execution):")
        for name, seconds in times.items():
            print(f"  {name:32s} {seconds / 60:5.1f} min ({seconds:.0f} s)")
    if failed:
        print(f"\n{len(failed)} failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
