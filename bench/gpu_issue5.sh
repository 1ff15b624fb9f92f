#!/usr/bin/env bash
# Issue 5's checks and timings on a lent GPU, in one device call (docs/performance.md):
#   1. the decode loop alone (bench/gpu_decode.py): SmolLM-135M and Qwen3-0.6B architectures
#   2. the GPU tests (pytest -m gpu): bf16 log-probs vs a forward pass, graph replay vs eager, χ² draws, master weights
#   3. one GRPO step, ours next to TRL's GRPOTrainer (bench/gpu_step.py), SmolLM-135M
#   4. the same for the Qwen3-0.6B architecture, if the time left allows
# Needs TRL's wheels in .whl (docs/performance.md: trl, datasets, dill, multiprocess), carried with the call:
#   device run, carry [".whl"]:  bash bench/gpu_issue5.sh
# Logs and JSON go under $OUT (at most 8 files come back); the tables are printed last.
set -u
out=${OUT:-/tmp/gpu_issue5}
budget=${BUDGET_S:-540}  # seconds this script may take in all; step 4 is skipped when too little is left
mkdir -p "$out/smollm" "$out/qwen3"
wheels=${WHEELS:-.whl}  # "none": use the packages already installed (a dry run on a CPU machine)
if [ "$wheels" != none ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl \
        || { echo "could not install the carried wheels in $wheels"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
    python3 -c "import torch, transformers, trl; print('torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
    echo "== 1. decode"
    timeout 170 python3 bench/gpu_decode.py --arch smollm-135m qwen3-0.6b; echo "rc=$?"
} > "$out/decode.log" 2>&1

echo "== 2. pytest -m gpu" > "$out/pytest_gpu.log"
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_fast_rollout.py tests/test_optim.py \
    >> "$out/pytest_gpu.log" 2>&1; echo "rc=$?" >> "$out/pytest_gpu.log"

echo "== 3. step, SmolLM-135M" > "$out/smollm/step.log"
OUT=$out/smollm timeout 260 python3 bench/gpu_step.py --steps 4 --warmup 2 >> "$out/smollm/step.log" 2>&1
echo "rc=$?" >> "$out/smollm/step.log"

left=$((budget - SECONDS))
echo "== 4. step, Qwen3-0.6B ($left s left)" > "$out/qwen3/step.log"
if [ "$left" -gt 90 ]; then
    OUT=$out/qwen3 timeout $((left - 10)) python3 bench/gpu_step.py --arch qwen3-0.6b --steps 2 --warmup 1 \
        >> "$out/qwen3/step.log" 2>&1
    echo "rc=$?" >> "$out/qwen3/step.log"
else
    echo "skipped: too little time left" >> "$out/qwen3/step.log"
fi

for log in "$out/decode.log" "$out/pytest_gpu.log" "$out/smollm/step.log" "$out/qwen3/step.log"; do
    echo; echo "######## $log"; grep -vE "it/s\]|^\{'" "$log" | tail -n 22
done
echo "total ${SECONDS} s"
