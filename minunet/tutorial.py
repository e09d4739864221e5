"""What the walk-throughs in tutorials/ share: the mode, the banner, the data path, figures.

Every tutorial starts with

    from minunet.tutorial import setup
    T = setup("01_convolution")

which prints the first output of the notebook (the minunet version, the device
and the mode) and returns a `Tutorial`:

    T.fast              True in fast mode (MINUNET_FAST=1): smaller sizes, fewer iterations,
                        so that CI can run every tutorial as a script in seconds
    T.pick(full, fast)  the full-mode value or the fast-mode one
    T.isbi              the ISBI 2012 folder (images/, labels/) from MINUNET_ISBI2012, or None
    T.gpu               True when CuPy sees a GPU
    T.figure(fig, name) save a matplotlib figure as tutorials/figures/<tutorial>_<name>.png
                        when the notebooks are regenerated (make_notebooks.py sets
                        MINUNET_WRITE_FIGURES=1) and return its path; any other run, full or
                        fast, saves nothing (returns None), so it never overwrites the
                        published figures; the cell then shows it with plt.show()
    T.getsource(obj)    the source of a function or class, as inspect.getsource gives it,
                        without the coursework's solution markers (`# BEGIN SOLUTION ...`,
                        `# END SOLUTION`, `# canary: ...`), which mean nothing to a reader
    T.seed              the fixed seed every random draw of a tutorial starts from

Real data is reached only through a path the reader gives (the environment
variable MINUNET_ISBI2012), never through a path inside the repository's parents.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from minunet import __version__, backend

FAST_ENV = "MINUNET_FAST"  # "1": fast mode
ISBI_ENV = "MINUNET_ISBI2012"  # a folder with images/NN.png and labels/NN.png
FIGURES_ENV = "MINUNET_WRITE_FIGURES"  # "1": T.figure writes tutorials/figures/ (regeneration)
# the coursework's markers in minunet/ops (coursework/regions.py finds them in the package's
# source; the printed lesson leaves them out)
MARKER_LINE = re.compile(r"^\s*# (BEGIN SOLUTION|END SOLUTION|canary:)")


def _tutorials_dir() -> Path:
    """The folder of the running tutorial: the script's folder, or the notebook's (its cwd)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path and "ipykernel" not in sys.modules:
        return Path(path).resolve().parent
    return Path.cwd()


@dataclass
class Tutorial:
    name: str  # e.g. "01_convolution"
    fast: bool  # fast mode (MINUNET_FAST=1)
    isbi: Path | None  # the ISBI 2012 folder, or None
    gpu: bool  # a CUDA GPU is usable
    figures: Path | None  # where T.figure saves; None: it saves nothing
    seed: int = 20150518  # U-Net's arXiv date

    def pick(self, full, fast):
        """`full` in full mode, `fast` in fast mode."""
        return fast if self.fast else full

    def figure(self, fig, name: str) -> Path | None:
        """Save `fig` as <figures>/<tutorial>_<name>.png (fixed dpi) when figures are written
        (regeneration); returns the path, or None when nothing was saved."""
        if self.figures is None:
            return None
        self.figures.mkdir(parents=True, exist_ok=True)
        path = self.figures / f"{self.name}_{name}.png"
        fig.savefig(path, dpi=80, bbox_inches="tight")
        return path

    @staticmethod
    def getsource(obj) -> str:
        """inspect.getsource(obj) without the coursework's solution-marker lines."""
        return "".join(line for line in inspect.getsource(obj).splitlines(keepends=True)
                       if not MARKER_LINE.match(line))


def setup(name: str) -> Tutorial:
    """Print the banner (version, device, mode) and return the tutorial's settings."""
    fast = os.environ.get(FAST_ENV, "").strip() not in ("", "0")
    isbi = os.environ.get(ISBI_ENV, "").strip()
    isbi_path = Path(isbi).expanduser() if isbi else None
    if isbi_path is not None and not (isbi_path / "labels").is_dir():
        print(f"note: {ISBI_ENV}={isbi} has no labels/ folder; the ISBI cells will be skipped")
        isbi_path = None
    write = os.environ.get(FIGURES_ENV, "").strip() not in ("", "0")
    figures = _tutorials_dir() / "figures" if write and not fast else None
    gpu = backend.gpu_status().available
    mode = ("fast (MINUNET_FAST=1: small sizes and few iterations; numbers differ from the "
            "text's full-mode ones)" if fast else "full")
    print(f"minunet {__version__} | {backend.device_info()} | mode: {mode}")
    if isbi_path is None:
        print(f"ISBI 2012 data: not given (set {ISBI_ENV}=/path/to/isbi2012 to run those cells)")
    else:
        print(f"ISBI 2012 data: found through {ISBI_ENV}")  # no absolute path in outputs
    return Tutorial(name, fast, isbi_path, gpu, figures)
