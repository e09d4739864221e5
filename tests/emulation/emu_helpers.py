"""Helpers of the kernel emulation tests: the skip without a compiler, launch variants.

Every kernel test runs one kernel instance on one shape in several VARIANTS within one
emulated program run: the launcher's own geometry (backend/gpu.py's *_geometry functions)
in index order and in reverse, one block (threads shuffled), and a few blocks in all three
orders, so that every grid-stride loop wraps. All variants must give the same bits (else a
race, or a grid-stride loop that depends on the grid); the first is then compared with the
CPU twin and the plain op.
"""

from __future__ import annotations

import numpy as np
import pytest

from minunet.backend import emulate

NO_COMPILER = "no C++ compiler (g++, or set CXX): the CUDA kernels cannot be emulated here"


def skip_without_compiler():
    if emulate.compiler() is None:
        pytest.skip(NO_COMPILER, allow_module_level=True)


def variants(grid):
    """(label, grid, order) for one launch geometry: the launcher's, 1 block, a few blocks."""
    one = (1,) * len(grid)
    few = (3, 2)[: len(grid)] if len(grid) == 2 else (3,)
    return [("launcher", tuple(grid), "forward"), ("launcher", tuple(grid), "reverse"),
            ("1 block", one, "shuffle"), ("few blocks", few, "forward"),
            ("few blocks", few, "reverse"), ("few blocks", few, "shuffle")]


def run_variants(prog, grid, block, make, seed=7, grid_dependent=None):
    """Run make(grid, block, order, seed) -> (launches, outputs) for every variant, in one
    program run; require every variant's outputs to equal the first's bit for bit; return
    the first's outputs (the launcher's geometry, index order).

    grid_dependent: {output index: rtol} for outputs whose rounding depends on the grid by
    design (the softmax loss: one partial sum per block); across grids those are compared
    with that tolerance, and bit for bit only among the orders of one grid.
    """
    grid_dependent = grid_dependent or {}
    runs, launches = [], []
    for label, g, order in variants(grid):
        ls, outs = make(g, block, order, seed)
        launches += ls
        runs.append((label, g, order, outs))
    prog.run(launches)
    for label, g, order, outs in runs[1:]:
        same_grid = next(r for r in runs if r[1] == g)  # the first run on this grid
        for i, b in enumerate(outs):
            ref = same_grid if i in grid_dependent else runs[0]  # bits: same grid or any grid
            assert ref[3][i].tobytes() == b.tobytes(), (
                f"output {i} with {label} (grid {g}, {order} order) differs from {ref[0]} "
                f"(grid {ref[1]}, index order): a race or a grid-stride bug")
            if i in grid_dependent:
                np.testing.assert_allclose(b, runs[0][3][i], rtol=grid_dependent[i], err_msg=(
                    f"output {i} with {label} (grid {g}) vs the launcher's geometry"))
    return runs[0][3]


def bits_equal(got, ref, what):
    """got and ref hold the same bits (NaN payloads and -0.0 included) and shape."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape and got.dtype == ref.dtype, \
        f"{what}: {got.dtype} {got.shape} != {ref.dtype} {ref.shape}"
    if got.tobytes() != ref.tobytes():
        bad = np.flatnonzero(got.reshape(-1).view(np.uint8) != ref.reshape(-1).view(np.uint8))
        raise AssertionError(f"{what}: {bad.size} bytes differ, first at byte {bad[0]}")


def i32(*v):
    return tuple(np.int32(x) for x in v)
