#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install kvsessions into it
# with the extras given (default: all,test). Prints nothing on success but a one-line summary.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
extras=${1:-all,test}
venv=${KVSESSIONS_VENV:-$root/.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
fi
stamp="$venv/.kvsessions-installed-$extras"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  # Quiet on success: the build back-end's notes about editable installs are not the user's
  # concern. On failure everything pip said is shown.
  log=$(mktemp)
  if ! "$venv/bin/python" -m pip install -q -e "$root[$extras]" 2>"$log"; then
    cat "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
  touch "$stamp"
fi
echo "[venv] $venv ready with kvsessions[$extras]"
