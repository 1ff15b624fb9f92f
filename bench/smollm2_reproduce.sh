#!/usr/bin/env bash
# The seed's headline on the real SmolLM2-135M-Instruct: SFT, then GRPO, with held-out
# accuracy of the base model, after SFT and after GRPO, for each task; JSON results, the run's
# trace and a copy small enough to ship (see docs/results.md, "SmolLM2-135M reproduction").
#
#   bash bench/smollm2_reproduce.sh OUT [TASK ...]      default tasks: syllogism propositional_logic
#
# Per task, in OUT/TASK/:
#   sft/       minigrpo sft --preset smollm2-135m (its summary.json holds the base and SFT evals)
#   grpo/      minigrpo train --algo grpo --preset smollm2-135m --model OUT/TASK/sft (trace in grpo/trace)
#   grpo_eval.json   the GRPO model's held-out eval (the same items as the SFT evals)
#   trace-ship/      the trace to ship: the full one when it is at most TRACE_MAX_MB, else a
#                    down-sampled copy (minigrpo trace downsample: all rollouts and scalars)
#   curves.png       sampled accuracy, format rate, reward and KL per update (bench/plot_curves.py)
#   result.json      base / SFT / GRPO accuracy, format rate, premise-copy rate, majority
#                    baseline, GRPO updates, wall seconds of each phase, device
#
# Environment:
#   BUDGET_S     wall seconds for each task's whole pipeline. GRPO is stopped with SIGINT when
#                only the final eval's share is left (the trainer then saves a checkpoint and
#                closes the trace; the final eval reads the checkpoint). Default: no limit, and
#                GRPO runs the preset's max_steps (pass GRPO_ARGS="--max-steps N").
#   PARALLEL=1   run the tasks at the same time (one GPU serves both: a 135M model's decode
#                loop is bound by per-step overhead, not by the GPU's arithmetic).
#   SMOKE=1      a few very short steps (the CPU check): SFT 4 steps, GRPO 2 updates on a
#                12-completion buffer, eval on 10 items, 64 new tokens.
#   ARGS         extra config flags for every sft/train/eval command, e.g. "--seed 1".
#   GRPO_ARGS    extra flags for the GRPO command only, e.g. "--max-steps 2000".
#   TRACE_MAX_MB size above which the shipped trace is down-sampled (default 15).
#   PACK_DIR     if set, write result-TASK.json and run-TASK.tar.gz (trace-ship, logs, curves.png,
#                summaries) of each task there (the device call sets PACK_DIR=$OUT).
#   PYTHON       the Python that runs minigrpo (default python3); run from the repo root.
set -uo pipefail
cd "$(dirname "$0")/.."  # the repo root: minigrpo and bench/ are found from there
out=${1:?usage: bash bench/smollm2_reproduce.sh OUT [TASK ...]}
shift
tasks=("$@")
[ ${#tasks[@]} -eq 0 ] && tasks=(syllogism propositional_logic)
py=${PYTHON:-python3}
max_mb=${TRACE_MAX_MB:-15}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# minigrpo with Python's own SIGINT handler: a background job of a script starts with SIGINT
# ignored, and the trainer's clean stop (checkpoint, closed trace) needs KeyboardInterrupt.
# An array, not a function, so that `timeout` can run it.
mg=("$py" -c 'import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from minigrpo.cli import main
sys.exit(main(sys.argv[1:]))')

common=(--preset smollm2-135m)
sft_extra=() grpo_extra=() eval_n=500
if [ "${SMOKE:-0}" = 1 ]; then
    eval_n=10
    common+=(--eval-n 10 --max-completion-length 64 --sampling-batch-size 16 --save-steps 1)
    sft_extra=(--max-steps 4 --sft-batch-size 4)
    grpo_extra=(--max-steps 2 --buffer-size 12 --per-device-train-batch-size 6 --gradient-accumulation-steps 1)
fi
read -r -a user_args <<< "${ARGS:-}"
read -r -a grpo_args <<< "${GRPO_ARGS:-}"

mkdir -p "$out"
"${mg[@]}" fetch smollm2-135m > "$out/fetch.log" 2>&1 || { echo "fetch failed: see $out/fetch.log" >&2; exit 1; }

run_task() {
    local task=$1 d=$out/$1 t0=$SECONDS
    rm -rf "$d"; mkdir -p "$d"
    echo "[$task] SFT (with base and SFT evals on $eval_n items)"
    "${mg[@]}" sft "${common[@]}" --task "$task" --out "$d/sft" "${sft_extra[@]}" "${user_args[@]}" > "$d/sft.log" 2>&1 \
        || { echo "[$task] SFT failed: see $d/sft.log" >&2; return 1; }
    local t_sft=$((SECONDS - t0))
    # what a standalone eval costs: the SFT command's time before its training loop (start-up,
    # model and data, the base eval); its train_seconds covers the loop and the second eval
    local eval_s
    eval_s=$("$py" -c 'import json,sys; s=json.load(open(sys.argv[1])); print(int(max(0, int(sys.argv[2]) - s["train_seconds"])) + 10)' \
        "$d/sft/summary.json" "$t_sft")
    local limit=()
    if [ -n "${BUDGET_S:-}" ]; then
        local left=$((BUDGET_S - t_sft - eval_s * 3 / 2 - 15))
        [ $left -lt 30 ] && left=30
        limit=(timeout -s INT "$left")
        echo "[$task] GRPO for at most ${left}s (budget ${BUDGET_S}s, SFT took ${t_sft}s, an eval ~${eval_s}s)"
    else
        echo "[$task] GRPO"
    fi
    local t1=$SECONDS
    # the trainer's own before/after evals run on 1 item: the full evals are SFT's and grpo_eval.json
    "${limit[@]}" "${mg[@]}" train --algo grpo "${common[@]}" --task "$task" --model "$d/sft" --out "$d/grpo" --eval-n 1 \
        "${grpo_extra[@]}" "${user_args[@]}" "${grpo_args[@]}" > "$d/grpo.log" 2>&1
    local rc=$? t_grpo=$((SECONDS - t1))
    local model=$d/grpo
    if [ ! -f "$d/grpo/summary.json" ]; then
        model=$d/grpo/checkpoint
        [ -d "$model" ] || { echo "[$task] GRPO stopped before a checkpoint (exit $rc): see $d/grpo.log" >&2; return 1; }
        echo "[$task] GRPO stopped by the budget (exit $rc); evaluating its checkpoint"
    fi
    local t2=$SECONDS
    "${mg[@]}" eval "${common[@]}" --task "$task" --model "$model" --n "$eval_n" --json "${user_args[@]}" \
        > "$d/grpo_eval.json" 2> "$d/grpo_eval.log" || { echo "[$task] eval failed: see $d/grpo_eval.log" >&2; return 1; }
    local t_eval=$((SECONDS - t2))

    local bytes
    bytes=$(du -sb "$d/grpo/trace" | cut -f1)
    if [ "$bytes" -le $((max_mb * 1024 * 1024)) ]; then
        cp -r "$d/grpo/trace" "$d/trace-ship"
    else
        local every
        for every in 2 4 8 16 32 64 128; do
            rm -rf "$d/trace-ship"
            "${mg[@]}" trace downsample "$d/grpo/trace" "$d/trace-ship" --probe-every "$every" --keep-first 8 \
                > "$d/downsample.log" 2>&1 || { echo "[$task] downsample failed: see $d/downsample.log" >&2; return 1; }
            [ "$(du -sb "$d/trace-ship" | cut -f1)" -le $((max_mb * 1024 * 1024)) ] && break
        done
    fi
    "$py" - "$d" "$task" "$t_sft" "$t_grpo" "$t_eval" "$((SECONDS - t0))" "$rc" <<'PY'
import json, os, sys
import torch
d, task = sys.argv[1], sys.argv[2]
t_sft, t_grpo, t_eval, t_total, rc = (int(x) for x in sys.argv[3:])
sft = json.load(open(f"{d}/sft/summary.json"))
final = json.load(open(f"{d}/grpo_eval.json"))
state = f"{d}/grpo/checkpoint/state.json"
summary = f"{d}/grpo/summary.json"
steps = json.load(open(summary))["steps"] if os.path.exists(summary) else json.load(open(state))["step"]
keys = ("accuracy", "format_rate", "premise_copy_rate", "mean_score", "n")
result = {
    "task": task, "model": "smollm2-135m",
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    "majority_baseline": sft["after"]["majority_baseline"],
    "base": {k: sft["before"][k] for k in keys}, "sft": {k: sft["after"][k] for k in keys},
    "grpo": {k: final[k] for k in keys},
    "sft_steps": sft["steps"], "sft_examples": sft["examples"], "grpo_updates": steps,
    "grpo_stopped_by_budget": rc == 124,
    "seconds": {"sft_with_two_evals": t_sft, "grpo": t_grpo, "final_eval": t_eval, "total": t_total},
    "trace_ship": json.load(open(f"{d}/trace-ship/meta.json")).get("extra", {}).get("downsampled", "full trace"),
}
json.dump(result, open(f"{d}/result.json", "w"), indent=2)
acc = lambda k: f"{result[k]['accuracy']:.3f} (format {result[k]['format_rate']:.3f})"
print(f"[{task}] base {acc('base')}  SFT {acc('sft')}  GRPO {acc('grpo')}  majority "
      f"{result['majority_baseline']:.3f}  updates {steps}  {t_total}s")
PY
    "$py" bench/plot_curves.py "$d/grpo/trace" "$d/curves.png" > /dev/null \
        || echo "[$task] curves not plotted" >&2
    if [ -n "${PACK_DIR:-}" ]; then  # two files per task: $OUT takes at most 8
        cp "$d/result.json" "$PACK_DIR/result-$task.json"
        tar czf "$PACK_DIR/run-$task.tar.gz" -C "$d" trace-ship result.json curves.png sft.log grpo.log \
            grpo_eval.json sft/summary.json
    fi
}

status=0
if [ "${PARALLEL:-0}" = 1 ]; then
    pids=()
    for task in "${tasks[@]}"; do run_task "$task" & pids+=($!); done
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
else
    for task in "${tasks[@]}"; do run_task "$task" || status=1; done
fi
exit $status
