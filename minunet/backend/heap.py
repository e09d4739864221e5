"""Keep freed memory for the next training step instead of handing it back to the OS.

A training step allocates the same arrays every time (each layer's output, its cache,
the gradients) and frees them by the end of the step. glibc's malloc serves a block
from a memory map of its own above its mmap threshold (128 KB at first, raised as such
blocks are freed, up to 32 MB) and gives the top of its heap back to the OS past its
trim threshold (twice the mmap threshold): so each step's arrays of a few MB come from
fresh pages, and each fresh 4 KB page is a page fault (about 3 us here, zeroing
included). At 316/8 on the CPU that was 5,300 faults a step, about 15% of its CPU time.

`keep_freed_memory` fixes both thresholds: blocks up to MMAP_BYTES (32 MB, glibc's
largest) come from the heap, and the heap keeps up to TRIM_BYTES of free memory at its
top. Measured on a 2-core AMD EPYC (issue 28; one step, medians of 60 or 8 steps, CPU
time): 316/8 5,339 -> 1 faults a step, 74 -> 63 ms, peak 205 -> 204-207 MB; 572/16 8,229
-> 1 faults, 0.80 -> 0.76 s, peak 424 -> 426 MB; 572/64 (blocks over 32 MB are maps
anyway) 49,000 -> 33,000 faults, peak 1289 -> 1299 MB. What it costs: the process stays
at about its peak between steps (up to TRIM_BYTES of free heap) rather than shrinking.

The settings are the process's, so they are made once, by the first parallel_for of the
CPU's fast door (backend/threads.py), and only under glibc; MINUNET_KEEP_FREED=0 leaves
malloc as it was.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

MMAP_BYTES = 32 * 2**20  # glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_BYTES = 256 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (module doc), once. True if they were set;
    False elsewhere than glibc, when MINUNET_KEEP_FREED=0, or if mallopt refused."""
    if os.environ.get("MINUNET_KEEP_FREED", "1").strip() == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 on an invalid value
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) & bool(mallopt(_M_TRIM_THRESHOLD,
                                                                       TRIM_BYTES))
