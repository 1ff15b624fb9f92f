#!/usr/bin/env bash
# On the GPU machine (no registry): install the carried wheels of bench/wheels.sh into
# /tmp/site, build pycosat from its carried source archive, and check that minigrpo's
# imports work. Idempotent: a second call on a warm machine only checks. Then use
#   export PYTHONPATH=/tmp/site:$PWD
#   bash bench/gpu_setup.sh [WHEELS]          # WHEELS default .whl
set -euo pipefail
whl=${1:-.whl}
site=${SITE:-/tmp/site}
py=${PYTHON:-python3}
if [ ! -f "$site/.done" ]; then
    mkdir -p "$site"
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$whl"/*.whl
    # pycosat: C, a source archive only for Python 3.12; reasoning-gym imports it for its zebra
    # puzzles alone, so if no compiler is there a stub that fails on use keeps the import working
    if ! $py -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" "$whl"/pycosat-*.tar.gz; then
        echo "pycosat did not build: installing a stub (reasoning-gym's zebra puzzles will fail; syllogism and propositional_logic do not use it)" >&2
        printf 'def _missing(*a, **k):\n    raise ImportError("pycosat was not built on this machine")\nsolve = itersolve = _missing\n' \
            > "$site/pycosat.py"
    fi
    touch "$site/.done"
fi
PYTHONPATH="$site:$PWD" $py -c "import reasoning_gym, gguf, transformers, torch, minigrpo.cli
print('ok: reasoning_gym', reasoning_gym.__version__, '| transformers', transformers.__version__, '| torch',
      torch.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
