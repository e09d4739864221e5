#!/usr/bin/env bash
# tools/gpu_check.sh OUTDIR [ISBI_DIR]
#
# The one-shot GPU check of issue 30 (first filed as 17): everything the project wants to
# know from a short lease of an NVIDIA H100 or H200, in one command of at most 8 minutes
# (GPU_CHECK_BUDGET seconds, counted by this script's own clock). Stages, in order:
#   1. the card (nvidia-smi), the versions, and `pytest -m gpu` (kernels vs CPU twins,
#      gradient checks on CuPy, plain vs fast, whole U-Net CPU vs GPU, no host<->device
#      copy inside a training step) with a junit report;
#   2. `python -m minunet.bench --device cuda` at the paper configuration (572, base 64,
#      batch 1, float32): ours (fast and plain ops) against PyTorch/cuDNN, TF32 off, then a
#      TF32 row (fast ops and PyTorch only);
#   3. overlap-tile inference of one 512x512 and one 4096x4096 image, timed;
#   5. the U-Net family (unet-bn, resunet, unetpp, unet3p, mobile-unet, eff-unet): one bench
#      row each at 512, reference configuration, ours against the PyTorch mirror (the GPU
#      tests of stage 1 include tests/family/test_family_gpu.py: CPU vs GPU per network);
#   4. if at least 3 minutes are left: the paper preset trained on the ISBI 2012 slices
#      00-22 (best.npz chosen on 23-24) with --time set to the time that is left, then
#      predict the held-out slices 25-29 and score them.
#
# No stage stops the run: each runs under its own `timeout`, its status (PASS, FAIL,
# TIMEOUT, SKIPPED), wall time and key numbers go into OUTDIR/summary.md, which is
# rewritten after every stage (so a run cut short still leaves a summary).
#
# OUTDIR receives exactly these files (the device tool returns at most 8 files from $OUT):
#   summary.md  env.log  pytest.log  junit.xml  bench.log  infer.log  isbi.log  isbi_eval.csv
# Everything else (the training run folder, predictions) goes to a scratch folder.
#
# ISBI_DIR (default .device_data/isbi2012, git-ignored) holds images/NN.png and
# labels/NN.png, NN = 00..29; without it stage 4 is skipped with a note.
#
# Before the device call, here, once (the slices beside the checkout do not travel):
#   mkdir -p .device_data/isbi2012 && cp -r ../shared/data/isbi2012/{images,labels} .device_data/isbi2012/
# On the device machine (no network; the tree is a copy, so PYTHONPATH is the repo root),
# with `.device_data` in the device tool's carry list and timeout_s 560:
#   bash tools/gpu_check.sh "$OUT"
# A longer training run alone (stage 4 gets what the budget leaves, minus 75 s):
#   GPU_CHECK_STAGES=4 GPU_CHECK_BUDGET=540 bash tools/gpu_check.sh "$OUT"
#
# Environment (defaults in brackets):
#   GPU_CHECK_DRY_RUN=1       print every command, run none; every stage is SKIPPED
#   GPU_CHECK_BUDGET [480]    seconds for the whole run
#   GPU_CHECK_STAGES ["1 2 3 5 4"]  the stages to run (the others are listed as SKIPPED)
#   GPU_CHECK_DEVICE [cuda]   device of stages 2-4 (cpu only to try the script without a GPU)
#   GPU_CHECK_TRAIN_ARGS ["--preset paper"]  training options of stage 4
#   GPU_CHECK_KEEP=1          keep the scratch folder (its path is in summary.md)
#   PYTHON [python3]          the interpreter

set -o pipefail # deliberately no `set -e`: a failing stage must not stop the ones after it

usage() {
    echo "usage: bash tools/gpu_check.sh OUTDIR [ISBI_DIR]   (GPU_CHECK_DRY_RUN=1: print only)" >&2
    exit 2
}
[[ $# -ge 1 && $# -le 2 && -n $1 ]] || usage

# --- settings ------------------------------------------------------------------------------

mkdir -p "$1" || usage
OUT=$(cd "$1" && pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $# -eq 2 ]]; then
    DATA=$2
    [[ $DATA == /* ]] || DATA=$PWD/$DATA # relative to where the script was called from
else
    DATA=$REPO/.device_data/isbi2012
fi
cd "$REPO" || exit 2

PY=${PYTHON:-python3}
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
BUDGET=${GPU_CHECK_BUDGET:-480}
STAGE_LIST=${GPU_CHECK_STAGES:-1 2 3 5 4}
STAGES=" $STAGE_LIST "
DEVICE=${GPU_CHECK_DEVICE:-cuda}
TRAIN_ARGS=${GPU_CHECK_TRAIN_ARGS:---preset paper}
MIN_TRAIN_LEFT=180 # stage 4 needs this many seconds left (train + predict + evaluate)
DEADLINE=$((SECONDS + BUDGET))
START_DATE=$(date -u '+%Y-%m-%d %H:%M:%S UTC')

# Which code ran: the device gets a copy of the tree without .git, so besides the commit
# (where there is one) a fingerprint of the sources, to compare with the checkout's.
fingerprint() {
    find minunet kernels tools tests -type f \( -name '*.py' -o -name '*.cu' -o -name '*.sh' \) \
        -print0 | LC_ALL=C sort -z | xargs -0 cat | sha256sum | cut -c1-16
}
TREE="sha256 $(fingerprint) of minunet/ kernels/ tools/ tests/ (*.py *.cu *.sh, by path)"
if git rev-parse --git-dir >/dev/null 2>&1; then
    TREE="$TREE; commit $(git rev-parse --short HEAD) + $(git status --porcelain | wc -l) changed path(s)"
fi

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" # the tree is not installed there
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
[[ ${GPU_CHECK_KEEP:-0} == 1 ]] || trap 'rm -rf "$WORK"' EXIT
DETAILS=$WORK/details.md
: >"$DETAILS"
ROWS=() # one "id|what|status|wall|limit|key numbers" per row of the summary table

# --- helpers ---------------------------------------------------------------------------------

now_ms() { date +%s%3N; }
left() { echo $((DEADLINE - SECONDS)); }
selected() { [[ $STAGES == *" $1 "* ]]; }

# show_cmd ARGS...: the command as one line to paste into a shell (quotes only where needed).
show_cmd() {
    local a out=()
    for a in "$@"; do
        if [[ $a =~ ^[][A-Za-z0-9_./:=,+@%-]+$ ]]; then out+=("$a"); else out+=("$(printf '%q' "$a")"); fi
    done
    echo "${out[*]}"
}

# cap SECONDS: the stage's own limit, or less when the run's budget has less left.
cap() {
    local l
    l=$(($(left) - 2))
    echo $(($1 < l ? $1 : l))
}

# run_limited LOG LIMIT CMD...: run CMD under `timeout`, stdout and stderr appended to LOG.
# Sets RC (exit status), WALL (seconds, e.g. 12.3), LIMIT (what was applied) and STATUS:
# PASS, FAIL, TIMEOUT, or SKIPPED (NOTE says why: dry run, no time left). `SIG=INT run_limited ...`
# stops CMD with SIGINT instead of SIGTERM and keeps CMD's own exit status (130 for a
# clean stop), so that minunet.train saves its checkpoint.
run_limited() {
    local log=$1 want=$2 cmd t0 ms
    shift 2
    LIMIT=$(cap "$want")
    cmd=$(show_cmd "$@")
    printf '\n$ %s # limit %ss\n' "$cmd" "$LIMIT" >>"$log"
    echo "  \$ $cmd # limit ${LIMIT}s"
    RC=0 WALL=0.0 NOTE=""
    if [[ $DRY_RUN == 1 ]]; then
        STATUS=SKIPPED NOTE="dry run"
        echo "[dry run: not run]" >>"$log"
        return
    fi
    if ((LIMIT < 5)); then
        STATUS=SKIPPED NOTE="no time left in the ${BUDGET}s budget"
        echo "[not run: $NOTE]" >>"$log"
        return
    fi
    t0=$(now_ms)
    if [[ ${SIG:-TERM} == INT ]]; then
        timeout --preserve-status -s INT -k 30 "$LIMIT" "$@" >>"$log" 2>&1 </dev/null
    else
        timeout -k 10 "$LIMIT" "$@" >>"$log" 2>&1 </dev/null
    fi
    RC=$?
    ms=$(($(now_ms) - t0))
    WALL=$(printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)))
    if ((RC == 0)); then
        STATUS=PASS
    elif ((ms >= LIMIT * 1000 - 500)); then
        STATUS=TIMEOUT
    else
        STATUS=FAIL
    fi
    echo "[exit status $RC after ${WALL}s]" >>"$log"
}

# explain LOG KEY: the key numbers KEY, completed by what went wrong (why the command was
# skipped, where it was cut, or its exit status and the last line it printed).
explain() {
    case $STATUS in
    SKIPPED) echo "$NOTE" ;;
    TIMEOUT) echo "cut at the ${LIMIT}s limit${2:+; $2}" ;;
    FAIL) if [[ -n $2 ]]; then echo "$2"; else
        echo "exit status $RC: $(grep -v '^\[exit' "$1" | tail -n 1)"
    fi ;;
    *) echo "$2" ;;
    esac
}

# row ID WHAT STATUS WALL LIMIT KEY: one row of the summary table; rewrites summary.md.
row() {
    local key=${6//|//}
    ROWS+=("$1|$2|$3|$4|$5|${key//$'\n'/; }")
    echo "  -> $3 (${4}s): ${key//$'\n'/; }"
    write_summary
}

# details TITLE < text: a section under the table (key lines of a log, verbatim); none if
# the text is empty.
details() {
    local text
    text=$(cat)
    [[ -n $text ]] || return 0
    # shellcheck disable=SC2016 # the backquotes are markdown's, not the shell's
    printf '\n### %s\n\n```\n%s\n```\n' "$1" "$text" >>"$DETAILS"
}

skip_row() { row "$1" "$2" SKIPPED 0 - "$3"; }

write_summary() {
    local r id what st wall lim key
    {
        echo "# GPU check of issue 30: summary"
        echo
        echo "- started $START_DATE on $(hostname 2>/dev/null || echo '?'); $SECONDS s elapsed" \
            "of the ${BUDGET} s budget$([[ $DRY_RUN == 1 ]] && echo '; DRY RUN: nothing was run')"
        echo "- tree: $TREE"
        echo "- device for stages 2-4: $DEVICE; python: $PY; stages run: $STAGE_LIST; ISBI 2012: $DATA"
        echo "- logs beside this file: env.log, pytest.log, junit.xml, bench.log, infer.log," \
            "isbi.log, isbi_eval.csv$([[ ${GPU_CHECK_KEEP:-0} == 1 ]] && echo "; scratch: $WORK")"
        echo
        echo "| stage | what | status | wall s | limit s | key numbers |"
        echo "|---|---|---|---|---|---|"
        for r in "${ROWS[@]}"; do
            IFS='|' read -r id what st wall lim key <<<"$r"
            echo "| $id | $what | $st | $wall | $lim | $key |"
        done
        cat "$DETAILS"
    } >"$WORK/summary.md" && cp "$WORK/summary.md" "$OUT/summary.md"
}

# --- stage 1: the card, the versions, the GPU tests -------------------------------------------

# 1a. What the driver sees: the card, its memory, maximum clocks, power limit and driver.
stage_nvidia_smi() {
    local log=$OUT/env.log key st wall
    echo "== 1a nvidia-smi"
    run_limited "$log" 15 nvidia-smi --format=csv,noheader \
        --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem,power.limit
    key=$(grep -v '^\[exit' "$log" | tail -n 1)
    st=$STATUS wall=$WALL
    run_limited "$log" 15 nvidia-smi # the full table, for the log
    [[ $st == PASS ]] || STATUS=$st
    WALL=$(awk "BEGIN {print $wall + $WALL}")
    case $STATUS/$RC in
    PASS/*) ;;
    */127) key="nvidia-smi not found (no NVIDIA driver here)" ;;
    *) key=$(explain "$log" "") ;;
    esac
    row 1a "nvidia-smi" "$STATUS" "$WALL" "$LIMIT" "$key"
}

# 1b. The versions the results depend on: python, numpy, numba, cupy (CUDA runtime and
# driver), torch (CUDA, cuDNN). FAIL if CuPy sees no GPU.
stage_versions() {
    local log=$OUT/env.log key
    echo "== 1b versions"
    run_limited "$log" 45 "$PY" tools/env_report.py
    key=$(grep '^SUMMARY ' "$log" | tail -n 1 | sed 's/^SUMMARY //')
    [[ $STATUS == FAIL && -n $key ]] && key="CuPy sees no GPU; $key"
    row 1b "versions" "$STATUS" "$WALL" "$LIMIT" "$(explain "$log" "$key")"
}

# 1c. Every GPU test: kernels vs CPU twins (float32, float64), gradient checks on CuPy,
# plain vs fast on CuPy, whole U-Net CPU vs GPU, no copy or sync inside a training step.
# A per-test limit where pytest-timeout is installed (KINDS.md lists it on the device machines).
stage_pytest() {
    local log=$OUT/pytest.log key args
    echo "== 1c pytest -m gpu"
    # (tests/conftest.py runs the kernels and the whole network first on a GPU)
    args=(-m pytest -m gpu -v -rs --durations=15 -p no:cacheprovider --junitxml="$OUT/junit.xml")
    if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
        args+=(--timeout=90)
    else
        echo "(pytest-timeout is not installed: only the stage's limit applies)" >>"$log"
    fi
    run_limited "$log" 170 "$PY" "${args[@]}"
    key=$(grep -E '^=+ .* in [0-9.]+s' "$log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
    if [[ $STATUS == PASS ]] && ! grep -qE '[0-9]+ passed' <<<"$key"; then
        STATUS=FAIL key="no GPU test ran: $key" # all skipped: CuPy sees no GPU
    fi
    [[ $STATUS == TIMEOUT ]] &&
        key="$(grep -c ' PASSED' "$log") passed, $(grep -c -E ' (FAILED|ERROR)' "$log") failed so far"
    row 1c "pytest -m gpu" "$STATUS" "$WALL" "$LIMIT" "$(explain "$log" "$key")"
    grep -E '^(FAILED|ERROR) ' "$log" | head -n 40 | details "1c: failed tests"
    awk '/slowest [0-9]+ durations/ {on = 1; next} on && /^=/ {exit} on && NF' "$log" |
        head -n 15 | details "1c: slowest tests"
}

# --- stage 2: the benchmark at the paper configuration ------------------------------------------

# 2a. TF32 off: forward, forward+backward and training step of the U-Net 572/64, batch 1,
# float32, on our fast and plain ops and on PyTorch/cuDNN in the same run (CUDA events,
# median of 2 rounds x 5 runs after 2 warm-ups, each in a fresh process), achieved GFLOP/s,
# the ratios, peak memory, and the per-op table (im2col, col2im, pool, softmax-xent, SGD)
# in GB/s beside a plain 256 MiB copy (the card's bandwidth); and the tiles per second of
# the augmentation pipeline at 572 (one CPU thread: what feeds stage 4). 2b. The same with
# TF32 allowed, ours on the fast ops and PyTorch, no per-op table.
stage_bench() {
    bench_run 2a "bench 572/64 fp32, TF32 off (fast, plain, torch)" 110 --ops both --data
    bench_run 2b "bench 572/64 fp32, TF32 on (fast, torch)" 50 --tf32 --ops fast --no-ops
}

# bench_run ID WHAT LIMIT OPTIONS...: one bench run; its key numbers are the training-step
# and peak-memory rows of the network table; its whole report goes under the table.
bench_run() {
    local id=$1 what=$2 limit=$3 part=$WORK/bench_$1.log key
    shift 3
    echo "== $id $what"
    : >"$part"
    run_limited "$part" "$limit" "$PY" -m minunet.bench --device "$DEVICE" --size 572 \
        --base 64 --depth 4 --batch 1 --dtype float32 --rounds 2 --repeat 5 --warmup 2 "$@"
    cat "$part" >>"$OUT/bench.log"
    key=$(grep -E '^ +(training step|peak memory MB) |^5\. data pipeline' "$part" |
        sed -E 's/^ +//; s/  +/ /g; s/, all augmentations, one thread//' | paste -sd ';' -)
    grep -q MISMATCH "$part" && key="a twin disagrees with its plain op; $key"
    grep -q 'benchmark failed' "$part" &&
        key="$(grep -Eo '[a-z]+ benchmark failed' "$part" | sort -u | paste -sd, -); $key"
    [[ $STATUS == PASS && -z $key ]] && STATUS=FAIL key="no network table (see bench.log)"
    row "$id" "$what" "$STATUS" "$WALL" "$LIMIT" "$(explain "$part" "$key")"
    if grep -q '^minunet.bench:' "$part"; then
        sed -n '/^minunet.bench:/,$p' "$part" | grep -v '^\[exit' | head -n 60
    elif [[ $STATUS != SKIPPED ]]; then
        tail -n 15 "$part"
    fi | details "$id: bench output"
}

# --- stage 3: inference --------------------------------------------------------------------------

# 3a. Overlap-tile inference of one 512x512 and one 4096x4096 image with the paper network:
# median wall time of predict() + device synchronisation, the image on the host at the start
# (tools/infer_timing.py). 3b. The 512x512 image with TF32 allowed.
stage_infer() {
    infer_run 3a "inference 512x512 and 4096x4096, fp32" 45 --sizes 512,4096
    infer_run 3b "inference 512x512, TF32" 25 --sizes 512 --tf32
}

infer_run() {
    local id=$1 what=$2 limit=$3 part=$WORK/infer_$1.log key
    shift 3
    echo "== $id $what"
    : >"$part"
    run_limited "$part" "$limit" "$PY" tools/infer_timing.py --device "$DEVICE" --repeat 10 "$@"
    cat "$part" >>"$OUT/infer.log"
    key=$(grep '^RESULT ' "$part" | sed 's/^RESULT //; s/, [0-9]* runs after .* warm-up//; s/; output [^;]*//')
    row "$id" "$what" "$STATUS" "$WALL" "$LIMIT" "$(explain "$part" "$key")"
}

# --- stage 5: the U-Net family, one benchmark row each --------------------------------------------

# 5a-5f. `python -m minunet.bench --device cuda --arch NAME --size 512` for each network of the
# family at its reference configuration (float32, batch 1, TF32 off): forward, forward+backward
# and training step on our fast ops against its PyTorch mirror (cuDNN) in the same run, and
# peak memory. Runs before stage 4, which takes the time that is left.
FAMILY_ARCHS=(unet-bn resunet unetpp unet3p mobile-unet eff-unet)
stage_family() {
    local i=0 a ids=(5a 5b 5c 5d 5e 5f) part key
    for a in "${FAMILY_ARCHS[@]}"; do
        part=$WORK/bench_family_$a.log
        echo "== ${ids[$i]} bench $a 512 fp32"
        : >"$part"
        run_limited "$part" 30 "$PY" -m minunet.bench --device "$DEVICE" --arch "$a" \
            --size 512 --batch 1 --dtype float32 --rounds 1 --repeat 3 --warmup 1 --ops fast \
            --no-ops
        cat "$part" >>"$OUT/bench.log"
        key=$(grep -E '^ +(training step|peak memory MB) ' "$part" |
            sed -E 's/^ +//; s/  +/ /g' | paste -sd ';' -)
        [[ $STATUS == PASS && -z $key ]] && STATUS=FAIL key="no network table (see bench.log)"
        row "${ids[$i]}" "bench $a 512 fp32 (fast, torch)" "$STATUS" "$WALL" "$LIMIT" \
            "$(explain "$part" "$key")"
        i=$((i + 1))
    done
}

# --- stage 4: the paper preset on ISBI 2012, for the time that is left ----------------------------

# 4a. Train by the ISBI protocol of docs/DESIGN.md (the default split: 00-22 train, 23-24
# choose best.npz, 25-29 held out) with --time: the budget that is left but for what 4b and 4c
# need. The outer limit is a guard only; SIGINT would stop it after the current step, saving
# last.npz (exit status 130).
# 4b. Predict slices 25-29 with best.npz. 4c. Score them against their labels (pixel
# error, Rand error, V_rand, V_info as the ISBI challenge computes them; IoU, Dice).
stage_isbi() {
    local log=$OUT/isbi.log run=$WORK/isbi_run pred=$WORK/isbi_pred truth=$WORK/isbi_truth
    local n key its args images=() i ckpt
    echo "== 4 ISBI 2012"
    for i in 25 26 27 28 29; do images+=("$DATA/images/$i.png"); done
    if [[ ! -f $DATA/images/00.png || ! -f $DATA/images/29.png || ! -f $DATA/labels/29.png ]]; then
        n="no ISBI 2012 slices at $DATA: copy images/ and labels/ (00-29) there and carry .device_data"
        echo "  $n" | tee -a "$log"
        skip_row 4a "train the paper preset on ISBI 2012 00-22" "$n"
        skip_row 4b "predict ISBI 2012 25-29" "no data"
        skip_row 4c "evaluate ISBI 2012 25-29" "no data"
        return
    fi
    n=$(left)
    if ((n < MIN_TRAIN_LEFT)); then
        n="only ${n}s left (< ${MIN_TRAIN_LEFT}s)"
        echo "  $n" | tee -a "$log"
        skip_row 4a "train the paper preset on ISBI 2012 00-22" "$n"
        skip_row 4b "predict ISBI 2012 25-29" "not trained"
        skip_row 4c "evaluate ISBI 2012 25-29" "not trained"
        return
    fi

    read -r -a args <<<"$TRAIN_ARGS"
    echo "--- 4a train" >>"$log"
    SIG=INT run_limited "$log" $((n - 75)) "$PY" -m minunet.train --data "isbi2012:$DATA" \
        "${args[@]}" --device "$DEVICE" --time "$((n - 95))s" --val-every 1000 --out "$run"
    its=$(grep -Eo 'interrupted at iteration [0-9]+|done: [0-9]+ iterations' "$log" |
        tail -n 1 | grep -Eo '[0-9]+')
    key=""
    if [[ $STATUS != SKIPPED ]]; then
        if [[ $RC == 130 || $RC == 0 ]]; then
            STATUS=PASS key="${its:-?} iterations in ${WALL}s, startup included (--time $((n - 95))s)"
        else
            key="exit status $RC after ${its:-no} iterations: $(grep -v '^\[exit' "$log" | tail -n 1)"
        fi
        if [[ -f $run/last.npz ]]; then
            key="$key; last.npz $(du -h "$run/last.npz" | cut -f1)"
            if [[ -f $run/metrics.csv ]]; then
                { echo "--- metrics.csv"; cat "$run/metrics.csv"; } >>"$log"
                details "4a: metrics.csv of the training run (a validation every 1000 iterations)" \
                    <"$run/metrics.csv"
            fi
        else
            STATUS=FAIL key="$key; no last.npz written"
        fi
    fi
    row 4a "train ${TRAIN_ARGS} on ISBI 2012 00-22 (best.npz by 23-24)" "$STATUS" "$WALL" "$LIMIT" "$(explain "$log" "$key")"
    ckpt=$run/best.npz  # chosen on 23-24; last.npz if stopped before the first validation
    [[ -f $ckpt ]] || ckpt=$run/last.npz
    if [[ $DRY_RUN != 1 && ! -f $ckpt ]]; then
        skip_row 4b "predict ISBI 2012 25-29" "no checkpoint"
        skip_row 4c "evaluate ISBI 2012 25-29" "no checkpoint"
        return
    fi

    echo "--- 4b predict" >>"$log"
    run_limited "$log" 40 "$PY" -m minunet.predict --checkpoint "$ckpt" \
        --device "$DEVICE" --out "$pred" "${images[@]}"
    key=""
    [[ -d $pred/prob ]] && key="$(find "$pred/prob" -type f | wc -l) probability maps"
    row 4b "predict ISBI 2012 25-29 ($(basename "$ckpt"))" "$STATUS" "$WALL" "$LIMIT" "$(explain "$log" "$key")"

    echo "--- 4c evaluate" >>"$log"
    [[ $DRY_RUN == 1 ]] || { mkdir -p "$truth" && cp "$DATA"/labels/2[5-9].png "$truth"/; }
    run_limited "$log" 25 "$PY" -m minunet.evaluate "$pred/prob" "$truth" --csv "$OUT/isbi_eval.csv"
    key=""
    [[ $STATUS == PASS && -f $OUT/isbi_eval.csv ]] &&
        key=$(awk -F, 'NR == 1 {for (i = 2; i <= NF; i++) h[i] = $i}
            $1 == "all" {for (i = 2; i <= 5; i++) printf "%s%s %s", (i > 2 ? ", " : ""), h[i], $i}' \
            "$OUT/isbi_eval.csv")
    row 4c "evaluate ISBI 2012 25-29" "$STATUS" "$WALL" "$LIMIT" "$(explain "$log" "$key")"
    [[ $STATUS == PASS && -f $OUT/isbi_eval.csv ]] &&
        details "4c: scores of slices 25-29 after ${its:-?} iterations" <"$OUT/isbi_eval.csv"
}

# --- the run ----------------------------------------------------------------------------------------

# main: the stages in order, then the summary. (Everything is inside functions, so bash has
# read the whole file before it runs anything: editing the file during a run is harmless.)
main() {
    local r st not="not selected (GPU_CHECK_STAGES)"
    echo "gpu_check: $OUT, budget ${BUDGET}s, device $DEVICE, stages $STAGE_LIST$([[ $DRY_RUN == 1 ]] && echo ' (dry run)')"
    : >"$OUT/env.log"
    write_summary
    if selected 1; then
        stage_nvidia_smi
        stage_versions
        stage_pytest
    else
        skip_row 1a "nvidia-smi" "$not"
        skip_row 1b "versions" "$not"
        skip_row 1c "pytest -m gpu" "$not"
    fi
    if selected 2; then
        stage_bench
    else
        skip_row 2a "bench 572/64 fp32, TF32 off" "$not"
        skip_row 2b "bench 572/64 fp32, TF32 on" "$not"
    fi
    if selected 3; then
        stage_infer
    else
        skip_row 3a "inference 512x512 and 4096x4096, fp32" "$not"
        skip_row 3b "inference 512x512, TF32" "$not"
    fi
    if selected 5; then
        stage_family
    else
        skip_row 5 "bench of the U-Net family (6 networks, 512 fp32)" "$not"
    fi
    if selected 4; then
        stage_isbi
    else
        skip_row 4a "train the paper preset on ISBI 2012 00-22" "$not"
        skip_row 4b "predict ISBI 2012 25-29" "$not"
        skip_row 4c "evaluate ISBI 2012 25-29" "$not"
    fi

    write_summary
    echo
    cat "$OUT/summary.md"
    # Exit status: 1 if a stage failed or timed out, else 0 (also for a dry run).
    for r in "${ROWS[@]}"; do
        IFS='|' read -r _ _ st _ <<<"$r"
        [[ $st == FAIL || $st == TIMEOUT ]] && return 1
    done
    return 0
}

main
exit $?
