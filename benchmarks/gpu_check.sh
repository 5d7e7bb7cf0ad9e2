#!/usr/bin/env bash
# The one prepared GPU session: bash benchmarks/gpu_check.sh [--dry-run] [--steps LIST] [OUTDIR]
#
# Written for a lent H200 (about 15 minutes of device time in all, at most 10 minutes a command, at most 8 files
# back, no internet). Every step runs under `timeout` with its own budget and the budgets add up to at most 480 s,
# so the whole script ends within 8 minutes. A failing or timed-out step is recorded and the next one still runs;
# the script ends with one PASS/FAIL/SKIP line per step and exits non-zero if any step failed.
#
#   a1 wheels      install benchmarks/wheels/*.whl (git-ignored; e.g. Inf-CL) with pip --no-index --no-deps
#   a2 probes      versions (nvidia-smi, torch, triton), copy bandwidth, a large bf16 and float32 GEMM, the
#                  one-pass backward's two GEMM shapes with float32 results, in-place addmm into float32: yes/no
#   b  tests       tests/gpu against float64 in float32, bfloat16 and float16, as parallel pytest processes (one
#                  per group of tests/gpu/_groups.py, so Triton's compiles spread over the cores; the compiled
#                  kernels stay in TRITON_CACHE_DIR for the steps after it)
#   c  kernels     per-kernel timings at N = 65,536, D = 512 bf16 with the autotuner's tiles, registers, spills
#   d1 providers   unicl dense, chunked and both Triton schedules, open_clip's ClipLoss as a formula (and
#                  open_clip itself and Inf-CL where installed), N = 4,096 to 65,536, unique and mixed labels
#   d2 compile     torch.compile(dense) at the same sizes (Inductor compiles in its own budget)
#   d3 large       both Triton schedules, Inf-CL and chunked at N = 131,072 and 262,144
#   e  one-million one N = 2^20, D = 512 bf16 forward+backward with backend="triton", peak extra memory
#
# OUTDIR (default $OUT, else benchmarks/results/gpu-<UTC date>) gets at most these files: gpu_check.log (every
# step's output), summary.txt, probes.json, kernels.json, bench_loss.csv (rows appended as measured, so a step
# stopped by its limit keeps them; plot it with benchmarks/plot_loss.py), one_million.json.
#
#   --dry-run     print the plan (steps, budgets, commands, files) and run nothing
#   --steps LIST  run only these steps, e.g. "b,d3" ("d" means d1, d2 and d3); the others are listed as SKIP
#
# Environment: PYTHON (default python3), TRITON_CACHE_DIR (default /tmp/unicl-triton-cache), GPU_CHECK_SITE
# (where the wheels go, default /tmp/unicl-gpu-check-site). The step runner is a function: tests/test_gpu_check.py
# sources this file (main runs only when it is executed) and drives run_step and finish with dummy commands.

GPU_CHECK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
#: The budgets of all steps add up to at most this many seconds.
TOTAL_BUDGET_LIMIT=480
#: The device machine sends back at most this many files.
MAX_OUTPUT_FILES=8
#: Every file a step may write into OUTDIR.
OUTPUT_FILES=(gpu_check.log summary.txt probes.json kernels.json bench_loss.csv one_million.json)
#: Seconds `timeout` waits after SIGTERM before SIGKILL.
KILL_AFTER=3

DRY_RUN=0
STEPS_FILTER=""
STEP_RESULTS=()
PLANNED_BUDGET=0

quote() {  # the command as one shell-quoted line
    local quoted
    printf -v quoted '%q ' "$@"
    printf '%s' "${quoted% }"
}

log() {  # print a line and append it to the log
    printf '%s\n' "$*" | tee -a "$LOG"
}

init_run() {  # init_run OUTDIR: start a fresh log in OUTDIR
    OUTDIR=$1
    LOG="$OUTDIR/gpu_check.log"
    SUMMARY="$OUTDIR/summary.txt"
    STEP_RESULTS=()
    mkdir -p "$OUTDIR" || { echo "gpu_check: cannot create $OUTDIR" >&2; return 1; }
    : > "$LOG"
}

record() {  # record ID BUDGET SECONDS RESULT
    STEP_RESULTS+=("$1|$2|$3|$4")
}

selected() {  # selected ID: whether --steps asks for this step ("d" selects d1, d2, d3)
    [[ -z $STEPS_FILTER ]] && return 0
    local wanted
    for wanted in ${STEPS_FILTER//,/ }; do
        [[ $1 == "$wanted" || ($1 == "$wanted"[0-9] && ${#wanted} -eq 1) ]] && return 0
    done
    return 1
}

run_step() {  # run_step ID BUDGET DESCRIPTION COMMAND...: COMMAND under `timeout BUDGET`, logged and recorded
    local id=$1 budget=$2 description=$3
    shift 3
    local started=$SECONDS status result
    log ""
    log "===== step $id: $description (budget $budget s) $(date -u +%H:%M:%S)Z ====="
    log "\$ $(quote "$@")"
    timeout --kill-after="$KILL_AFTER" "$budget" "$@" 2>&1 | tee -a "$LOG"
    status=${PIPESTATUS[0]}
    case $status in
        0) result="PASS" ;;
        124 | 137) result="FAIL (timed out after $budget s)" ;;
        125 | 126 | 127) result="FAIL (could not run it: exit $status)" ;;
        *) result="FAIL (exit $status)" ;;
    esac
    record "$id" "$budget" "$((SECONDS - started))" "$result"
    log "----- step $id: $result in $((SECONDS - started)) s"
    return 0
}

step() {  # step ID BUDGET WRITES DESCRIPTION COMMAND...: print it (dry run), skip it, or run it
    local id=$1 budget=$2 writes=$3 description=$4
    shift 4
    PLANNED_BUDGET=$((PLANNED_BUDGET + budget))
    local skip=${SKIP_REASON:-}
    SKIP_REASON=""
    if ! selected "$id"; then
        skip="not in --steps"
    fi
    if ((DRY_RUN)); then
        printf 'step %-3s budget %3d s  %s%s\n' "$id" "$budget" "$description" "${skip:+ [skipped: $skip]}"
        printf '         writes: %s\n' "${writes:--}"
        printf '         $ %s\n' "$(quote "$@")"
        return 0
    fi
    if [[ -n $skip ]]; then
        record "$id" "$budget" 0 "SKIP ($skip)"
        log ""
        log "===== step $id: $description: SKIP ($skip)"
        return 0
    fi
    run_step "$id" "$budget" "$description" "$@"
}

plan() {  # every step, in order; the same list is printed by --dry-run and run by a real run
    local py=$PYTHON out=$OUTDIR tests_budget=140
    local bench=("$py" benchmarks/bench_loss.py --device cuda --dtype bfloat16 --d 512 --passes forward+backward
        --out "$out" --no-plot --date "$RUN_DATE")
    local wheels=(benchmarks/wheels/*.whl)
    [[ -e ${wheels[0]} ]] || SKIP_REASON="no wheels in benchmarks/wheels"
    step a1 10 "" "install the local wheels into $GPU_CHECK_SITE (offline)" \
        "$py" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$GPU_CHECK_SITE" \
        "${wheels[@]}"
    step a2 30 probes.json "versions and probes: copy bandwidth, GEMM rates, the backward GEMMs, addmm into float32" \
        "$py" benchmarks/gpu_probes.py ceilings --json "$out/probes.json"
    step b "$tests_budget" "" "tests/gpu against float64 (float32, bfloat16, float16), parallel pytest processes" \
        "$py" benchmarks/gpu_tests.py --budget "$tests_budget"
    step c 40 kernels.json "per-kernel timings, N=65536 D=512 bf16, the autotuner's tiles, registers and spills" \
        "$py" benchmarks/gpu_probes.py kernels --n 65536 --d 512 --dtype bfloat16 --json "$out/kernels.json"
    step d1 70 bench_loss.csv "providers side by side, N=4096-65536, unique and mixed labels" \
        "${bench[@]}" --n 4096 16384 65536 --labels unique mixed --providers unicl-triton unicl-triton-rowwise \
        unicl-chunked ClipLoss-formula open_clip-ClipLoss inf-cl unicl-dense
    step d2 55 bench_loss.csv "torch.compile(dense), N=4096-65536, unique and mixed labels" \
        "${bench[@]}" --n 4096 16384 65536 --labels unique mixed --providers torch-compile-dense
    step d3 75 bench_loss.csv "large batches, N=131072 and 262144, unique labels" \
        "${bench[@]}" --n 131072 262144 --labels unique --providers unicl-triton unicl-triton-rowwise inf-cl \
        unicl-chunked
    step e 55 one_million.json "N=2^20 D=512 bf16 forward+backward, backend=triton, twice, peak extra memory" \
        "$py" benchmarks/gpu_probes.py one-million --json "$out/one_million.json"
}

check_outputs() {  # record a FAIL if OUTDIR holds a file that is not one of OUTPUT_FILES
    local path name unexpected=()
    for path in "$OUTDIR"/* "$OUTDIR"/.[!.]*; do
        [[ -e $path ]] || continue
        name=${path##*/}
        [[ " ${OUTPUT_FILES[*]} " == *" $name "* ]] || unexpected+=("$name")
    done
    if ((${#unexpected[@]})); then
        record files 0 0 "FAIL (not in the plan: ${unexpected[*]})"
    else
        record files 0 0 "PASS (only the planned files)"
    fi
}

finish() {  # write the summary, print it, and return 1 if any step failed
    local line id budget seconds result failed=0 passed=0 skipped=0 used=0
    {
        printf 'gpu_check %s  commit %s  outdir %s\n' "$RUN_DATE" "${RUN_COMMIT:-unknown}" "$OUTDIR"
        printf '%-6s %7s %6s  %s\n' step budget used result
        for line in "${STEP_RESULTS[@]}"; do
            IFS='|' read -r id budget seconds result <<< "$line"
            printf '%-6s %5s s %4s s  %s\n' "$id" "$budget" "$seconds" "$result"
            used=$((used + seconds))
            case $result in
                PASS*) passed=$((passed + 1)) ;;
                SKIP*) skipped=$((skipped + 1)) ;;
                *) failed=$((failed + 1)) ;;
            esac
        done
        printf 'budget %s s, used %s s: %d passed, %d failed, %d skipped\n' \
            "$PLANNED_BUDGET" "$used" "$passed" "$failed" "$skipped"
        if ((failed)); then echo "gpu_check: FAIL"; else echo "gpu_check: PASS"; fi
    } > "$SUMMARY"
    log ""
    tee -a "$LOG" < "$SUMMARY"
    ((failed == 0))
}

main() {
    set -uo pipefail
    local outdir=""
    while (($#)); do
        case $1 in
            --dry-run) DRY_RUN=1 ;;
            --steps) STEPS_FILTER=${2:?--steps needs a list}; shift ;;
            --steps=*) STEPS_FILTER=${1#*=} ;;
            -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; return 0 ;;
            -*) echo "gpu_check: unknown option $1" >&2; return 2 ;;
            *) outdir=$1 ;;
        esac
        shift
    done
    cd "$GPU_CHECK_ROOT" || return 1
    PYTHON=${PYTHON:-python3}
    GPU_CHECK_SITE=${GPU_CHECK_SITE:-/tmp/unicl-gpu-check-site}
    RUN_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    OUTDIR=${outdir:-${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%d)}}
    export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
    export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/unicl-triton-cache}
    # The wheels' folder first (it may not exist yet), then the checkout, so unicl is imported from this tree.
    export PYTHONPATH="$GPU_CHECK_SITE:$GPU_CHECK_ROOT${PYTHONPATH:+:$PYTHONPATH}"
    if ((DRY_RUN)); then
        echo "gpu_check plan (dry run): outdir $OUTDIR, python $PYTHON, TRITON_CACHE_DIR $TRITON_CACHE_DIR"
        plan
        echo "total budget: $PLANNED_BUDGET s (limit $TOTAL_BUDGET_LIMIT s)"
        echo "output files (${#OUTPUT_FILES[@]}, limit $MAX_OUTPUT_FILES): ${OUTPUT_FILES[*]}"
        return 0
    fi
    init_run "$OUTDIR" || return 1
    RUN_COMMIT=$(git rev-parse --short HEAD 2> /dev/null || echo unknown)
    [[ -n $(git status --porcelain --untracked-files=no 2> /dev/null) ]] && RUN_COMMIT+=" (with local changes)"
    log "gpu_check $RUN_DATE, commit $RUN_COMMIT, outdir $OUTDIR, python $PYTHON, TRITON_CACHE_DIR $TRITON_CACHE_DIR"
    plan
    check_outputs
    finish
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
    exit $?
fi
