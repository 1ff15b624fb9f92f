#!/usr/bin/env bash
# scripts/setup.sh -- idempotent set-up for minigrpo.
#
#   1. system packages Manim needs (Debian names), installed with apt-get when
#      we are root, otherwise listed with the command to install them;
#   2. a project virtualenv at .venv with torch (CPU build) and `pip install -e .[dev]`.
#
# Re-running is cheap: the pip step is skipped while .venv/.minigrpo-stamp
# matches pyproject.toml + this script + the Python version.
#
# Environment knobs:
#   PYTHON=python3              interpreter used to create the venv (>= 3.10)
#   MINIGRPO_SKIP_APT=1         never call apt-get (only report missing packages)
#   MINIGRPO_TORCH_INDEX=URL    index for the torch fallback
#                               (default: the PyTorch CPU wheel index)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.minigrpo-stamp"
PIPLOG="$VENV/setup-pip.log"
TORCH_VERSION="2.13.0"
TORCH_INDEX="${MINIGRPO_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"

log() { printf '[setup] %s\n' "$*"; }
warn() { printf '[setup] WARNING: %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --------------------------------------------------------------------------
# 0. interpreter
# --------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found; install Python >= 3.10 or set PYTHON=/path/to/python3"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$("$PYTHON" -V 2>&1) is too old; minigrpo needs Python >= 3.10 (set PYTHON=...)"
PY_PREFIX="$("$PYTHON" -c 'import sys; print(sys.base_prefix)')"

# --------------------------------------------------------------------------
# Is the venv already up to date?  (decides whether we will build anything)
# --------------------------------------------------------------------------
want_stamp() {
  { cat pyproject.toml scripts/setup.sh; "$PYTHON" -VV; } | sha256sum | cut -d' ' -f1
}
WANT_STAMP="$(want_stamp)"

venv_ok() { [ -x "$VPY" ] && "$VPY" -c 'import sys' >/dev/null 2>&1; }
# find_spec does not import the packages, so this stays fast
venv_has() {
  # -I: do not put the cwd on sys.path, so ./minigrpo does not count
  "$VPY" -I - "$@" >/dev/null 2>&1 <<'PY'
import importlib.util, sys
sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))
PY
}

NEED_PIP=1
if venv_ok && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT_STAMP" ] \
   && venv_has torch manim pytest pytest_timeout \
   && "$VPY" -I -c 'import importlib.metadata as m; m.version("minigrpo")' >/dev/null 2>&1; then
  NEED_PIP=0
fi
# pycairo / manimpango ship only as sdists for Linux, so they are compiled
# against cairo/pango headers unless the venv already has them.
NEED_BUILD=0
if [ "$NEED_PIP" = 1 ] && ! { venv_ok && venv_has cairo manimpango; }; then
  NEED_BUILD=1
fi

# --------------------------------------------------------------------------
# 1. system packages
# --------------------------------------------------------------------------
# needed to build pycairo and manimpango (hard requirement for the pip step)
BUILD_PKGS=(libpango1.0-dev libcairo2-dev pkg-config)
# needed to render: ffmpeg for video, LaTeX + dvisvgm for Tex/MathTex
RENDER_PKGS=(ffmpeg texlive-latex-base texlive-latex-extra texlive-fonts-recommended dvisvgm)

# toolchain / interpreter bits, only when the venv will be created or built
EXTRA_BUILD=()
# a C++ compiler: torch.compile's CPU code (inductor) in the compiled-decode tests
if ! command -v g++ >/dev/null 2>&1 && ! command -v c++ >/dev/null 2>&1; then
  EXTRA_BUILD+=(g++)
fi
if [ "$NEED_BUILD" = 1 ]; then
  if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
    EXTRA_BUILD+=(build-essential)
  fi
  if ! "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    if [ "$PY_PREFIX" = /usr ]; then
      EXTRA_BUILD+=(python3-dev)
    else
      die "Python headers (Python.h) are missing for $PYTHON ($PY_PREFIX); pycairo cannot be built. Install the -dev package of that Python."
    fi
  fi
fi
if ! venv_ok && ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
  if [ "$PY_PREFIX" = /usr ]; then
    EXTRA_BUILD+=(python3-venv)
  else
    die "$PYTHON has no ensurepip module, so 'python -m venv' cannot work; install its venv support."
  fi
fi

MISSING_BUILD=()
MISSING_RENDER=()
if command -v dpkg >/dev/null 2>&1; then
  for p in "${BUILD_PKGS[@]}" "${EXTRA_BUILD[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || MISSING_BUILD+=("$p")
  done
  for p in "${RENDER_PKGS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || MISSING_RENDER+=("$p")
  done
else
  # not Debian: check for the things themselves
  warn "dpkg not found (not a Debian system); checking for the tools directly"
  if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists cairo pangocairo 2>/dev/null; then
    MISSING_BUILD+=("cairo + pango development files and pkg-config")
  fi
  for t in ffmpeg latex dvisvgm; do
    command -v "$t" >/dev/null 2>&1 || MISSING_RENDER+=("$t")
  done
fi
MISSING=("${MISSING_BUILD[@]}" "${MISSING_RENDER[@]}")

if [ "${#MISSING[@]}" -eq 0 ]; then
  log "system packages: all present"
elif command -v dpkg >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
     && [ "$(id -u)" -eq 0 ] && [ "${MINIGRPO_SKIP_APT:-0}" != 1 ]; then
  log "system packages: installing ${MISSING[*]} (apt-get; the TeX packages take a few minutes)"
  aptlog="$(mktemp)"
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${MISSING[@]}"; } >"$aptlog" 2>&1; then
    tail -n 30 "$aptlog" >&2
    die "apt-get failed (full log: $aptlog)"
  fi
  rm -f "$aptlog"
  MISSING_BUILD=(); MISSING_RENDER=()
  log "system packages: installed"
else
  if command -v dpkg >/dev/null 2>&1; then
    sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo "
    warn "missing system packages: ${MISSING[*]}"
    warn "install them with:"
    warn "  ${sudo_}apt-get update && ${sudo_}DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${MISSING[*]}"
  else
    warn "missing: ${MISSING[*]} -- install them with your system's package manager"
  fi
  if [ "${#MISSING_RENDER[@]}" -gt 0 ]; then
    warn "continuing: training and tests work without them, rendering scenes (make demo) does not"
  fi
fi

if [ "${#MISSING_BUILD[@]}" -gt 0 ] && [ "$NEED_BUILD" = 1 ]; then
  die "cannot build pycairo/manimpango (needed by manim) without: ${MISSING_BUILD[*]}. Install them (command above) and re-run scripts/setup.sh."
fi

# --------------------------------------------------------------------------
# 2. virtualenv + python packages
# --------------------------------------------------------------------------
if [ "$NEED_PIP" = 0 ]; then
  log "venv: .venv up to date ($("$VPY" -V 2>&1))"
  exit 0
fi

if ! venv_ok; then
  log "venv: creating .venv with $("$PYTHON" -V 2>&1)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"
: >"$PIPLOG"

pip_q() {  # quiet pip; on failure show the tail of the log and stop
  if ! "$VPY" -m pip install --disable-pip-version-check --no-input "$@" >>"$PIPLOG" 2>&1; then
    tail -n 40 "$PIPLOG" >&2
    die "pip install $* failed (full log: $PIPLOG)"
  fi
}

# torch FIRST: a bare `torch` requirement with no torch installed pulls a
# multi-GB CUDA build from PyPI. Prefer the exact CPU wheel that lies on
# local disk (pip's find-links), else the PyTorch CPU index.
if venv_has torch; then
  log "torch: already installed ($("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))'))"
elif "$VPY" -m pip install --disable-pip-version-check --no-input --no-index --no-deps \
       "torch==$TORCH_VERSION" >>"$PIPLOG" 2>&1; then
  log "torch: installed torch==$TORCH_VERSION from the local wheel"
else
  log "torch: torch==$TORCH_VERSION not available locally; installing the CPU build from $TORCH_INDEX"
  pip_q torch --index-url "$TORCH_INDEX"
fi

log "pip: installing minigrpo (editable) with runtime + dev dependencies (log: .venv/setup-pip.log)"
pip_q -e ".[dev]"

# the torch wheel came in without its dependencies; make sure they resolved
if ! "$VPY" -m pip check >>"$PIPLOG" 2>&1; then
  warn "pip check reports problems (see .venv/setup-pip.log):"
  "$VPY" -m pip check 2>&1 | sed 's/^/[setup]   /' >&2 || true
fi
"$VPY" -c 'import torch' >>"$PIPLOG" 2>&1 || { tail -n 20 "$PIPLOG" >&2; die "torch does not import in .venv"; }

echo "$WANT_STAMP" >"$STAMP"
log "done: $("$VPY" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("torch", "transformers", "manim")))')"
