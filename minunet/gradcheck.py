"""python -m minunet.gradcheck: check every hand-written backward against central differences.

Argument parsing plus calls: the machinery and the checks are minunet/nn/gradcheck.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from minunet import backend
from minunet.nn.gradcheck import (
    FLOOR_FRACTION_FLOAT32,
    REL_ERROR_FLOOR,
    STEP_FLOAT32,
    STEP_FLOAT64,
    THRESHOLD_FLOAT32,
    THRESHOLD_FLOAT32_EXACT,
    format_table,
    op_checks,
    op_names,
    run_checks,
    summary_line,
)


def _parse_ops(values: list[str] | None, parser: argparse.ArgumentParser,
               family: bool) -> list[str] | None:
    if not values:
        return None
    names = [s.strip() for v in values for s in v.split(",") if s.strip()]
    valid = op_names(family)
    unknown = [s for s in names if s not in valid]
    if unknown:
        parser.error(f"unknown op {', '.join(repr(s) for s in unknown)}; "
                     f"valid ops: {', '.join(valid)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """python -m minunet.gradcheck: check every op's backward; exit 1 if any fails."""
    family = _family_available()
    parser = argparse.ArgumentParser(
        prog="python -m minunet.gradcheck",
        description="Check every hand-written backward against central differences (one "
                    "row per op and input): the U-Net's ops, then the U-Net family's ops and "
                    "losses.")
    parser.add_argument("--op", action="append", metavar="NAME",
                        help="check only this op (repeat, or a comma list); "
                             "default: all. Valid: " + ", ".join(op_names(family)))
    parser.add_argument("--unet-only", action="store_true",
                        help="only the 2015 U-Net's ops, not the family's")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="float64 (default; the real check) or float32 (looser)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the GPU when there is one, else the CPU")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--ops", choices=("plain", "fast"), default="plain",
                        help="plain (default): the lesson's whole-array ops in minunet/ops; "
                             "fast: the chunked, threaded, fused ops in minunet/fast that the "
                             "network runs by default")
    args = parser.parse_args(argv)

    family = family and not args.unet_only
    selected = _parse_ops(args.op, parser, family)
    try:
        device = backend.resolve_device(args.device)
    except RuntimeError as e:
        parser.error(str(e))

    h = STEP_FLOAT64 if args.dtype == "float64" else STEP_FLOAT32
    where = "cuda (CuPy)" if device == "cuda" else "cpu (NumPy)"
    module = "minunet/ops" if args.ops == "plain" else "minunet/fast"
    print(f"minunet gradient check: {args.ops} ops ({module}), {args.dtype} on {where}, "
          f"seed {args.seed}")
    if args.device == "auto" and device == "cpu":
        print(f"(--device auto chose the CPU: {backend.gpu_status().reason})")
    print(f"central differences with step h = {h:g}; "
          f"rel error = max |a - n| / max(|a| + |n|, {REL_ERROR_FLOOR:g})")
    if args.dtype == "float32":
        print(f"float32 keeps only ~7 digits, so: a larger step (STEP_FLOAT32 = "
              f"{STEP_FLOAT32:g}), looser thresholds (THRESHOLD_FLOAT32 = {THRESHOLD_FLOAT32:g}, "
              f"THRESHOLD_FLOAT32_EXACT = {THRESHOLD_FLOAT32_EXACT:g}) and a rel error floor "
              f"of {FLOOR_FRACTION_FLOAT32:g} * max |n|; only the float64 check proves a "
              f"gradient right")
    print()

    if not family and not args.unet_only:
        print("(the U-Net family's ops are not in this copy: checking the U-Net's)")
    if args.dtype == "float32":
        skipped = [c.name for c in op_checks(args.ops, family) if not c.float32
                   and (selected is None or c.op in selected)]
        if skipped:
            print(f"no float32 row for {', '.join(skipped)}: see minunet/nn/gradcheck_family.py")
    results = run_checks(selected, args.dtype, device, args.seed, args.ops, family)
    print(format_table(results))
    print()
    print(summary_line(results))
    return 0 if all(r.passed for r in results) else 1


def _family_available() -> bool:
    """Whether the family's ops are here (a coursework copy leaves some out)."""
    try:
        op_checks(family=True)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
