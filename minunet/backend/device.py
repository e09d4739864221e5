"""The array module and the device: NumPy on the CPU, CuPy on the GPU.

The plain ops in minunet/ops import only this module: `xp = xp_of(x)` gives
numpy or cupy from the arrays an op was handed, so one body of array code runs
on either, and nothing reads a global device flag. Everything else here is for
the command-line tools: is there a GPU (`gpu_status`, `device_info`), which
device a run uses (`resolve_device`), and moving arrays there and back
(`to_device`, `to_host`) -- in one place per command, never inside a step.

CuPy is imported lazily, in `_cupy()` and `gpu_status()` only, when a CuPy array
or the GPU is asked for; so `import minunet` needs neither CuPy nor a GPU and
stays fast. This module imports nothing else of minunet.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = [
    "is_gpu_array", "xp_of", "GpuStatus", "gpu_status", "device_info", "resolve_device",
    "to_device", "to_host", "is_out_of_memory", "set_tf32", "machine", "blas_kernel",
]


def is_gpu_array(a) -> bool:
    """True for a CuPy array, without importing CuPy."""
    return type(a).__module__.split(".")[0] == "cupy"


def xp_of(*arrays):
    """The array module (numpy or cupy) of the given arrays; they must agree.

    Python scalars and None are ignored (numpy when no array is given). Raises
    ValueError for a mix of host and device arrays, naming the fix.
    """
    kinds = {is_gpu_array(a) for a in arrays if isinstance(a, np.ndarray) or is_gpu_array(a)}
    if len(kinds) > 1:
        raise ValueError(
            "got a mix of NumPy (host) and CuPy (device) arrays; move them all to one place "
            "with minunet.backend.to_device(...) or to_host(...)"
        )
    if kinds == {True}:
        return _cupy()
    return np


@functools.lru_cache(maxsize=1)
def _cupy():
    """The cupy module, imported on first use."""
    import cupy  # the only `import cupy` that minunet runs, besides gpu_status's probe

    return cupy


@dataclass(frozen=True)
class GpuStatus:
    """Whether a CUDA GPU can be used, and if not, why not (readable)."""

    available: bool
    reason: str
    name: str = ""
    memory_bytes: int = 0
    compute_capability: str = ""


MIN_CUPY = (14, 0)  # the plain max-pool backward uses cupy.put_along_axis, new in CuPy 14


@functools.lru_cache(maxsize=1)
def gpu_status() -> GpuStatus:
    """Probe CuPy and the CUDA device once; never raises."""
    try:
        with warnings.catch_warnings():  # a warning of CuPy's own import (a duplicate install,
            warnings.simplefilter("default")  # a library it could not preload) is shown once,
            import cupy  # never turned into an error that would hide the GPU
    except ImportError:
        return GpuStatus(False, "CuPy is not installed (pip install 'minunet[cuda12]' or "
                                "'minunet[cuda13]' to match your CUDA driver)")
    except Exception as e:  # a broken CuPy install raises many things
        return GpuStatus(False, f"CuPy failed to import: {type(e).__name__}: {e}")
    version = tuple(int(p) for p in cupy.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_CUPY:
        return GpuStatus(False, f"CuPy {cupy.__version__} is too old, minunet needs CuPy >= "
                                f"{MIN_CUPY[0]} (pip install -U 'minunet[cuda12]' or "
                                "'minunet[cuda13]')")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return GpuStatus(False, f"CuPy found no usable CUDA driver/device: {e}")
    if n == 0:
        return GpuStatus(False, "CuPy is installed but no CUDA GPU is visible")
    dev = cupy.cuda.Device(0)
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    free, total = dev.mem_info
    return GpuStatus(True, "ok", name, int(total), str(dev.compute_capability))


def device_info() -> str:
    """One line saying what will run: the GPU's name and memory, or the CPU and why."""
    st = gpu_status()
    if st.available:
        return f"GPU: {st.name} (sm_{st.compute_capability}, {st.memory_bytes / 2**30:.0f} GiB)"
    return f"CPU: {os.cpu_count()} cores (no GPU: {st.reason})"


def machine(device: str = "cpu") -> dict:
    """What a run runs on, as its config.json records it (a --time budget buys as many steps
    as the machine gives): the CPU's model name, the cores this process may use, the widest
    SIMD its flags name (avx512, avx2, avx, neon; '' where /proc/cpuinfo cannot say), the BLAS
    NumPy calls with its kernel, and on device 'cuda' the GPU's name."""
    flags, name = set(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "model name" and not name:
                    name = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    simd = next((s for s, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"),
                                   ("neon", "asimd")) if flag in flags), "")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    found = {"cpu": name or (os.uname().machine if hasattr(os, "uname") else ""),
             "cores": cores, "simd": simd, "blas": blas_kernel()}
    if device == "cuda":
        found["gpu"] = gpu_status().name
    return found


def blas_kernel() -> str:
    """Which BLAS and which kernel NumPy runs (threadpoolctl), e.g. 'openblas SkylakeX'."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (no threadpoolctl)"
    found = (f"{i['internal_api']} {i.get('architecture', '')}".strip()
             for i in threadpool_info() if i["user_api"] == "blas")
    return ", ".join(dict.fromkeys(found)) or "none found"  # SciPy may bring a second copy


def resolve_device(device: str = "auto") -> str:
    """Map 'auto' | 'cpu' | 'cuda' to 'cpu' or 'cuda'; 'cuda' without a GPU is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        return "cpu"
    st = gpu_status()
    if device == "cuda" and not st.available:
        raise RuntimeError(f"--device cuda was asked for, but {st.reason}; use --device cpu")
    return "cuda" if st.available else "cpu"


def to_device(a, device: str = "cuda"):
    """Copy a host array to `device` ('cuda' or 'cpu'); arrays already there are returned."""
    if device == "cpu":
        return to_host(a)
    return _cupy().asarray(a)


def to_host(a) -> np.ndarray:
    """A NumPy array (copies device arrays to the host, returns host arrays unchanged)."""
    if is_gpu_array(a):
        return a.get()
    return np.asarray(a)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure of NumPy (MemoryError) or CuPy (OutOfMemoryError)."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def set_tf32(enabled: bool) -> None:
    """Allow TF32 tensor-core GEMMs in CuPy (off by default: plain fp32, as the tests assume).

    CuPy reads CUPY_TF32 when it loads its linear-algebra routines, so call this
    before the first GPU computation.
    """
    os.environ["CUPY_TF32"] = "1" if enabled else "0"


def peak_rss_mb() -> float:
    """This process's peak resident host memory in MiB. On Linux VmHWM of /proc/self/status,
    which counts this process's own pages: ru_maxrss would also carry over the pages of the
    process that started it (across fork and exec), hundreds of MB under a test runner.
    Elsewhere ru_maxrss (KiB on Linux and BSD, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Start peak_rss_mb over from the current resident memory, so that it measures what
    comes next (e.g. a training step after warm-up, not the warm-up's one-time costs).
    Linux only (writing 5 to /proc/self/clear_refs, Linux 4.0+); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
