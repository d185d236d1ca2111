#!/usr/bin/env bash
# Sets up napari-cascade from a clean clone: system libraries for the napari GUI (when root and
# missing), a virtual environment in .venv (unless one is active), the CPU build of torch, and the
# project with its GUI and test extras. Safe to run again: it only installs what is missing.
#
#   TORCH_INDEX_URL  pip index for torch, e.g. a CUDA wheel index for GPU users (see README, "GPU")
#   TORCH_VERSION    torch version to install when none is present (default 2.13.0)
#   --check-x        only say whether the X libraries are there (exit 0) or would be installed (1)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${VIRTUAL_ENV:-}" ]; then
  PY=python
else
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  PY=.venv/bin/python
fi

# napari's Qt needs an X server for GUI tests and xcb libraries to start at all.
XLIBS="xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxkbcommon-x11-0 libxcb-xinerama0 libxcb-randr0 libxcb-shape0 libxcb-cursor0 libgl1 libegl1 libdbus-1-3 libfontconfig1"
x_libraries_present() {
  # The library list is read whole before matching: 'ldconfig -p | grep -q' under pipefail fails
  # when grep stops at the first match and ldconfig dies of SIGPIPE, which re-ran apt-get.
  local libraries
  command -v Xvfb >/dev/null 2>&1 || return 1
  libraries="$(ldconfig -p 2>/dev/null || true)"
  case "$libraries" in *libxcb-icccm*) return 0 ;; *) return 1 ;; esac
}
if [ "${1:-}" = "--check-x" ]; then  # report only (tests): exit 0 when nothing would be installed
  x_libraries_present && echo "setup: X libraries present" && exit 0
  echo "setup: X libraries missing" && exit 1
fi
if ! x_libraries_present; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing X libraries for napari ($XLIBS)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $XLIBS >/dev/null
  else
    echo "setup: warning: Xvfb or xcb libraries missing; GUI tests need: sudo apt-get install $XLIBS" >&2
  fi
fi

# Install torch first and explicitly: a bare 'torch' requirement pulls a multi-GB CUDA build.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch ${TORCH_VERSION:-2.13.0}"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$PY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" --index-url "$TORCH_INDEX_URL"
  else
    "$PY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
  fi
fi

if ! "$PY" -c "import cascadeseg, napari_cascade, napari, pytest_xvfb, mypy, ruff" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.installed ] 2>/dev/null; then
  echo "setup: installing napari-cascade and its dependencies"
  "$PY" -m pip install -q -e ".[test]"
  [ -d .venv ] && touch .venv/.installed || true
fi
echo "setup: ready ($("$PY" -c 'import torch, sys; print(f"python {sys.version.split()[0]}, torch {torch.__version__}")'))"
