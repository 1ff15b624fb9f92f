#!/usr/bin/env bash
# Issue 5's checks and timings on a lent GPU, one device call per mode (docs/performance.md).
# Every mode starts with the GPU tests (pytest -m gpu).
#   bash bench/gpu_issue5.sh [full]   (414 s on an H200)
#     the decode loop alone (bench/gpu_decode.py) for SmolLM-135M and Qwen3-0.6B; one GRPO step, ours
#     next to TRL's GRPOTrainer (bench/gpu_step.py), SmolLM-135M with trace off and PPO; the same for
#     Qwen3-0.6B if the time left allows
#   BUDGET_S=325 bash bench/gpu_issue5.sh compile  (320 s)
#     the decode loop with its torch.compile'd step; ours plain and with compile_decode next to TRL;
#     a profile of one of our steps (bench/gpu_profile.py) with what time is left
#   BUDGET_S=330 bash bench/gpu_issue5.sh h100
#     seconds per part of one compiled-decode step (gpu_profile.py --timers); ours (plain, compiled, trace
#     off) next to TRL at micro-batch 16; ours compiled next to TRL with all 48 completions in one micro-batch
#   BUDGET_S=470 bash bench/gpu_issue5.sh final
#     ours (plain, compiled, trace off, PPO) next to TRL at micro-batch 16; ours compiled next to TRL at one
#     micro-batch of 48; Qwen3-0.6B compiled next to TRL
#   BUDGET_S=430 bash bench/gpu_issue5.sh fused  (387 s on an H200, call D, which also timed the decode loop)
#     ours with compiled decode, and compiled + fused, next to TRL at one micro-batch of 48; seconds per part
#     of one step; a profile of one update (gpu_profile.py --update-only); Qwen3-0.6B the same way if time is left
#   BUDGET_S=370 bash bench/gpu_issue5.sh explore  (338 s on an H200, call C; its autotuned decode ran out of time)
#     the decode loop compiled, fused-compiled and fused with GEMM autotuning; seconds per part of one step at one
#     micro-batch of 48 with fused decode, then with the passes' norms, MLPs and RoPE compiled (gpu_profile.py)
#   BUDGET_S=430 bash bench/gpu_issue5.sh overlap  (call E, H100, 2026-11-26 at 73fbaad: bench/results/h100-2026-11-26-c)
#     the step of the code as it stands, next to TRL at one micro-batch of 48 (compiled; compiled + fused; trace
#     off with both), the trace's record on a side stream beside OVERLAP_STEPS queued decode steps; a profile of
#     the π_ref pass and the update; the decode loop alone (its time against the step's generation: what of the record still shows),
#     fused compiled over our attention and over torch's fused one (sdpa_decode_attention); Qwen3 if time is left;
#     the update's output layer, chunked against full logits (bench/chunked_head.py, in pytest_gpu.log)
#   bash bench/gpu_issue5.sh profile  (not run yet)
#     profiles of one step, plain and with compile_decode; the step at one micro-batch of 48 for both trainers
# Needs TRL's wheels in .whl (docs/performance.md: trl, datasets, dill, multiprocess), carried with the call:
#   device run, carry [".whl"]:  bash bench/gpu_issue5.sh MODE
# Logs and JSON go under $OUT (8 files at most come back); the tables are printed last.
# Dry run on a CPU machine, with the packages already installed: WHEELS=none OUT=/tmp/g5 bash bench/gpu_issue5.sh MODE
set -u
out=${OUT:-/tmp/gpu_issue5}
budget=${BUDGET_S:-540}  # seconds this script may take in all; the last part is skipped or cut when too little is left
mkdir -p "$out"
wheels=${WHEELS:-.whl}  # "none": use the packages already installed (a dry run on a CPU machine)
if [ "$wheels" != none ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl \
        || { echo "could not install the carried wheels in $wheels"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false

mode=${1:-full}
left() { echo $((budget - SECONDS)); }
cap() { local l; l=$(left); echo $(( $1 < l ? $1 : (l > 5 ? l : 5) )); }  # a part's timeout: at most $1, at most what is left

gpu_tests() {
    echo "== GPU tests" > "$out/pytest_gpu.log"
    timeout "$(cap 150)" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_fast_rollout.py tests/test_optim.py \
        >> "$out/pytest_gpu.log" 2>&1; echo "rc=$?" >> "$out/pytest_gpu.log"
}
decode() {  # gpu_decode.py arguments
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
        python3 -c "import torch, transformers, trl; print('torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
        echo "== decode (mode $mode)"
        timeout "$(cap 200)" python3 bench/gpu_decode.py "$@"; echo "rc=$?"
    } > "$out/decode.log" 2>&1
}
step() {  # folder under $out, then gpu_step.py arguments
    local dir=$out/$1; shift
    mkdir -p "$dir"
    echo "== step $* (mode $mode, $(left) s left)" > "$dir/step.log"
    if [ "$(left)" -gt 90 ]; then
        OUT=$dir timeout "$(cap 260)" python3 bench/gpu_step.py "$@" >> "$dir/step.log" 2>&1
        echo "rc=$?" >> "$dir/step.log"
    else
        echo "skipped: too little time left" >> "$dir/step.log"
    fi
}
profile() {  # folder under $out, then gpu_profile.py arguments
    local dir=$out/$1; shift
    mkdir -p "$dir"
    echo "== profile $* ($(left) s left)" > "$dir/profile.log"
    # the log holds the tables (no $OUT for it: at most 8 files come back from a call)
    [ "$(left)" -gt 40 ] && OUT= timeout "$(cap 150)" python3 bench/gpu_profile.py "$@" >> "$dir/profile.log" 2>&1
    echo "rc=$?" >> "$dir/profile.log"
}

case "$mode" in
    full)     # run 1 on the H200, 2026-11-26
        gpu_tests
        decode --arch smollm-135m qwen3-0.6b
        step smollm --steps 4 --warmup 2
        step qwen3 --arch qwen3-0.6b --steps 2 --warmup 1 ;;
    compile)  # run 2 on the H200, 2026-11-26 (its profile did not get the time it needs)
        gpu_tests
        decode --arch smollm-135m --compile
        step smollm --steps 3 --warmup 1 --compile-decode --skip-ppo --skip-trace-off
        profile profile ;;
    h100)     # the goal's card: where the step's time goes (timers), ours vs TRL at micro-batch 16, then 48
        gpu_tests
        profile timers --timers --compile-decode
        step smollm --steps 3 --warmup 1 --compile-decode --skip-ppo
        step smollm-mb48 --steps 3 --warmup 1 --micro-batch 0 --compile-decode --skip-ppo --skip-trace-off ;;
    final)    # the goal's numbers on an H100: micro-batch 16 (with trace off and PPO), 48, and Qwen3-0.6B
        gpu_tests
        step smollm --steps 3 --warmup 1 --compile-decode
        step smollm-mb48 --steps 3 --warmup 1 --micro-batch 0 --compile-decode --skip-plain --skip-ppo --skip-trace-off
        step qwen3 --arch qwen3-0.6b --steps 2 --warmup 1 --compile-decode --skip-plain --skip-ppo --skip-trace-off ;;
    fused)    # run at d8a5ddd on an H200 (call D, 2026-11-26), then with the compiled step's attention as reductions,
              # measured slower and since removed; run it again for the code as it is
        gpu_tests
        step smollm-mb48 --steps 3 --warmup 1 --micro-batch 0 --compile-decode --fused-decode --skip-plain --skip-ppo \
            --skip-trace-off
        profile timers --timers --compile-decode --fused-decode --micro-batch 0
        profile update --update-only --compile-decode --fused-decode --micro-batch 0
        step qwen3 --arch qwen3-0.6b --steps 2 --warmup 1 --micro-batch 0 --compile-decode --fused-decode --skip-plain \
            --skip-ppo --skip-trace-off ;;
    overlap)  # call E (H100): the step as the code stands (records beside the decode), its decode alone, an update
        gpu_tests
        { echo "== bench/chunked_head.py"; timeout "$(cap 60)" python3 bench/chunked_head.py; echo "rc=$?"; } \
            >> "$out/pytest_gpu.log" 2>&1
        step smollm-mb48 --steps 3 --warmup 1 --micro-batch 0 --compile-decode --fused-decode --skip-plain --skip-ppo
        profile update --update-only --compile-decode --fused-decode --micro-batch 0
        decode --arch smollm-135m --compile --fused --sdpa --repeats 3 --only fused-compiled fused-compiled-sdpa
        step qwen3 --arch qwen3-0.6b --steps 2 --warmup 1 --micro-batch 0 --compile-decode --fused-decode --skip-plain \
            --skip-ppo --skip-trace-off ;;
    explore)  # where the next gains are: fused and autotuned decode steps; the passes with compiled norms/MLPs/RoPE
        gpu_tests
        decode --arch smollm-135m --compile --fused --autotune --only compiled fused-compiled fused-autotuned
        profile timers-fused --timers --compile-decode --fused-decode --micro-batch 0
        profile timers-blocks --timers --compile-decode --fused-decode --micro-batch 0 --compile-blocks norm-mlp-rope ;;
    profile)  # the next run: where the update's time goes, and one micro-batch of 48 for both trainers
        gpu_tests
        profile profile-plain
        profile profile-compiled --compile-decode
        step smollm-mb48 --steps 3 --warmup 1 --micro-batch 0 --compile-decode --skip-ppo --skip-trace-off ;;
    *) echo "unknown mode $mode: full, compile, h100, final, fused, overlap, explore or profile"; exit 2 ;;
esac

for log in "$out/pytest_gpu.log" "$out/decode.log" "$out"/*/step.log "$out"/*/profile.log; do
    [ -f "$log" ] || continue
    echo; echo "######## $log"; grep -vE "it/s\]|^\{'|^USDT" "$log" | tail -n 24
done
echo "total ${SECONDS} s"
