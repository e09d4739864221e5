"""python -m minunet.coursework {make, grade, autograder-zip, catalogue, regions}."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .regions import RegionError


def _ops_list(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ops", action="append", metavar="LIST",
                   help="the ops to hand out, a comma list (repeatable); default: the "
                        "U-Net's (conv2d, upconv2x2, maxpool2x2, relu, center_crop, concat, "
                        "softmax_cross_entropy, dropout); the family's exercises, "
                        "batchnorm2d and conv2d_general, only when named")
    p.add_argument("--part", choices=("forward", "backward", "both"), default="both",
                   help="hand out the forward parts (and im2col), the backward parts (and "
                        "col2im) or both (default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the public checks' inputs")
    p.add_argument("--hidden-seed", type=int, default=1,
                   help="seed of the hidden checks' inputs (keep it from students)")
    p.add_argument("--source", type=Path, help="the source checkout to copy (default: the one "
                                               "this minunet runs from)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minunet.coursework",
        description="Gradient-checking coursework: student copies of minunet whose own ops "
                    "train the U-Net, and an autograder that names the mistake.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("make", help="write a student copy and/or the teacher bundle",
                       description="Write a complete, installable student copy of the "
                                   "project with the chosen exercises stubbed.")
    m.add_argument("outdir", nargs="?", type=Path,
                   help="the student copy to write (a new or empty folder)")
    m.add_argument("--teacher", type=Path, metavar="DIR",
                   help="also write the teacher bundle (hidden checks, solutions) to DIR")
    _plan_args(m)

    g = sub.add_parser("grade", help="grade the ops of a project",
                       description="Grade the ops of a student copy: forwards against the "
                                   "expected arrays, gradients against central differences, "
                                   "with points and a diagnosis.")
    g.add_argument("path", nargs="?", type=Path,
                   help="a project, an ops folder, or a folder of submitted ops files "
                        "(default: this project)")
    g.add_argument("--json", type=Path, metavar="FILE",
                   help="write Gradescope's results.json here (always written, even when "
                        "grading fails)")
    g.add_argument("--hidden", type=Path, metavar="BUNDLE",
                   help="the teacher bundle's hidden.npz: run the hidden checks too")
    g.add_argument("--op", action="append", metavar="NAME",
                   help="grade only this op (repeat, or a comma list)")
    g.add_argument("--timeout", type=float, default=60.0,
                   help="seconds each op may take before it fails (default 60)")
    g.add_argument("--seed", type=int,
                   help="source checkout only: public checks drawn with this seed")
    g.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="ops graded at the same time, each in its own process (default: 2, "
                        "or 1 on a 1-core machine)")

    z = sub.add_parser("autograder-zip", help="write the Gradescope autograder zip",
                       description="Write a Gradescope autograder: setup.sh, run_autograder, "
                                   "the student copy and the hidden checks.")
    z.add_argument("out", type=Path, help="the zip to write, e.g. autograder.zip")
    _plan_args(z)

    sub.add_parser("catalogue", help="list the typical mistakes and the probes, with hints",
                   description="The catalogue of typical mistakes the grader recognises "
                               "(minunet/coursework/mistakes.py) and its probes.")

    r = sub.add_parser("regions", help="list the solution regions (and check their markers)",
                       description="List the solution regions of minunet/ops; malformed "
                                   "markers are reported with file and line.")
    r.add_argument("--source", type=Path, help="the checkout (default: this one)")
    return p


def _make(a) -> int:
    from . import make

    root = make.source_root(a.source)
    if a.outdir is None and a.teacher is None:
        raise make.MakeError("say where to write: OUTDIR (the student copy) and/or --teacher DIR")
    p = make.plan(root, _ops_list(a.ops), a.part, a.seed, a.hidden_seed)
    print(f"minunet coursework make: from {root}")
    print(f"regions handed out ({len(p.regions)}): {', '.join(r.id for r in p.regions)}")
    if a.outdir is not None:
        s = make.write_copy(root, p, a.outdir)
        print(f"student copy: {a.outdir} ({s.written} files; "
              f"{s.tutorial_cells} tutorial cells left out)")
        for path, why in sorted(s.left_out.items()):
            print(f"  left out {path}: {why}")
        for rid, shows in sorted(s.withheld.items()):
            print(f"  also stubbed, not graded: {rid} (its code shows {', '.join(shows)})")
        print("  no canary token in the copy")
    if a.teacher is not None:
        files = make.write_teacher(root, p, a.teacher)
        print(f"teacher bundle: {a.teacher} ({', '.join(f for f in files if '/' not in f)}, "
              f"solutions/)")
    return 0


def _grade(a) -> int:
    from . import grade

    start = time.perf_counter()
    if a.json is not None:
        grade.remove_json(a.json)
    try:
        g = grade.run(a.path, hidden=a.hidden, ops=_ops_list(a.op), timeout=a.timeout,
                      seed=a.seed, jobs=a.jobs or grade.DEFAULT_JOBS)
    except Exception as e:
        if a.json is not None:
            grade.write_json(grade.failed_json(str(e), time.perf_counter() - start), a.json)
        raise
    print(grade.header(g))
    print(grade.report(g))
    if a.json is not None:
        grade.write_json(grade.results_json(g), a.json)
        print(f"\nwrote {a.json}")
    return 0 if g.all_passed else 1


def _zip(a) -> int:
    from . import autograder, make

    root = make.source_root(a.source)
    p = make.plan(root, _ops_list(a.ops), a.part, a.seed, a.hidden_seed)
    entries = autograder.write_zip(root, p, a.out)
    print(f"wrote {a.out}: {', '.join(entries)} ({len(p.regions)} regions)")
    return 0


def _regions(a) -> int:
    from . import make
    from .regions import parse_dir

    root = Path(a.source) if a.source else make.source_root(None)
    for r in parse_dir(root / "minunet" / "ops"):
        print(f"{r.id:32s} {Path(r.path).relative_to(root)}:{r.begin}-{r.end}")
    return 0


def _catalogue(a) -> int:
    from .mistakes import MISTAKES, PROBES

    width = max(len(m.id) for m in MISTAKES)
    print(f"{len(MISTAKES)} wrong versions (id, the region it stands in for, its hint):")
    for m in MISTAKES:
        print(f"  {m.id:{width}s}  {m.region}: {m.hint}")
    print(f"\n{len(PROBES)} probes (when no wrong version matches):")
    for k, v in PROBES.items():
        print(f"  {k:{width}s}  {v}")
    return 0


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    run = {"make": _make, "grade": _grade, "autograder-zip": _zip, "regions": _regions,
           "catalogue": _catalogue}
    try:
        return run[a.command](a)
    except BrokenPipeError:  # the output went to `head` or similar: nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except RegionError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
