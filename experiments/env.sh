# Source this to get the project's virtual environment in .venv, created or
# updated from requirements.txt (and requirements-tracking.txt, the optional
# TensorBoard / W&B packages, when it exists) whenever either file changes
# (Python 3.11; torch pinned to 2.13.0: pip takes the CPU build where the index or wheel
# folder offers it, as on these machines; on a plain PyPI machine it is the CUDA wheel).
# Usage: source experiments/env.sh    then use "$PY".
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="$_root/.venv"
_stamp="$_venv/.requirements.sha256"
_reqs=("$_root/requirements.txt")
[ -f "$_root/requirements-tracking.txt" ] && _reqs+=("$_root/requirements-tracking.txt")
_want="$(cat "${_reqs[@]}" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$_venv/bin/python" ] || [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
  echo "setting up $_venv from ${_reqs[*]##*/} ..." >&2
  "${PYTHON:-python3.11}" -m venv "$_venv"
  "$_venv/bin/python" -m pip install --quiet --disable-pip-version-check "${_reqs[@]/#/--requirement=}"
  echo "$_want" > "$_stamp"
fi
PY="$_venv/bin/python"
export PYTHONPATH="$_root${PYTHONPATH:+:$PYTHONPATH}"
unset _root _venv _stamp _reqs _want
