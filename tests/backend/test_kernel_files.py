"""The CUDA kernel sources: found from this checkout, documented, and (where NVRTC is
available) compilable exactly as CuPy will compile them at run time. No GPU needed.

The run-time path is NVRTC through cupy.RawModule(name_expressions=...); the CI script
.ci/compile_kernels.sh checks the same files with nvcc. The NVRTC test here needs only the
NVRTC shared library (CUDA toolkit, or the nvidia-cuda-nvrtc wheel; point NVRTC_LIBRARY at
libnvrtc.so to choose one) and skips with the reason when it is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import re
import sys

import pytest

from minunet.backend import gpu

HEADER_FIELDS = ("What:", "Launch geometry:", "CPU twin:", "Test:")


def test_kernel_dir_finds_every_kernel_file():
    d = gpu.kernel_dir()
    on_disk = {p.name for p in d.glob("*.cu")}
    assert on_disk == set(gpu.KERNEL_FILES), (
        f"kernels/ holds {sorted(on_disk)} but gpu.KERNEL_FILES lists {sorted(gpu.KERNEL_FILES)}"
    )


@pytest.mark.parametrize("file", sorted(gpu.KERNEL_FILES))
def test_kernel_file_opens_with_its_header(file):
    text = (gpu.kernel_dir() / file).read_text()
    lines = text.splitlines()
    assert lines[0].startswith(f"// {file} -- "), f"{file} must open with '// {file} -- <what>'"
    header = []
    for line in lines:
        if not line.startswith("//"):
            break
        header.append(line)
    head = "\n".join(header)
    for field in HEADER_FIELDS:
        assert f"// {field}" in head, f"{file}: the opening comment lacks '{field}'"
    # the named test functions exist in tests/backend/test_gpu.py
    test_src = (gpu.kernel_dir().parent / "tests" / "backend" / "test_gpu.py")
    if test_src.is_file():  # a checkout (an installed wheel has no tests)
        defined = set(re.findall(r"^def (test_\w+)", test_src.read_text(), flags=re.M))
        named = set(re.findall(r"(?<![\w/])(test_\w+)(?!\w|\.\w)", head[head.index("// Test:"):]))
        assert named, f"{file}: the Test: line names no test function"
        assert named <= defined, f"{file} names tests that do not exist: {named - defined}"


@pytest.mark.parametrize("file", sorted(gpu.KERNEL_FILES))
def test_every_template_is_defined_and_instantiated_for_the_ci_compile(file):
    text = (gpu.kernel_dir() / file).read_text()
    check = text[text.index("#ifdef MINUNET_NVCC_CHECK"):]
    for name in gpu.KERNEL_FILES[file]:
        assert re.search(rf"__global__ void {name}\(", text), f"{file} does not define {name}"
        assert re.search(rf"\b{name}<", check), f"{file}: {name} missing from the nvcc block"


def test_name_expressions_cover_both_dtypes():
    exprs = gpu.name_expressions("softmax_xent.cu")
    assert "softmax_xent_forward<float, int>" in exprs
    assert "softmax_xent_backward<double, long long>" in exprs
    assert "sum_partials<double>" in exprs
    assert gpu.name_expressions("im2col.cu") == [
        "im2col<float>", "im2col<double>", "col2im<float>", "col2im<double>"]


# --- NVRTC: compile every file with its name expressions, as CuPy does -------------------


def _find_nvrtc():
    candidates = [os.environ.get("NVRTC_LIBRARY", "")]
    found = ctypes.util.find_library("nvrtc")
    candidates.append(found or "")
    for base in sys.path:  # the nvidia-cuda-nvrtc wheel (CuPy's own dependency)
        candidates += glob.glob(os.path.join(base, "nvidia", "*", "lib", "libnvrtc.so*"))
        candidates += glob.glob(os.path.join(base, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*"))
    for root in ("/usr/local/cuda", os.environ.get("CUDA_PATH", "")):
        candidates += glob.glob(os.path.join(root, "lib64", "libnvrtc.so*"))
    for c in candidates:
        if c and "builtins" not in c:
            try:
                return ctypes.CDLL(c)
            except OSError:
                continue
    return None


def _nvrtc_compile(lib, src: str, name: str, options, exprs):
    """Compile with NVRTC; return (ok, log, lowered names)."""
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None)
    assert rc == 0, f"nvrtcCreateProgram failed ({rc})"
    try:
        for e in exprs:
            assert lib.nvrtcAddNameExpression(prog, e.encode()) == 0
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        rc = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        lowered = {}
        if rc == 0:
            for e in exprs:
                out = ctypes.c_char_p()
                assert lib.nvrtcGetLoweredName(prog, e.encode(), ctypes.byref(out)) == 0
                lowered[e] = out.value.decode()
        return rc == 0, log, lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("file", sorted(gpu.KERNEL_FILES))
def test_kernel_compiles_with_nvrtc_like_cupy(file, arch):
    lib = _find_nvrtc()
    if lib is None:
        pytest.skip("NVRTC (libnvrtc.so) not found; set NVRTC_LIBRARY to check the run-time "
                    "compile without a GPU")
    src = (gpu.kernel_dir() / file).read_text()
    exprs = gpu.name_expressions(file)
    # the options CuPy passes: ours, then -ftz=true and -arch for the device
    options = list(gpu.COMPILE_OPTIONS) + ["-ftz=true", f"-arch={arch}"]
    ok, log, lowered = _nvrtc_compile(lib, src, file, options, exprs)
    assert ok, f"NVRTC failed on {file}:\n{log}"
    assert "warning" not in log.lower(), f"NVRTC warnings on {file}:\n{log}"
    assert set(lowered) == set(exprs) and all(v.startswith("_Z") for v in lowered.values())
