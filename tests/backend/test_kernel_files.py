"""The CUDA kernel sources: found from this checkout, documented, and (where NVRTC is
available) compilable exactly as CuPy will compile them at run time. No GPU needed.

The run-time path is NVRTC through cupy.RawModule(name_expressions=...); the CI script
.ci/compile_kernels.sh checks the same files with nvcc. The NVRTC test here needs only the
NVRTC shared library (CUDA toolkit, or the nvidia-cuda-nvrtc wheel; point NVRTC_LIBRARY at
libnvrtc.so to choose one) and skips with the reason when it is absent.
"""

from __future__ import annotations

import ast
import ctypes
import ctypes.util
import glob
import os
import re
import sys
from pathlib import Path

import pytest

from minunet.backend import gpu

REPO = Path(__file__).resolve().parents[2]

# The opening comment of every kernels/*.cu: free text under "What:" and "Launch geometry:",
# then one pointer a line, each "// <Field>: <file>: <name>, <name>, ...":
#     // Launcher: minunet/backend/gpu.py: im2col, col2im     the Python launchers
#     // CPU twin: minunet/backend/cpu.py: im2col, col2im     same signature, on NumPy arrays
#     // Plain op: minunet/ops/conv.py: im2col, col2im        the lesson it speeds up
#     // Used by: minunet/fast/conv.py: conv2d_forward       who runs it (through backend.twins)
#     // Test: tests/backend/test_gpu.py: test_im2col_matches_cpu
# A field may repeat (one file per line). A name is a top-level function or class, or
# Class.method. "Plain op: none -- <why>" says that there is none. A line "//   (...)"
# under a pointer is a free note.
TEXT_FIELDS = ("What:", "Launch geometry:")
POINTER_FIELDS = ("Launcher", "CPU twin", "Plain op", "Used by", "Test")
_POINTER = re.compile(r"// (" + "|".join(POINTER_FIELDS) + r"): (.*)")
_ENTRY = re.compile(r"((?:minunet|tests)/[\w/]+\.py): (\w+(?:\.\w+)?(?:, \w+(?:\.\w+)?)*)")
_NONE = re.compile(r"none -- \S.*")
# templates that no twin mirrors: the second pass of the GPU loss reduction (the CPU twin
# sums its row losses in a fixed order instead)
HELPER_TEMPLATES = {"sum_partials"}


def header(file: str) -> list[str]:
    """The opening comment of kernels/<file>: its leading '//' lines."""
    lines = (gpu.kernel_dir() / file).read_text().splitlines()
    return lines[: next(i for i, line in enumerate(lines) if not line.startswith("//"))]


def pointers(file: str) -> dict[str, list]:
    """Field -> [(path, [names])] or ["none"], from the header's pointer lines.

    Raises AssertionError, naming the line, for a pointer line of the wrong form.
    """
    found: dict[str, list] = {f: [] for f in POINTER_FIELDS}
    for line in header(file):
        m = _POINTER.fullmatch(line)
        if m is None:
            continue
        field, value = m.groups()
        if field == "Plain op" and _NONE.fullmatch(value):
            found[field].append("none")
            continue
        entry = _ENTRY.fullmatch(value)
        assert entry, f"{file}: {line!r} is not '// {field}: <file>.py: <name>, <name>, ...'"
        found[field].append((entry.group(1), entry.group(2).split(", ")))
    return found


def defined_names(path: Path) -> set[str]:
    """Top-level functions and classes of a Python file, and Class.method (parsed, not run)."""
    names = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{f.name}" for f in node.body
                      if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)}
    return names


def test_kernel_dir_finds_every_kernel_file():
    d = gpu.kernel_dir()
    on_disk = {p.name for p in d.glob("*.cu")}
    assert on_disk == set(gpu.KERNEL_FILES), (
        f"kernels/ holds {sorted(on_disk)} but gpu.KERNEL_FILES lists {sorted(gpu.KERNEL_FILES)}"
    )


@pytest.mark.parametrize("file", sorted(gpu.KERNEL_FILES))
def test_kernel_file_opens_with_its_header(file):
    head = header(file)
    assert head and head[0].startswith(f"// {file} -- "), (
        f"{file} must open with '// {file} -- <what>'")
    for field in TEXT_FIELDS:
        assert any(line.startswith(f"// {field}") for line in head), f"{file}: no '{field}'"
    found = pointers(file)  # every pointer line well formed
    for field in POINTER_FIELDS:
        assert found[field], f"{file}: the opening comment has no '// {field}: ...' line"


@pytest.mark.parametrize("field", [f for f in POINTER_FIELDS if f != "Test"])
@pytest.mark.parametrize("file", sorted(gpu.KERNEL_FILES))
def test_kernel_header_names_functions_that_exist(file, field):
    """Every file a Launcher/CPU twin/Plain op/Used by line names exists and defines the names."""
    for entry in pointers(file)[field]:
        if entry == "none":
            continue
        path, names = entry
        assert (REPO / path).is_file(), f"{file}: '{field}: {path}' -- no such file"
        missing = set(names) - defined_names(REPO / path)
        assert not missing, f"{file}: '{field}: {path}' names {sorted(missing)}, not defined there"


@pytest.mark.parametrize("file", sorted(gpu.KERNEL_FILES))
def test_kernel_header_names_tests_that_exist(file):
    for path, names in pointers(file)["Test"]:
        assert path.startswith("tests/") and (REPO / path).is_file(), (
            f"{file}: 'Test: {path}' -- no such test file")
        missing = set(names) - defined_names(REPO / path)
        assert not missing, f"{file}: 'Test: {path}' names tests that do not exist: {missing}"


@pytest.mark.parametrize("file", sorted(gpu.KERNEL_FILES))
def test_every_kernel_has_its_launcher_and_cpu_twin_named(file):
    """The header's Launcher and CPU twin lines name every kernel the file defines."""
    found = pointers(file)
    assert [p for p, _ in found["Launcher"]] == ["minunet/backend/gpu.py"]
    assert [p for p, _ in found["CPU twin"]] == ["minunet/backend/cpu.py"]
    kernels = set(gpu.KERNEL_FILES[file]) - HELPER_TEMPLATES
    for field in ("Launcher", "CPU twin"):
        named = {n for _, names in found[field] for n in names}
        assert named == kernels, (
            f"{file}: '{field}' names {sorted(named)}; the file's kernels: {sorted(kernels)}")


def test_header_parser_rejects_a_malformed_pointer(monkeypatch, tmp_path):
    """The parse is strict: a pointer line in another form fails instead of passing unchecked."""
    (tmp_path / "x.cu").write_text("// x.cu -- x\n// CPU twin: backend/cpu.py im2col\n\ncode\n")
    monkeypatch.setattr(gpu, "kernel_dir", lambda: tmp_path)
    with pytest.raises(AssertionError, match="is not"):
        pointers("x.cu")


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
