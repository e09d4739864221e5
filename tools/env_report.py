"""Print the versions a GPU run depends on; exit 1 if CuPy sees no GPU.

    python3 tools/env_report.py

Used by tools/gpu_check.sh (stage 1). Every probe is guarded: a missing or broken
package prints its error and the report goes on. The last line starts with
`SUMMARY` and holds the key numbers on one line (the script puts it in summary.md).
"""

from __future__ import annotations

import importlib
import platform
import sys
import warnings


def _version(name: str) -> str:
    """The module's version, and the warnings its import gave (the tests turn warnings into
    errors, so a package that warns on import is worth a line here)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            v = str(getattr(importlib.import_module(name), "__version__", "?"))
        for w in caught[:3]:
            v += f" (import warning: {w.category.__name__}: {str(w.message)[:120]})"
        return v
    except Exception as e:  # noqa: BLE001 -- report anything, never stop
        return f"unavailable ({type(e).__name__}: {e})".splitlines()[0][:160]


def _cuda_version(v: int) -> str:
    """CUDA's integer version (13000) as '13.0'."""
    return f"{v // 1000}.{v % 1000 // 10}"


def main() -> int:
    short = {"python": platform.python_version()}
    print(f"python     {sys.version.splitlines()[0]} ({sys.executable})")
    for name in ("numpy", "scipy", "numba", "cupy", "torch", "onnxruntime", "tifffile",
                 "PIL", "matplotlib", "tqdm", "threadpoolctl", "pytest", "pytest_timeout",
                 "hypothesis"):
        v = _version(name)
        print(f"{name:<10} {v}")
        short[name] = v.split(" ")[0]

    gpu_ok = False
    try:
        import cupy

        rt = cupy.cuda.runtime
        n = rt.getDeviceCount()
        props = rt.getDeviceProperties(0) if n else {}
        name = props.get("name", b"?")
        name = name.decode() if isinstance(name, bytes) else str(name)
        runtime, driver = _cuda_version(rt.runtimeGetVersion()), _cuda_version(
            rt.driverGetVersion())
        free, total = cupy.cuda.Device(0).mem_info if n else (0, 0)
        print(f"cupy CUDA  runtime {runtime}, driver {driver}, {n} device(s): {name}, "
              f"compute capability {props.get('major', '?')}.{props.get('minor', '?')}, "
              f"{props.get('multiProcessorCount', '?')} SMs, {total / 2**30:.1f} GiB "
              f"({free / 2**30:.1f} free)")
        short.update(cuda_runtime=runtime, cuda_driver=driver, gpu=name.replace(" ", "_"))
        gpu_ok = n > 0
    except Exception as e:  # noqa: BLE001
        print(f"cupy CUDA  unavailable: {type(e).__name__}: {e}")
    try:
        import torch

        cudnn = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        print(f"torch CUDA {torch.version.cuda}, cuDNN {cudnn}, "
              f"is_available {torch.cuda.is_available()}")
        short.update(torch_cuda=str(torch.version.cuda), cudnn=str(cudnn))
    except Exception as e:  # noqa: BLE001
        print(f"torch CUDA unavailable: {type(e).__name__}: {e}")
    try:
        from minunet import backend

        print(f"minunet    {backend.device_info()}")
    except Exception as e:  # noqa: BLE001
        print(f"minunet    import failed: {type(e).__name__}: {e}")

    print("SUMMARY " + " ".join(f"{k}={v}" for k, v in short.items()))
    return 0 if gpu_ok else 1


if __name__ == "__main__":
    sys.exit(main())
