"""backend/heap.py: after keep_freed_memory, a step's worth of arrays (ten of 8 MB, alive
together, then freed, like a step's activations) comes back from the same heap pages the
next time (no page faults); with glibc's defaults the heap's free top (80 MB, over its
trim threshold of twice the largest freed block) goes back to the OS and each array is
faulted in anew, 2,048 pages each."""

import os
import platform
import subprocess
import sys

import pytest

CODE = """
import resource, numpy as np
from minunet.backend import heap
kept = heap.keep_freed_memory()
def step():
    held = [np.ones(2**20) for _ in range(10)]  # 10 x 8 MB alive together
    del held
for _ in range(3):  # warm up (the heap grows once)
    step()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""


def _faults(env_value):
    env = {"MINUNET_KEEP_FREED": env_value, "NUMPY_MADVISE_HUGEPAGE": "0"}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         check=True, timeout=120, env={**os.environ, **env}).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the thresholds are glibc's")
def test_freed_arrays_are_reused_without_page_faults():
    kept, faults = _faults("1")
    assert kept and faults < 100  # 5 x 10 x 8 MB: 102,400 pages if each were fresh
    kept, faults = _faults("0")  # MINUNET_KEEP_FREED=0: malloc as it was
    assert not kept and faults > 50_000


def test_it_is_switched_on_by_the_cpu_workers(monkeypatch):
    from minunet.backend import threads

    calls = []
    monkeypatch.setattr(threads, "keep_freed_memory", lambda: calls.append(1))
    threads.parallel_for([1, 2], lambda item, w: None)
    assert calls == [1]
