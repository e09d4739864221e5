#!/usr/bin/env bash
# Compile every kernels/*.cu with nvcc for sm_80 (A100) and sm_90 (H100/H200); no GPU needed.
#
# The kernels are templates that CuPy instantiates at run time through NVRTC name_expressions,
# so each file carries an explicit-instantiation block (float and double) guarded by
# MINUNET_NVCC_CHECK, switched on here. ptxas runs with -v: the script prints one line per file
# and architecture (kernels, max registers, spill bytes) and fails on a compile error or on any
# register spill ("bytes spill stores" > 0). Exits 0 with a message when nvcc is not installed.
#
# Usage: .ci/compile_kernels.sh   (from anywhere; NVCC=/path/to/nvcc chooses the compiler,
#        NVCC_FLAGS="..." adds flags, e.g. -maxrregcount=32 to see what a register cap would spill)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nvcc="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$nvcc" && -x /usr/local/cuda/bin/nvcc ]]; then nvcc=/usr/local/cuda/bin/nvcc; fi
if [[ -z "$nvcc" ]]; then
    echo "compile_kernels: nvcc not found; skipping the CUDA compile check"
    exit 0
fi
if [[ ! -x "$nvcc" ]]; then
    echo "compile_kernels: NVCC=$nvcc is not an executable" >&2
    exit 1
fi
read -r -a extra <<<"${NVCC_FLAGS:-}"

shopt -s nullglob
files=("$root"/kernels/*.cu)
if (( ${#files[@]} == 0 )); then
    echo "compile_kernels: no kernels/*.cu found under $root" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
status=0
echo "compile_kernels: $("$nvcc" --version | tail -n 1)"
for arch in 80 90; do
    for f in "${files[@]}"; do
        name="$(basename "$f")"
        log="$tmp/${name%.cu}.sm_$arch.log"
        if ! "$nvcc" -std=c++17 -arch="sm_$arch" -DMINUNET_NVCC_CHECK -Xptxas -v \
                "${extra[@]}" -c "$f" -o "$tmp/${name%.cu}.sm_$arch.o" >"$log" 2>&1; then
            echo "FAIL  sm_$arch  $name: compile error"
            cat "$log"
            status=1
            continue
        fi
        # ptxas -v prints per kernel: "Compiling entry function '...'", "Used N registers, ...",
        # "... bytes stack frame, S bytes spill stores, L bytes spill loads".
        kernels=$(grep -c "Compiling entry function" "$log" || true)
        regs=$(grep -o "Used [0-9]* registers" "$log" | awk '{print $2}' | sort -n | tail -n 1)
        spill=$(grep -o "[0-9]* bytes spill stores" "$log" | awk '{s += $1} END {print s + 0}')
        sload=$(grep -o "[0-9]* bytes spill loads" "$log" | awk '{s += $1} END {print s + 0}')
        stack=$(grep -o "[0-9]* bytes stack frame" "$log" | awk '{if ($1 > m) m = $1} END {print m + 0}')
        if grep -qi "warning" "$log"; then
            echo "FAIL  sm_$arch  $name: compiler warnings"
            cat "$log"
            status=1
            continue
        fi
        if (( kernels == 0 )); then
            echo "FAIL  sm_$arch  $name: no kernel instantiated (missing MINUNET_NVCC_CHECK block?)"
            status=1
            continue
        fi
        if (( spill > 0 || sload > 0 )); then
            verdict="FAIL"
            status=1
        else
            verdict="ok  "
        fi
        printf '%s  sm_%s  %-16s %2d kernels, max %3s registers, %s B spill stores, %s B spill loads, max stack %s B\n' \
            "$verdict" "$arch" "$name" "$kernels" "${regs:-?}" "$spill" "$sload" "$stack"
        if [[ "$verdict" == "FAIL" ]]; then  # name the kernels that spill
            awk '/Function properties for/ {fn = $NF}
                 /spill stores/ && ($5 + 0 > 0 || $9 + 0 > 0) {print "      " fn ":" $0}' "$log" |
                (command -v c++filt >/dev/null && c++filt || cat)
        fi
    done
done
if (( status != 0 )); then
    echo "compile_kernels: FAILED"
else
    echo "compile_kernels: all kernels compiled for sm_80 and sm_90 without spills"
fi
exit "$status"
