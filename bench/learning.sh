#!/usr/bin/env bash
# Does RL learn? SFT then RL on the tiny preset, held-out accuracy (500 items) before/after.
#   bash bench/learning.sh [TASK] [ALGO] [OUT]        e.g. bash bench/learning.sh syllogism grpo runs/bench
#   RL_ARGS="--max-steps 200" bash bench/learning.sh syllogism ppo   (extra flags for the RL command)
#   ARGS="--seed 1" bash bench/learning.sh syllogism grpo             (extra flags for both commands)
# Prints one table row: SFT accuracy, RL accuracy, gain, majority baseline, wall seconds of each phase.
set -euo pipefail
task=${1:-syllogism}; algo=${2:-grpo}; out=${3:-runs/bench-$task-$algo}
py=${PYTHON:-python}
rm -rf "$out"; mkdir -p "$out"
t0=$SECONDS
$py -m minigrpo.cli sft --task "$task" --preset tiny --out "$out/sft" ${ARGS:-} > "$out/sft.log" 2>&1
t1=$SECONDS
$py -m minigrpo.cli train --algo "$algo" --task "$task" --preset tiny --model "$out/sft" --out "$out/rl" ${ARGS:-} ${RL_ARGS:-} > "$out/rl.log" 2>&1
t2=$SECONDS
$py - "$out" "$task" "$algo" $((t1 - t0)) $((t2 - t1)) <<'PY'
import json, sys
out, task, algo, t_sft, t_rl = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sft = json.load(open(f"{out}/sft/summary.json"))["after"]
rl = json.load(open(f"{out}/rl/summary.json"))
after = rl["after"]
print(f"{'steps':>6} " f"{'task':<20}{'algo':<6}{'SFT acc':>9}{'RL acc':>9}{'gain':>8}{'majority':>10}{'SFT s':>8}{'RL s':>8}{'total s':>9}{'peak MB':>9}")
print(f"{rl['steps']:>6} " f"{task:<20}{algo:<6}{sft['accuracy']:>9.3f}{after['accuracy']:>9.3f}{after['accuracy'] - sft['accuracy']:>+8.3f}"
      f"{after['majority_baseline']:>10.3f}{t_sft:>8d}{t_rl:>8d}{t_sft + t_rl:>9d}{rl['peak_memory_mb']:>9.0f}")
PY
