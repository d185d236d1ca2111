#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite under a virtual X server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python; [ -n "${VIRTUAL_ENV:-}" ] && PY=python
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# The quality gate: lint everywhere, the engine formatted and type-checked (pyproject.toml).
"$PY" -m ruff check src napari_cascade tests benchmarks
"$PY" -m ruff format --check src/cascadeseg
"$PY" -m mypy
exec "$PY" -m pytest "$@"
