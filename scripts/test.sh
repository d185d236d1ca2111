#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite under a virtual X server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python; [ -n "${VIRTUAL_ENV:-}" ] && PY=python
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "$PY" -m pytest "$@"
