"""The emulation harness catches seeded bugs: each applied to a copy of a kernel's source.

    off-by-one in a bound, read (col2im: xx > Wo)      wrong values -> differs from the CPU twin
    off-by-one in a bound, write (im2col: q <= L)      AddressSanitizer: heap-buffer-overflow
    a missing __syncthreads() (softmax's block_sum)    a race -> thread orders give other bits
    a write past the end (upconv_scatter: dst[q + 1])  AddressSanitizer: heap-buffer-overflow

The copies are built with sanitizers like the real files (two builds at a time) and run with
the same checks as tests/emulation/test_kernels.py, which the unmodified kernels pass.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from emu_helpers import bits_equal, i32, run_variants, skip_without_compiler

from minunet.backend import cpu, emulate, gpu

skip_without_compiler()

SEEDED = {  # file -> [(original text, seeded bug)], each original found exactly once
    "im2col.cu": [
        ("if (xx < 0 || xx >= Wo) continue;", "if (xx < 0 || xx > Wo) continue;"),
        ("q < L; q += stride) {\n            const int y = (int)q / Wo;       // output row",
         "q <= L; q += stride) {\n            const int y = (int)q / Wo;       // output row"),
    ],
    "softmax_xent.cu": [("    sh[threadIdx.x] = v;\n    __syncthreads();\n",
                         "    sh[threadIdx.x] = v;\n")],
    "upconv.cu": [("dst[q] = src[tap * HW", "dst[q + 1] = src[tap * HW")],
}


def seeded_source(file):
    src = (gpu.kernel_dir() / file).read_text()
    for old, new in SEEDED[file]:
        assert src.count(old) == 1, f"{file}: the text to seed a bug into is not there once"
        src = src.replace(old, new)
    return src


@pytest.fixture(scope="module")
def buggy(emu_cache):
    """file -> Program of the seeded copy (AddressSanitizer + UBSan)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        built = pool.map(lambda f: emulate.Program(f, source=seeded_source(f), sanitize=True,
                                                   cache_dir=emu_cache), SEEDED)
        return dict(zip(SEEDED, built, strict=True))


def test_off_by_one_read_bound_differs_from_twin(buggy, rng):
    C, H, W, k, y0, y1 = 2, 9, 11, 3, 1, 6
    L = (y1 - y0) * (W - k + 1)
    cols = rng.standard_normal((C * k * k, L))
    dx0 = rng.standard_normal((C, H, W))

    def make(grid, block, order, seed):
        dx = dx0.copy()
        return [("col2im<double>", grid, block, (cols, dx, *i32(C, H, W, k, y0, y1)),
                 order, seed)], (dx,)

    (dx,) = run_variants(buggy["im2col.cu"], *gpu.col2im_geometry(C, H, W, k, y0, y1), make)
    with pytest.raises(AssertionError, match="col2im vs CPU twin"):
        bits_equal(dx, cpu.col2im(cols, k, y0, y1, dx0.copy()), "col2im vs CPU twin")


def test_off_by_one_write_bound_is_an_asan_error(buggy, rng):
    C, H, W, k, y0, y1 = 2, 9, 11, 3, 1, 6
    x = rng.standard_normal((C, H, W)).astype(np.float32)
    out = np.empty((C * k * k, (y1 - y0) * (W - k + 1)), dtype=np.float32)
    with pytest.raises(emulate.EmulationError, match="AddressSanitizer: heap-buffer-overflow"):
        buggy["im2col.cu"].launch("im2col<float>", *gpu.im2col_geometry(C, H, W, k, y0, y1),
                                  (x, out, *i32(C, H, W, k, y0, y1)))


def test_missing_syncthreads_is_a_race(buggy, rng):
    N, K, H, W = 1, 3, 16, 20
    z = rng.standard_normal((N, K, H, W))
    labels = rng.integers(0, K, (N, H, W)).astype(np.int32)
    w = rng.random((N, H, W))
    npix = N * H * W

    def make(grid, block, order, seed):
        probs, partial, loss = np.empty_like(z), np.empty(grid[0]), np.zeros(())
        return [("softmax_xent_forward<double, int>", grid, block,
                 (z, labels, w, probs, partial, np.int32(K), np.int64(H * W), np.int64(npix)),
                 order, seed),
                ("sum_partials<double>", *gpu.sum_partials_geometry(),
                 (partial, np.int32(grid[0]), loss), order, seed)], (probs, loss)

    with pytest.raises(AssertionError, match="a race"):
        run_variants(buggy["softmax_xent.cu"], *gpu.softmax_xent_forward_geometry(npix), make,
                     grid_dependent={1: 1e-13})


def test_write_past_the_end_is_an_asan_error(buggy, rng):
    N, Cout, H, W = 1, 2, 3, 5
    cols = rng.standard_normal((N, Cout, 2, 2, H, W))
    b = rng.standard_normal(Cout)
    out = np.empty((N, Cout, 2 * H, 2 * W))
    with pytest.raises(emulate.EmulationError, match="AddressSanitizer: heap-buffer-overflow"):
        buggy["upconv.cu"].launch("upconv_scatter<double>", *gpu.upconv_geometry(N * Cout, H, W),
                                  (cols, b, out, np.int64(N * Cout), *i32(Cout, H, W)))
