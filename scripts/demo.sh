#!/usr/bin/env bash
# Try kvsessions on a fresh machine: create the virtual environment (every extra), then write a
# few example sessions with `kvsessions demo` into the configured store (SQLite sessions.db in
# the working folder unless STORAGE_URL etc. say otherwise). Arguments go to `kvsessions demo`,
# e.g. bash scripts/demo.sh --url sqlite:////tmp/demo.db
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${KVSESSIONS_VENV:-$root/.venv}
KVSESSIONS_VENV=$venv bash "$root/scripts/venv.sh" all
"$venv/bin/kvsessions" demo "$@"
echo
echo "(kvsessions is in $venv/bin: run  source $venv/bin/activate  to use the commands above)"
