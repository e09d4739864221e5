"""Fixtures of the kernel emulation tests: every kernels/*.cu built once per session.

`programs` builds each kernel file with AddressSanitizer and UBSan (minunet/backend/emulate.py),
two builds at a time, into a temporary folder of this session, and hands out the Programs by
file name. Without a C++ compiler the tests skip (each module says so at import).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from minunet.backend import emulate, gpu


@pytest.fixture(scope="session")
def emu_cache(tmp_path_factory):
    """The folder where this session keeps its emulation builds."""
    return tmp_path_factory.mktemp("emu-builds")


@pytest.fixture(scope="session")
def programs(emu_cache):
    """file name -> emulate.Program, built with sanitizers (the compiles run two at a time)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        built = pool.map(lambda f: emulate.Program(f, sanitize=True, cache_dir=emu_cache),
                         gpu.KERNEL_FILES)
        return dict(zip(gpu.KERNEL_FILES, built, strict=True))
