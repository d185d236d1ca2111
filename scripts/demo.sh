#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the main job on the bundled sample scan:
# with a display, napari opens with the scan segmented; without one, the same pipeline runs
# headless and writes the mask and a PNG overview under ./out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python; [ -n "${VIRTUAL_ENV:-}" ] && PY=python
exec "$PY" -m cascadeseg.cli.main demo "$@"
