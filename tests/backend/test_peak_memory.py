"""backend.peak_rss_mb counts this process's own pages: a child started by a process that
holds 300 MB does not report them (ru_maxrss would, on Linux, across fork and exec)."""

import subprocess
import sys

import numpy as np
import pytest

from minunet import backend


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_peak_memory_is_the_processs_own():
    held = np.ones(300 * 2**20 // 8)  # 300 MB touched in this process
    child = subprocess.run(
        [sys.executable, "-c", "from minunet import backend; print(backend.peak_rss_mb())"],
        capture_output=True, text=True, check=True, timeout=120)
    assert float(child.stdout) < 200  # numpy and numba alone, not this process's 300 MB
    assert backend.peak_rss_mb() >= 300 and held.sum() > 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="clear_refs is Linux's")
def test_reset_peak_starts_the_high_water_mark_over():
    """After a 300 MB array is freed, reset_peak_rss brings the peak back to about the
    current resident memory: what comes next is measured on its own (bench's step peak)."""
    code = ("import numpy as np; from minunet import backend\n"
            "a = np.ones(300 * 2**20 // 8); before = backend.peak_rss_mb(); del a\n"
            "ok = backend.reset_peak_rss(); print(before, backend.peak_rss_mb(), ok)")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=120)
    before, after, ok = child.stdout.split()
    assert ok == "True" and float(before) >= 300 and float(after) < float(before) - 250
