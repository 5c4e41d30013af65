#!/usr/bin/env bash
# The test suite: installs what it needs into .venv, then runs pytest.
# Extra arguments go to pytest (e.g. ./tests/run.sh -k config).
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/env.sh
exec "$PY" -m pytest -q -ra tests "$@"
