"""python -m minunet.gradcheck: check every hand-written backward against central differences.

Argument parsing plus calls: the machinery and the checks are minunet/nn/gradcheck.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from minunet import backend
from minunet.models import registry
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
from minunet.nn.opspec import STEP_CONV_RELU, STEP_KINKED, STEP_LINEAR


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
    parser.add_argument("--arch", metavar="NAME",
                        help="check a whole network's backward instead (float64, along random "
                             "directions of all its parameters, in training mode): one of "
                             + ", ".join(registry.names()))
    parser.add_argument("--model", default="", metavar="OPTS",
                        help="with --arch: the architecture's options ('base=4,depth=2'); "
                             "default: its small test configuration")
    parser.add_argument("--size", type=int, default=0,
                        help="with --arch: the input side (default: the smallest valid side "
                             ">= 32 and >= twice the network's grid that its loss takes)")
    args = parser.parse_args(argv)
    if args.arch:
        try:
            return whole_network(args.arch, args.model, args.size, args.ops, args.seed)
        except ValueError as e:
            parser.error(str(e))

    family = family and not args.unet_only
    selected = _parse_ops(args.op, parser, family)
    try:
        device = backend.resolve_device(args.device)
    except RuntimeError as e:
        parser.error(str(e))

    where = "cuda (CuPy)" if device == "cuda" else "cpu (NumPy)"
    module = "minunet/ops" if args.ops == "plain" else "minunet/fast"
    print(f"minunet gradient check: {args.ops} ops ({module}), {args.dtype} on {where}, "
          f"seed {args.seed}")
    if args.device == "auto" and device == "cpu":
        print(f"(--device auto chose the CPU: {backend.gpu_status().reason})")
    steps = (f"each op's own: {STEP_LINEAR:g} if linear in each input, {STEP_KINKED:g} ReLU "
             f"and max-pool, {STEP_CONV_RELU:g} conv with its ReLU, {STEP_FLOAT64:g} smooth "
             "ops (minunet/nn/opspec.py)"
             if args.dtype == "float64" else f"{STEP_FLOAT32:g}")
    print(f"central differences with step h = {steps}; "
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


def whole_network(arch: str, options: str, size: int, ops: str, seed: int) -> int:
    """--arch: the whole-network float64 gradient check of one architecture (module doc of
    minunet/nn/gradcheck.py, `model_gradcheck`); exit 1 if a direction fails."""
    import dataclasses

    import numpy as np

    from minunet.nn.gradcheck import THRESHOLD_DIRECTIONAL_FLOAT64, model_gradcheck
    from minunet.nn.model import LOSS_MIN_OUTPUT
    from minunet.training.config import parse_model_options

    cls = registry.get(arch)
    common = {"dtype": "float64", "ops": ops}
    if options:
        config = registry.config_for(arch, {**parse_model_options(options, cls.config_class),
                                            **common})
    else:
        try:
            config = cls.test_config(**common)
        except NotImplementedError:
            config = registry.config_for(arch, common)
    geometry = registry.geometry(config)
    least = LOSS_MIN_OUTPUT.get(config.loss, 1)
    # at least 2 x 2 pixels at the deepest level: a BatchNorm over 2 values per channel (a
    # 1 x 1 map, batch 2) maps them to -1 and +1 whatever they are, and the central difference
    # of so curved a function is off by its third derivative
    size = size or next(s for s in range(max(32, 2 * geometry.grid), 4096)
                        if geometry.is_valid(s) and geometry.output_size(s) >= least)
    if not geometry.is_valid(size):
        raise ValueError(f"--size: {geometry.invalid_size_message(size)}")
    rng = np.random.default_rng(seed)
    model = registry.build_model(config, seed=seed)
    for k in model.params:  # non-zero biases and shifts: no bias gradient is trivially exact
        if k.endswith(".bias"):
            model.params[k] = rng.standard_normal(model.params[k].shape) * 0.1
    n = geometry.output_size(size)
    x = rng.standard_normal((2, config.in_channels, size, size))
    labels = rng.integers(0, config.n_classes, (2, n, n))
    weights = rng.random((2, n, n)) + 0.5
    fields = ", ".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config)
                       if f.name not in ("dtype", "ops", "arch"))
    print(f"minunet whole-network gradient check: {arch} ({fields}), {model.num_parameters():,}"
          f" parameters, {ops} ops, float64, input 2x{config.in_channels}x{size}x{size}, "
          f"loss {config.loss}, training mode, seed {seed}")
    print("<grad L, d> (the backward) against (L(p + h d) - L(p - h d)) / 2h along random unit "
          f"directions d of all parameters; pass: rel error <= {THRESHOLD_DIRECTIONAL_FLOAT64:g}")
    results = model_gradcheck(model, x, labels, weights, dropout_key=seed + 1, seed=seed)
    print(f"{'direction':>10}{'backward':>16}{'difference':>16}{'rel error':>12}{'step':>10}")
    for r in results:
        print(f"{r.direction:>10}{r.analytic:>16.8e}{r.numeric:>16.8e}{r.rel_error:>12.2e}"
              f"{r.step:>10.1e}  {'ok' if r.passed else 'FAIL'}")
    ok = all(r.passed for r in results)
    print(f"\n{arch}: {sum(r.passed for r in results)} of {len(results)} directions pass"
          + ("" if ok else " - the network's backward disagrees with its forward"))
    return 0 if ok else 1


def _family_available() -> bool:
    """Whether the family's ops are here (a coursework copy leaves some out)."""
    try:
        op_checks(family=True)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
