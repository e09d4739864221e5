"""`python -m minunet.coursework autograder-zip OUT.zip`: the Gradescope autograder.

The zip holds what Gradescope unpacks into /autograder/source:

    setup.sh          installs Python and the student copy (which carries the grader)
    run_autograder    grades /autograder/submission with the hidden checks and writes
                      /autograder/results/results.json (always: a fallback if Python fails)
    minunet-copy/     the student copy of this assignment (stubs, public checks)
    hidden.npz        the hidden checks of the teacher bundle
    solutions/        the reference ops (the timed check's backward is timed against them)
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
# Gradescope runs this once, as root, when it builds the autograder's image.
# Base image: Ubuntu 22.04, whose python3 is 3.10; minunet needs Python >= 3.11.
set -euo pipefail
apt-get update -y
if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  PY=python3
  apt-get install -y python3-venv
else
  apt-get install -y python3.11 python3.11-venv || {
    apt-get install -y software-properties-common
    add-apt-repository -y ppa:deadsnakes/ppa && apt-get update -y
    apt-get install -y python3.11 python3.11-venv
  }
  PY=python3.11
fi
"$PY" -m venv /autograder/venv
/autograder/venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11), sys.version'
/autograder/venv/bin/pip install --upgrade pip
/autograder/venv/bin/pip install /autograder/source/minunet-copy
# the venv for everyone (the worker runs as nobody); the hidden checks for root only
chmod -R a+rX /autograder/venv
chmod -R go-rwx /autograder/source
"""

RUN = """#!/usr/bin/env bash
# Gradescope runs this for every submission, as root. Only the grader writes
# results.json; the student's code runs in workers as user nobody, who can read
# neither /autograder/source (the hidden checks, the solutions) nor write to
# /autograder/results. If the grader does not finish (killed, crashed), whatever
# is in results.json is thrown away and a score of 0 is written with the reason.
cd /
A=${AUTOGRADER_ROOT:-/autograder}
PY=${AUTOGRADER_PYTHON:-$A/venv/bin/python}
mkdir -p "$A/results"
chmod 755 "$A/results"
chmod -R go-rwx "$A/source"
rm -f "$A/results/results.json"
"$PY" -m minunet.coursework grade "$A/submission" --hidden "$A/source/hidden.npz" \\
    --json "$A/results/results.json"
code=$?
if [ "$code" -gt 2 ] || [ ! -s "$A/results/results.json" ]; then
  rm -f "$A/results/results.json"
  echo '{"score": 0, "output": "the autograder did not finish (exit code '"$code"');' \\
       'please tell your teacher", "tests": []}' > "$A/results/results.json"
fi
"""

README = """minunet coursework autograder (Gradescope)

Upload this zip as the autograder of a programming assignment ("Zip file upload",
Ubuntu 22.04 base image). Students submit their minunet/ops/*.py files, or their
whole project folder. Public checks are visible at once; hidden checks have
visibility after_due_date, and no top-level score is given, so the total is not
shown before the due date. solutions/ is the reference the timed check is timed
with. Made by `python -m minunet.coursework autograder-zip`.
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
            for f in sorted((tmp / "teacher" / "solutions").rglob("*.py")):
                z.write(f, "solutions/" + f.relative_to(tmp / "teacher" / "solutions").as_posix())
            for f in sorted((tmp / "minunet-copy").rglob("*")):
                if f.is_file():
                    z.write(f, "minunet-copy/" + f.relative_to(tmp / "minunet-copy").as_posix())
        partial.replace(out)
    return ["setup.sh", "run_autograder", "README.txt", "hidden.npz", "solutions/",
            "minunet-copy/"]
