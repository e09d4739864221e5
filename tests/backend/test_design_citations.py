"""Citations of the design contract are true: every `docs/DESIGN.md, "<section>"` in the code,
the kernels, the tests, the tutorials and the README names a heading of docs/DESIGN.md, and no
citation points at a DESIGN.md elsewhere (the contract lives in this repository).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DESIGN = REPO / "docs" / "DESIGN.md"
_CITATION = re.compile(r"""docs/DESIGN\.md, (?:"([^"\n]+)"|'([^'\n]+)')""")
_BARE = re.compile(r"(?<!docs/)DESIGN\.md")


def _sources() -> list[Path]:
    files = [REPO / "README.md"]
    for folder, patterns in (("minunet", ("*.py",)), ("kernels", ("*.cu",)),
                             ("tests", ("*.py",)), ("tutorials", ("*.py", "*.md"))):
        for pattern in patterns:
            files += sorted((REPO / folder).rglob(pattern))
    return [f for f in files if f.is_file() and f != Path(__file__).resolve()]


def _headings() -> set[str]:
    return {line.lstrip("#").strip() for line in DESIGN.read_text().splitlines()
            if line.startswith("#")}


def test_design_contract_is_in_the_repository():
    assert DESIGN.is_file()
    for section in ("The paper's numbers", "One-way data flow", "Two doors: lesson and speed",
                    "Tensors", "Op pairs and caches", "Dtypes", "Gradients accumulate",
                    "Parameter names and layouts", "Checkpoints", "Loss", "Max-pool ties",
                    "Gradient checks", "Kernel headers"):
        assert section in _headings(), f"docs/DESIGN.md has no section {section!r}"


def test_every_design_citation_names_a_section():
    headings, bad = _headings(), []
    for path in _sources():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            where = f"{path.relative_to(REPO)}:{n}"
            bad += [f"{where} cites section {section!r}, which docs/DESIGN.md does not have"
                    for section in (a or b for a, b in _CITATION.findall(line))
                    if section not in headings]
            if _BARE.search(line):
                bad.append(f"{where} cites 'DESIGN.md': write docs/DESIGN.md and the section")
    assert not bad, "\n".join(bad)
