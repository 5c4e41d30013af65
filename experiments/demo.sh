#!/usr/bin/env bash
# The main job: the demo grid on the embedded corpus, ending in a figure and a table.
# Installs what it needs into .venv first. Arguments go to `python -m experiments.demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/env.sh
exec "$PY" -m experiments.demo "$@"
