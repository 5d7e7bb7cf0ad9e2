#!/usr/bin/env bash
# The one prepared GPU session: bash benchmarks/gpu_check.sh [--dry-run] [--gpu h100|h200] [--steps LIST] [OUTDIR]
#
# There is one run of it per lent session (about 15 minutes of device time in all, the machine's start included; at
# most 10 minutes a command; at most 8 files back; no internet), so it is prepared here and run once, as:
#
#   device run  command: "bash benchmarks/gpu_check.sh"  carry: ["benchmarks/wheels"]  timeout_s: 540
#
# benchmarks/wheels/ is git-ignored: it reaches the GPU machine only when the call names it in `carry` (the Inf-CL
# wheel for the side-by-side steps; without it step a1 is skipped and Inf-CL's rows are missing). The results land in
# $OUT; commit them under benchmarks/results/gpu-<date>/ with the card's name.
#
# The plan is sized for the card it finds (nvidia-smi's name; --gpu overrides): an H100 (80 GB, about 3.0 TB/s) runs
# the large float64-checked tests one group at a time and the large benchmarks at N = 131,072 only; an H200 (141 GB,
# 4.8 TB/s) runs three large groups at once and N up to 262,144. Any other card gets the H100 plan. Every step runs
# under `timeout` with its own budget; budgets plus each step's kill margin add up to at most 480 s, so the whole
# script, the wheel install included, ends within 8 minutes. The correctness step runs first, and summary.txt is
# rewritten after every step, so a run cut short still brings its verdicts back. A failing or timed-out step is
# recorded and the next one still runs; the script ends with one PASS/FAIL/SKIP line per step and exits non-zero if
# any step failed.
#
#   b  tests       tests/gpu against float64 in float32, bfloat16 and float16, the softmax and the sigmoid
#                  objectives, as parallel pytest processes (one per group of tests/gpu/_groups.py, whose
#                  schedule groups also compile the sigmoid's row and backward kernels; the compiled
#                  kernels stay in TRITON_CACHE_DIR for the steps after it); its budget leaves room for Triton 3.6,
#                  which re-benchmarks a kernel whose pruning left one configuration
#   a1 wheels      install benchmarks/wheels/*.whl (git-ignored; e.g. Inf-CL) with pip --no-index --no-deps
#   a2 probes      versions (nvidia-smi, torch, triton), copy bandwidth, a large bf16 and float32 GEMM, the
#                  one-pass backward's two GEMM shapes with float32 results, in-place addmm into float32: yes/no
#   c  kernels     per-kernel timings at N = 65,536, D = 512 bf16 with the autotuner's tiles, registers, spills
#   d1 providers   unicl dense, chunked and both Triton schedules, open_clip's ClipLoss as a formula (and
#                  open_clip itself and Inf-CL where installed), N = 4,096 to 65,536, unique and mixed labels
#   d2 compile     torch.compile(dense) at the same sizes (Inductor compiles in its own budget)
#   d3 large       both Triton schedules, Inf-CL and chunked at N = 131,072 (and 262,144 on an H200)
#   e  one-million one N = 2^20, D = 512 bf16 forward+backward with backend="triton", twice, peak extra memory
#
# OUTDIR (default $OUT, else benchmarks/results/gpu-<UTC date>) gets at most these files: gpu_check.log (every
# step's output), summary.txt, probes.json, kernels.json, bench_loss.csv (rows appended as measured, so a step
# stopped by its limit keeps them; plot it with benchmarks/plot_loss.py), one_million.json.
#
#   --dry-run     print the plan (steps, budgets, commands, files) and run nothing; without --gpu and without a
#                 GPU here, print the H100 plan and the H200 plan
#   --gpu CARD    plan for this card (h100 or h200) instead of the one nvidia-smi names
#   --steps LIST  run only these steps, e.g. "b,d3" ("d" means d1, d2 and d3); the others are listed as SKIP
#
# Environment: PYTHON (default python3), TRITON_CACHE_DIR (default /tmp/unicl-triton-cache), GPU_CHECK_SITE
# (where the wheels go, default /tmp/unicl-gpu-check-site). The step runner is a function: tests/test_gpu_check.py
# sources this file (main runs only when it is executed) and drives run_step and finish with dummy commands.

GPU_CHECK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
#: The budgets of all steps, each with its kill margin, add up to at most this many seconds.
TOTAL_BUDGET_LIMIT=480
#: The cards the plan is sized for.
GPU_PLANS=(h100 h200)
#: The device machine sends back at most this many files.
MAX_OUTPUT_FILES=8
#: Every file a step may write into OUTDIR.
OUTPUT_FILES=(gpu_check.log summary.txt probes.json kernels.json bench_loss.csv one_million.json)
#: Seconds `timeout` waits after SIGTERM before SIGKILL.
KILL_AFTER=3

DRY_RUN=0
GPU_KIND=""
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
    write_summary
    return 0
}

step() {  # step ID BUDGET WRITES DESCRIPTION COMMAND...: print it (dry run), skip it, or run it
    local id=$1 budget=$2 writes=$3 description=$4
    shift 4
    PLANNED_BUDGET=$((PLANNED_BUDGET + budget + KILL_AFTER))
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
        write_summary
        return 0
    fi
    run_step "$id" "$budget" "$description" "$@"
}

detect_gpu() {  # print h100 or h200 for the card nvidia-smi names first (h100 for any other card), none without one
    local name
    name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -n 1) || true
    case $name in
        "") echo none ;;
        *H200*) echo h200 ;;
        *) echo h100 ;;
    esac
}

plan() {  # every step, in order, sized for GPU_KIND; the same list is printed by --dry-run and run by a real run
    local py=$PYTHON out=$OUTDIR tests_budget large_at_once large_sizes d3_budget
    if [[ $GPU_KIND == h200 ]]; then
        # 141 GB: the three large groups (about 25 GB each with their float64 references) at once.
        tests_budget=160 large_at_once=3 large_sizes=(131072 262144) d3_budget=65
    else
        # 80 GB: one large group at a time beside the 17 small ones (about 20 CUDA contexts), so a longer budget;
        # N = 262,144 would not fit the remaining minutes at 3.0 TB/s.
        tests_budget=190 large_at_once=1 large_sizes=(131072) d3_budget=35
    fi
    local bench=("$py" benchmarks/bench_loss.py --device cuda --dtype bfloat16 --d 512 --passes forward+backward
        --out "$out" --no-plot --date "$RUN_DATE")
    local wheels=(benchmarks/wheels/*.whl)
    step b "$tests_budget" "" "tests/gpu against float64 (float32, bfloat16, float16), parallel pytest processes" \
        "$py" benchmarks/gpu_tests.py --large-at-once "$large_at_once" --budget "$tests_budget"
    [[ -e ${wheels[0]} ]] || SKIP_REASON="no wheels in benchmarks/wheels (name it in the call's carry)"
    step a1 10 "" "install the local wheels into $GPU_CHECK_SITE (offline)" \
        "$py" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$GPU_CHECK_SITE" \
        "${wheels[@]}"
    step a2 25 probes.json "versions and probes: copy bandwidth, GEMM rates, the backward GEMMs, addmm into float32" \
        "$py" benchmarks/gpu_probes.py ceilings --json "$out/probes.json"
    step c 35 kernels.json "per-kernel timings, N=65536 D=512 bf16, the autotuner's tiles, registers and spills" \
        "$py" benchmarks/gpu_probes.py kernels --n 65536 --d 512 --dtype bfloat16 --json "$out/kernels.json"
    step d1 55 bench_loss.csv "providers side by side, N=4096-65536, unique and mixed labels" \
        "${bench[@]}" --n 4096 16384 65536 --labels unique mixed --providers unicl-triton unicl-triton-rowwise \
        unicl-chunked ClipLoss-formula open_clip-ClipLoss inf-cl unicl-dense
    step d2 45 bench_loss.csv "torch.compile(dense), N=4096-65536, unique and mixed labels" \
        "${bench[@]}" --n 4096 16384 65536 --labels unique mixed --providers torch-compile-dense
    step d3 "$d3_budget" bench_loss.csv "large batches, N=${large_sizes[*]}, unique labels" \
        "${bench[@]}" --n "${large_sizes[@]}" --labels unique --providers unicl-triton unicl-triton-rowwise inf-cl \
        unicl-chunked
    step e 50 one_million.json "N=2^20 D=512 bf16 forward+backward, backend=triton, twice, peak extra memory" \
        "$py" benchmarks/gpu_probes.py one-million --json "$out/one_million.json"
}

dry_run() {  # print the plan for GPU_KIND
    PLANNED_BUDGET=0
    echo "gpu_check plan for ${GPU_KIND^^} (dry run): outdir $OUTDIR, python $PYTHON, TRITON_CACHE_DIR $TRITON_CACHE_DIR"
    plan
    echo "total budget: $PLANNED_BUDGET s with $KILL_AFTER s to stop each step (limit $TOTAL_BUDGET_LIMIT s)"
    echo "output files (${#OUTPUT_FILES[@]}, limit $MAX_OUTPUT_FILES): ${OUTPUT_FILES[*]}"
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

write_summary() {  # (re)write summary.txt from the steps recorded so far; set FAILED_STEPS
    local line id budget seconds result failed=0 passed=0 skipped=0 used=0
    {
        printf 'gpu_check %s  commit %s  card %s  outdir %s\n' "$RUN_DATE" "${RUN_COMMIT:-unknown}" \
            "${GPU_NAME:-${GPU_KIND:-unknown}}" "$OUTDIR"
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
    FAILED_STEPS=$failed
}

finish() {  # write the summary, print it, and return 1 if any step failed
    write_summary
    log ""
    tee -a "$LOG" < "$SUMMARY"
    ((FAILED_STEPS == 0))
}

main() {
    set -uo pipefail
    local outdir=""
    while (($#)); do
        case $1 in
            --dry-run) DRY_RUN=1 ;;
            --steps) STEPS_FILTER=${2:?--steps needs a list}; shift ;;
            --gpu) GPU_KIND=${2:?--gpu needs h100 or h200}; shift ;;
            --gpu=*) GPU_KIND=${1#*=} ;;
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
    if [[ -n $GPU_KIND && " ${GPU_PLANS[*]} " != *" $GPU_KIND "* ]]; then
        echo "gpu_check: --gpu must be one of ${GPU_PLANS[*]}; got $GPU_KIND" >&2
        return 2
    fi
    local detected
    detected=$(detect_gpu)
    if ((DRY_RUN)); then
        local kinds=("${GPU_KIND:-$detected}")
        [[ ${kinds[0]} == none ]] && kinds=("${GPU_PLANS[@]}")
        for GPU_KIND in "${kinds[@]}"; do
            dry_run
        done
        return 0
    fi
    if [[ -z $GPU_KIND && $detected == none ]]; then
        echo "gpu_check: no GPU here (nvidia-smi names none); --dry-run prints the plans" >&2
        return 1
    fi
    GPU_KIND=${GPU_KIND:-$detected}
    GPU_NAME=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2> /dev/null | head -n 1) || true
    GPU_NAME="${GPU_NAME:-unknown card}, ${GPU_KIND^^} plan"
    init_run "$OUTDIR" || return 1
    RUN_COMMIT=$(git rev-parse --short HEAD 2> /dev/null || echo unknown)
    [[ -n $(git status --porcelain --untracked-files=no 2> /dev/null) ]] && RUN_COMMIT+=" (with local changes)"
    log "gpu_check $RUN_DATE, commit $RUN_COMMIT, $GPU_NAME, outdir $OUTDIR, python $PYTHON," \
        "TRITON_CACHE_DIR $TRITON_CACHE_DIR"
    plan
    check_outputs
    finish
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
    exit $?
fi
