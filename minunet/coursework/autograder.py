"""`python -m minunet.coursework autograder-zip OUT.zip`: the Gradescope autograder.

The zip holds what Gradescope unpacks into /autograder/source:

    setup.sh          installs Python and the student copy (which carries the grader)
    run_autograder    grades /autograder/submission with the hidden checks and writes
                      /autograder/results/results.json (always: a fallback if Python fails)
    minunet-copy/     the student copy of this assignment (stubs, public checks)
    hidden.npz        the hidden checks of the teacher bundle
    README.txt

Students submit their minunet/ops files (conv.py, pool.py, ... or the whole
project); files they do not submit keep the copy's stubs.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from .make import MakeError, Plan, write_copy, write_teacher

SETUP = """#!/usr/bin/env bash
# Gradescope runs this once, when it builds the autograder's image.
set -euo pipefail
apt-get update -y
apt-get install -y python3 python3-pip python3-venv
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install --upgrade pip
/autograder/venv/bin/pip install /autograder/source/minunet-copy
"""

RUN = """#!/usr/bin/env bash
# Gradescope runs this for every submission; results.json is written whatever happens.
cd /
mkdir -p /autograder/results
/autograder/venv/bin/python -m minunet.coursework grade /autograder/submission \\
    --hidden /autograder/source/hidden.npz --json /autograder/results/results.json
if [ ! -s /autograder/results/results.json ]; then
  echo '{"score": 0, "output": "the autograder could not run; please tell your teacher",' \\
       '"tests": []}' > /autograder/results/results.json
fi
"""

README = """minunet coursework autograder (Gradescope)

Upload this zip as the autograder of a programming assignment ("Zip file upload",
Ubuntu base image). Students submit their minunet/ops/*.py files, or their whole
project folder. Public checks are visible at once; hidden checks have
visibility after_due_date. Made by `python -m minunet.coursework autograder-zip`.
"""


def write_zip(root: Path, p: Plan, out: Path) -> list[str]:
    """Write the autograder zip; returns its top-level entries."""
    out = Path(out)
    if out.suffix != ".zip":
        raise MakeError(f"the autograder must be a .zip file, got {out}")
    with tempfile.TemporaryDirectory(prefix="minunet-autograder-") as t:
        tmp = Path(t)
        write_copy(root, p, tmp / "minunet-copy")
        write_teacher(root, p, tmp / "teacher")
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
            for name, text in (("setup.sh", SETUP), ("run_autograder", RUN),
                               ("README.txt", README)):
                info = zipfile.ZipInfo(name)
                info.external_attr = 0o755 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, text)
            z.write(tmp / "teacher" / "hidden.npz", "hidden.npz")
            for f in sorted((tmp / "minunet-copy").rglob("*")):
                if f.is_file():
                    z.write(f, "minunet-copy/" + f.relative_to(tmp / "minunet-copy").as_posix())
        partial.replace(out)
    return ["setup.sh", "run_autograder", "README.txt", "hidden.npz", "minunet-copy/"]
