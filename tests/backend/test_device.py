"""backend.device (the array module and the device), and the backend's import rules.

The import rules (docs/DESIGN.md, "One-way data flow"): the backend imports nothing of
minunet outside itself, device.py imports nothing of minunet at all (the plain ops
import it and nothing else of the backend), and importing minunet.backend loads
neither CuPy nor Numba.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minunet import backend
from minunet.backend import device

BACKEND_DIR = Path(backend.__file__).parent


def test_xp_of_host_arrays_and_scalars():
    assert device.xp_of(np.zeros(2), 3.0, None) is np
    assert device.xp_of() is np
    assert not device.is_gpu_array(np.zeros(2))


def test_xp_of_refuses_a_mix_and_names_the_fix():
    class FakeCupyArray:  # is_gpu_array looks only at the type's module
        pass

    FakeCupyArray.__module__ = "cupy._core.core"
    assert device.is_gpu_array(FakeCupyArray())
    with pytest.raises(ValueError, match="to_device"):
        device.xp_of(np.zeros(1), FakeCupyArray())


def test_to_host_and_cpu_device_return_numpy():
    a = np.arange(3.0)
    assert device.to_host(a) is a
    assert device.to_device(a, "cpu") is a
    assert isinstance(device.to_host([1, 2]), np.ndarray)


def test_resolve_device():
    assert device.resolve_device("cpu") == "cpu"
    assert device.resolve_device("auto") == ("cuda" if device.gpu_status().available else "cpu")
    with pytest.raises(ValueError, match="'auto', 'cpu' or 'cuda'"):
        device.resolve_device("gpu")
    if not device.gpu_status().available:
        with pytest.raises(RuntimeError, match="--device cpu"):
            device.resolve_device("cuda")


def test_gpu_status_and_device_info_never_raise():
    st = device.gpu_status()
    assert st.available or st.reason
    assert device.device_info().startswith("GPU: " if st.available else "CPU: ")


def test_machine_names_the_cpu_its_cores_simd_and_blas(monkeypatch, tmp_path):
    """What config.json records of the machine: read from /proc/cpuinfo where there is one."""
    m = device.machine()
    assert set(m) == {"cpu", "cores", "simd", "blas"} and m["cores"] >= 1 and m["blas"]
    assert m["simd"] in ("avx512", "avx2", "avx", "neon", "")
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu avx avx2 "
                    "avx512f\n\nprocessor\t: 1\nmodel name\t: Some CPU 9000\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
        info if path == "/proc/cpuinfo" else path, *a, **k))
    m = device.machine()
    assert (m["cpu"], m["simd"]) == ("Some CPU 9000", "avx512")


def test_a_cupy_older_than_14_is_named_not_used(monkeypatch):
    import sys
    import types

    old = types.SimpleNamespace(__version__="13.6.0")  # checked before any device call
    monkeypatch.setitem(sys.modules, "cupy", old)
    st = device.gpu_status.__wrapped__()
    assert not st.available
    assert st.reason.startswith("CuPy 13.6.0 is too old, minunet needs CuPy >= 14")


def test_is_out_of_memory():
    class OutOfMemoryError(Exception):  # CuPy's name, recognised without importing CuPy
        pass

    assert device.is_out_of_memory(MemoryError())
    assert device.is_out_of_memory(OutOfMemoryError())
    assert not device.is_out_of_memory(ValueError())


def test_set_tf32(monkeypatch):
    monkeypatch.delenv("CUPY_TF32", raising=False)
    device.set_tf32(True)
    assert os.environ["CUPY_TF32"] == "1"
    device.set_tf32(False)
    assert os.environ["CUPY_TF32"] == "0"


def test_index_reexports_every_public_name():
    from minunet.backend import chunks, twins

    for module in (device, chunks, twins):
        for name in module.__all__:
            assert getattr(backend, name) is getattr(module, name), f"backend.{name}"
            assert name in backend.__all__, name
    assert len(backend.__all__) == len(set(backend.__all__))


# --- the import rules ---------------------------------------------------------------------


def _imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every import in a file: level 0 absolute, 1 for '.', 2 for '..'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


@pytest.mark.parametrize("file", sorted(p.name for p in BACKEND_DIR.glob("*.py")))
def test_backend_imports_nothing_of_minunet_outside_itself(file):
    for level, module in _imports(BACKEND_DIR / file):
        assert level <= 1, f"backend/{file} imports from outside the backend: {'.' * level}{module}"
        assert not (level == 0 and module.split(".")[0] == "minunet"), f"backend/{file}: {module}"


def test_device_imports_nothing_of_minunet():
    for level, module in _imports(BACKEND_DIR / "device.py"):
        assert level == 0 and module.split(".")[0] != "minunet", f"device.py imports {module}"


def test_importing_the_backend_loads_neither_cupy_nor_numba():
    code = ("import sys, minunet, minunet.backend, minunet.backend.device; "
            "print(sorted(m for m in ('cupy', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
