#!/usr/bin/env bash
# Issue 5's checks and timings on a lent GPU, one device call per mode (docs/performance.md).
#   bash bench/gpu_issue5.sh [full]   (about 7 min on an H200)
#     1. the decode loop alone (bench/gpu_decode.py): SmolLM-135M and Qwen3-0.6B architectures
#     2. the GPU tests (pytest -m gpu): bf16 log-probs vs a forward pass, graph replay vs eager, χ² draws,
#        master weights, the compiled step
#     3. one GRPO step, ours next to TRL's GRPOTrainer (bench/gpu_step.py), SmolLM-135M, with PPO and trace off
#     4. the same for the Qwen3-0.6B architecture, if the time left allows
#   bash bench/gpu_issue5.sh compile  (about 6 min)
#     the GPU tests; the decode loop with its torch.compile'd step; ours (plain and compile_decode) next
#     to TRL for SmolLM-135M; a profile of one of our steps (bench/gpu_profile.py)
# Needs TRL's wheels in .whl (docs/performance.md: trl, datasets, dill, multiprocess), carried with the call:
#   device run, carry [".whl"]:  bash bench/gpu_issue5.sh MODE
# Logs and JSON go under $OUT (at most 8 files come back); the tables are printed last.
set -u
out=${OUT:-/tmp/gpu_issue5}
budget=${BUDGET_S:-540}  # seconds this script may take in all; the last part is skipped or cut when too little is left
mkdir -p "$out/smollm" "$out/qwen3"
wheels=${WHEELS:-.whl}  # "none": use the packages already installed (a dry run on a CPU machine)
if [ "$wheels" != none ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl \
        || { echo "could not install the carried wheels in $wheels"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false

mode=${1:-full}
step_args=(--steps 4 --warmup 2)
decode_args=(--arch smollm-135m qwen3-0.6b)
[ "$mode" = compile ] && { step_args=(--steps 3 --warmup 1 --compile-decode --skip-ppo --skip-trace-off); decode_args=(--arch smollm-135m --compile); }
left() { echo $((budget - SECONDS)); }
cap() { local l; l=$(left); echo $(( $1 < l ? $1 : (l > 5 ? l : 5) )); }  # a part's timeout: at most $1, at most what is left

echo "== GPU tests" > "$out/pytest_gpu.log"
timeout "$(cap 150)" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_fast_rollout.py tests/test_optim.py \
    >> "$out/pytest_gpu.log" 2>&1; echo "rc=$?" >> "$out/pytest_gpu.log"

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
    python3 -c "import torch, transformers, trl; print('torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
    echo "== decode (mode $mode)"
    timeout "$(cap 200)" python3 bench/gpu_decode.py "${decode_args[@]}"; echo "rc=$?"
} > "$out/decode.log" 2>&1

echo "== step, SmolLM-135M (mode $mode, $(left) s left)" > "$out/smollm/step.log"
OUT=$out/smollm timeout "$(cap 260)" python3 bench/gpu_step.py "${step_args[@]}" >> "$out/smollm/step.log" 2>&1
echo "rc=$?" >> "$out/smollm/step.log"

if [ "$mode" = compile ]; then
    echo "== profile of one step ($(left) s left)" > "$out/profile.log"
    [ "$(left)" -gt 40 ] && OUT=$out timeout $(($(left) - 5)) python3 bench/gpu_profile.py >> "$out/profile.log" 2>&1
    echo "rc=$?" >> "$out/profile.log"
else
    echo "== step, Qwen3-0.6B ($(left) s left)" > "$out/qwen3/step.log"
    if [ "$(left)" -gt 90 ]; then
        OUT=$out/qwen3 timeout $(($(left) - 10)) python3 bench/gpu_step.py --arch qwen3-0.6b --steps 2 --warmup 1 \
            >> "$out/qwen3/step.log" 2>&1
        echo "rc=$?" >> "$out/qwen3/step.log"
    else
        echo "skipped: too little time left" >> "$out/qwen3/step.log"
    fi
fi

for log in "$out/pytest_gpu.log" "$out/decode.log" "$out/smollm/step.log" "$out/qwen3/step.log" "$out/profile.log"; do
    [ -f "$log" ] || continue
    echo; echo "######## $log"; grep -vE "it/s\]|^\{'|^USDT" "$log" | tail -n 24
done
echo "total ${SECONDS} s"
