"""Run the CUDA kernels (kernels/*.cu) on the CPU: each kernel's own source, compiled as C++.

No GPU is needed, only a C++17 compiler (g++; CXX chooses another). A kernel file is
compiled with kernels/cuda_emu.h (the CUDA surface: thread indices, __shared__, a real
__syncthreads barrier on fibers, math functions) and kernels/cuda_emu_driver.h (a main()
that reads a launch script), with every template instance that backend/gpu.py compiles
(`gpu.name_expressions`). A launch runs every block and every thread of the grid, one
emulated thread at a time, in index order, in reverse or shuffled (the race check):

    prog = Program("im2col.cu")                          # g++ once, cached on disk
    grid, block = gpu.im2col_geometry(C, H, W, k, y0, y1) # the launcher's own geometry
    prog.launch("im2col<float>", grid, block,
                (x, out, np.int32(C), np.int32(H), ...))  # out is filled in place

Arguments are passed as to a cupy.RawKernel: NumPy arrays (device buffers, copied back
into the arrays after the run) and NumPy scalars (np.int32 for int, np.int64 for long
long, np.float32, np.float64); the program checks their kinds against the kernel's
parameters. `Pointers([a, b])` passes a device table of buffer addresses (sgd_update_many),
`Window(a, lo, hi)` a large zero buffer of which only elements lo..hi-1 travel.
With sanitize=True the program is built with AddressSanitizer and UBSan, and an
out-of-bounds access or undefined behaviour raises EmulationError with the report.

This is teaching and test equipment (tutorial 08, tests/emulation/): it checks every index
and bound of the kernels, not their speed, and not NVRTC or the CuPy launch path.
Float results agree bit for bit with the CPU twins except where cuda_emu.h says why not.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import gpu

__all__ = ["EmulationError", "Pointers", "Window", "Program", "compiler", "instance",
           "CXXFLAGS", "SANITIZE_FLAGS", "ORDERS"]

CXXFLAGS = ("-std=c++17", "-O1", "-g", "-ffp-contract=off", "-fno-fast-math",
            "-Wall", "-Wextra", "-Werror")
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer")
ORDERS = {"forward": 0, "reverse": 1, "shuffle": 2}  # order of blocks and of threads
_KIND = {np.dtype(np.int32): "i", np.dtype(np.int64): "l",
         np.dtype(np.float32): "f", np.dtype(np.float64): "d"}


class EmulationError(RuntimeError):
    """A build or an emulated run failed; the message holds the compiler's or sanitizer's report."""


@dataclass(frozen=True)
class Pointers:
    """A device table of the addresses of these arrays' buffers (a `T* const*` argument)."""

    arrays: tuple


@dataclass(frozen=True)
class Window:
    """Array `a` as a zero-filled buffer of a.nbytes bytes of which only the flat elements
    lo..hi-1 travel in and back (a large array of which a kernel touches a small part)."""

    a: np.ndarray
    lo: int
    hi: int


def compiler() -> str | None:
    """The C++ compiler to use ($CXX, else g++), or None when there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


def instance(name: str, dtype, label_dtype=None) -> str:
    """The name expression of one template instance, as backend/gpu.py spells it."""
    return gpu._expr(name, dtype, label_dtype)


def _cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"minunet-emu-{os.getuid()}"


class Program:
    """One kernel file built as a CPU program (every instance of gpu.name_expressions(file)).

    file: e.g. "im2col.cu"; source: the C++ text to build instead of kernels/<file> (a
    modified copy, e.g. a seeded bug); sanitize: AddressSanitizer + UBSan; cache_dir: where
    builds are kept (keyed by a hash of everything that goes into them).
    """

    def __init__(self, file: str, *, source: str | None = None, sanitize: bool = False,
                 cache_dir: str | os.PathLike | None = None):
        cxx = compiler()
        if cxx is None:
            raise EmulationError("no C++ compiler found (g++, or set CXX): the CUDA kernels "
                                 "cannot be emulated on this machine")
        kdir = gpu.kernel_dir()
        self.file = file
        self.source = (kdir / file).read_text() if source is None else source
        self.sanitize = sanitize
        self.fibers = "__syncthreads" in self.source  # kernels with a barrier run on fibers
        self.instances = gpu.name_expressions(file)
        flags = CXXFLAGS + (SANITIZE_FLAGS if sanitize else ())
        headers = "".join((kdir / h).read_text() for h in ("cuda_emu.h", "cuda_emu_driver.h"))
        key = hashlib.sha256("\0".join((self.source, headers, *flags, *self.instances, cxx))
                             .encode()).hexdigest()[:16]
        self.dir = Path(cache_dir or _cache_dir()) / f"{Path(file).stem}-{key}"
        self.exe = self.dir / "program"
        if not self.exe.is_file():
            self._build(cxx, kdir, flags)

    def _build(self, cxx, kdir, flags):
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / self.file).write_text(self.source)
        entries = ",\n    ".join(f"EMU_ENTRY({e})" for e in self.instances)
        (self.dir / "main.cpp").write_text(
            f'// generated by minunet/backend/emulate.py: {self.file} on the CPU\n'
            f'#include "cuda_emu.h"\n#include "{self.file}"\n#include "cuda_emu_driver.h"\n'
            f"static const emu::Entry kEntries[] = {{\n    {entries}}};\n"
            "int main(int argc, char** argv)\n"
            "{ return emu::main(argc, argv, kEntries, sizeof kEntries / sizeof *kEntries); }\n")
        tmp = self.dir / f"program.{os.getpid()}.tmp"
        cmd = [cxx, *flags, "-I", str(self.dir), "-I", str(kdir), str(self.dir / "main.cpp"),
               "-o", str(tmp)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise EmulationError(f"building {self.file} failed:\n{' '.join(cmd)}\n{r.stderr}")
        os.replace(tmp, self.exe)

    def launch(self, expr, grid, block, args, **kw) -> None:
        """One launch: run([(expr, grid, block, args)], **kw)."""
        self.run([(expr, grid, block, args)], **kw)

    def run(self, launches, order: str = "forward", seed: int = 0, timeout: float = 300) -> None:
        """Run launches [(expr, grid, block, args), ...] one after another, with shared buffers
        (an array passed twice is one buffer). The arrays are updated in place afterwards.

        order: "forward", "reverse" or "shuffle" (with seed): the order of blocks and threads;
        a launch given as (expr, grid, block, args, order[, seed]) has its own.
        Raises EmulationError with the program's report when it fails (a sanitizer finding,
        an argument that does not match the kernel's parameters, a barrier not all reach).
        """
        with tempfile.TemporaryDirectory(prefix="emu-run-") as d:
            d = Path(d)
            lines, back, ids = [], [], {}

            def buffer(obj):
                a, lo, hi = (obj.a, obj.lo, obj.hi) if isinstance(obj, Window) else \
                    (obj, 0, obj.size)
                if not (isinstance(a, np.ndarray) and a.flags.c_contiguous):
                    raise TypeError(f"a kernel buffer must be a C-contiguous NumPy array, got "
                                    f"{type(a).__name__}")
                if id(a) not in ids:
                    i = ids[id(a)] = len(ids)
                    lines.append(f"buf {i} {a.nbytes}")
                    flat = a.reshape(-1)
                    path = d / f"in{i}.bin"
                    flat[lo:hi].tofile(path)
                    lines.append(f"fill {i} {lo * a.itemsize} {path}")
                    back.append((i, a, lo, hi))
                return ids[id(a)]

            for expr, grid, block, args, *how in launches:
                how = how + [order, seed][len(how):]  # this launch's (order, seed)
                g, b = (tuple(grid) + (1, 1))[:3], (tuple(block) + (1, 1))[:3]
                arglines = []
                for a in args:
                    if isinstance(a, (np.ndarray, Window)):
                        arglines.append(f"arg p {buffer(a)}")
                    elif isinstance(a, Pointers):
                        members = [buffer(x) for x in a.arrays]
                        i = ids[("ptrs", id(a))] = len(ids)
                        lines.append(f"ptrs {i} " + " ".join(map(str, members)))
                        arglines.append(f"arg p {i}")
                    elif isinstance(a, np.generic) and a.dtype in _KIND:
                        kind = _KIND[a.dtype]
                        v = a.view(np.uint32 if kind == "f" else np.uint64) if kind in "fd" else a
                        arglines.append(f"arg {kind} {int(v):x}" if kind in "fd"
                                        else f"arg {kind} {int(v)}")
                    else:
                        raise TypeError(f"kernel argument {a!r}: pass a NumPy array, Pointers, "
                                        f"Window or a NumPy int32/int64/float32/float64 scalar")
                lines.append(f"launch {int(self.fibers)} {ORDERS[how[0]]} {int(how[1])} "
                             + " ".join(map(str, g + b)) + f" {expr}")
                lines += arglines + ["go"]
            for i, a, lo, hi in back:
                if a.flags.writeable:
                    lines.append(f"save {i} {lo * a.itemsize} {(hi - lo) * a.itemsize} "
                                 f"{d / f'out{i}.bin'}")
            script = d / "script.txt"
            script.write_text("\n".join(lines) + "\n")
            env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0",
                       UBSAN_OPTIONS="print_stacktrace=1")
            r = subprocess.run([str(self.exe), str(script)], capture_output=True, text=True,
                               env=env, timeout=timeout)
            if r.returncode != 0:
                raise EmulationError(f"emulated {self.file} failed with exit code "
                                     f"{r.returncode}:\n{r.stderr[-6000:]}")
            for i, a, lo, hi in back:
                if a.flags.writeable:
                    out = np.fromfile(d / f"out{i}.bin", dtype=a.dtype)
                    a.reshape(-1)[lo:hi] = out
